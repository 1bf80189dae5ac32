//! sync.requested: create the sync job, mint a sealed grant and enqueue the job on the
//! install's queue. Must never hold or log a clear grant: it only forwards sealed ones.

use tracing::Instrument as _;

use crate::domain::{Install, SealedGrant, SyncJob};
use crate::event::{SyncJobMessage, SyncRequested};
use crate::ports::{Backend, Clock, GrantError, GrantId, GrantMinter, JobStore, Queue, WriteError};
use crate::state::{JobError, JobStatus};

use super::{apply, idempotent, Claim, Decision, HandlerError, Outcome, Ports};

use super::report::fail_unless_finished;

/// Creates the sync job, mints a sealed grant and enqueues the job on the install's queue.
pub async fn handle_sync_requested<P: Backend>(
    ports: &Ports<P>,
    claim: Claim<'_>,
    ev: &SyncRequested,
) -> Result<Outcome, HandlerError> {
    idempotent(ports, claim, || sync_requested(ports, ev),
    )
    .instrument(
        tracing::info_span!("sync.requested", sync_id = %ev.sync_id, install_id = %ev.install_id),
    )
    .await
}

async fn sync_requested<P: Backend>(
    ports: &Ports<P>,
    ev: &SyncRequested,
) -> Result<Outcome, HandlerError> {
    let store = &ports.store;
    let now = ports.clock.now_ms();
    let fresh = SyncJob::new(
        ev.sync_id.clone(),
        ev.build_id.clone(),
        ev.install_id.clone(),
        ev.repository.clone(),
        ev.digest.clone(),
        now,
    )
    .for_release(ev.release_id.clone());
    let Some(install) = store.get_install(&ev.install_id).await? else {
        let reason = format!(
            "install {} is not registered; register it, or fix \"install_id\" in the request",
            ev.install_id
        );
        tracing::warn!(%reason, "sync rejected");
        let failed = fresh.fail(now, JobError::new("unknown_install", reason.clone()), None)?;
        let stored = create_or_existing_sync(store, &failed).await?;
        crate::rollout::sync_finished(ports, &stored).await?;
        return Ok(Outcome::SyncRejected {
            sync_id: ev.sync_id.clone(),
            reason,
        });
    };
    let job = create_or_existing_sync(store, &fresh).await?;
    if job.status() != JobStatus::Queued {
        return Ok(Outcome::SyncDispatched {
            sync_id: job.id,
            attempt: job.state.attempts,
        });
    }
    dispatch_sync(ports, &install, job).await
}

async fn create_or_existing_sync<S: JobStore>(
    store: &S,
    sync: &SyncJob,
) -> Result<SyncJob, HandlerError> {
    match store.create_sync(sync).await {
        Ok(()) => Ok(sync.clone()),
        Err(WriteError::Conflict(c)) => match c.current {
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
        },
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

/// Queued job → mint a sealed grant → enqueue the job message → Running.
pub(crate) async fn dispatch_sync<P: Backend>(
    ports: &Ports<P>,
    install: &Install,
    job: SyncJob,
) -> Result<Outcome, HandlerError> {
    let now = ports.clock.now_ms();
    let attempt = job.state.attempts;
    let grant_id = GrantId::new(job.id.clone(), attempt);
    let grant: SealedGrant = match ports
        .minter
        .mint(install, &job.repository, &job.digest, &grant_id)
        .await
    {
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
    let policy = sync_policy(&ports.store, &job).await?;
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
    apply(&ports.store, &ports.config, job.clone(), |j| {
        Ok(
            if j.status() == JobStatus::Queued && j.state.attempts == attempt {
                Decision::Write(j.dispatch(now, expires_at)?)
            } else {
                Decision::Keep
            },
        )
    })
    .await?;
    tracing::info!(attempt, queue = %install.queue, "sync job enqueued");
    Ok(Outcome::SyncDispatched {
        sync_id: job.id,
        attempt,
    })
}

/// The verification policy of the component the job's build is of, for the agent to enforce.
/// Read at dispatch, so the policy the vendor holds now is the one the install applies.
async fn sync_policy<S: JobStore>(
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
