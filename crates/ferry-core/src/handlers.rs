//! The IMS handlers: build.requested, build.completed, sync.requested, sync.reported.
//!
//! Each is a plain async function over the ports, wrapped in an idempotency record keyed by the
//! event's identity, and written so that a crash at any await leaves a state the same event can
//! resume from: ids are derived (never random), creates are put-if-absent, and every state change
//! is a conditional write on (status, version). A replayed event returns `Outcome::Replayed` and
//! changes nothing. This module must never read a clock or do I/O except through the ports, and
//! never put a clear grant anywhere: it only forwards [`SealedGrant`]s from the minter.
//!
//! Trust (ARCHITECTURE.md invariant 10): a `sync.reported` is authenticated against the report
//! key of the install that owns the job before anything is read into a decision, and its
//! idempotency key is derived here from the authenticated (sync, attempt, status), never taken
//! from the sender. Every idempotency record keeps a hash of the payload it was claimed for, so
//! a key reused with another payload is refused loudly. Job messages are signed with the vendor
//! key, and sync ids are keyed with it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::domain::{
    Artifact, Build, Install, LineageRecord, SealedGrant, SyncJob, SyncStats,
    OCI_MANIFEST_MEDIA_TYPE,
};
use crate::event::{
    BuildCompleted, BuildOutcome, BuildRequested, Event, EventError, Payload, SyncJobMessage,
    SyncReportStatus, SyncReported, SyncRequested,
};
use crate::id::{
    AppName, BuildId, ComponentName, EventId, InstallId, QueueName, ReleaseId, SyncId,
};
use crate::ports::{
    Backend, Batch, BuildSpec, Builder, BuilderError, BusError, Clock, EventBus, GrantError,
    GrantId, GrantMinter, IdGenerator, IdempotencyClaim, JobStore, PageRequest, Queue, QueueError,
    StoreError, WriteError, MAX_PAGE,
};
use crate::release::{ReleaseError, ReleaseStatus, ReleaseTransitionError};
use crate::state::{Expected, JobError, JobStatus, TransitionError};
use crate::trust::{verify_report, VendorKey};

/// Tunables. The defaults suit ferry dev's worker; the Lambda functions set `deadline_ms` per
/// invocation, so the idempotency lock follows the time the invocation has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a completed idempotency record suppresses replays.
    pub idempotency_ttl_ms: u64,
    /// How long an in-progress record blocks others when there is no deadline (ferry dev's
    /// worker): at least the handler's timeout.
    pub in_progress_ms: u64,
    /// The invocation's deadline (ms since the epoch; a Lambda context's), when there is one:
    /// the in-progress record then lasts until it (see [`crate::timing::lock_until`]).
    pub deadline_ms: Option<u64>,
    /// A sync whose grant expired this many times fails instead of being re-enqueued.
    pub max_sync_attempts: u32,
    /// Re-reads after a conditional-write conflict before giving up (the event is retried).
    pub max_write_tries: u32,
    /// True (the default, and `ferry dev`'s behaviour): a successful build is synced at once
    /// to every subscribed install, an implicit release. False: builds only record their
    /// artifact, and `ferry release create` decides which installs get it, in steps.
    pub fan_out_on_build: bool,
    /// An install's heartbeats cause at most one store write per this many ms.
    pub heartbeat_min_interval_ms: u64,
    /// A heartbeat whose `sent_at` is further than this from the IMS's clock is not recorded
    /// (bounds replays of a captured heartbeat, and flags a wrong agent clock).
    pub heartbeat_max_skew_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idempotency_ttl_ms: 24 * 60 * 60 * 1000,
            in_progress_ms: 5 * 60 * 1000,
            deadline_ms: None,
            max_sync_attempts: 5,
            max_write_tries: 5,
            fan_out_on_build: true,
            heartbeat_min_interval_ms: 30_000,
            heartbeat_max_skew_ms: 10 * 60 * 1000,
        }
    }
}

/// The ports a handler may use, for one backend `P` (see [`Backend`]). Adapters are cheap
/// handles (SDK clients, pools), owned here. Build one with a type annotation naming the
/// backend (`let ports: Ports<MyBackend> = Ports { .. }`): the field types alone do not name it.
pub struct Ports<P: Backend> {
    pub store: P::Store,
    pub queue: P::Queue,
    pub bus: P::Bus,
    pub builder: P::Builder,
    pub minter: P::Minter,
    pub clock: P::Clock,
    pub config: Config,
    /// Signs job messages and keys sync ids. Only build-completed and sync-requested (and
    /// sync-reported, which re-dispatches after `grant_expired`) use it.
    pub vendor_key: Arc<VendorKey>,
    /// The queue release step timers are sent to with a delay: the queue the bus routes
    /// `release.step` and `release.synced` to.
    pub release_queue: QueueName,
}

