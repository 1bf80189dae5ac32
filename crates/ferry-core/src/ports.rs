//! Ports: the traits the handlers drive, shaped after the AWS services they also run on.
//!
//! `JobStore` ~ one DynamoDB table (conditional writes, TTL, GSIs, paginated queries);
//! `Queue` ~ SQS; `EventBus` ~ EventBridge; `Builder` ~ CodeBuild; `GrantMinter` ~ STS+ECR.
//! Adapters live in other crates (ferry-local, ferry-aws). This module must never do I/O or
//! name an AWS type: it is only the shape of the calls, their limits and their error kinds.
//!
//! Methods return `impl Future + Send` so handlers can run on a multi-threaded runtime;
//! an implementor may still write `async fn`.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::domain::{Build, Component, Install, LineageRecord, SealedGrant, SyncJob};
use crate::event::Event;
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository, SyncId,
};
use crate::state::Expected;
use crate::telemetry::InstallTelemetry;

// ---------------------------------------------------------------------------------------------
// Batches

/// The SQS and EventBridge batch limit.
pub const MAX_BATCH: usize = 10;

/// A batch outside 1..=10 entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a batch must hold 1 to {MAX_BATCH} entries, got {len}; split it with Batch::chunks")]
pub struct BatchError {
    pub len: usize,
}

/// 1 to 10 entries: an oversized batch cannot be built, so no adapter ever sees one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T>(Vec<T>);

impl<T> Batch<T> {
    /// Refuses an empty or oversized batch.
    pub fn new(items: Vec<T>) -> Result<Batch<T>, BatchError> {
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(BatchError { len: items.len() });
        }
        Ok(Batch(items))
    }

    /// Splits any number of items into full batches of 10 and one remainder.
    pub fn chunks(items: Vec<T>) -> Vec<Batch<T>> {
        let mut out = Vec::with_capacity(items.len().div_ceil(MAX_BATCH));
        let mut it = items.into_iter().peekable();
        while it.peek().is_some() {
            out.push(Batch(it.by_ref().take(MAX_BATCH).collect()));
        }
        out
    }

    /// The entries, in order.
    pub fn items(&self) -> &[T] {
        &self.0
    }

    /// How many entries (1..=10).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a batch is never empty); here because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, owned.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

/// Why one entry of a batch call failed while others may have succeeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EntryFailure {
    pub code: String,
    pub message: String,
    /// True when resending the same entry cannot succeed.
    pub sender_fault: bool,
}

// ---------------------------------------------------------------------------------------------
// JobStore

/// An opaque position in a query; pass it back unchanged to get the next page.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor(String);

impl Cursor {
    /// Wraps a cursor an adapter produced.
    pub fn new(s: impl Into<String>) -> Cursor {
        Cursor(s.into())
    }

    /// The cursor as the adapter wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The largest page a query returns.
pub const MAX_PAGE: u32 = 100;

/// One page of a query: how many items, and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    limit: u32,
    pub cursor: Option<Cursor>,
}

impl PageRequest {
    /// The first page; `limit` is clamped to 1..=100.
    pub fn first(limit: u32) -> PageRequest {
        PageRequest {
            limit: limit.clamp(1, MAX_PAGE),
            cursor: None,
        }
    }

    /// The page after `cursor`; `limit` is clamped to 1..=100.
    pub fn after(limit: u32, cursor: Cursor) -> PageRequest {
        PageRequest {
            cursor: Some(cursor),
            ..PageRequest::first(limit)
        }
    }

    /// How many items at most (1..=100).
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// At most `limit` items. `next` is `None` at the end; a backend may also return an empty page
/// with a cursor (DynamoDB does), so callers loop until `next` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// Why a store call failed (transient outages are `Unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Transient: throttling, timeouts, a lost connection. Retry later.
    #[error("job store unavailable: {message}")]
    Unavailable { message: String },
    /// A stored item could not be decoded: a bug or a schema drift, not retryable.
    #[error("job store item {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error("invalid job store request: {message}")]
    Invalid { message: String },
}

/// A failed condition, with the item as it is now (DynamoDB ReturnValuesOnConditionCheckFailure
/// = ALL_OLD). `current` is `None` when a conditional update found no item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict<T> {
    pub current: Option<T>,
}

