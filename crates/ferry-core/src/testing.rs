//! In-memory fakes of every port, for unit tests here and in other crates (feature `testing`).
//!
//! They follow the documented port semantics (conditional writes, TTLs, visibility timeouts,
//! receive counts, batch limits) closely enough for the contract suite in [`crate::contract`] to
//! pass against them, and they record calls so tests can assert on side effects. Every store
//! and queue call yields once before acting, so `join!`ed handlers really interleave. They must
//! never be used as a production backend: nothing is persisted.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::domain::{Build, Component, Install, LineageRecord, SealedGrant, SyncJob};
use crate::event::Event;
use crate::handlers::{Config, Ports};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, QueueName, ReleaseId, Repository, SyncId,
};
use crate::ports::{
    Batch, BuildSpec, Builder, BuilderError, BusError, Clock, Conflict, Cursor, EntryFailure,
    EventBus, GrantError, GrantId, GrantMinter, IdGenerator, IdempotencyClaim, JobStore, MessageId,
    Page, PageRequest, Queue, QueueError, ReceiptHandle, ReceiveOptions, ReceivedMessage,
    StoreError, WriteError, MAX_MESSAGE_BYTES,
};
use crate::release::{Release, ReleaseStore, ReleaseTarget};
use crate::state::Expected;
use crate::trust::VendorKey;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later assertion into a poison error.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns Pending once, so concurrent futures get a turn between read and write.
pub fn yield_now() -> impl Future<Output = ()> + Send {
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    YieldOnce(false)
}

// ---------------------------------------------------------------------------------------------
// Clock and ids

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ids "000001", "000002", ...
#[derive(Debug, Clone, Default)]
pub struct SeqIds(Arc<AtomicU64>);

impl IdGenerator for SeqIds {
    fn new_id(&self) -> String {
        format!("{:06}", self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// JobStore

#[derive(Debug, Clone)]
struct IdemRecord {
    completed: Option<String>,
    in_progress_until: u64,
    expires_at: u64,
}

#[derive(Debug, Default)]
struct StoreState {
    components: BTreeMap<(AppName, ComponentName), Component>,
    installs: BTreeMap<InstallId, Install>,
    builds: BTreeMap<BuildId, Build>,
    syncs: BTreeMap<SyncId, SyncJob>,
    lineage: BTreeMap<(Digest, InstallId), LineageRecord>,
    idempotency: BTreeMap<String, IdemRecord>,
    security: BTreeMap<String, (u64, u64)>,
    releases: BTreeMap<ReleaseId, Release>,
    targets: BTreeMap<(ReleaseId, u32, InstallId), ReleaseTarget>,
    telemetry: BTreeMap<InstallId, crate::telemetry::InstallTelemetry>,
    writes: u64,
}

impl ReleaseStore for MemStore {
    async fn create_release(&self, release: &Release) -> Result<(), WriteError<Release>> {
        yield_now().await;
        let mut s = lock(&self.0);
        insert_if_absent(&mut s.releases, release.id.clone(), release)?;
        s.writes += 1;
        Ok(())
    }

    async fn get_release(&self, id: &ReleaseId) -> Result<Option<Release>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0).releases.get(id).cloned())
    }

    async fn update_release(
        &self,
        next: &Release,
        expected: u64,
    ) -> Result<(), WriteError<Release>> {
        yield_now().await;
        let mut s = lock(&self.0);
        match s.releases.get(&next.id) {
            Some(cur) if cur.version == expected => {
                s.releases.insert(next.id.clone(), next.clone());
                s.writes += 1;
                Ok(())
            }
            cur => Err(WriteError::Conflict(Conflict {
                current: cur.cloned(),
            })),
        }
    }

