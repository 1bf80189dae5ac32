//! The IMS handlers: build.requested, build.completed, sync.requested, sync.reported.
//!
//! Each is a plain async function over the ports, wrapped in an idempotency record keyed by the
//! event's identity (sync.requested's claim is its job's own conditional create instead: see
//! `sync.rs`), and written so that a crash at any await leaves a state the same event can
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

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::domain::{Build, SyncJob};
use crate::event::{BuildRequested, Event, EventError, Payload};
use crate::id::{
    AppName, BuildId, ComponentName, EventId, InstallId, QueueName, ReleaseId, SyncId,
};
use crate::ports::{
    Backend, Batch, BuilderError, BusError, Clock, EventBus, GrantError, IdGenerator,
    IdempotencyClaim, JobStore, QueueError, StoreError, WriteError,
};
use crate::release::{ReleaseError, ReleaseStatus, ReleaseTransitionError};
use crate::state::{Expected, JobStatus, TransitionError};
use crate::trust::VendorKey;

// One file per handler family; the shared plumbing (ports, outcome, errors, idempotency,
// conditional writes, dispatch) stays here.
mod build;
mod report;
mod sync;

pub use build::{handle_build_completed, handle_build_requested};
pub use report::handle_sync_reported;
pub(crate) use report::{record_success, revoke_quietly};
pub(crate) use sync::dispatch_sync;
pub use sync::handle_sync_requested;

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
