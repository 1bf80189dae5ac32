//! `MemStore`: the job store fake, with DynamoDB-like conditional writes, TTLs and pages. It
//! must never be a production store: nothing is persisted.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{lock, yield_now};
use crate::domain::{Build, Component, Install, LineageRecord, SyncJob};
use crate::id::{AppName, BuildId, ComponentName, Digest, InstallId, ReleaseId, SyncId};
use crate::ports::{
    Conflict, Cursor, IdempotencyClaim, JobStore, Page, PageRequest, StoreError, WriteError,
};
use crate::release::{Release, ReleaseTarget};
use crate::state::Expected;

mod releases;

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
    /// Sync updates still to refuse as unavailable (`fail_next_sync_updates`).
    failing_sync_updates: u32,
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

    /// The next `n` sync job updates answer `Unavailable` (throttling, a lost connection) and
    /// change nothing.
    pub fn fail_next_sync_updates(&self, n: u32) {
        lock(&self.0).failing_sync_updates = n;
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
        if s.failing_sync_updates > 0 {
            s.failing_sync_updates -= 1;
            return Err(WriteError::Store(StoreError::Unavailable {
                message: "injected: sync update refused".into(),
            }));
        }
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