    async fn releases_by_app(
        &self,
        app: &AppName,
        page: &PageRequest,
    ) -> Result<Page<Release>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .releases
            .values()
            .filter(|r| &r.app == app)
            .map(|r| ((Reverse(r.created_at), Reverse(r.id.clone())), r.clone()))
            .collect();
        paginate(items, page)
    }

    async fn create_target(&self, target: &ReleaseTarget) -> Result<(), WriteError<ReleaseTarget>> {
        yield_now().await;
        let mut s = lock(&self.0);
        let key = (
            target.release_id.clone(),
            target.step,
            target.install_id.clone(),
        );
        // One target per (release, install), whatever its step.
        if let Some(cur) = s
            .targets
            .values()
            .find(|t| t.release_id == target.release_id && t.install_id == target.install_id)
        {
            return Err(WriteError::Conflict(Conflict {
                current: Some(cur.clone()),
            }));
        }
        s.targets.insert(key, target.clone());
        s.writes += 1;
        Ok(())
    }

    async fn get_target(
        &self,
        release: &ReleaseId,
        install: &InstallId,
    ) -> Result<Option<ReleaseTarget>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0)
            .targets
            .values()
            .find(|t| &t.release_id == release && &t.install_id == install)
            .cloned())
    }

    async fn update_target(
        &self,
        next: &ReleaseTarget,
        expected: u64,
    ) -> Result<(), WriteError<ReleaseTarget>> {
        yield_now().await;
        let mut s = lock(&self.0);
        let key = (next.release_id.clone(), next.step, next.install_id.clone());
        match s.targets.get(&key) {
            Some(cur) if cur.version == expected => {
                s.targets.insert(key, next.clone());
                s.writes += 1;
                Ok(())
            }
            cur => Err(WriteError::Conflict(Conflict {
                current: cur.cloned(),
            })),
        }
    }

    async fn targets_by_step(
        &self,
        release: &ReleaseId,
        step: u32,
        page: &PageRequest,
    ) -> Result<Page<ReleaseTarget>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .targets
            .values()
            .filter(|t| &t.release_id == release && t.step == step)
            .map(|t| (t.install_id.clone(), t.clone()))
            .collect();
        paginate(items, page)
    }

    async fn running_releases(&self, page: &PageRequest) -> Result<Page<Release>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .releases
            .values()
            .filter(|r| r.status == crate::release::ReleaseStatus::Running)
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        paginate(items, page)
    }

    async fn get_lineage(
        &self,
        digest: &Digest,
        install: &InstallId,
    ) -> Result<Option<LineageRecord>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0)
            .lineage
            .get(&(digest.clone(), install.clone()))
            .cloned())
    }
}

/// A JobStore in memory, with DynamoDB-like conditional writes.
#[derive(Debug, Clone, Default)]
pub struct MemStore(Arc<Mutex<StoreState>>);

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    pub fn builds(&self) -> Vec<Build> {
        lock(&self.0).builds.values().cloned().collect()
    }

    pub fn syncs(&self) -> Vec<SyncJob> {
        lock(&self.0).syncs.values().cloned().collect()
    }

    pub fn lineage(&self) -> Vec<LineageRecord> {
        lock(&self.0).lineage.values().cloned().collect()
    }

    /// Successful item writes so far (creates, updates, lineage), not counting reads.
    pub fn write_count(&self) -> u64 {
        lock(&self.0).writes
    }

    /// A comparable picture of all job state, for "replay changes nothing" assertions.
    pub fn snapshot(&self) -> String {
        let s = lock(&self.0);
        format!("{:?}|{:?}|{:?}", s.builds, s.syncs, s.lineage)
    }
}

fn encode_cursor<K: Serialize>(key: &K) -> Result<Cursor, StoreError> {
    serde_json::to_string(key)
        .map(Cursor::new)
        .map_err(|e| StoreError::Invalid {
            message: e.to_string(),
        })
}

