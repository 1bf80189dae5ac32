//! build.requested and build.completed: create and start a build, record its outcome, and fan
//! out one sync.requested per subscribed install. Must never read a clock or do I/O except
//! through the ports.

use tracing::Instrument as _;

use crate::domain::{Artifact, Build, OCI_MANIFEST_MEDIA_TYPE};
use crate::event::{BuildCompleted, BuildOutcome, BuildRequested, Event, Payload, SyncRequested};
use crate::id::{BuildId, EventId, InstallId};
use crate::ports::{
    Backend, BuildSpec, Builder, BuilderError, Clock, JobStore, PageRequest, WriteError, MAX_PAGE,
};
use crate::state::{JobError, JobStatus};
use crate::trust::VendorKey;

use super::{
    apply, finished_conflict, idempotent, publish_all, Claim, Decision, HandlerError, Outcome,
    Ports,
};

/// Validates the component, creates the build (Queued), starts the builder, marks it Running.
pub async fn handle_build_requested<P: Backend>(
    ports: &Ports<P>,
    claim: Claim<'_>,
    ev: &BuildRequested,
) -> Result<Outcome, HandlerError> {
    let key = claim.key;
    idempotent(ports, claim, || build_requested(ports, key, ev))
        .instrument(tracing::info_span!("build.requested", key))
        .await
}

async fn build_requested<P: Backend>(
    ports: &Ports<P>,
    key: &str,
    ev: &BuildRequested,
) -> Result<Outcome, HandlerError> {
    let store = &ports.store;
    let now = ports.clock.now_ms();
    let build_id = ev
        .build_id
        .clone()
        .unwrap_or_else(|| BuildId::derived_from(key));
    let fresh = Build::new(
        build_id.clone(),
        ev.app.clone(),
        ev.component.clone(),
        ev.source_ref.clone(),
        ev.requested_by.clone(),
        now,
    );

    let Some(component) = store.get_component(&ev.app, &ev.component).await? else {
        let reason = format!(
            "component {} of app {} is not registered; register it, or fix \"app\"/\"component\" in the request",
            ev.component, ev.app
        );
        tracing::warn!(%reason, "build rejected");
        let failed = fresh.fail(now, JobError::new("unknown_component", reason.clone()))?;
        create_or_existing_build(store, &failed).await?;
        return Ok(Outcome::BuildRejected { build_id, reason });
    };

    let build = create_or_existing_build(store, &fresh).await?;
    if build.status() != JobStatus::Queued {
        // Resumed or raced: the builder was already started (or the build already ended).
        return Ok(Outcome::BuildStarted {
            build_id,
            external_id: build.external_id,
        });
    }

    let spec = BuildSpec {
        build_id: build_id.clone(),
        component,
        source_ref: ev.source_ref.clone(),
    };
    match ports.builder.start(&spec).await {
        Ok(external_id) => {
            let stored = apply(store, &ports.config, build, |b| {
                Ok(match b.status() {
                    JobStatus::Queued => Decision::Write(b.start(now, external_id.clone())?),
                    // build.completed overtook us: nothing left to record.
                    _ => Decision::Keep,
                })
            })
            .await?;
            tracing::info!(external_id = %external_id, "build started");
            Ok(Outcome::BuildStarted {
                build_id,
                external_id: stored.external_id,
            })
        }
        Err(BuilderError::Rejected { message }) => {
            let reason = format!("the builder refused the build: {message}");
            apply(store, &ports.config, build, |b| {
                Ok(if b.status().is_terminal() {
                    Decision::Keep
                } else {
                    Decision::Write(b.fail(now, JobError::new("builder_rejected", reason.clone()))?)
                })
            })
            .await?;
            Ok(Outcome::BuildRejected { build_id, reason })
        }
        Err(e) => Err(HandlerError::Builder(e)),
    }
}

