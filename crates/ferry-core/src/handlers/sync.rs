//! sync.requested: create the sync job, mint a sealed grant and enqueue the job on the
//! install's queue. Must never hold or log a clear grant: it only forwards sealed ones.
//!
//! The job is its own idempotency claim (issue 12: one conditional write instead of an
//! idempotency record, the job and the record's completion): the create that makes the job
//! exist holds it (`SyncJob::dispatch_until`, the invocation's lock) until the dispatch writes
//! it Running. A delivery of the same event that finds the job Running or finished is a
//! replay; one that finds it Queued and held waits (`InProgress`, retried); one that finds
//! the holder's lock run out takes the job over with a conditional write (one wins). A job
//! re-queued by a report or the reconciler has no holder, and its own handler dispatches it.
//! When the event carries a dispatch context that verifies under the vendor key
//! (`crate::fanout`), the install and the verification policy are taken from it instead of
//! being read.

use tracing::Instrument as _;

use crate::domain::{Install, SealedGrant, SyncJob, VerifyPolicy};
use crate::event::{SyncJobMessage, SyncRequested};
use crate::ports::{
    Backend, Clock, GrantError, GrantId, GrantMinter, JobStore, Queue, StoreError, WriteError,
};
use crate::state::{JobError, JobStatus};

use super::{apply, Claim, Decision, HandlerError, Outcome, Ports};

use super::report::fail_unless_finished;

/// Creates the sync job, mints a sealed grant and enqueues the job on the install's queue.
pub async fn handle_sync_requested<P: Backend>(
    ports: &Ports<P>,
    claim: Claim<'_>,
    ev: &SyncRequested,
) -> Result<Outcome, HandlerError> {
    sync_requested(ports, claim.key, ev)
        .instrument(
            tracing::info_span!("sync.requested", sync_id = %ev.sync_id, install_id = %ev.install_id),
        )
        .await
}

async fn sync_requested<P: Backend>(
    ports: &Ports<P>,
    key: &str,
    ev: &SyncRequested,
) -> Result<Outcome, HandlerError> {
    let store = &ports.store;
    let now = ports.clock.now_ms();
    let lock =
        crate::timing::lock_until(now, ports.config.deadline_ms, ports.config.in_progress_ms);
    let fresh = SyncJob::new(
        ev.sync_id.clone(),
        ev.build_id.clone(),
        ev.install_id.clone(),
        ev.repository.clone(),
        ev.digest.clone(),
        now,
    )
    .for_release(ev.release_id.clone());
    let (install, policy) = match crate::fanout::open_context(&ports.vendor_key, ev) {
        Some((install, policy)) => (install.clone(), Some(policy.cloned())),
        None => match store.get_install(&ev.install_id).await? {
            Some(install) => (install, None),
            None => return unknown_install(ports, ev, fresh, now).await,
        },
    };
    let fresh = fresh.claimed_until(Some(lock));
    let (job, first) = match store.create_sync(&fresh).await {
        Ok(()) => (fresh, true),
        Err(WriteError::Conflict(c)) => {
            let existing = same_sync(c.current, &fresh)?;
            match take_over(ports, key, existing, now, lock).await? {
                Found::Taken(job) => (job, false),
                Found::Done(done) => {
                    tracing::info!(idempotency_key = key, "replayed event; nothing to do");
                    return Ok(Outcome::Replayed {
                        first: Some(Box::new(Outcome::SyncDispatched {
                            sync_id: done.id,
                            attempt: done.state.attempts,
                        })),
                    });
                }
            }
        }
        Err(WriteError::Store(e)) => return Err(e.into()),
    };
    match dispatch(ports, &install, job.clone(), policy, first).await {
        Ok(outcome) => Ok(outcome),
        Err(err) => {
            hand_back(ports, &job).await;
            Err(err)
        }
    }
}

/// The request names an install that is not registered: the job is recorded as failed.
async fn unknown_install<P: Backend>(
    ports: &Ports<P>,
    ev: &SyncRequested,
    fresh: SyncJob,
    now: u64,
) -> Result<Outcome, HandlerError> {
    let reason = format!(
        "install {} is not registered; register it, or fix \"install_id\" in the request",
        ev.install_id
    );
    tracing::warn!(%reason, "sync rejected");
    let failed = fresh.fail(now, JobError::new("unknown_install", reason.clone()), None)?;
    let stored = create_or_existing_sync(&ports.store, &failed).await?;
    crate::rollout::sync_finished(ports, &stored).await?;
    Ok(Outcome::SyncRejected {
        sync_id: ev.sync_id.clone(),
        reason,
    })
}

