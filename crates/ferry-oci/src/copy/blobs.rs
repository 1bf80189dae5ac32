//! Blob scheduling: largest first over a bounded set of tasks, one transfer per blob that
//! skips what destinations hold, mounts where the registry allows, and streams the rest with
//! retries.
//!
//! It must never write a manifest; a failure here returns before any manifest is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::endpoint::Endpoint;
use super::fan_out::fan_out;
use super::hosts::BlobCtx;
use super::CopyReport;
use crate::client::MountOutcome;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::progress::{BlobOutcome, ProgressEvent, ProgressSink};

pub(super) async fn copy_blobs(
    ctx: Arc<BlobCtx>,
    blobs: &BTreeMap<Digest, u64>,
    report: &mut CopyReport,
) -> Result<()> {
    let mut jobs: Vec<(Digest, u64)> = blobs.iter().map(|(d, s)| (d.clone(), *s)).collect();
    // Largest first: the long transfers start early and small ones fill the gaps.
    jobs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // Enough tasks to saturate every host; the per-host permits do the real bounding.
    let limit = ctx.task_limit;
    let mut jobs = jobs.into_iter();
    // A JoinSet aborts whatever is still running when it is dropped on the first error.
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < limit {
            let Some((digest, size)) = jobs.next() else {
                break;
            };
            let ctx = ctx.clone();
            running.spawn(async move {
                let outcome = transfer_blob(&ctx, &digest, size).await;
                (size, outcome)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (size, outcome) =
            joined.map_err(|e| Error::Config(format!("a blob transfer task failed: {e}")))?;
        match outcome? {
            BlobOutcome::Copied => {
                report.blobs_copied += 1;
                report.bytes_copied += size;
            }
            BlobOutcome::Skipped => {
                report.blobs_skipped += 1;
                report.bytes_skipped += size;
            }
            BlobOutcome::Mounted => report.blobs_mounted += 1,
        }
    }
    Ok(())
}

/// Reports every blob as skipped: every destination already holds the root, and so its graph.
pub(super) fn skip_all_blobs(
    blobs: &BTreeMap<Digest, u64>,
    progress: &dyn ProgressSink,
    report: &mut CopyReport,
) {
    for (digest, size) in blobs {
        progress.event(ProgressEvent::BlobStarted {
            digest: digest.clone(),
            size: *size,
        });
        progress.event(ProgressEvent::BlobFinished {
            digest: digest.clone(),
            size: *size,
            outcome: BlobOutcome::Skipped,
        });
        report.blobs_skipped += 1;
        report.bytes_skipped += size;
    }
}

/// Moves one blob to every destination that lacks it.
pub(super) async fn transfer_blob(
    ctx: &BlobCtx,
    digest: &Digest,
    size: u64,
) -> Result<BlobOutcome> {
    let permits = ctx.acquire_hosts(digest).await?;
    ctx.progress.event(ProgressEvent::BlobStarted {
        digest: digest.clone(),
        size,
    });
    let finish = |outcome: BlobOutcome| -> Result<BlobOutcome> {
        ctx.progress.event(ProgressEvent::BlobFinished {
            digest: digest.clone(),
            size,
            outcome,
        });
        Ok(outcome)
    };
    let pending = lacking(ctx, digest).await?;
    if pending.is_empty() {
        return finish(BlobOutcome::Skipped);
    }
    let pending = mount_from_source(ctx, digest, pending).await;
    if pending.is_empty() {
        return finish(BlobOutcome::Mounted);
    }
    stream_and_mount(ctx, digest, size, &pending).await?;
    // The permits are released only after BlobFinished, so events show the real overlap.
    let outcome = finish(BlobOutcome::Copied);
    drop(permits);
    outcome
}

/// The destinations (by index) that do not hold the blob.
async fn lacking(ctx: &BlobCtx, digest: &Digest) -> Result<Vec<usize>> {
    let mut pending = Vec::new();
    for (i, d) in ctx.dsts.iter().enumerate() {
        if d.has_blob(digest).await?.is_none() {
            pending.push(i);
        }
    }
    Ok(pending)
}

/// Same registry, other repository, same identity: asks the registry to mount instead of
/// moving bytes. Returns the destinations that still lack the blob.
///
/// A mount is authorised as the destination's identity and needs pull on the source; when
/// the copy was given a separate identity for the source, that is not expected to hold, and
/// asking would send the destination identity after the source's scope (and cost a 202
/// round trip per blob), so the bytes are streamed instead.
async fn mount_from_source(ctx: &BlobCtx, digest: &Digest, pending: Vec<usize>) -> Vec<usize> {
    let Endpoint::Registry { client, r: src } = &ctx.src else {
        return pending;
    };
    let mut still = Vec::new();
    for i in pending {
        let mounted = match &ctx.dsts[i] {
            Endpoint::Registry { r: dst, .. }
                if dst.repo.registry == src.repo.registry
                    && dst.repo.repository != src.repo.repository
                    && client.same_identity(&src.repo, &dst.repo) =>
            {
                match client
                    .mount_blob(&dst.repo, &src.repo.repository, digest)
                    .await
                {
                    Ok(MountOutcome::Mounted) => true,
                    Ok(MountOutcome::NotMounted) => false,
                    Err(e) => {
                        tracing::debug!(%digest, error = %e, "mount failed; copying instead");
                        false
                    }
                }
            }
            _ => false,
        };
        if !mounted {
            still.push(i);
        }
    }
    still
}

/// Upload once per registry, mount the rest: a destination that is another repository of a
/// registry this transfer already uploads to, under the same identity, gets a
/// cross-repository mount from that repository once the upload has committed.
async fn stream_and_mount(
    ctx: &BlobCtx,
    digest: &Digest,
    size: u64,
    pending: &[usize],
) -> Result<()> {
    let (upload, followers) = split_for_mounts(ctx, pending);
    stream_with_retries(ctx, digest, size, upload).await?;
    let mounts = followers
        .iter()
        .map(|&(i, leader)| async move { (i, mount_from_sibling(ctx, leader, i, digest).await) });
    let fallback: Vec<usize> = futures::future::join_all(mounts)
        .await
        .into_iter()
        .filter_map(|(i, mounted)| (!mounted).then_some(i))
        .collect();
    if !fallback.is_empty() {
        // A registry that answered 202 (or refused) gets the bytes after all.
        stream_with_retries(ctx, digest, size, fallback).await?;
    }
    Ok(())
}

/// Splits the destinations that need a blob into those the bytes are streamed to and those
/// that can mount it from one of them afterwards, as `(destination, leader)` pairs. A
/// follower is a registry destination on the same registry as an earlier streamed one whose
/// credentials are the same identity (the mount is authorised as the follower's identity and
/// needs pull on the leader's repository, which the same credential covers).
pub(super) fn split_for_mounts(
    ctx: &BlobCtx,
    pending: &[usize],
) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut upload: Vec<usize> = Vec::new();
    let mut followers = Vec::new();
    for &i in pending {
        let leader = match &ctx.dsts[i] {
            Endpoint::Registry { client, r } => upload.iter().copied().find(|&j| {
                matches!(&ctx.dsts[j], Endpoint::Registry { r: lr, .. }
                    if lr.repo.registry == r.repo.registry && client.same_identity(&lr.repo, &r.repo))
            }),
            Endpoint::Layout { .. } => None,
        };
        match leader {
            Some(j) => followers.push((i, j)),
            None => upload.push(i),
        }
    }
    (upload, followers)
}

/// Mounts a just-uploaded blob from destination `leader`'s repository into destination
/// `i`'s. Whether it is there now; a 202 or an error means it must be uploaded after all.
pub(super) async fn mount_from_sibling(
    ctx: &BlobCtx,
    leader: usize,
    i: usize,
    digest: &Digest,
) -> bool {
    let (Endpoint::Registry { r: from, .. }, Endpoint::Registry { client, r: to }) =
        (&ctx.dsts[leader], &ctx.dsts[i])
    else {
        return false;
    };
    if from.repo == to.repo {
        return true; // the same repository under another tag: the upload already put it there
    }
    match client
        .mount_blob(&to.repo, &from.repo.repository, digest)
        .await
    {
        Ok(MountOutcome::Mounted) => true,
        Ok(MountOutcome::NotMounted) => false,
        Err(e) => {
            tracing::debug!(%digest, error = %e, "mount between destinations failed; uploading instead");
            false
        }
    }
}

/// Streams the blob to `targets`, retrying the destinations that failed (re-opening the
/// source each time) while the cause is retryable and the policy allows.
pub(super) async fn stream_with_retries(
    ctx: &BlobCtx,
    digest: &Digest,
    size: u64,
    mut targets: Vec<usize>,
) -> Result<()> {
    let mut attempt = 1;
    loop {
        match fan_out(ctx, digest, size, &targets).await {
            Ok(()) => return Ok(()),
            Err(failure) => {
                if !failure.cause.is_retryable() || !ctx.retry.should_retry(attempt) {
                    return Err(failure.cause);
                }
                ctx.progress.event(ProgressEvent::Retrying {
                    what: format!("blob {digest}"),
                    attempt,
                    error: failure.cause.to_string(),
                });
                tokio::time::sleep(ctx.retry.delay(attempt, None)).await;
                attempt += 1;
                targets = failure.failed;
            }
        }
    }
}