/// Creates `build` or returns the one already stored under its id, if it is the same request.
async fn create_or_existing_build<S: JobStore>(
    store: &S,
    build: &Build,
) -> Result<Build, HandlerError> {
    match store.create_build(build).await {
        Ok(()) => Ok(build.clone()),
        Err(WriteError::Conflict(c)) => match c.current {
            Some(existing)
                if existing.app == build.app
                    && existing.component == build.component
                    && existing.source_ref == build.source_ref =>
            {
                Ok(existing)
            }
            Some(existing) => Err(HandlerError::Mismatch {
                message: format!(
                    "build id {} is already used by a build of {}/{} at {:?}; pick another build_id",
                    build.id, existing.app, existing.component, existing.source_ref
                ),
            }),
            None => Err(HandlerError::Vanished {
                what: "build",
                id: build.id.to_string(),
            }),
        },
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// build.completed

/// Records the outcome on the build; on success fans out one sync.requested per subscribed
/// install, in batches of at most 10, with sync ids derived from (build, install).
pub async fn handle_build_completed<P: Backend>(
    ports: &Ports<P>,
    claim: Claim<'_>,
    ev: &BuildCompleted,
) -> Result<Outcome, HandlerError> {
    idempotent(ports, claim, || build_completed(ports, ev))
        .instrument(tracing::info_span!("build.completed", build_id = %ev.build_id))
        .await
}

fn outcome_name(o: BuildOutcome) -> &'static str {
    match o {
        BuildOutcome::Succeeded => "succeeded",
        BuildOutcome::Failed => "failed",
        BuildOutcome::Cancelled => "cancelled",
    }
}

/// The artifact a completion reports: both digest and repository, or none (the media type
/// defaults to an OCI image manifest).
fn reported_artifact(ev: &BuildCompleted) -> Option<Artifact> {
    match (&ev.digest, &ev.repository) {
        (Some(digest), Some(repository)) => Some(Artifact {
            repository: repository.clone(),
            digest: digest.clone(),
            media_type: ev
                .media_type
                .clone()
                .unwrap_or_else(|| OCI_MANIFEST_MEDIA_TYPE.to_string()),
        }),
        _ => None,
    }
}

async fn build_completed<P: Backend>(
    ports: &Ports<P>,
    ev: &BuildCompleted,
) -> Result<Outcome, HandlerError> {
    let store = &ports.store;
    let now = ports.clock.now_ms();
    let build = store
        .get_build(&ev.build_id)
        .await?
        .ok_or_else(|| HandlerError::UnknownBuild {
            build_id: ev.build_id.clone(),
        })?;

    let artifact = reported_artifact(ev);
    let wanted = match ev.status {
        BuildOutcome::Succeeded => JobStatus::Succeeded,
        BuildOutcome::Failed => JobStatus::Failed,
        BuildOutcome::Cancelled => JobStatus::Cancelled,
    };
    let reported = outcome_name(ev.status);

    let stored = apply(store, &ports.config, build, |b| {
        if b.status().is_terminal() {
            let same = b.status() == wanted
                && b.artifact.as_ref().map(|a| &a.digest) == artifact.as_ref().map(|a| &a.digest);
            return if same {
                Ok(Decision::Keep)
            } else {
                Err(finished_conflict(b, b.status(), reported))
            };
        }
        let next = match (ev.status, &artifact) {
            (BuildOutcome::Succeeded, Some(a)) => {
                let mut done = b.succeed(now, a.clone())?;
                done.revision = ev.revision.clone();
                done
            }
            (BuildOutcome::Succeeded, None) => {
                // The parser guarantees both; guard anyway rather than record a digestless success.
                return Err(HandlerError::Mismatch {
                    message: format!(
                        "build.completed for {} says succeeded but has no digest and repository",
                        b.id
                    ),
                });
            }
            (BuildOutcome::Failed, _) => {
                let message = ev.error.clone().unwrap_or_else(|| {
                    "the builder reported a failure without detail; see the builder's logs"
                        .to_string()
                });
                b.fail(now, JobError::new("build_failed", message))?
            }
            (BuildOutcome::Cancelled, _) => b.cancel(now)?,
        };
        Ok(Decision::Write(next))
    })
    .await?;

    let syncs_requested = match (stored.status(), &stored.artifact) {
        (JobStatus::Succeeded, Some(artifact)) if ports.config.fan_out_on_build => {
            fan_out(ports, &stored, artifact).await?
        }
        _ => 0,
    };
    tracing::info!(status = %stored.status(), syncs_requested, "build completion recorded");
    Ok(Outcome::BuildRecorded {
        status: stored.status(),
        build_id: stored.id,
        syncs_requested,
    })
}

/// Publishes one `sync.requested` per install subscribed to the build's component; returns
/// how many. Each carries its dispatch context (the install, read fresh in one batch per page,
/// and the component's verification policy, read once), MAC'd with the vendor key, as a
/// release step's do, so sync-requested reads neither again. Runs again on a resumed event:
/// the derived sync ids make the re-sent requests no-ops.
async fn fan_out<P: Backend>(
    ports: &Ports<P>,
    build: &Build,
    artifact: &Artifact,
) -> Result<usize, HandlerError> {
    let policy = ports
        .store
        .get_component(&build.app, &build.component)
        .await?
        .and_then(|c| c.verify);
    let mut events = Vec::new();
    let mut page = PageRequest::first(MAX_PAGE);
    loop {
        let got = ports
            .store
            .installs_by_component(&build.app, &build.component, &page)
            .await?;
        let ids: Vec<InstallId> = got.items.into_iter().map(|i| i.id).collect();
        // The subscription lists who; the install records say where, as they are now.
        let fresh: std::collections::HashMap<InstallId, crate::domain::Install> = ports
            .store
            .get_installs(&ids)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        for id in &ids {
            let mut event = sync_request_event(&ports.vendor_key, build, artifact, id)?;
            if let (Some(install), Payload::SyncRequested(ev)) = (fresh.get(id), &mut event.payload)
            {
                ev.context = Some(Box::new(crate::fanout::seal_context(
                    &ports.vendor_key,
                    ev,
                    install.clone(),
                    policy.clone(),
                )));
            }
            events.push(event);
        }
        match got.next {
            Some(cursor) => page = PageRequest::after(MAX_PAGE, cursor),
            None => break,
        }
    }
    let n = events.len();
    publish_all(&ports.bus, events).await?;
    Ok(n)
}

fn sync_request_event(
    vendor_key: &VendorKey,
    build: &Build,
    artifact: &Artifact,
    install: &InstallId,
) -> Result<Event, HandlerError> {
    let sync_id = vendor_key.sync_id(&build.id, install);
    let event_id = EventId::new(sync_id.as_str()).map_err(|e| HandlerError::Encode {
        message: e.to_string(),
    })?;
    Ok(Event::with_id(
        event_id,
        Payload::SyncRequested(SyncRequested {
            sync_id,
            build_id: build.id.clone(),
            install_id: install.clone(),
            repository: artifact.repository.clone(),
            digest: artifact.digest.clone(),
            release_id: None,
            context: None,
        }),
    ))
}