impl<P: Backend> Clone for Ports<P>
where
    P::Store: Clone,
    P::Queue: Clone,
    P::Bus: Clone,
    P::Builder: Clone,
    P::Minter: Clone,
    P::Clock: Clone,
{
    fn clone(&self) -> Self {
        Ports {
            store: self.store.clone(),
            queue: self.queue.clone(),
            bus: self.bus.clone(),
            builder: self.builder.clone(),
            minter: self.minter.clone(),
            clock: self.clock.clone(),
            config: self.config,
            vendor_key: self.vendor_key.clone(),
            release_queue: self.release_queue.clone(),
        }
    }
}

impl<P: Backend> fmt::Debug for Ports<P> {
    // The adapters are handles to services, not state worth printing; the key is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports")
            .field("backend", &std::any::type_name::<P>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a handler did; stored in the idempotency record and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    BuildStarted {
        build_id: BuildId,
        external_id: Option<String>,
    },
    /// The build was recorded as failed at once (unknown component, builder refused).
    BuildRejected {
        build_id: BuildId,
        reason: String,
    },
    BuildRecorded {
        build_id: BuildId,
        status: JobStatus,
        syncs_requested: usize,
    },
    SyncDispatched {
        sync_id: SyncId,
        attempt: u32,
    },
    /// The sync was recorded as failed at once (unknown install, grant refused).
    SyncRejected {
        sync_id: SyncId,
        reason: String,
    },
    SyncRecorded {
        sync_id: SyncId,
        status: JobStatus,
    },
    /// A report about an attempt that is no longer current; nothing changed.
    StaleReport {
        sync_id: SyncId,
        reported_attempt: u32,
    },
    /// One page of a release step: its syncs were requested.
    ReleaseStepHandled {
        release_id: ReleaseId,
        step: u32,
        page: u32,
        syncs_requested: usize,
    },
    /// A release sync's outcome was recorded on its target; `status` is the release's after.
    ReleaseSynced {
        release_id: ReleaseId,
        sync_id: SyncId,
        status: ReleaseStatus,
    },
    /// A release event that no longer applies (a stale timer, a paused release); nothing
    /// changed.
    ReleaseIgnored {
        release_id: ReleaseId,
        reason: String,
    },
    /// An authenticated heartbeat was recorded (or fell within the write interval of the last
    /// one); `last_seen` is the install's last-seen time as stored.
    HeartbeatRecorded {
        install_id: InstallId,
        last_seen: u64,
    },
    /// A heartbeat that did not authenticate as the install's agent, or whose time is too far
    /// from the IMS's: nothing changed, and it is not retried.
    HeartbeatRefused {
        install_id: InstallId,
        reason: String,
    },
    /// The event was handled before; `first` is what that run did.
    Replayed {
        first: Option<Box<Outcome>>,
    },
    /// A report that could not be authenticated as the job's install agent (or is about a sync
    /// that does not exist): nothing changed, it was counted as a security event, and it is
    /// not retried.
    ReportRefused {
        sync_id: SyncId,
        event: SecurityEvent,
        reason: String,
    },
}

/// The kinds of security event the IMS counts (`JobStore::count_security_event`). A fixed set,
/// so what a sender sends can never add counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityEvent {
    /// A report whose signature does not verify against the job's install agent, or that
    /// names another install than the job's, or whose install has no report key.
    ReportUnauthenticated,
    /// A report about a sync id that does not exist (guessed, or from another deployment).
    ReportUnknownSync,
    /// An idempotency key arrived again with a different payload.
    IdempotencyKeyReused,
}

impl SecurityEvent {
    /// Every kind, in the order they are counted and reported.
    pub const ALL: [SecurityEvent; 3] = [
        SecurityEvent::ReportUnauthenticated,
        SecurityEvent::ReportUnknownSync,
        SecurityEvent::IdempotencyKeyReused,
    ];

