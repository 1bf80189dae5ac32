//! The copy engine: resolves a source manifest graph and copies it, by digest, to one or
//! more destinations (registries or OCI layouts).
//!
//! Order is what makes a copy safe: blobs first (largest first, bounded per host), then child
//! manifests, then the root by digest, and the tag last, only once everything it references
//! is present and verified. An existing tag that already holds the digest is success.
//! Each source blob is read once however many destinations there are. It must never buffer
//! a blob, and never write a manifest after any verification failure.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::RegistryClient;
use crate::digest::Digest;
use crate::error::Result;
use crate::media::Platform;
use crate::progress::ProgressSink;
use crate::reference::Reference;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy only this platform of an index (the root then becomes that child manifest).
    pub platform: Option<Platform>,
    /// Copy referrers (signatures, SBOMs, attestations) of every copied manifest too.
    pub referrers: bool,
    /// Concurrent blob transfers per registry host.
    pub max_per_host: usize,
    /// Tag to write at every destination; `None` means each destination's own tag, if any.
    pub tag_override: Option<String>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platform: None,
            referrers: false,
            max_per_host: 6,
            tag_override: None,
        }
    }
}

/// What a copy did, for the closing summary and for sync reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// The digest of the root that was copied (after platform selection).
    pub digest: Option<Digest>,
    pub media_type: String,
    pub manifests_written: usize,
    pub blobs_copied: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    /// Bytes read from the source (each blob once, whatever the fan-out).
    pub bytes_copied: u64,
    pub bytes_skipped: u64,
    #[serde(with = "duration_secs")]
    pub duration: Duration,
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

pub struct CopyEngine {
    _client: RegistryClient,
    _options: CopyOptions,
}

impl CopyEngine {
    pub fn new(client: RegistryClient, options: CopyOptions) -> Self {
        CopyEngine {
            _client: client,
            _options: options,
        }
    }

    /// Copies `source` to every destination. Returns when every destination holds the
    /// artifact (tagged, if a tag was named) or at the first failure, naming the reference,
    /// the step and the HTTP status.
    pub async fn copy(
        &self,
        _source: &Reference,
        _destinations: &[Reference],
        _progress: Arc<dyn ProgressSink>,
    ) -> Result<CopyReport> {
        todo!()
    }
}
