//! The vendor's controls on a release: pause, resume (a new round after a halt), abort, and the
//! listing of its targets. It must never undo a sync already enqueued.

use super::{end_step_if_done, get_release, send_timer, update_release};
use crate::handlers::HandlerError;
use crate::id::ReleaseId;
use crate::ports::Clock as _;
use crate::ports::{PageRequest, MAX_PAGE};
use crate::release::ReleaseStore as _;
use crate::release::{Release, ReleaseStatus, ReleaseTarget, StepPhase};
use crate::release_port::Desk;

/// Pauses a running release: the step in flight finishes, the next does not start.
pub async fn pause_release<D: Desk>(ports: &D, id: &ReleaseId) -> Result<Release, HandlerError> {
    let now = ports.clock().now_ms();
    let release = get_release(ports, id).await?;
    let (stored, _) = update_release(ports, release, |r| Ok(Some(r.pause(now)?))).await?;
    Ok(stored)
}

/// Resumes a paused release (its waiting step's timer is set again) or a halted one (a new
/// round: the failed installs of the halted step are retried, then the release goes on).
pub async fn resume_release<D: Desk>(ports: &D, id: &ReleaseId) -> Result<Release, HandlerError> {
    let now = ports.clock().now_ms();
    let release = get_release(ports, id).await?;
    let (stored, _) = update_release(ports, release, |r| Ok(Some(r.resume(now)?))).await?;
    // Set even when nothing was written (a resume repeated after a lost timer): a duplicate
    // timer is a no-op.
    send_timer(ports, &stored).await?;
    if stored.status == ReleaseStatus::Running && stored.phase == StepPhase::Syncing {
        // Paused while syncing, and the step ended meanwhile: end it now.
        return end_step_if_done(ports, stored, true).await;
    }
    Ok(stored)
}

/// Aborts a release for good; syncs already enqueued still finish.
pub async fn abort_release<D: Desk>(
    ports: &D,
    id: &ReleaseId,
    by: &str,
) -> Result<Release, HandlerError> {
    let now = ports.clock().now_ms();
    let release = get_release(ports, id).await?;
    let (stored, _) = update_release(ports, release, |r| Ok(Some(r.abort(now, by)?))).await?;
    Ok(stored)
}

/// Every target of a release, step by step (for `release show`).
pub async fn release_targets<D: Desk>(
    ports: &D,
    release: &Release,
) -> Result<Vec<ReleaseTarget>, HandlerError> {
    let mut out = Vec::new();
    for step in 0..release.steps {
        let mut page = PageRequest::first(MAX_PAGE);
        loop {
            let got = ports
                .store()
                .targets_by_step(&release.id, step, &page)
                .await?;
            out.extend(got.items);
            match got.next {
                Some(c) => page = PageRequest::after(MAX_PAGE, c),
                None => break,
            }
        }
    }
    Ok(out)
}
