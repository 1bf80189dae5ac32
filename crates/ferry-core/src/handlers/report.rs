//! sync.reported: authenticate the agent's report against its install's report key, then
//! record the outcome and lineage and revoke the attempt's grant. Must never trust a field of the
//! report before it is authenticated, nor take an idempotency key from the sender.

use sha2::{Digest as _, Sha256};

use tracing::Instrument as _;

use crate::domain::{Install, LineageRecord, SyncJob, SyncStats};
use crate::event::{SyncReportStatus, SyncReported};
use crate::ports::{Backend, Clock, GrantId, GrantMinter, JobStore};
use crate::release_port::Desk;
use crate::state::{JobError, JobStatus};
use crate::trust::verify_report;

use super::{
    apply, dispatch_sync, finished_conflict, idempotent, security_event, Claim, Config, Decision,
    HandlerError, Outcome, Ports, SecurityEvent,
};

/// Authenticates the agent's report, then records its outcome and the lineage and revokes the
/// attempt's grant. On `grant_expired`, re-mints and re-enqueues (attempts + 1) so the sync
/// does not fail for a slow agent.
///
/// Nothing in the report is trusted before [`authenticate_report`] has checked it against the
/// report key of the install that owns the job; the idempotency key is then derived from the
/// authenticated (sync, attempt, status), so no sender can claim another's key in advance.
pub async fn handle_sync_reported<P: Backend>(
    ports: &Ports<P>,
    ev: &SyncReported,
) -> Result<Outcome, HandlerError> {
    async {
        let (job, install) = match authenticate_report(&ports.store, ev).await? {
            Ok(found) => found,
            Err((event, reason)) => {
                security_event(&ports.store, ports.clock.now_ms(), event, &reason).await?;
                return Ok(Outcome::ReportRefused {
                    sync_id: ev.sync_id.clone(),
                    event,
                    reason,
                });
            }
        };
        let key = report_idempotency_key(ev);
        let payload = report_payload_hash(ev);
        idempotent(ports, Claim { key: &key, payload: &payload }, || sync_reported(ports, job, install, ev),
        )
        .await
    }
    .instrument(
        tracing::info_span!("sync.reported", sync_id = %ev.sync_id, install_id = %ev.install_id, attempt = ev.attempt),
    )
    .await
}

/// The job and its install when `ev` is the job's install agent's own signed report;
/// otherwise the security event and the reason. Reads only.
async fn authenticate_report<S: JobStore>(
    store: &S,
    ev: &SyncReported,
) -> Result<Result<(SyncJob, Install), (SecurityEvent, String)>, HandlerError> {
    let Some(job) = store.get_sync(&ev.sync_id).await? else {
        // Reads are strongly consistent and a job exists before its message is sent, so an
        // unknown id is not a race to wait out: it is refused, not retried.
        return Ok(Err((
            SecurityEvent::ReportUnknownSync,
            format!(
                "sync.reported for sync {} (claiming install {}): no such sync job",
                ev.sync_id, ev.install_id
            ),
        )));
    };
    let unauthenticated = |why: String| Ok(Err((SecurityEvent::ReportUnauthenticated, why)));
    if job.install_id != ev.install_id {
        return unauthenticated(format!(
            "sync.reported for sync {} claims install {}, but the job belongs to install {}",
            ev.sync_id, ev.install_id, job.install_id
        ));
    }
    let Some(install) = store.get_install(&job.install_id).await? else {
        return unauthenticated(format!(
            "sync.reported for sync {}: install {} is no longer registered, so no key can \
             authenticate it",
            ev.sync_id, job.install_id
        ));
    };
    if install.agent_report_key.is_empty() {
        return unauthenticated(format!(
            "install {} has no agent report key; register it again with its agent's report key \
             (`ferry-agent keygen` prints it)",
            install.id
        ));
    }
    if let Err(e) = verify_report(&install.agent_report_key, ev) {
        return unauthenticated(format!("sync.reported for sync {}: {e}", ev.sync_id));
    }
    Ok(Ok((job, install)))
}

fn status_name(s: SyncReportStatus) -> &'static str {
    match s {
        SyncReportStatus::Succeeded => "succeeded",
        SyncReportStatus::Failed => "failed",
        SyncReportStatus::GrantExpired => "grant_expired",
        SyncReportStatus::PolicyFailed => "policy_failed",
    }
}