/// Pages over items sorted by `K`; the cursor is the last key returned.
fn paginate<K, T>(mut items: Vec<(K, T)>, page: &PageRequest) -> Result<Page<T>, StoreError>
where
    K: Ord + Serialize + DeserializeOwned,
{
    items.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(c) = &page.cursor {
        let after: K = serde_json::from_str(c.as_str()).map_err(|_| StoreError::Invalid {
            message: "the cursor is not one this store returned; start from the first page"
                .to_string(),
        })?;
        items.retain(|(k, _)| *k > after);
    }
    let limit = page.limit() as usize;
    let more = items.len() > limit;
    items.truncate(limit);
    let next = match (more, items.last()) {
        (true, Some((k, _))) => Some(encode_cursor(k)?),
        _ => None,
    };
    Ok(Page {
        items: items.into_iter().map(|(_, t)| t).collect(),
        next,
    })
}

fn conditional_update<K: Ord, T: Clone + std::fmt::Debug>(
    map: &mut BTreeMap<K, T>,
    key: K,
    next: &T,
    expected: Expected,
    state_of: impl Fn(&T) -> Expected,
) -> Result<(), WriteError<T>> {
    match map.get(&key) {
        Some(cur) if state_of(cur) == expected => {
            map.insert(key, next.clone());
            Ok(())
        }
        cur => Err(WriteError::Conflict(Conflict {
            current: cur.cloned(),
        })),
    }
}

/// Put-if-absent, as the store port's `create_*` require; the twin of `conditional_update`.
fn insert_if_absent<K: Ord, T: Clone + std::fmt::Debug>(
    map: &mut BTreeMap<K, T>,
    key: K,
    value: &T,
) -> Result<(), WriteError<T>> {
    if let Some(cur) = map.get(&key) {
        return Err(WriteError::Conflict(Conflict {
            current: Some(cur.clone()),
        }));
    }
    map.insert(key, value.clone());
    Ok(())
}

