//! The fan-out tee: one verified read of a source blob streamed into every destination
//! that needs it.
//!
//! It must never let a destination commit a blob that the verifier or another destination
//! found wrong, and never buffer more than a few chunks per destination.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hosts::BlobCtx;
use crate::digest::{Digest, VerifyingStream};
use crate::error::{Error, Result, Step};
use crate::progress::{ProgressEvent, ProgressSink};
use crate::ByteStream;

/// Chunks buffered per destination in the fan-out tee: enough to absorb jitter between
/// destinations, small enough that memory stays flat (a few hundred KiB per transfer).
pub(super) const TEE_DEPTH: usize = 1;

/// Why one fan-out attempt failed, and which destinations still lack the blob.
pub(super) struct FanOutFailure {
    pub(super) cause: Error,
    pub(super) failed: Vec<usize>,
}

pub(super) fn aborted(digest: &Digest, why: &str) -> Error {
    Error::Io {
        step: Step::GetBlob,
        path: digest.to_string(),
        source: std::io::Error::other(format!("copy aborted: {why}")),
    }
}

pub(super) fn receiver_stream(rx: mpsc::Receiver<Result<Bytes>>) -> ByteStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Reads the source blob once and tees it, verified, into every target destination.
///
/// The verifier withholds the last chunk until the digest matches, and any failure (source,
/// verifier or one destination) pushes an error into every body, so no destination can
/// commit a blob that some part of this attempt found wrong.
pub(super) async fn fan_out(
    ctx: &BlobCtx,
    digest: &Digest,
    size: u64,
    targets: &[usize],
) -> std::result::Result<(), FanOutFailure> {
    let source = match ctx.src.open_blob(digest, size).await {
        Ok(s) => s,
        Err(cause) => {
            return Err(FanOutFailure {
                cause,
                failed: targets.to_vec(),
            })
        }
    };
    let source = VerifyingStream::new(source, digest.clone(), Some(size));
    let cancel = CancellationToken::new();
    let first_failed: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));

    let mut txs = Vec::with_capacity(targets.len());
    let mut writers = Vec::with_capacity(targets.len());
    for &i in targets {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(TEE_DEPTH);
        txs.push(Some(tx));
        let dst = &ctx.dsts[i];
        let cancel = cancel.clone();
        let first_failed = first_failed.clone();
        writers.push(async move {
            let result = dst.write_blob(digest, size, receiver_stream(rx)).await;
            if result.is_err() {
                if let Ok(mut first) = first_failed.lock() {
                    first.get_or_insert(i);
                }
                cancel.cancel();
            }
            (i, result)
        });
    }

    let pump = pump(source, txs, &cancel, digest, ctx.progress.as_ref());
    let (source_error, results) = tokio::join!(pump, futures::future::join_all(writers));

    let first = first_failed.lock().ok().and_then(|f| *f);
    outcome(source_error, results, first, targets)
}

type Tee = Option<mpsc::Sender<Result<Bytes>>>;

/// Ends every body still open with an error, so no destination commits the blob.
async fn abort_all(txs: &mut [Tee], digest: &Digest, why: &str) {
    for tx in txs.iter_mut().filter_map(Option::take) {
        let _ = tx.send(Err(aborted(digest, why))).await;
    }
}

/// Reads the verified source and hands each chunk to every body still open. Returns the
/// source's error, if reading or verification failed; `None` when the source was read to
/// its verified end, a destination failed (its writer reports why), or no body is open.
async fn pump<S>(
    mut source: S,
    mut txs: Vec<Tee>,
    cancel: &CancellationToken,
    digest: &Digest,
    progress: &dyn ProgressSink,
) -> Option<Error>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                abort_all(&mut txs, digest, "a destination failed").await;
                return None;
            }
            n = source.next() => n,
        };
        let chunk = match next {
            // Verified and complete: closing the channels ends every body.
            None => return None,
            Some(Err(e)) => {
                abort_all(
                    &mut txs,
                    digest,
                    "the source failed verification or reading",
                )
                .await;
                return Some(e);
            }
            Some(Ok(chunk)) => chunk,
        };
        if !send_to_all(&mut txs, &chunk, cancel).await {
            abort_all(&mut txs, digest, "a destination failed").await;
            return None;
        }
        progress.event(ProgressEvent::BlobProgress {
            digest: digest.clone(),
            bytes: chunk.len() as u64,
        });
        if txs.iter().all(Option::is_none) {
            return None;
        }
    }
}

/// Sends `chunk` to every open body; a body whose writer stopped reading is closed (its own
/// result says why). Returns false if the copy was cancelled meanwhile.
async fn send_to_all(txs: &mut [Tee], chunk: &Bytes, cancel: &CancellationToken) -> bool {
    for slot in txs.iter_mut() {
        let Some(tx) = slot.as_ref() else { continue };
        let sent = tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            r = tx.send(Ok(chunk.clone())) => r,
        };
        if sent.is_err() {
            *slot = None;
        }
    }
    true
}

/// The attempt's result: the source's error first, else the first destination to fail,
/// else any other; with the destinations that still lack the blob (all, if none failed).
fn outcome(
    source_error: Option<Error>,
    results: Vec<(usize, Result<()>)>,
    first: Option<usize>,
    targets: &[usize],
) -> std::result::Result<(), FanOutFailure> {
    let mut failed = Vec::new();
    let mut first_error = None;
    let mut other_error = None;
    for (i, r) in results {
        if let Err(e) = r {
            failed.push(i);
            if Some(i) == first {
                first_error = Some(e);
            } else if other_error.is_none() {
                other_error = Some(e);
            }
        }
    }
    match source_error.or(first_error).or(other_error) {
        None => Ok(()),
        Some(cause) => {
            if failed.is_empty() {
                failed = targets.to_vec();
            }
            Err(FanOutFailure { cause, failed })
        }
    }
}