/// Why a conditional write did not happen: a conflict (with the current item), or the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError<T: fmt::Debug> {
    #[error("conditional write failed: the item already exists or changed since it was read")]
    Conflict(Conflict<T>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of claiming an idempotency key (AWS Lambda Powertools' scheme: an INPROGRESS
/// record with an in-progress expiry, then a COMPLETED record with a TTL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// Ours: no live record existed. Run the handler, then complete or release.
    Acquired,
    /// Another invocation holds it until `until` (unix ms); retry after that.
    InProgress { until: u64 },
    /// Already handled; `result` is what the first run stored.
    Completed { result: String },
}

/// The job store port (one DynamoDB table, or SQLite): catalog, jobs, lineage, idempotency
/// records and security-event counts. Writes to jobs are conditional on (status, version).
pub trait JobStore: Send + Sync {
    /// Upserts a component (catalog data, last write wins).
    fn put_component(
        &self,
        component: &Component,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The component, if it exists.
    fn get_component(
        &self,
        app: &AppName,
        name: &ComponentName,
    ) -> impl Future<Output = Result<Option<Component>, StoreError>> + Send;
    /// Upserts an install (catalog data, last write wins).
    fn put_install(&self, install: &Install)
        -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The install, if it exists.
    fn get_install(
        &self,
        id: &InstallId,
    ) -> impl Future<Output = Result<Option<Install>, StoreError>> + Send;
    /// The installs of `ids` that exist, in any order, each once (a release step reads a
    /// page's installs with it). By default one [`JobStore::get_install`] per id; a store may
    /// read them in batches (DynamoDB: BatchGetItem).
    fn get_installs(
        &self,
        ids: &[InstallId],
    ) -> impl Future<Output = Result<Vec<Install>, StoreError>> + Send {
        async move {
            let mut out: Vec<Install> = Vec::with_capacity(ids.len());
            for id in ids {
                if out.iter().any(|i| &i.id == id) {
                    continue;
                }
                if let Some(install) = self.get_install(id).await? {
                    out.push(install);
                }
            }
            Ok(out)
        }
    }

    /// Put-if-absent; `Conflict.current` is the existing build.
    fn create_build(
        &self,
        build: &Build,
    ) -> impl Future<Output = Result<(), WriteError<Build>>> + Send;
    /// The build, if it exists.
    fn get_build(
        &self,
        id: &BuildId,
    ) -> impl Future<Output = Result<Option<Build>, StoreError>> + Send;
    /// Writes `next` only if the stored build has `expected` status and version.
    fn update_build(
        &self,
        next: &Build,
        expected: Expected,
    ) -> impl Future<Output = Result<(), WriteError<Build>>> + Send;

    /// Put-if-absent; `Conflict.current` is the existing sync job.
    fn create_sync(
        &self,
        sync: &SyncJob,
    ) -> impl Future<Output = Result<(), WriteError<SyncJob>>> + Send;
    /// The sync job, if it exists.
    fn get_sync(
        &self,
        id: &SyncId,
    ) -> impl Future<Output = Result<Option<SyncJob>, StoreError>> + Send;
    /// Writes `next` only if the stored sync has `expected` status and version.
    fn update_sync(
        &self,
        next: &SyncJob,
        expected: Expected,
    ) -> impl Future<Output = Result<(), WriteError<SyncJob>>> + Send;

    /// Put-if-absent on (digest, install): returns the stored record, so the first `since` wins.
    fn record_lineage(
        &self,
        record: &LineageRecord,
    ) -> impl Future<Output = Result<LineageRecord, StoreError>> + Send;

    /// Claims `key` unless a live record exists. A record is live while `now` is before its
    /// `expires_at` and, for an in-progress one, before its `in_progress_until`.
    fn idempotency_begin(
        &self,
        key: &str,
        now: u64,
        in_progress_until: u64,
        expires_at: u64,
    ) -> impl Future<Output = Result<IdempotencyClaim, StoreError>> + Send;
    /// Marks `key` completed with `result`, kept until `expires_at` (the TTL).
    fn idempotency_complete(
        &self,
        key: &str,
        result: &str,
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes the in-progress record after a failure, so a retry can run at once.
    fn idempotency_release(&self, key: &str)
        -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Newest first (created_at descending, then id descending).
    fn builds_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Build>, StoreError>> + Send;
    /// Newest first (created_at descending, then id descending).
    fn syncs_by_install(
        &self,
        install: &InstallId,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<SyncJob>, StoreError>> + Send;
    /// By install id ascending.
    fn syncs_by_build(
        &self,
        build: &BuildId,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<SyncJob>, StoreError>> + Send;
    /// Installs of `app` subscribed to `component`, by install id ascending.
    fn installs_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Install>, StoreError>> + Send;
    /// Which installs hold `digest` and since when, by install id ascending.
    fn lineage_by_digest(
        &self,
        digest: &Digest,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<LineageRecord>, StoreError>> + Send;

    /// Adds one to the counter of security events of `kind` (a name the code chooses, from
    /// [`crate::handlers::SecurityEvent`]: never anything a sender controls, so the counters
    /// stay a fixed, small set however much is sent) and records `now` as its last time.
    /// Returns the new count.
    fn count_security_event(
        &self,
        kind: &str,
        now: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The counter of `kind` and its last time (0, `None` when none was counted).
    fn security_event_count(
        &self,
        kind: &str,
    ) -> impl Future<Output = Result<(u64, Option<u64>), StoreError>> + Send;

    /// Records an authenticated heartbeat as the install's telemetry, unless the stored one has
    /// a later `last_seen` (last-seen never moves backwards). Returns the record as stored.
    fn record_heartbeat(
        &self,
        telemetry: &InstallTelemetry,
    ) -> impl Future<Output = Result<InstallTelemetry, StoreError>> + Send;
    /// The install's telemetry, if its agent ever sent a heartbeat.
    fn get_telemetry(
        &self,
        install: &InstallId,
    ) -> impl Future<Output = Result<Option<InstallTelemetry>, StoreError>> + Send;
    /// Sync jobs that are not terminal (queued or running) and last changed before `before`
    /// (unix ms): what the reconciler looks at. Every such job appears once over the pages
    /// (the order is the adapter's); a job that changes meanwhile may leave the result.
    fn stale_syncs(
        &self,
        before: u64,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<SyncJob>, StoreError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Queue

/// The queue's id of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub String);

/// The handle of one receive of one message; a later receive gets a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReceiptHandle(pub String);

/// The SQS message size limit.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The longest long poll (SQS's limit).
pub const MAX_WAIT_SECONDS: u32 = 20;
/// The longest delay of one message (SQS `DelaySeconds`: 15 minutes). Longer waits are chained
/// by the receiver (a release step timer re-sends itself until it is due).
pub const MAX_DELAY_SECONDS: u32 = 15 * 60;
/// The longest visibility timeout (SQS's limit: 12 hours).
pub const MAX_VISIBILITY_SECONDS: u32 = 12 * 60 * 60;

/// Why a queue call failed (transient outages are `Unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue} does not exist; create it (the install stack or `ferry dev` does)")]
    NoSuchQueue { queue: QueueName },
    #[error(
        "receipt handle is not valid for this queue (it was deleted, or received again since)"
    )]
    InvalidReceiptHandle,
    #[error("invalid queue request: {message}")]
    Invalid { message: String },
    /// Transient: retry later.
    #[error("queue unavailable: {message}")]
    Unavailable { message: String },
}

/// How to receive: validated against the SQS limits when built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    max_messages: u32,
    wait_seconds: u32,
    visibility_seconds: u32,
}

impl ReceiveOptions {
    /// Checks the limits: 1..=10 messages, wait ≤ 20 s, visibility ≤ 12 h.
    pub fn new(
        max_messages: u32,
        wait_seconds: u32,
        visibility_seconds: u32,
    ) -> Result<ReceiveOptions, QueueError> {
        if !(1..=MAX_BATCH as u32).contains(&max_messages) {
            return Err(QueueError::Invalid {
                message: format!("max_messages must be 1 to {MAX_BATCH}, got {max_messages}"),
            });
        }
        if wait_seconds > MAX_WAIT_SECONDS {
            return Err(QueueError::Invalid {
                message: format!("wait must be at most {MAX_WAIT_SECONDS}s, got {wait_seconds}s"),
            });
        }
        if visibility_seconds > MAX_VISIBILITY_SECONDS {
            return Err(QueueError::Invalid {
                message: format!(
                    "visibility timeout must be at most {MAX_VISIBILITY_SECONDS}s, got {visibility_seconds}s"
                ),
            });
        }
        Ok(ReceiveOptions {
            max_messages,
            wait_seconds,
            visibility_seconds,
        })
    }

    /// Messages per receive (1..=10).
    pub fn max_messages(&self) -> u32 {
        self.max_messages
    }

    /// Long-poll wait: return as soon as a message is visible, or empty after this long.
    pub fn wait_seconds(&self) -> u32 {
        self.wait_seconds
    }

    /// How long a received message stays hidden.
    pub fn visibility_seconds(&self) -> u32 {
        self.visibility_seconds
    }
}

/// Refuses a delay past [`MAX_DELAY_SECONDS`] (one rule for every adapter).
pub fn check_delay(delay_seconds: u32) -> Result<(), QueueError> {
    if delay_seconds > MAX_DELAY_SECONDS {
        return Err(QueueError::Invalid {
            message: format!(
                "a message delay must be at most {MAX_DELAY_SECONDS}s, got {delay_seconds}s; \
                 chain longer waits"
            ),
        });
    }
    Ok(())
}

/// One received message: its body and the handle to delete or extend it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: MessageId,
    pub receipt_handle: ReceiptHandle,
    pub body: String,
    /// 1 on the first receive. Past the queue's limit the adapter redrives to the DLQ.
    pub receive_count: u32,
}

/// The queue port (SQS, or SQLite with SQS semantics): at-least-once delivery, visibility
/// timeouts, receive counts; the dead-letter redrive is the adapter's.
pub trait Queue: Send + Sync {
    /// Sends one message; returns its id.
    fn send(
        &self,
        queue: &QueueName,
        body: &str,
    ) -> impl Future<Output = Result<MessageId, QueueError>> + Send;
    /// Sends one message that stays invisible for `delay_seconds` (at most
    /// [`MAX_DELAY_SECONDS`]; more is refused as `Invalid`): the platform's timer.
    fn send_delayed(
        &self,
        queue: &QueueName,
        body: &str,
        delay_seconds: u32,
    ) -> impl Future<Output = Result<MessageId, QueueError>> + Send;
    /// One result per entry, in order.
    fn send_batch(
        &self,
        queue: &QueueName,
        bodies: &Batch<String>,
    ) -> impl Future<Output = Result<Vec<Result<MessageId, EntryFailure>>, QueueError>> + Send;
    /// Up to `max_messages` visible messages, each hidden for the visibility timeout.
    fn receive(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, QueueError>> + Send;
    /// Deletes a received message (it was handled).
    fn delete(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// One result per entry, in order.
    fn delete_batch(
        &self,
        queue: &QueueName,
        receipts: &Batch<ReceiptHandle>,
    ) -> impl Future<Output = Result<Vec<Result<(), EntryFailure>>, QueueError>> + Send;
    /// Hides a received message for `seconds` from now (0 makes it visible at once).
    fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        seconds: u32,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// EventBus, Builder, GrantMinter, Clock, IdGenerator

/// Why a bus call failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {message}")]
    Unavailable { message: String },
    #[error("event bus refused the request: {message}")]
    Invalid { message: String },
}

/// The event bus port (EventBridge `PutEvents`, or the local bus): publishes events to the
/// queues whose rules match them.
pub trait EventBus: Send + Sync {
    /// One result per entry, in order: the bus's id for the entry, or why it failed.
    fn put_events(
        &self,
        events: &Batch<Event>,
    ) -> impl Future<Output = Result<Vec<Result<String, EntryFailure>>, BusError>> + Send;
}

/// What a builder needs to produce one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub build_id: BuildId,
    pub component: Component,
    pub source_ref: String,
}

/// Why the builder did not start a build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuilderError {
    /// The spec can never build (unknown project, bad source): the build fails.
    #[error("builder refused the build: {message}")]
    Rejected { message: String },
    /// Transient: retry later.
    #[error("builder unavailable: {message}")]
    Unavailable { message: String },
}

/// The builder port (CodeBuild, or the in-process builder): starts one build per build id.
pub trait Builder: Send + Sync {
    /// Starts a build and returns the builder's id for it. Must be idempotent per
    /// `spec.build_id` (CodeBuild: pass it as the idempotency token) so a resumed handler
    /// does not start a second build.
    fn start(&self, spec: &BuildSpec) -> impl Future<Output = Result<String, BuilderError>> + Send;
}

/// Why a grant could not be minted, revoked or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The install cannot receive grants (bad agent key, missing role): the sync fails.
    #[error("cannot mint a grant: {message}")]
    Refused { message: String },
    /// Transient: retry later.
    #[error("grant minter unavailable: {message}")]
    Unavailable { message: String },
}

/// The grant minter port (STS + ECR, or the embedded registry): one-time, read-only,
/// one-repository pull grants, sealed to the install's agent key, and their revocation.
pub trait GrantMinter: Send + Sync {
    /// The read-only pull grant of one attempt of one sync: exactly `repository`, lasting at
    /// most 15 minutes, sealed to `install.agent_public_key`. The clear credential never leaves
    /// the minter. Refused for a grant id that was revoked.
    fn mint(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant: &GrantId,
    ) -> impl Future<Output = Result<SealedGrant, GrantError>> + Send;
    /// As [`GrantMinter::mint`], for the first attempt of a job the caller has just created
    /// (its create was the write that made it exist): no grant of that attempt was ever
    /// minted, so none can have been revoked, and a minter may skip its revocation lookup
    /// (one read less per install in a fan-out). By default, [`GrantMinter::mint`].
    fn mint_first(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant: &GrantId,
    ) -> impl Future<Output = Result<SealedGrant, GrantError>> + Send {
        self.mint(install, repository, digest, grant)
    }
    /// Invalidates the grant of this attempt (not the sync's later attempts, so a re-mint
    /// after `grant_expired` works); revoking twice is fine. What "invalidates" means is the
    /// backend's: the embedded registry refuses the token; ECR cannot revoke a token, so on
    /// AWS it is a record that [`GrantMinter::is_revoked`] reads.
    fn revoke(&self, grant: &GrantId) -> impl Future<Output = Result<(), GrantError>> + Send;
    /// Whether the grant of this attempt was revoked.
    fn is_revoked(&self, grant: &GrantId) -> impl Future<Output = Result<bool, GrantError>> + Send;
}

/// One attempt of one sync: what a grant is minted for and revoked by. Its text form
/// `<sync id>.a<attempt>` is the grant's job id in the embedded registry and part of the STS
/// session name on AWS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantId {
    pub sync_id: SyncId,
    pub attempt: u32,
}

impl GrantId {
    /// The grant of `attempt` of sync `sync_id`.
    pub fn new(sync_id: SyncId, attempt: u32) -> GrantId {
        GrantId { sync_id, attempt }
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.a{}", self.sync_id, self.attempt)
    }
}

/// The time, for handlers that must not read a clock themselves.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// Fresh ids for new requests (never used where a replay must derive the same id).
pub trait IdGenerator: Send + Sync {
    /// A fresh id, valid in every Ferry id grammar.
    fn new_id(&self) -> String;
}

/// One backend: which adapter fills each port. Handlers take one type parameter `P: Backend`
/// and reach the adapters through [`crate::handlers::Ports<P>`], instead of one parameter per
/// port. Implement it on a marker type (it is never instantiated); the adapters themselves
/// live in `Ports`.
pub trait Backend {
    /// Jobs, installs, lineage, idempotency records and releases (DynamoDB, SQLite).
    type Store: JobStore + crate::release::ReleaseStore;
    /// The agents' queues (SQS, SQLite).
    type Queue: Queue;
    /// The event bus (EventBridge, the local bus).
    type Bus: EventBus;
    /// Starts builds (CodeBuild, the in-process builder).
    type Builder: Builder;
    /// Mints and revokes sealed grants (STS + ECR, the embedded registry).
    type Minter: GrantMinter;
    /// The time handlers stamp on state changes.
    type Clock: Clock;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_one_to_ten() {
        assert!(Batch::<u8>::new(vec![]).is_err());
        assert!(Batch::new(vec![0u8; 10]).is_ok());
        let e = Batch::new(vec![0u8; 11]).unwrap_err();
        assert!(e.to_string().contains("got 11"), "{e}");
        let sizes: Vec<usize> = Batch::chunks((0..25).collect::<Vec<_>>())
            .iter()
            .map(Batch::len)
            .collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        assert!(Batch::<u8>::chunks(vec![]).is_empty());
    }

    #[test]
    fn receive_options_enforce_sqs_limits() {
        assert!(ReceiveOptions::new(10, 20, 43_200).is_ok());
        assert!(ReceiveOptions::new(0, 0, 0).is_err());
        assert!(ReceiveOptions::new(11, 0, 0).is_err());
        assert!(ReceiveOptions::new(1, 21, 0).is_err());
        assert!(ReceiveOptions::new(1, 0, 43_201).is_err());
    }

    #[test]
    fn delays_check_the_sqs_limit() {
        assert_eq!(check_delay(900), Ok(()));
        let e = check_delay(901).unwrap_err().to_string();
        assert!(e.contains("at most 900"), "{e}");
    }

    #[test]
    fn page_limit_is_clamped() {
        assert_eq!(PageRequest::first(0).limit(), 1);
        assert_eq!(PageRequest::first(1000).limit(), MAX_PAGE);
    }
}