impl JobStore for MemStore {
    async fn put_component(&self, component: &Component) -> Result<(), StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        s.components.insert(
            (component.app.clone(), component.name.clone()),
            component.clone(),
        );
        Ok(())
    }

    async fn get_component(
        &self,
        app: &AppName,
        name: &ComponentName,
    ) -> Result<Option<Component>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0)
            .components
            .get(&(app.clone(), name.clone()))
            .cloned())
    }

    async fn put_install(&self, install: &Install) -> Result<(), StoreError> {
        yield_now().await;
        lock(&self.0)
            .installs
            .insert(install.id.clone(), install.clone());
        Ok(())
    }

    async fn get_install(&self, id: &InstallId) -> Result<Option<Install>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0).installs.get(id).cloned())
    }

    async fn create_build(&self, build: &Build) -> Result<(), WriteError<Build>> {
        yield_now().await;
        let mut s = lock(&self.0);
        insert_if_absent(&mut s.builds, build.id.clone(), build)?;
        s.writes += 1;
        Ok(())
    }

    async fn get_build(&self, id: &BuildId) -> Result<Option<Build>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0).builds.get(id).cloned())
    }

    async fn update_build(
        &self,
        next: &Build,
        expected: Expected,
    ) -> Result<(), WriteError<Build>> {
        yield_now().await;
        let mut s = lock(&self.0);
        conditional_update(&mut s.builds, next.id.clone(), next, expected, |b| {
            b.state.expected()
        })?;
        s.writes += 1;
        Ok(())
    }

    async fn create_sync(&self, sync: &SyncJob) -> Result<(), WriteError<SyncJob>> {
        yield_now().await;
        let mut s = lock(&self.0);
        insert_if_absent(&mut s.syncs, sync.id.clone(), sync)?;
        s.writes += 1;
        Ok(())
    }

    async fn get_sync(&self, id: &SyncId) -> Result<Option<SyncJob>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0).syncs.get(id).cloned())
    }

    async fn update_sync(
        &self,
        next: &SyncJob,
        expected: Expected,
    ) -> Result<(), WriteError<SyncJob>> {
        yield_now().await;
        let mut s = lock(&self.0);
        conditional_update(&mut s.syncs, next.id.clone(), next, expected, |j| {
            j.state.expected()
        })?;
        s.writes += 1;
        Ok(())
    }

    async fn record_lineage(&self, record: &LineageRecord) -> Result<LineageRecord, StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        let key = (record.digest.clone(), record.install_id.clone());
        if let Some(cur) = s.lineage.get(&key) {
            return Ok(cur.clone());
        }
        s.lineage.insert(key, record.clone());
        s.writes += 1;
        Ok(record.clone())
    }

    async fn idempotency_begin(
        &self,
        key: &str,
        now: u64,
        in_progress_until: u64,
        expires_at: u64,
    ) -> Result<IdempotencyClaim, StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        if let Some(rec) = s.idempotency.get(key) {
            let live = now < rec.expires_at;
            match &rec.completed {
                Some(result) if live => {
                    return Ok(IdempotencyClaim::Completed {
                        result: result.clone(),
                    })
                }
                None if live && now < rec.in_progress_until => {
                    return Ok(IdempotencyClaim::InProgress {
                        until: rec.in_progress_until,
                    })
                }
                _ => {}
            }
        }
        s.idempotency.insert(
            key.to_string(),
            IdemRecord {
                completed: None,
                in_progress_until,
                expires_at,
            },
        );
        Ok(IdempotencyClaim::Acquired)
    }

    async fn idempotency_complete(
        &self,
        key: &str,
        result: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        let in_progress_until = s.idempotency.get(key).map_or(0, |r| r.in_progress_until);
        s.idempotency.insert(
            key.to_string(),
            IdemRecord {
                completed: Some(result.to_string()),
                in_progress_until,
                expires_at,
            },
        );
        Ok(())
    }

    async fn count_security_event(&self, kind: &str, now: u64) -> Result<u64, StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        let entry = s.security.entry(kind.to_string()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = now;
        Ok(entry.0)
    }

    async fn security_event_count(&self, kind: &str) -> Result<(u64, Option<u64>), StoreError> {
        yield_now().await;
        Ok(lock(&self.0)
            .security
            .get(kind)
            .map_or((0, None), |(n, at)| (*n, Some(*at))))
    }

    async fn record_heartbeat(
        &self,
        t: &crate::telemetry::InstallTelemetry,
    ) -> Result<crate::telemetry::InstallTelemetry, StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        if let Some(cur) = s.telemetry.get(&t.install_id) {
            if cur.last_seen > t.last_seen {
                return Ok(cur.clone());
            }
        }
        s.telemetry.insert(t.install_id.clone(), t.clone());
        s.writes += 1;
        Ok(t.clone())
    }

    async fn get_telemetry(
        &self,
        install: &InstallId,
    ) -> Result<Option<crate::telemetry::InstallTelemetry>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0).telemetry.get(install).cloned())
    }

    async fn stale_syncs(
        &self,
        before: u64,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .syncs
            .values()
            .filter(|j| !j.status().is_terminal() && j.state.updated_at < before)
            .map(|j| ((j.state.updated_at, j.id.clone()), j.clone()))
            .collect();
        paginate(items, page)
    }

    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        yield_now().await;
        let mut s = lock(&self.0);
        if s.idempotency
            .get(key)
            .is_some_and(|r| r.completed.is_none())
        {
            s.idempotency.remove(key);
        }
        Ok(())
    }

    async fn builds_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> Result<Page<Build>, StoreError> {
        yield_now().await;
        let items: Vec<_> = lock(&self.0)
            .builds
            .values()
            .filter(|b| &b.app == app && &b.component == component)
            .map(|b| {
                (
                    (Reverse(b.state.created_at), Reverse(b.id.to_string())),
                    b.clone(),
                )
            })
            .collect();
        paginate(items, page)
    }

    async fn syncs_by_install(
        &self,
        install: &InstallId,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        yield_now().await;
        let items: Vec<_> = lock(&self.0)
            .syncs
            .values()
            .filter(|j| &j.install_id == install)
            .map(|j| {
                (
                    (Reverse(j.state.created_at), Reverse(j.id.to_string())),
                    j.clone(),
                )
            })
            .collect();
        paginate(items, page)
    }

    async fn syncs_by_build(
        &self,
        build: &BuildId,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        yield_now().await;
        let items: Vec<_> = lock(&self.0)
            .syncs
            .values()
            .filter(|j| &j.build_id == build)
            .map(|j| ((j.install_id.to_string(), j.id.to_string()), j.clone()))
            .collect();
        paginate(items, page)
    }

    async fn installs_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> Result<Page<Install>, StoreError> {
        yield_now().await;
        let items: Vec<_> = lock(&self.0)
            .installs
            .values()
            .filter(|i| i.subscribes_to(app, component))
            .map(|i| (i.id.to_string(), i.clone()))
            .collect();
        paginate(items, page)
    }

    async fn lineage_by_digest(
        &self,
        digest: &Digest,
        page: &PageRequest,
    ) -> Result<Page<LineageRecord>, StoreError> {
        yield_now().await;
        let items: Vec<_> = lock(&self.0)
            .lineage
            .values()
            .filter(|r| &r.digest == digest)
            .map(|r| (r.install_id.to_string(), r.clone()))
            .collect();
        paginate(items, page)
    }
}

