//! Rolling a release out: creating it, its step timers, each step's fan-out in pages, the end
//! of each sync reported back to its release, and pause/resume/abort.
//!
//! Steps advance by events, never by a sleeping function: a step starts when its
//! `release.step` timer (a message sent with a delay to the release queue, re-sent while the
//! wait is longer than the queue allows) fires; its targets are read one page at a time, each
//! page requesting its syncs and sending the next page's `release.step` at once, so a step of
//! any size resumes at the page a timeout stopped it at; a step ends when a `release.synced`
//! finds every target of the step terminal. Every write is conditional on the record's version
//! and every sync id is derived from (release, build, install, round), so a replayed or
//! duplicated event changes nothing and no install is enqueued twice. This module must never
//! wait on a clock or trust an event's claim about an outcome: outcomes are read from the
//! store.

use crate::event::{Event, Payload, ReleaseStep};
use crate::handlers::{HandlerError, Outcome};
use crate::id::{AppName, BuildId, EventId, InstallId, ReleaseId};
use crate::ports::{Clock as _, Queue as _};
use crate::ports::{Cursor, WriteError, MAX_DELAY_SECONDS};
use crate::release::ReleaseStore as _;
use crate::release::{Release, ReleaseError, ReleasePolicy, ReleaseTarget};

pub use crate::release_port::{Desk, ReleaseDesk, Releases, MAX_RELEASES_LISTED};

mod control;
mod create;
mod step;
mod synced;

pub use control::{abort_release, pause_release, release_targets, resume_release};
pub use create::create_release;
pub use step::handle_release_step;
pub use synced::handle_release_synced;
pub(crate) use synced::{end_step_if_done, record_outcome, sync_finished};

/// What the vendor asks for: these builds (one per component) to these installs (all of the
/// app's installs subscribed to a component when `installs` is `None`), in steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// Chosen by the caller (the CLI generates one), so a resent request is deduplicated.
    pub id: ReleaseId,
    pub app: AppName,
    pub builds: Vec<BuildId>,
    pub installs: Option<Vec<InstallId>>,
    pub policy: ReleasePolicy,
    pub requested_by: String,
}

fn invalid(message: String) -> HandlerError {
    HandlerError::Release(ReleaseError::Invalid(message))
}

fn encode_err(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Encode {
        message: e.to_string(),
    }
}

/// The event id of one page of one step of one round: a duplicate of it is the same piece.
pub(crate) fn step_event(
    release: &Release,
    page: u32,
    cursor: Option<Cursor>,
) -> Result<Event, HandlerError> {
    let id = EventId::new(format!(
        "{}.s{}.r{}.p{}",
        release.id, release.step, release.round, page
    ))
    .map_err(encode_err)?;
    Ok(Event::with_id(
        id,
        Payload::ReleaseStep(ReleaseStep {
            release_id: release.id.clone(),
            step: release.step,
            round: release.round,
            page,
            cursor: cursor.map(|c| c.as_str().to_string()),
        }),
    ))
}

pub(crate) async fn send_event<D: Desk>(
    ports: &D,
    event: &Event,
    delay_seconds: u32,
) -> Result<(), HandlerError> {
    let body = event.to_json().map_err(encode_err)?;
    ports
        .queue()
        .send_delayed(
            ports.release_queue(),
            &body,
            delay_seconds.min(MAX_DELAY_SECONDS),
        )
        .await?;
    Ok(())
}

/// Sets the timer the release's state needs, if any (running and waiting): a `release.step`
/// delayed until the step is due, or by the longest delay the queue allows (the handler sends
/// it again until it is due).
pub(crate) async fn send_timer<D: Desk>(ports: &D, release: &Release) -> Result<(), HandlerError> {
    let Some((_, _, due_at)) = release.pending_timer() else {
        return Ok(());
    };
    let wait_ms = due_at.saturating_sub(ports.clock().now_ms());
    let secs = u32::try_from(wait_ms.div_ceil(1000)).unwrap_or(u32::MAX);
    send_event(ports, &step_event(release, 0, None)?, secs).await
}

/// Re-reads and writes `decide(latest)` until a conditional write lands or `decide` says
/// nothing is to be done (`None`); returns the release as stored and whether this call wrote.
async fn update_release<D: Desk>(
    ports: &D,
    mut current: Release,
    decide: impl Fn(&Release) -> Result<Option<Release>, HandlerError>,
) -> Result<(Release, bool), HandlerError> {
    for _ in 0..ports.max_write_tries().max(1) {
        let Some(next) = decide(&current)? else {
            return Ok((current, false));
        };
        if next == current {
            return Ok((current, false));
        }
        match ports.store().update_release(&next, current.version).await {
            Ok(()) => return Ok((next, true)),
            Err(WriteError::Conflict(c)) => match c.current {
                Some(latest) => current = latest,
                None => {
                    return Err(HandlerError::Vanished {
                        what: "release",
                        id: current.id.to_string(),
                    })
                }
            },
            Err(WriteError::Store(e)) => return Err(e.into()),
        }
    }
    Err(HandlerError::Contention {
        what: "release",
        id: current.id.to_string(),
    })
}

async fn update_target<D: Desk>(
    ports: &D,
    mut current: ReleaseTarget,
    decide: impl Fn(&ReleaseTarget) -> Option<ReleaseTarget>,
) -> Result<ReleaseTarget, HandlerError> {
    for _ in 0..ports.max_write_tries().max(1) {
        let Some(next) = decide(&current) else {
            return Ok(current);
        };
        match ports.store().update_target(&next, current.version).await {
            Ok(()) => return Ok(next),
            Err(WriteError::Conflict(c)) => match c.current {
                Some(latest) => current = latest,
                None => {
                    return Err(HandlerError::Vanished {
                        what: "release target",
                        id: current.install_id.to_string(),
                    })
                }
            },
            Err(WriteError::Store(e)) => return Err(e.into()),
        }
    }
    Err(HandlerError::Contention {
        what: "release target",
        id: current.install_id.to_string(),
    })
}

pub(crate) async fn get_release<D: Desk>(
    ports: &D,
    id: &ReleaseId,
) -> Result<Release, HandlerError> {
    ports
        .store()
        .get_release(id)
        .await?
        .ok_or_else(|| HandlerError::UnknownRelease {
            release_id: id.clone(),
        })
}

fn ignored(release: &ReleaseId, reason: impl Into<String>) -> Outcome {
    Outcome::ReleaseIgnored {
        release_id: release.clone(),
        reason: reason.into(),
    }
}