/// One key per (sync, attempt, status) of an authenticated report: a redelivered job reported
/// again is a replay.
fn report_idempotency_key(ev: &SyncReported) -> String {
    format!(
        "sync.reported#{}#{}#{}",
        ev.sync_id,
        ev.attempt,
        status_name(ev.status)
    )
}

/// What must not differ between two reports under one key: the counters may (a redelivered job
/// finds its blobs already copied), the install and digest may not.
fn report_payload_hash(ev: &SyncReported) -> String {
    let mut h = Sha256::new();
    for part in [
        ev.install_id.as_str(),
        ev.sync_id.as_str(),
        &ev.attempt.to_string(),
        status_name(ev.status),
        ev.digest.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

pub(crate) async fn revoke_quietly<G: GrantMinter>(minter: &G, grant: &GrantId) {
    // Grants expire within 15 minutes anyway; a failed revoke must not fail the report.
    if let Err(e) = minter.revoke(grant).await {
        tracing::warn!(grant = %grant, error = %e, "could not revoke grant; it will expire");
    }
}

async fn sync_reported<P: Backend>(
    ports: &Ports<P>,
    job: SyncJob,
    install: Install,
    ev: &SyncReported,
) -> Result<Outcome, HandlerError> {
    if job.digest != ev.digest {
        return Err(HandlerError::Mismatch {
            message: format!(
                "sync.reported for sync {} names digest {}, but the job copies {}; \
                 the agent must report the digest from its job message",
                ev.sync_id, ev.digest, job.digest
            ),
        });
    }
    let stats = SyncStats {
        bytes_copied: ev.bytes_copied,
        bytes_skipped: ev.bytes_skipped,
        duration_ms: ev.duration_ms,
    };
    let grant = GrantId::new(job.id.clone(), ev.attempt);
    match ev.status {
        // A success from any attempt is true: the install holds the digest.
        SyncReportStatus::Succeeded => report_succeeded(ports, job, &grant, stats).await,
        SyncReportStatus::Failed | SyncReportStatus::PolicyFailed => {
            if ev.attempt != job.state.attempts
                || ports
                    .minter
                    .is_revoked(&grant)
                    .await
                    .map_err(HandlerError::Grant)?
            {
                return Ok(stale(&job, ev.attempt));
            }
            let message = ev.error.clone().unwrap_or_else(|| {
                "the agent reported a failure without detail; see the agent's logs".to_string()
            });
            let code = match ev.status {
                SyncReportStatus::PolicyFailed => "policy_failed",
                _ => "sync_failed",
            };
            report_failed(ports, job, &grant, stats, code, message).await
        }
        SyncReportStatus::GrantExpired => {
            report_grant_expired(ports, job, &install, ev.attempt).await
        }
    }
}

fn stale(job: &SyncJob, reported_attempt: u32) -> Outcome {
    Outcome::StaleReport {
        sync_id: job.id.clone(),
        reported_attempt,
    }
}

/// Succeeded (from any attempt), lineage put-if-absent, then the attempt's grant revoked.
async fn report_succeeded<P: Backend>(
    ports: &Ports<P>,
    job: SyncJob,
    grant: &GrantId,
    stats: SyncStats,
) -> Result<Outcome, HandlerError> {
    let stored = record_success(ports, &ports.config, job, stats, ports.clock.now_ms()).await?;
    revoke_quietly(&ports.minter, grant).await;
    tracing::info!(bytes_copied = stats.bytes_copied, "sync succeeded");
    Ok(Outcome::SyncRecorded {
        sync_id: stored.id,
        status: JobStatus::Succeeded,
    })
}

/// The one rule for "the install's agent proved it holds the sync's digest", whether it said
/// so online (`sync.reported`) or in a bundle receipt (`crate::bundle::record_receipt`): the
/// job becomes Succeeded (from any non-terminal state; an already succeeded one is kept, another
/// terminal one is a conflict), the lineage is recorded put-if-absent, and the sync's release,
/// if any, is told (`release.synced`), so its step tallies and advances. Returns the job as
/// stored.
pub(crate) async fn record_success<D: Desk>(
    desk: &D,
    config: &Config,
    job: SyncJob,
    stats: SyncStats,
    now: u64,
) -> Result<SyncJob, HandlerError> {
    let store = desk.store();
    let stored = apply(store, config, job, |j| match j.status() {
        JobStatus::Succeeded => Ok(Decision::Keep),
        s if s.is_terminal() => Err(finished_conflict(j, s, "succeeded")),
        _ => Ok(Decision::Write(j.succeed(now, stats)?)),
    })
    .await?;
    let since = stored.state.finished_at.unwrap_or(now);
    store
        .record_lineage(&LineageRecord {
            digest: stored.digest.clone(),
            install_id: stored.install_id.clone(),
            repository: stored.repository.clone(),
            build_id: stored.build_id.clone(),
            sync_id: stored.id.clone(),
            since,
        })
        .await?;
    crate::rollout::sync_finished(desk, &stored).await?;
    Ok(stored)
}

/// Failed (current, unrevoked attempt only), then the attempt's grant revoked.
async fn report_failed<P: Backend>(
    ports: &Ports<P>,
    job: SyncJob,
    grant: &GrantId,
    stats: SyncStats,
    code: &str,
    message: String,
) -> Result<Outcome, HandlerError> {
    let now = ports.clock.now_ms();
    let stored = apply(&ports.store, &ports.config, job, |j| match j.status() {
        JobStatus::Failed => Ok(Decision::Keep),
        s if s.is_terminal() => Err(finished_conflict(j, s, "failed")),
        _ => Ok(Decision::Write(j.fail(
            now,
            JobError::new(code, message.clone()),
            Some(stats),
        )?)),
    })
    .await?;
    revoke_quietly(&ports.minter, grant).await;
    crate::rollout::sync_finished(ports, &stored).await?;
    tracing::warn!(error = %message, "sync failed");
    Ok(Outcome::SyncRecorded {
        sync_id: stored.id,
        status: JobStatus::Failed,
    })
}

/// Fails a non-terminal job with `code`; a terminal one is kept as it is.
pub(super) async fn fail_unless_finished<S: JobStore>(
    store: &S,
    config: &Config,
    now: u64,
    job: SyncJob,
    code: &str,
    reason: &str,
) -> Result<SyncJob, HandlerError> {
    apply(store, config, job, |j| {
        Ok(if j.status().is_terminal() {
            Decision::Keep
        } else {
            Decision::Write(j.fail(now, JobError::new(code, reason.to_string()), None)?)
        })
    })
    .await
}

/// The attempt's grant is revoked (only that attempt's: the next one gets a fresh grant), then
/// the job is re-queued with attempts + 1 and dispatched again, or failed after
/// `max_sync_attempts`.
async fn report_grant_expired<P: Backend>(
    ports: &Ports<P>,
    job: SyncJob,
    install: &Install,
    reported_attempt: u32,
) -> Result<Outcome, HandlerError> {
    let (store, config, now) = (&ports.store, &ports.config, ports.clock.now_ms());
    revoke_quietly(
        &ports.minter,
        &GrantId::new(job.id.clone(), reported_attempt),
    )
    .await;
    if job.status().is_terminal() {
        return Ok(stale(&job, reported_attempt));
    }
    // A Queued job one attempt ahead is our own requeue, cut short by a crash: resume.
    let resuming = job.status() == JobStatus::Queued
        && reported_attempt.checked_add(1) == Some(job.state.attempts);
    if !resuming && reported_attempt != job.state.attempts {
        return Ok(stale(&job, reported_attempt));
    }
    if !resuming && job.state.attempts >= config.max_sync_attempts {
        let reason = format!(
            "the grant expired on all {} attempts; check that the install agent is running \
             and polling its queue, then request the sync again",
            job.state.attempts
        );
        let stored =
            fail_unless_finished(store, config, now, job, "grant_expired", &reason).await?;
        crate::rollout::sync_finished(ports, &stored).await?;
        return Ok(Outcome::SyncRecorded {
            status: stored.status(),
            sync_id: stored.id,
        });
    }
    let target = reported_attempt.saturating_add(1);
    let requeued = apply(store, config, job, |j| {
        if j.status().is_terminal() || j.state.attempts >= target {
            Ok(Decision::Keep)
        } else {
            Ok(Decision::Write(j.requeue(now)?))
        }
    })
    .await?;
    if requeued.status() != JobStatus::Queued || requeued.state.attempts != target {
        // Someone else finished or dispatched it meanwhile.
        return Ok(stale(&requeued, reported_attempt));
    }
    tracing::info!(
        attempt = target,
        "grant expired; re-minting and re-enqueueing"
    );
    dispatch_sync(ports, install, requeued).await
}