// ---------------------------------------------------------------------------------------------
// Queue

#[derive(Debug, Clone)]
struct StoredMessage {
    id: String,
    body: String,
    receive_count: u32,
    visible_at: u64,
    receipt: Option<String>,
}

#[derive(Debug, Default)]
struct QueueState {
    queues: BTreeMap<QueueName, Vec<StoredMessage>>,
    next_id: u64,
    sends: u64,
    fail_sends: u32,
}

/// SQS-like queues in memory: visibility timeouts on a [`ManualClock`], receive counts, fresh
/// receipt handles per receive. Long polls return at once (there is nothing to wait for).
#[derive(Debug, Clone)]
pub struct MemQueue {
    state: Arc<Mutex<QueueState>>,
    clock: ManualClock,
}

impl MemQueue {
    pub fn new(clock: ManualClock) -> MemQueue {
        MemQueue {
            state: Arc::default(),
            clock,
        }
    }

    pub fn create_queue(&self, name: &QueueName) {
        lock(&self.state).queues.entry(name.clone()).or_default();
    }

    /// Bodies of all messages not yet deleted, visible or not, oldest first.
    pub fn bodies(&self, name: &QueueName) -> Vec<String> {
        lock(&self.state)
            .queues
            .get(name)
            .map(|q| q.iter().map(|m| m.body.clone()).collect())
            .unwrap_or_default()
    }

    /// Messages accepted so far, over all queues and calls.
    pub fn send_count(&self) -> u64 {
        lock(&self.state).sends
    }

    /// Makes the next `n` sends fail as unavailable.
    pub fn fail_next_sends(&self, n: u32) {
        lock(&self.state).fail_sends = n;
    }

    fn push(
        &self,
        s: &mut QueueState,
        queue: &QueueName,
        body: &str,
    ) -> Result<MessageId, QueueError> {
        self.push_delayed(s, queue, body, 0)
    }

    fn push_delayed(
        &self,
        s: &mut QueueState,
        queue: &QueueName,
        body: &str,
        delay_ms: u64,
    ) -> Result<MessageId, QueueError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(QueueError::Invalid {
                message: format!(
                    "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                    body.len()
                ),
            });
        }
        if !s.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue {
                queue: queue.clone(),
            });
        }
        s.next_id += 1;
        let id = format!("m-{:08}", s.next_id);
        let now = self.clock.now_ms();
        s.sends += 1;
        if let Some(q) = s.queues.get_mut(queue) {
            q.push(StoredMessage {
                id: id.clone(),
                body: body.to_string(),
                receive_count: 0,
                visible_at: now + delay_ms,
                receipt: None,
            });
        }
        Ok(MessageId(id))
    }

    fn find<'a>(
        s: &'a mut QueueState,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(&'a mut Vec<StoredMessage>, usize), QueueError> {
        let q = s
            .queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::NoSuchQueue {
                queue: queue.clone(),
            })?;
        let pos = q
            .iter()
            .position(|m| m.receipt.as_deref() == Some(receipt.0.as_str()))
            .ok_or(QueueError::InvalidReceiptHandle)?;
        Ok((q, pos))
    }
}