/// The existing job a create conflicted with, when it is the same sync.
fn same_sync(current: Option<SyncJob>, sync: &SyncJob) -> Result<SyncJob, HandlerError> {
    match current {
        Some(existing)
            if existing.build_id == sync.build_id
                && existing.install_id == sync.install_id
                && existing.digest == sync.digest =>
        {
            Ok(existing)
        }
        Some(existing) => Err(HandlerError::Mismatch {
            message: format!(
                "sync id {} is already used for build {} into install {}; sync ids come from \
                 (build, install), so this request is inconsistent",
                sync.id, existing.build_id, existing.install_id
            ),
        }),
        None => Err(HandlerError::Vanished {
            what: "sync job",
            id: sync.id.to_string(),
        }),
    }
}

/// What a delivery that found its job already there does with it.
enum Found {
    /// It took the job over (the holder's lock ran out): it dispatches.
    Taken(SyncJob),
    /// Nothing to do: dispatched, finished, or re-queued by a handler that dispatches it.
    Done(SyncJob),
}

/// A delivery that found the job already there: [`Found`], or `InProgress` while another
/// delivery holds it.
async fn take_over<P: Backend>(
    ports: &Ports<P>,
    key: &str,
    existing: SyncJob,
    now: u64,
    lock: u64,
) -> Result<Found, HandlerError> {
    let until = match (existing.status(), existing.dispatch_until) {
        (JobStatus::Queued, Some(until)) => until,
        _ => return Ok(Found::Done(existing)),
    };
    if until > now {
        return Err(HandlerError::InProgress {
            key: key.to_string(),
            until,
        });
    }
    let next = existing.reclaim(now, lock)?;
    match ports
        .store
        .update_sync(&next, existing.state.expected())
        .await
    {
        Ok(()) => Ok(Found::Taken(next)),
        // Another delivery took it over first.
        Err(WriteError::Conflict(_)) => Err(HandlerError::InProgress {
            key: key.to_string(),
            until: lock,
        }),
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

/// After a failed dispatch, lets the next delivery take the job over at once (as releasing
/// an idempotency record did); if this write fails, the lock simply runs out.
async fn hand_back<P: Backend>(ports: &Ports<P>, job: &SyncJob) {
    let now = ports.clock.now_ms();
    let held = job.dispatch_until;
    let res = apply(&ports.store, &ports.config, job.clone(), |j| {
        Ok(
            if j.status() == JobStatus::Queued && j.dispatch_until == held {
                Decision::Write(j.reclaim(now, now)?)
            } else {
                Decision::Keep
            },
        )
    })
    .await;
    if let Err(e) = res {
        tracing::warn!(sync_id = %job.id, error = %e, "could not hand the sync job back; its lock runs out instead");
    }
}

async fn create_or_existing_sync<S: JobStore>(
    store: &S,
    sync: &SyncJob,
) -> Result<SyncJob, HandlerError> {
    match store.create_sync(sync).await {
        Ok(()) => Ok(sync.clone()),
        Err(WriteError::Conflict(c)) => same_sync(c.current, sync),
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

/// Tries of the write to Running once the job message is sent (see [`dispatch`]).
const WRITES_AFTER_SEND: u32 = 4;

/// Queued job → mint a sealed grant → enqueue the job message → Running.
pub(crate) async fn dispatch_sync<P: Backend>(
    ports: &Ports<P>,
    install: &Install,
    job: SyncJob,
) -> Result<Outcome, HandlerError> {
    dispatch(ports, install, job, None, false).await
}

/// [`dispatch_sync`] with the verification policy when the caller has it (`Some`, from a
/// verified dispatch context; `None`: read it), and `first` when the caller has just created
/// the job (the minter may then skip its revocation lookup).
async fn dispatch<P: Backend>(
    ports: &Ports<P>,
    install: &Install,
    job: SyncJob,
    policy: Option<Option<VerifyPolicy>>,
    first: bool,
) -> Result<Outcome, HandlerError> {
    let now = ports.clock.now_ms();
    let attempt = job.state.attempts;
    let grant_id = GrantId::new(job.id.clone(), attempt);
    let grant: SealedGrant = match mint(ports, install, &job, &grant_id, first).await {
        Ok(g) => g,
        Err(GrantError::Refused { message }) => {
            let reason = format!(
                "no grant could be minted for install {}: {message}",
                install.id
            );
            let stored = fail_unless_finished(
                &ports.store,
                &ports.config,
                now,
                job.clone(),
                "grant_refused",
                &reason,
            )
            .await?;
            crate::rollout::sync_finished(ports, &stored).await?;
            return Ok(Outcome::SyncRejected {
                sync_id: job.id,
                reason,
            });
        }
        Err(e) => return Err(HandlerError::Grant(e)),
    };
    let expires_at = grant.expires_at;
    let policy = match policy {
        Some(known) => known,
        None => sync_policy(&ports.store, &job).await?,
    };
    let mut message = SyncJobMessage::new(
        job.id.clone(),
        job.build_id.clone(),
        job.install_id.clone(),
        job.repository.clone(),
        job.digest.clone(),
        attempt,
        grant,
    )
    .with_policy(policy);
    ports.vendor_key.sign_job(&mut message);
    let body = serde_json::to_string(&message).map_err(|e| HandlerError::Encode {
        message: e.to_string(),
    })?;
    ports.queue.send(&install.queue, &body).await?;
    written_running(ports, &job, now, expires_at).await?;
    tracing::info!(attempt, queue = %install.queue, "sync job enqueued");
    Ok(Outcome::SyncDispatched {
        sync_id: job.id,
        attempt,
    })
}

/// The job, whose message is sent, written Running. A failed write now would let a
/// redelivery take the job over and send it a second time, so while the store is only
/// unavailable (each try has had the SDK's own retries) and the invocation has time left, the
/// write is tried again, up to [`WRITES_AFTER_SEND`] times.
async fn written_running<P: Backend>(
    ports: &Ports<P>,
    job: &SyncJob,
    now: u64,
    expires_at: u64,
) -> Result<(), HandlerError> {
    let attempt = job.state.attempts;
    let mut tries = 0;
    loop {
        let written = apply(&ports.store, &ports.config, job.clone(), |j| {
            Ok(
                if j.status() == JobStatus::Queued && j.state.attempts == attempt {
                    Decision::Write(j.dispatch(now, expires_at)?)
                } else {
                    Decision::Keep
                },
            )
        })
        .await;
        match written {
            Ok(_) => return Ok(()),
            Err(HandlerError::Store(StoreError::Unavailable { message }))
                if tries + 1 < WRITES_AFTER_SEND
                    && ports
                        .config
                        .deadline_ms
                        .is_none_or(|d| ports.clock.now_ms() < d) =>
            {
                tries += 1;
                tracing::warn!(sync_id = %job.id, error = %message, "job sent but not yet written Running; trying the write again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Mints the job's grant; `first` when the job was just created, so the minter may skip its
/// revocation lookup (nothing can have revoked a grant id that never existed).
async fn mint<P: Backend>(
    ports: &Ports<P>,
    install: &Install,
    job: &SyncJob,
    grant_id: &GrantId,
    first: bool,
) -> Result<SealedGrant, GrantError> {
    if first {
        ports
            .minter
            .mint_first(install, &job.repository, &job.digest, grant_id)
            .await
    } else {
        ports
            .minter
            .mint(install, &job.repository, &job.digest, grant_id)
            .await
    }
}

/// The verification policy of the component the job's build is of, for the agent to enforce.
/// Read at dispatch, so the policy the vendor holds now is the one the install applies (a
/// release step reads it once per page and carries it in the dispatch context).
pub(crate) async fn sync_policy<S: JobStore>(
    store: &S,
    job: &SyncJob,
) -> Result<Option<crate::domain::VerifyPolicy>, HandlerError> {
    let Some(build) = store.get_build(&job.build_id).await? else {
        return Ok(None);
    };
    Ok(store
        .get_component(&build.app, &build.component)
        .await?
        .and_then(|c| c.verify))
}
