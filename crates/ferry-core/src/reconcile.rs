//! The reconciler: a scheduled pass (an EventBridge schedule on AWS, a timer in the local
//! worker) that finds work past its deadline and re-drives or fails it.
//!
//! - A sync job still `queued` or `running` that has not changed for
//!   [`ReconcileConfig::sync_deadline_ms`] is stuck: its message was lost, or its agent never
//!   reported. If the install's agent has not been seen for
//!   [`ReconcileConfig::agent_gone_after_ms`], the job fails with `agent_gone`, naming the
//!   install and when it was last seen. Otherwise it is re-driven: re-queued as a new attempt
//!   (one conditional write on the version that was read, so only one reconciler run wins)
//!   and its job message sent again with a fresh grant, until the job's attempts reach
//!   [`crate::Config::max_sync_attempts`], when it fails with `no_report`.
//! - A running release whose step has been syncing for [`ReconcileConfig::release_deadline_ms`]
//!   is re-tallied from the store: every target still `syncing` whose sync is terminal gets its
//!   outcome recorded (a lost `release.synced`), a sync that was never created has its step's
//!   fan-out sent again (a lost `sync.requested`), and the step ends if it is done. A release
//!   waiting past its due time by the deadline gets its step timer again (a lost timer).
//!
//! Every action is a conditional write or an idempotent re-send, and a job that was re-driven
//! or failed changed its `updated_at`, so running the pass again (or two at once) does each
//! thing once. One pass looks at most [`ReconcileConfig::max_syncs`] syncs and
//! [`ReconcileConfig::max_releases`] releases; the next pass picks up the rest. This module
//! must never read a clock (the ports' clock is the time) and never fail a job whose agent is
//! heard from without first re-driving it.

use serde::{Deserialize, Serialize};

use crate::domain::{Install, SyncJob};
use crate::handlers::{apply, dispatch_sync, revoke_quietly, Decision, HandlerError, Ports};
use crate::id::{ReleaseId, SyncId};
use crate::ports::{Backend, Clock, GrantId, JobStore, PageRequest, MAX_PAGE};
use crate::release::{ReleaseStatus, ReleaseStore, StepPhase, TargetState};
use crate::rollout::{end_step_if_done, record_outcome, send_event, send_timer, step_event};
use crate::state::{JobError, JobStatus};
use crate::telemetry::ago;

/// The reconciler's deadlines and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileConfig {
    /// A queued or running sync unchanged this long is stuck (default 30 min: twice a grant's
    /// 15 minute life, so an agent still copying under its grant is never disturbed).
    pub sync_deadline_ms: u64,
    /// An agent not seen this long is gone for good: its stuck jobs fail (default 24 h).
    pub agent_gone_after_ms: u64,
    /// A running release whose step has been syncing (or overdue) this long is re-tallied
    /// (default 15 min).
    pub release_deadline_ms: u64,
    /// At most this many stuck syncs handled per pass.
    pub max_syncs: u32,
    /// At most this many running releases checked per pass.
    pub max_releases: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            sync_deadline_ms: 30 * 60_000,
            agent_gone_after_ms: 24 * 60 * 60_000,
            release_deadline_ms: 15 * 60_000,
            max_syncs: 200,
            max_releases: 20,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Stuck syncs sent again as a new attempt.
    pub redriven: Vec<SyncId>,
    /// Stuck syncs failed (agent gone, or no report after every attempt).
    pub failed: Vec<SyncId>,
    /// Releases whose step was re-tallied, re-sent or re-timed.
    pub releases: Vec<ReleaseId>,
    /// True when the pass stopped at its bound with more stuck syncs or releases left.
    pub more: bool,
}

/// One pass of the reconciler over the ports' store (see the module doc).
pub async fn reconcile<P: Backend>(
    ports: &Ports<P>,
    config: &ReconcileConfig,
) -> Result<ReconcileReport, HandlerError> {
    let mut report = ReconcileReport::default();
    reconcile_syncs(ports, config, &mut report).await?;
    reconcile_releases(ports, config, &mut report).await?;
    if !report.redriven.is_empty() || !report.failed.is_empty() || !report.releases.is_empty() {
        tracing::info!(
            redriven = report.redriven.len(),
            failed = report.failed.len(),
            releases = report.releases.len(),
            more = report.more,
            "reconciler pass"
        );
    }
    Ok(report)
}

