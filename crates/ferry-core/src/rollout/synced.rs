//! The end of a sync reported back to its release (`release.synced`) and the end of a step when
//! every target of it is terminal. It must never take an outcome from an event: outcomes are
//! read from the store.

use super::{
    encode_err, get_release, ignored, send_event, send_timer, update_release, update_target,
};
use crate::domain::SyncJob;
use crate::event::{Event, Payload, ReleaseSynced};
use crate::handlers::{HandlerError, Outcome, Ports};
use crate::id::EventId;
use crate::ports::{Backend, PageRequest, MAX_PAGE};
use crate::ports::{Clock as _, JobStore as _};
use crate::release::ReleaseStore as _;
use crate::release::{Release, ReleaseTarget, StepPhase, StepTally, TargetState};
use crate::release_port::Desk;
use crate::state::{JobError, JobStatus};

/// Tallies the current step from its targets and, when every one is terminal, ends it (halt,
/// complete or move on) with one conditional write; sets the next timer when `timer`.
pub(crate) async fn end_step_if_done<D: Desk>(
    ports: &D,
    release: Release,
    timer: bool,
) -> Result<Release, HandlerError> {
    if release.phase != StepPhase::Syncing {
        return Ok(release);
    }
    let tally = tally_step(ports, &release).await?;
    let now = ports.clock().now_ms();
    let (stored, wrote) = update_release(ports, release, |r| {
        // Another writer may have moved on meanwhile: only end the step that was tallied.
        if r.step != tally.1 || r.round != tally.2 {
            return Ok(None);
        }
        Ok(r.finish_step(tally.0, now))
    })
    .await?;
    if wrote {
        tracing::info!(release_id = %stored.id, status = %stored.status, step = stored.step, "release step ended");
        if timer {
            send_timer(ports, &stored).await?;
        }
    }
    Ok(stored)
}

async fn tally_step<D: Desk>(
    ports: &D,
    release: &Release,
) -> Result<(StepTally, u32, u32), HandlerError> {
    let mut tally = StepTally::default();
    let mut page = PageRequest::first(MAX_PAGE);
    loop {
        let got = ports
            .store()
            .targets_by_step(&release.id, release.step, &page)
            .await?;
        for t in &got.items {
            tally.add(t, release.round);
        }
        match got.next {
            Some(c) => page = PageRequest::after(MAX_PAGE, c),
            None => return Ok((tally, release.step, release.round)),
        }
    }
}

/// Tells the sync's release, if any, that the sync is terminal (a `release.synced` on the
/// release queue). Called by the sync handlers after every terminal write; a failure is the
/// handler's, so the event that made the sync terminal is retried and this is sent again.
/// Over any [`Desk`]: a bundle receipt (`crate::bundle::record_receipt`) tells the release
/// the same way.
pub(crate) async fn sync_finished<D: Desk>(ports: &D, job: &SyncJob) -> Result<(), HandlerError> {
    let Some(release_id) = &job.release_id else {
        return Ok(());
    };
    if !job.status().is_terminal() {
        return Ok(());
    }
    let id = EventId::new(format!("rs.{}", job.id)).map_err(encode_err)?;
    let event = Event::with_id(
        id,
        Payload::ReleaseSynced(ReleaseSynced {
            release_id: release_id.clone(),
            sync_id: job.id.clone(),
        }),
    );
    send_event(ports, &event, 0).await
}

/// `release.synced`: records the sync's outcome (read from the store) on its target, then
/// ends the step if every target of it is terminal.
pub async fn handle_release_synced<P: Backend>(
    ports: &Ports<P>,
    ev: &ReleaseSynced,
) -> Result<Outcome, HandlerError> {
    let Some(job) = ports.store.get_sync(&ev.sync_id).await? else {
        return Ok(ignored(&ev.release_id, "no such sync"));
    };
    if job.release_id.as_ref() != Some(&ev.release_id) || !job.status().is_terminal() {
        return Ok(ignored(
            &ev.release_id,
            "the sync is not a finished sync of this release",
        ));
    }
    let release = get_release(ports, &ev.release_id).await?;
    let Some(stored) = record_outcome(ports, &release, &job).await? else {
        return Ok(ignored(&release.id, "the install is not a target"));
    };
    let release = if stored.step == release.step {
        end_step_if_done(ports, release, true).await?
    } else {
        release
    };
    Ok(Outcome::ReleaseSynced {
        release_id: release.id,
        sync_id: job.id,
        status: release.status,
    })
}

/// Records a terminal sync's outcome (read from the store, never from an event) on its
/// release target; `None` when the install is not a target of `release`. A repeat changes
/// nothing (only an entry still `syncing` under this sync id is written).
pub(crate) async fn record_outcome<D: Desk>(
    ports: &D,
    release: &Release,
    job: &SyncJob,
) -> Result<Option<ReleaseTarget>, HandlerError> {
    let Some(target) = ports
        .store()
        .get_target(&release.id, &job.install_id)
        .await?
    else {
        return Ok(None);
    };
    let (state, error) = match job.status() {
        JobStatus::Succeeded => (TargetState::Succeeded, None),
        _ => (
            TargetState::Failed,
            Some(job.state.error.clone().unwrap_or_else(|| {
                JobError::new(
                    "sync_failed",
                    format!("sync {} ended as {}", job.id, job.status()),
                )
            })),
        ),
    };
    let bytes = job.stats.map(|s| s.bytes_copied).unwrap_or(0);
    let now = ports.clock().now_ms();
    let stored = update_target(ports, target, |t| {
        let mut next = t.bumped(now);
        let entry = next
            .syncs
            .iter_mut()
            .find(|s| s.sync_id.as_ref() == Some(&job.id) && s.state == TargetState::Syncing)?;
        entry.state = state;
        entry.error = error.clone();
        entry.bytes_copied = bytes;
        Some(next)
    })
    .await?;
    Ok(Some(stored))
}