    /// The counter's name in the store and the `security_event` field of the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityEvent::ReportUnauthenticated => "report_unauthenticated",
            SecurityEvent::ReportUnknownSync => "report_unknown_sync",
            SecurityEvent::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

impl fmt::Display for SecurityEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a handler did not finish; [`HandlerError::is_retryable`] says whether redelivery may help.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("build {build_id} does not exist; check the build id, or send build.requested first")]
    UnknownBuild { build_id: BuildId },
    #[error("sync job {sync_id} does not exist; check the sync id (the agent reports the id from its job message)")]
    UnknownSync { sync_id: SyncId },
    #[error(
        "{what} {id} already finished as {status}; the later report \"{reported}\" was ignored"
    )]
    AlreadyFinished {
        what: &'static str,
        id: String,
        status: JobStatus,
        reported: String,
    },
    #[error("{message}")]
    Mismatch { message: String },
    #[error("idempotency key {key} was already used for a different payload; the producer must use a new id for a new request (this one was refused, not taken for a replay)")]
    KeyReused { key: String },
    #[error(
        "event {key} is being handled by another worker (until {until} ms); it will be retried"
    )]
    InProgress { key: String, until: u64 },
    #[error("{what} {id} kept changing under concurrent writers; the event will be retried")]
    Contention { what: &'static str, id: String },
    #[error("{what} {id} disappeared during a conditional update; was it deleted by hand?")]
    Vanished { what: &'static str, id: String },
    #[error("publishing {failed} event(s) failed ({first}); the event will be retried")]
    Publish { failed: usize, first: String },
    #[error("could not encode a message: {message}")]
    Encode { message: String },
    #[error("release {release_id} does not exist; `ferry release list APP` shows the releases")]
    UnknownRelease { release_id: ReleaseId },
    #[error(transparent)]
    Release(ReleaseError),
    #[error(transparent)]
    ReleaseTransition(#[from] ReleaseTransitionError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Builder(BuilderError),
    #[error(transparent)]
    Grant(GrantError),
}

impl HandlerError {
    /// True when the same event may succeed later (so it should go back to the queue).
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::InProgress { .. }
            | HandlerError::Contention { .. }
            | HandlerError::Publish { .. }
            | HandlerError::Store(StoreError::Unavailable { .. })
            | HandlerError::Queue(QueueError::Unavailable { .. })
            | HandlerError::Bus(BusError::Unavailable { .. })
            | HandlerError::Builder(BuilderError::Unavailable { .. })
            | HandlerError::Grant(GrantError::Unavailable { .. }) => true,
            // A missing build may just not be visible yet on an eventually consistent read.
            HandlerError::UnknownBuild { .. } | HandlerError::UnknownSync { .. } => true,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plumbing: idempotency and conditional writes

/// What an idempotency record stores on completion: the outcome and the hash of the payload
/// the key was claimed for.
#[derive(Serialize, Deserialize)]
struct StoredResult {
    payload: String,
    outcome: Outcome,
}

/// Counts and logs one security event. The count is the signal (an alarm in AWS); the log
/// line carries the reason, never a secret.
pub(crate) async fn security_event<S: JobStore>(
    store: &S,
    now: u64,
    event: SecurityEvent,
    reason: &str,
) -> Result<(), HandlerError> {
    let count = store.count_security_event(event.as_str(), now).await?;
    tracing::warn!(security_event = event.as_str(), count, %reason, "refused");
    Ok(())
}

/// Runs `work` at most once per `key` (until the record's TTL), Powertools-style. A live record
/// for `key` whose payload hash is not `payload` is refused ([`HandlerError::KeyReused`]).
async fn idempotent<P: Backend, F, Fut>(
    ports: &Ports<P>,
    claim: Claim<'_>,
    work: F,
) -> Result<Outcome, HandlerError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Outcome, HandlerError>>,
{
    let (store, clock, config) = (&ports.store, &ports.clock, &ports.config);
    let (key, payload) = (claim.key, claim.payload);
    let now = clock.now_ms();
    let claim = store
        .idempotency_begin(
            key,
            now,
            crate::timing::lock_until(now, config.deadline_ms, config.in_progress_ms),
            now.saturating_add(config.idempotency_ttl_ms),
        )
        .await?;
    match claim {
        IdempotencyClaim::Acquired => {}
        IdempotencyClaim::InProgress { until } => {
            return Err(HandlerError::InProgress {
                key: key.to_string(),
                until,
            })
        }
        IdempotencyClaim::Completed { result } => {
            let first = match serde_json::from_str::<StoredResult>(&result) {
                Ok(stored) if stored.payload != payload => {
                    security_event(
                        store,
                        now,
                        SecurityEvent::IdempotencyKeyReused,
                        &format!("key {key} arrived again with a different payload"),
                    )
                    .await?;
                    return Err(HandlerError::KeyReused {
                        key: key.to_string(),
                    });
                }
                Ok(stored) => Some(Box::new(stored.outcome)),
                // A record written before payload hashes were kept: its outcome, if any.
                Err(_) => serde_json::from_str::<Outcome>(&result).ok().map(Box::new),
            };
            tracing::info!(idempotency_key = key, "replayed event; nothing to do");
            return Ok(Outcome::Replayed { first });
        }
    }
    match work().await {
        Ok(outcome) => {
            let stored = StoredResult {
                payload: payload.to_string(),
                outcome,
            };
            let result = serde_json::to_string(&stored).map_err(|e| HandlerError::Encode {
                message: e.to_string(),
            })?;
            let outcome = stored.outcome;
            let expires = clock.now_ms().saturating_add(config.idempotency_ttl_ms);
            store.idempotency_complete(key, &result, expires).await?;
            Ok(outcome)
        }
        Err(err) => {
            // Let a retry run at once; if this fails the record simply expires.
            if let Err(release) = store.idempotency_release(key).await {
                tracing::warn!(idempotency_key = key, error = %release, "could not release idempotency record");
            }
            Err(err)
        }
    }
}

/// A stored job that can be written conditionally.
pub(crate) trait Job: Clone + fmt::Debug + Send + Sync + Sized {
    const WHAT: &'static str;
    fn id_string(&self) -> String;
    fn expected(&self) -> Expected;
    fn update<S: JobStore>(
        store: &S,
        next: &Self,
        expected: Expected,
    ) -> impl Future<Output = Result<(), WriteError<Self>>> + Send;
}

impl Job for Build {
    const WHAT: &'static str = "build";
    fn id_string(&self) -> String {
        self.id.to_string()
    }
    fn expected(&self) -> Expected {
        self.state.expected()
    }
    fn update<S: JobStore>(
        store: &S,
        next: &Self,
        expected: Expected,
    ) -> impl Future<Output = Result<(), WriteError<Self>>> + Send {
        store.update_build(next, expected)
    }
}

impl Job for SyncJob {
    const WHAT: &'static str = "sync job";
    fn id_string(&self) -> String {
        self.id.to_string()
    }
    fn expected(&self) -> Expected {
        self.state.expected()
    }
    fn update<S: JobStore>(
        store: &S,
        next: &Self,
        expected: Expected,
    ) -> impl Future<Output = Result<(), WriteError<Self>>> + Send {
        store.update_sync(next, expected)
    }
}

pub(crate) enum Decision<T> {
    Write(T),
    /// Already in the wanted state (a resumed or raced handler): nothing to write.
    Keep,
}

/// Applies `decide` to the latest stored version until a conditional write lands or `decide`
/// says there is nothing to do. Returns the item as stored afterwards.
pub(crate) async fn apply<S: JobStore, T: Job>(
    store: &S,
    config: &Config,
    mut current: T,
    decide: impl Fn(&T) -> Result<Decision<T>, HandlerError>,
) -> Result<T, HandlerError> {
    for _ in 0..config.max_write_tries.max(1) {
        let next = match decide(&current)? {
            Decision::Keep => return Ok(current),
            Decision::Write(next) => next,
        };
        match T::update(store, &next, current.expected()).await {
            Ok(()) => return Ok(next),
            Err(WriteError::Conflict(c)) => match c.current {
                Some(latest) => current = latest,
                None => {
                    return Err(HandlerError::Vanished {
                        what: T::WHAT,
                        id: current.id_string(),
                    })
                }
            },
            Err(WriteError::Store(e)) => return Err(e.into()),
        }
    }
    Err(HandlerError::Contention {
        what: T::WHAT,
        id: current.id_string(),
    })
}

fn finished_conflict<T: Job>(item: &T, status: JobStatus, reported: &str) -> HandlerError {
    HandlerError::AlreadyFinished {
        what: T::WHAT,
        id: item.id_string(),
        status,
        reported: reported.to_string(),
    }
}

/// Publishes events in batches of at most 10, retrying failed entries once.
async fn publish_all<E: EventBus>(bus: &E, events: Vec<Event>) -> Result<(), HandlerError> {
    for batch in Batch::chunks(events) {
        let mut pending = batch;
        for round in 0..2 {
            let results = bus.put_events(&pending).await?;
            let mut failed = Vec::new();
            let mut first = None;
            for (i, ev) in pending.items().iter().enumerate() {
                match results.get(i) {
                    Some(Ok(_)) => {}
                    Some(Err(f)) => {
                        first.get_or_insert_with(|| f.to_string());
                        failed.push(ev.clone());
                    }
                    None => {
                        first.get_or_insert_with(|| "the bus returned no result".to_string());
                        failed.push(ev.clone());
                    }
                }
            }
            if failed.is_empty() {
                break;
            }
            let n = failed.len();
            match Batch::new(failed) {
                Ok(retry) if round == 0 => pending = retry,
                _ => {
                    return Err(HandlerError::Publish {
                        failed: n,
                        first: first.unwrap_or_default(),
                    })
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// The idempotency key an event is handled under, and the hash of its payload.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub key: &'a str,
    pub payload: &'a str,
}

/// Routes one parsed event to its handler.
pub async fn dispatch<P: Backend>(
    ports: &Ports<P>,
    event: &Event,
) -> Result<Outcome, HandlerError> {
    let key = event.idempotency_key();
    let payload = event.payload_hash();
    let claim = Claim {
        key: &key,
        payload: &payload,
    };
    match &event.payload {
        Payload::BuildRequested(ev) => handle_build_requested(ports, claim, ev).await,
        Payload::BuildCompleted(ev) => handle_build_completed(ports, claim, ev).await,
        Payload::SyncRequested(ev) => handle_sync_requested(ports, claim, ev).await,
        // Its key is derived from the authenticated attempt, never from the sender's id.
        Payload::SyncReported(ev) => handle_sync_reported(ports, ev).await,
        // Release events are naturally idempotent (conditional writes on the release's
        // version, derived sync ids) and a step timer may be sent again under the same id,
        // so they are not wrapped in an idempotency record.
        Payload::ReleaseStep(ev) => crate::rollout::handle_release_step(ports, ev)
            .instrument(tracing::info_span!("release.step", release_id = %ev.release_id, step = ev.step, page = ev.page))
            .await,
        Payload::ReleaseSynced(ev) => crate::rollout::handle_release_synced(ports, ev)
            .instrument(tracing::info_span!("release.synced", release_id = %ev.release_id, sync_id = %ev.sync_id))
            .await,
        // Authenticated against the install's report key; naturally idempotent (last-seen
        // only moves forward, and writes are rate-limited per install).
        Payload::InstallHeartbeat(ev) => crate::telemetry::handle_install_heartbeat(ports, ev)
            .instrument(tracing::info_span!("install.heartbeat", install_id = %ev.install_id))
            .await,
    }
}

/// The vendor side of a build request (CLI, API): picks a fresh build id and publishes
/// build.requested. The id is also the event id, so a resent request is deduplicated.
pub async fn request_build<E: EventBus, I: IdGenerator>(
    bus: &E,
    ids: &I,
    app: AppName,
    component: ComponentName,
    source_ref: String,
    requested_by: String,
) -> Result<BuildId, HandlerError> {
    let build_id =
        BuildId::new(format!("b-{}", ids.new_id())).map_err(|e| HandlerError::Encode {
            message: format!("the id generator produced an unusable id: {e}"),
        })?;
    let event_id = EventId::new(build_id.as_str()).map_err(|e| HandlerError::Encode {
        message: e.to_string(),
    })?;
    let event = Event::with_id(
        event_id,
        Payload::BuildRequested(BuildRequested {
            build_id: Some(build_id.clone()),
            app,
            component,
            source_ref,
            requested_by,
        }),
    );
    publish_all(bus, vec![event]).await?;
    Ok(build_id)
}

// ---------------------------------------------------------------------------------------------
// build.requested

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

    let artifact = match (&ev.digest, &ev.repository) {
        (Some(digest), Some(repository)) => Some(Artifact {
            repository: repository.clone(),
            digest: digest.clone(),
            media_type: ev
                .media_type
                .clone()
                .unwrap_or_else(|| OCI_MANIFEST_MEDIA_TYPE.to_string()),
        }),
        _ => None,
    };
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
/// how many. Runs again on a resumed event: the derived sync ids make the re-sent requests
/// no-ops.
async fn fan_out<P: Backend>(
    ports: &Ports<P>,
    build: &Build,
    artifact: &Artifact,
) -> Result<usize, HandlerError> {
    let mut events = Vec::new();
    let mut page = PageRequest::first(MAX_PAGE);
    loop {
        let got = ports
            .store
            .installs_by_component(&build.app, &build.component, &page)
            .await?;
        for install in got.items {
            events.push(sync_request_event(
                &ports.vendor_key,
                build,
                artifact,
                &install.id,
            )?);
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
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// sync.requested

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

// ---------------------------------------------------------------------------------------------
// sync.reported

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
    let (store, now) = (&ports.store, ports.clock.now_ms());
    let stored = apply(store, &ports.config, job, |j| match j.status() {
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
    revoke_quietly(&ports.minter, grant).await;
    crate::rollout::sync_finished(ports, &stored).await?;
    tracing::info!(bytes_copied = stats.bytes_copied, "sync succeeded");
    Ok(Outcome::SyncRecorded {
        sync_id: stored.id,
        status: JobStatus::Succeeded,
    })
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
async fn fail_unless_finished<S: JobStore>(
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