impl Queue for MemQueue {
    async fn send(&self, queue: &QueueName, body: &str) -> Result<MessageId, QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        if s.fail_sends > 0 {
            s.fail_sends -= 1;
            return Err(QueueError::Unavailable {
                message: "injected send failure".into(),
            });
        }
        self.push(&mut s, queue, body)
    }

    async fn send_delayed(
        &self,
        queue: &QueueName,
        body: &str,
        delay_seconds: u32,
    ) -> Result<MessageId, QueueError> {
        crate::ports::check_delay(delay_seconds)?;
        yield_now().await;
        let mut s = lock(&self.state);
        self.push_delayed(&mut s, queue, body, u64::from(delay_seconds) * 1000)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        bodies: &Batch<String>,
    ) -> Result<Vec<Result<MessageId, EntryFailure>>, QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        if !s.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue {
                queue: queue.clone(),
            });
        }
        Ok(bodies
            .items()
            .iter()
            .map(|b| {
                self.push(&mut s, queue, b).map_err(|e| EntryFailure {
                    code: "InvalidMessage".into(),
                    message: e.to_string(),
                    sender_fault: true,
                })
            })
            .collect())
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        yield_now().await;
        let now = self.clock.now_ms();
        let mut s = lock(&self.state);
        s.next_id += 1;
        let nonce = s.next_id;
        let q = s
            .queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::NoSuchQueue {
                queue: queue.clone(),
            })?;
        let mut out = Vec::new();
        for m in q.iter_mut().filter(|m| m.visible_at <= now) {
            if out.len() >= options.max_messages() as usize {
                break;
            }
            m.receive_count += 1;
            m.visible_at = now + u64::from(options.visibility_seconds()) * 1000;
            let receipt = format!("{}:{}:{nonce}", m.id, m.receive_count);
            m.receipt = Some(receipt.clone());
            out.push(ReceivedMessage {
                message_id: MessageId(m.id.clone()),
                receipt_handle: ReceiptHandle(receipt),
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
        }
        Ok(out)
    }

    async fn delete(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<(), QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        let (q, pos) = MemQueue::find(&mut s, queue, receipt)?;
        q.remove(pos);
        Ok(())
    }

    async fn delete_batch(
        &self,
        queue: &QueueName,
        receipts: &Batch<ReceiptHandle>,
    ) -> Result<Vec<Result<(), EntryFailure>>, QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        if !s.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue {
                queue: queue.clone(),
            });
        }
        Ok(receipts
            .items()
            .iter()
            .map(|r| {
                MemQueue::find(&mut s, queue, r)
                    .map(|(q, pos)| {
                        q.remove(pos);
                    })
                    .map_err(|e| EntryFailure {
                        code: "ReceiptHandleIsInvalid".into(),
                        message: e.to_string(),
                        sender_fault: true,
                    })
            })
            .collect())
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        seconds: u32,
    ) -> Result<(), QueueError> {
        yield_now().await;
        let now = self.clock.now_ms();
        let mut s = lock(&self.state);
        let (q, pos) = MemQueue::find(&mut s, queue, receipt)?;
        q[pos].visible_at = now + u64::from(seconds) * 1000;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// EventBus, Builder, GrantMinter

#[derive(Debug, Default)]
struct BusState {
    calls: Vec<Vec<Event>>,
    fail_entries: usize,
}

/// Records every put_events call; can fail some entries once.
#[derive(Debug, Clone, Default)]
pub struct MemBus(Arc<Mutex<BusState>>);

impl MemBus {
    /// Each call's events, in order (failed entries included).
    pub fn calls(&self) -> Vec<Vec<Event>> {
        lock(&self.0).calls.clone()
    }

    /// All published events that were accepted, in order.
    pub fn accepted(&self) -> Vec<Event> {
        lock(&self.0).calls.iter().flatten().cloned().collect()
    }

    /// Rejects the next `n` entries (as a throttled bus would).
    pub fn fail_next_entries(&self, n: usize) {
        lock(&self.0).fail_entries = n;
    }
}

impl EventBus for MemBus {
    async fn put_events(
        &self,
        events: &Batch<Event>,
    ) -> Result<Vec<Result<String, EntryFailure>>, BusError> {
        let mut s = lock(&self.0);
        let mut accepted = Vec::new();
        let mut results = Vec::new();
        for ev in events.items() {
            if s.fail_entries > 0 {
                s.fail_entries -= 1;
                results.push(Err(EntryFailure {
                    code: "ThrottlingException".into(),
                    message: "injected entry failure".into(),
                    sender_fault: false,
                }));
            } else {
                accepted.push(ev.clone());
                results.push(Ok(format!("bus-{}", s.calls.len())));
            }
        }
        s.calls.push(accepted);
        Ok(results)
    }
}

#[derive(Debug, Default)]
struct BuilderState {
    starts: Vec<BuildSpec>,
    reject: Option<String>,
    unavailable: bool,
}

/// Returns `ext-<build id>` (idempotent per build id, like CodeBuild's idempotency token).
#[derive(Debug, Clone, Default)]
pub struct MemBuilder(Arc<Mutex<BuilderState>>);

impl MemBuilder {
    pub fn starts(&self) -> Vec<BuildSpec> {
        lock(&self.0).starts.clone()
    }

    pub fn reject_with(&self, message: &str) {
        lock(&self.0).reject = Some(message.to_string());
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.0).unavailable = unavailable;
    }
}