async fn reconcile_syncs<P: Backend>(
    ports: &Ports<P>,
    config: &ReconcileConfig,
    report: &mut ReconcileReport,
) -> Result<(), HandlerError> {
    let before = ports.clock.now_ms().saturating_sub(config.sync_deadline_ms);
    let budget = config.max_syncs as usize;
    let mut seen = 0usize;
    let mut page = PageRequest::first(MAX_PAGE.min(config.max_syncs.max(1)));
    loop {
        let got = ports.store.stale_syncs(before, &page).await?;
        for job in got.items {
            if seen >= budget {
                report.more = true;
                return Ok(());
            }
            seen += 1;
            match reconcile_sync(ports, config, job).await? {
                Some((id, true)) => report.redriven.push(id),
                Some((id, false)) => report.failed.push(id),
                None => {}
            }
        }
        match got.next {
            Some(c) if seen < budget => page = PageRequest::after(MAX_PAGE, c),
            Some(_) => {
                report.more = true;
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// Re-drives (`Some((id, true))`) or fails (`Some((id, false))`) one stuck sync; `None` when
/// another writer changed it since it was read.
async fn reconcile_sync<P: Backend>(
    ports: &Ports<P>,
    config: &ReconcileConfig,
    job: SyncJob,
) -> Result<Option<(SyncId, bool)>, HandlerError> {
    let now = ports.clock.now_ms();
    let read_version = job.state.version;
    let Some(install) = ports.store.get_install(&job.install_id).await? else {
        let reason = format!(
            "install {} is no longer registered, so sync {} can never finish; register the \
             install again and request the sync again",
            job.install_id, job.id
        );
        return fail(ports, job, read_version, "unknown_install", &reason).await;
    };
    let seen = ports
        .store
        .get_telemetry(&install.id)
        .await?
        .map(|t| t.last_seen);
    if let Some(last_seen) = seen {
        if now.saturating_sub(last_seen) > config.agent_gone_after_ms {
            let reason = format!(
                "the agent of install {} was last seen at {last_seen} (unix ms, {}), longer than \
                 the reconciler's limit of {} min, so sync {} was failed; start the install's \
                 agent (or remove the install), then release or request the sync again",
                install.id,
                ago(last_seen, now),
                config.agent_gone_after_ms / 60_000,
                job.id
            );
            return fail(ports, job, read_version, "agent_gone", &reason).await;
        }
    }
    if job.state.attempts >= ports.config.max_sync_attempts {
        let heard = match seen {
            Some(t) => format!("last seen {}", ago(t, now)),
            None => "never sent a heartbeat".to_string(),
        };
        let reason = format!(
            "install {}'s agent ({heard}) did not report sync {} after {} attempts; check the \
             agent's logs and its queue, then request the sync again",
            install.id, job.id, job.state.attempts
        );
        return fail(ports, job, read_version, "no_report", &reason).await;
    }
    redrive(ports, &install, job, read_version).await
}

async fn fail<P: Backend>(
    ports: &Ports<P>,
    job: SyncJob,
    read_version: u64,
    code: &str,
    reason: &str,
) -> Result<Option<(SyncId, bool)>, HandlerError> {
    let id = job.id.clone();
    let attempt = job.state.attempts;
    let now = ports.clock.now_ms();
    // Conditional on the version that was read: a job that moved meanwhile is not stuck.
    let stored = apply(&ports.store, &ports.config, job, |j| {
        Ok(
            if j.state.version != read_version || j.status().is_terminal() {
                Decision::Keep
            } else {
                Decision::Write(j.fail(now, JobError::new(code, reason.to_string()), None)?)
            },
        )
    })
    .await?;
    if stored.state.version == read_version || stored.status() != JobStatus::Failed {
        return Ok(None);
    }
    revoke_quietly(&ports.minter, &GrantId::new(id.clone(), attempt)).await;
    crate::rollout::sync_finished(ports, &stored).await?;
    tracing::warn!(sync_id = %id, code, %reason, "reconciler failed a stuck sync");
    Ok(Some((id, false)))
}

/// Re-queues the job as a new attempt, conditional on the version that was read (so one run
/// wins), then mints a fresh grant and sends its job message again.
async fn redrive<P: Backend>(
    ports: &Ports<P>,
    install: &Install,
    job: SyncJob,
    read_version: u64,
) -> Result<Option<(SyncId, bool)>, HandlerError> {
    let now = ports.clock.now_ms();
    let old_attempt = job.state.attempts;
    let requeued = apply(&ports.store, &ports.config, job, |j| {
        Ok(
            if j.state.version != read_version || j.status().is_terminal() {
                Decision::Keep
            } else {
                Decision::Write(j.requeue(now)?)
            },
        )
    })
    .await?;
    if requeued.state.version == read_version || requeued.status() != JobStatus::Queued {
        return Ok(None);
    }
    // The lost attempt's grant is of no further use.
    revoke_quietly(
        &ports.minter,
        &GrantId::new(requeued.id.clone(), old_attempt),
    )
    .await;
    let id = requeued.id.clone();
    dispatch_sync(ports, install, requeued).await?;
    tracing::info!(sync_id = %id, attempt = old_attempt + 1, "reconciler re-drove a stuck sync");
    Ok(Some((id, true)))
}

async fn reconcile_releases<P: Backend>(
    ports: &Ports<P>,
    config: &ReconcileConfig,
    report: &mut ReconcileReport,
) -> Result<(), HandlerError> {
    let now = ports.clock.now_ms();
    let budget = config.max_releases as usize;
    let mut seen = 0usize;
    let mut page = PageRequest::first(MAX_PAGE.min(config.max_releases.max(1)));
    loop {
        let got = ports.store.running_releases(&page).await?;
        for release in got.items {
            if release.status != ReleaseStatus::Running {
                continue;
            }
            let overdue = match release.phase {
                StepPhase::Waiting { due_at } => {
                    now.saturating_sub(due_at) > config.release_deadline_ms
                }
                StepPhase::Syncing => {
                    now.saturating_sub(release.updated_at) > config.release_deadline_ms
                }
                StepPhase::Done => false,
            };
            if !overdue {
                continue;
            }
            if seen >= budget {
                report.more = true;
                return Ok(());
            }
            seen += 1;
            let id = release.id.clone();
            match release.phase {
                StepPhase::Waiting { .. } => {
                    // A lost timer: a duplicate is a no-op (stale timers change nothing).
                    send_timer(ports, &release).await?;
                }
                _ => retally(ports, release).await?,
            }
            report.releases.push(id);
        }
        match got.next {
            Some(c) => page = PageRequest::after(MAX_PAGE, c),
            None => return Ok(()),
        }
    }
}

/// Records the outcome of every terminal sync still `syncing` on a target of the current
/// step, re-sends the step's fan-out if a sync was never created, then ends the step if done.
async fn retally<P: Backend>(
    ports: &Ports<P>,
    release: crate::release::Release,
) -> Result<(), HandlerError> {
    let mut missing = false;
    let mut page = PageRequest::first(MAX_PAGE);
    loop {
        let got = ports
            .store
            .targets_by_step(&release.id, release.step, &page)
            .await?;
        for target in got.items {
            if target.round != release.round {
                // Not started in this round: the step's fan-out did not reach it.
                missing |= target.state(release.round) == TargetState::Pending;
                continue;
            }
            for s in &target.syncs {
                match (s.state, &s.sync_id) {
                    (TargetState::Syncing, Some(sync_id)) => {
                        match ports.store.get_sync(sync_id).await? {
                            Some(job) if job.status().is_terminal() => {
                                record_outcome(ports, &release, &job).await?;
                            }
                            Some(_) => {}
                            None => missing = true,
                        }
                    }
                    (TargetState::Pending, _) => missing = true,
                    _ => {}
                }
            }
        }
        match got.next {
            Some(c) => page = PageRequest::after(MAX_PAGE, c),
            None => break,
        }
    }
    if missing {
        // The step's page events re-request its syncs under their derived ids: a sync that
        // exists is a replay, a lost one is created now.
        send_event(ports, &step_event(&release, 0, None)?, 0).await?;
    }
    end_step_if_done(ports, release, true).await?;
    Ok(())
}
