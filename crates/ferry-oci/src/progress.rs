//! Progress events of a copy, for progress bars on a terminal and `--json` lines elsewhere.
//!
//! Events are plain data; sinks must be cheap and must never block the copy.

use serde::Serialize;

use crate::digest::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOutcome {
    /// Streamed from the source to the destination(s).
    Copied,
    /// Every destination already had it.
    Skipped,
    /// Mounted from another repository on the same registry.
    Mounted,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// The graph is resolved: this many blobs and bytes are in play.
    Plan {
        source: String,
        digest: Digest,
        manifests: usize,
        blobs: usize,
        total_bytes: u64,
    },
    BlobStarted {
        digest: Digest,
        size: u64,
    },
    /// `bytes` more bytes of `digest` have moved (a delta, not a total).
    BlobProgress {
        digest: Digest,
        bytes: u64,
    },
    BlobFinished {
        digest: Digest,
        size: u64,
        outcome: BlobOutcome,
    },
    ManifestWritten {
        destination: String,
        digest: Digest,
        tag: Option<String>,
    },
    /// A transient failure that is being retried.
    Retrying {
        what: String,
        attempt: u32,
        error: String,
    },
}

pub trait ProgressSink: Send + Sync {
    fn event(&self, event: ProgressEvent);
}

/// A sink that drops everything.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: ProgressEvent) {}
}