impl Builder for MemBuilder {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        let mut s = lock(&self.0);
        if s.unavailable {
            return Err(BuilderError::Unavailable {
                message: "injected outage".into(),
            });
        }
        if let Some(message) = &s.reject {
            return Err(BuilderError::Rejected {
                message: message.clone(),
            });
        }
        s.starts.push(spec.clone());
        Ok(format!("ext-{}", spec.build_id))
    }
}

/// The lifetime of fake grants: the 15 minute ceiling.
pub const FAKE_GRANT_TTL_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub install: InstallId,
    pub repository: Repository,
    pub digest: Digest,
    pub sync_id: SyncId,
    pub attempt: u32,
    pub grant: SealedGrant,
}

#[derive(Debug, Default)]
struct MinterState {
    minted: Vec<Minted>,
    revoked: Vec<GrantId>,
    refuse: Option<String>,
    // fanout3 (issue 12): transient minter outages.
    unavailable: u32,
}

/// Mints fake "sealed" grants: opaque bytes naming the agent key and a counter, no secret.
#[derive(Debug, Clone)]
pub struct MemMinter {
    state: Arc<Mutex<MinterState>>,
    clock: ManualClock,
}

impl MemMinter {
    pub fn new(clock: ManualClock) -> MemMinter {
        MemMinter {
            state: Arc::default(),
            clock,
        }
    }

    pub fn minted(&self) -> Vec<Minted> {
        lock(&self.state).minted.clone()
    }

    /// The syncs whose grants were revoked (any attempt), in order.
    pub fn revoked(&self) -> Vec<SyncId> {
        lock(&self.state)
            .revoked
            .iter()
            .map(|g| g.sync_id.clone())
            .collect()
    }

    /// The grants revoked, per attempt, in order.
    pub fn revoked_grants(&self) -> Vec<GrantId> {
        lock(&self.state).revoked.clone()
    }

    pub fn refuse_with(&self, message: &str) {
        lock(&self.state).refuse = Some(message.to_string());
    }

    // fanout3 (issue 12): transient minter outages.
    /// The next `n` mints fail as unavailable (STS or ECR throttling), then they work again.
    pub fn fail_next_mints(&self, n: u32) {
        lock(&self.state).unavailable = n;
    }
}

impl GrantMinter for MemMinter {
    async fn mint(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant_id: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        let mut s = lock(&self.state);
        if s.unavailable > 0 {
            s.unavailable -= 1;
            return Err(GrantError::Unavailable {
                message: "injected outage".into(),
            });
        }
        if let Some(message) = &s.refuse {
            return Err(GrantError::Refused {
                message: message.clone(),
            });
        }
        if s.revoked.contains(grant_id) {
            return Err(GrantError::Refused {
                message: format!("grant {grant_id} was revoked"),
            });
        }
        let n = s.minted.len() + 1;
        let ciphertext = format!("sealed-to:{}:grant-{n}", install.agent_public_key).into_bytes();
        let grant = SealedGrant::new(ciphertext, self.clock.now_ms() + FAKE_GRANT_TTL_MS);
        s.minted.push(Minted {
            install: install.id.clone(),
            repository: repository.clone(),
            digest: digest.clone(),
            sync_id: grant_id.sync_id.clone(),
            attempt: grant_id.attempt,
            grant: grant.clone(),
        });
        Ok(grant)
    }

    async fn revoke(&self, grant: &GrantId) -> Result<(), GrantError> {
        lock(&self.state).revoked.push(grant.clone());
        Ok(())
    }

    async fn is_revoked(&self, grant: &GrantId) -> Result<bool, GrantError> {
        Ok(lock(&self.state).revoked.contains(grant))
    }
}

// ---------------------------------------------------------------------------------------------
// All together

/// The in-memory backend: every port a fake.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fakes;

impl crate::ports::Backend for Fakes {
    type Store = MemStore;
    type Queue = MemQueue;
    type Bus = MemBus;
    type Builder = MemBuilder;
    type Minter = MemMinter;
    type Clock = ManualClock;
}

/// The handlers' ports over the fakes.
pub type FakePorts = Ports<Fakes>;

/// The release queue of the fake ports (created by [`fake_ports`]).
pub const FAKE_RELEASE_QUEUE: &str = "release";

/// Fresh fakes sharing one clock that starts at `start_ms`.
pub fn fake_ports(start_ms: u64) -> FakePorts {
    let clock = ManualClock::new(start_ms);
    let release_queue =
        QueueName::new(FAKE_RELEASE_QUEUE).unwrap_or_else(|e| panic!("release queue name: {e}"));
    let queue = MemQueue::new(clock.clone());
    queue.create_queue(&release_queue);
    Ports {
        store: MemStore::new(),
        queue,
        bus: MemBus::default(),
        builder: MemBuilder::default(),
        minter: MemMinter::new(clock.clone()),
        clock,
        config: Config::default(),
        vendor_key: Arc::new(test_vendor_key()),
        release_queue,
    }
}

/// A test install's agent key pair, derived from its id so tests need not carry keys around
/// (tests only: a real agent generates its key with `ferry-agent keygen`).
pub fn test_agent_key(install: &InstallId) -> crate::seal::AgentKeypair {
    use base64::Engine as _;
    use sha2::Digest as _;
    let seed = sha2::Sha256::digest(format!("agent-key-of-{install}"));
    let text = format!(
        "{}{}",
        crate::seal::SECRET_KEY_PREFIX,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)
    );
    crate::seal::AgentKeypair::from_secret_string(&text)
        .unwrap_or_else(|e| panic!("test agent key: {e}"))
}

/// A report signed by the test agent key of its install ([`test_agent_key`]).
pub fn signed_by_test_agent(mut report: crate::event::SyncReported) -> crate::event::SyncReported {
    test_agent_key(&report.install_id)
        .report_key()
        .sign(&mut report);
    report
}

/// The vendor key every fake port set shares: a fixed secret, so sync ids are stable across
/// test runs (tests only; a real vendor key comes from `VendorKey::generate`).
pub fn test_vendor_key() -> VendorKey {
    let text = format!(
        "{}{}",
        crate::trust::VENDOR_SECRET_PREFIX,
        "dGVzdC12ZW5kb3Ita2V5LWZvci1mZXJyeS10ZXN0cyE"
    );
    VendorKey::from_secret_string(&text).unwrap_or_else(|e| panic!("test vendor key: {e}"))
}
