//! The contract suites run against the in-memory fakes, and fail against a store that ignores
//! its conditions.

use super::*;
use crate::domain::{Component, LineageRecord};
use crate::ports::{IdempotencyClaim, JobStore, WriteError};
use crate::testing::{ManualClock, MemQueue, MemStore};

#[tokio::test]
async fn mem_store_keeps_the_job_store_contract() {
    job_store_contract(|| async { MemStore::new() }).await;
}

#[tokio::test]
async fn mem_queue_keeps_the_queue_contract() {
    queue_contract(|| async {
        let queue = MemQueue::new(ManualClock::new(1_000));
        let (a, b) = (QueueName::new("a").unwrap(), QueueName::new("b").unwrap());
        queue.create_queue(&a);
        queue.create_queue(&b);
        QueueFixture {
            queue,
            a,
            b,
            missing: QueueName::new("missing").unwrap(),
        }
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "contract")]
async fn a_store_that_ignores_conditions_fails_the_contract() {
    job_store_contract(|| async { sloppy::SloppyStore(MemStore::new()) }).await;
}

/// A store that writes unconditionally: the suite must catch it.
mod sloppy {
    use super::*;
    use crate::state::Expected;

    pub struct SloppyStore(pub MemStore);

    impl JobStore for SloppyStore {
        async fn put_component(&self, c: &Component) -> Result<(), StoreError> {
            self.0.put_component(c).await
        }
        async fn get_component(
            &self,
            a: &AppName,
            n: &ComponentName,
        ) -> Result<Option<Component>, StoreError> {
            self.0.get_component(a, n).await
        }
        async fn put_install(&self, i: &Install) -> Result<(), StoreError> {
            self.0.put_install(i).await
        }
        async fn get_install(&self, i: &InstallId) -> Result<Option<Install>, StoreError> {
            self.0.get_install(i).await
        }
        async fn create_build(&self, b: &Build) -> Result<(), WriteError<Build>> {
            self.0.create_build(b).await
        }
        async fn get_build(&self, i: &BuildId) -> Result<Option<Build>, StoreError> {
            self.0.get_build(i).await
        }
        async fn update_build(&self, b: &Build, _: Expected) -> Result<(), WriteError<Build>> {
            // Ignores the condition: reads the current version and writes over it.
            let cur = self.0.get_build(&b.id).await?;
            match cur {
                Some(c) => self.0.update_build(b, c.state.expected()).await,
                None => self.0.create_build(b).await,
            }
        }
        async fn create_sync(&self, j: &SyncJob) -> Result<(), WriteError<SyncJob>> {
            self.0.create_sync(j).await
        }
        async fn get_sync(&self, i: &SyncId) -> Result<Option<SyncJob>, StoreError> {
            self.0.get_sync(i).await
        }
        async fn update_sync(&self, j: &SyncJob, e: Expected) -> Result<(), WriteError<SyncJob>> {
            self.0.update_sync(j, e).await
        }
        async fn record_lineage(&self, r: &LineageRecord) -> Result<LineageRecord, StoreError> {
            self.0.record_lineage(r).await
        }
        async fn idempotency_begin(
            &self,
            k: &str,
            n: u64,
            p: u64,
            e: u64,
        ) -> Result<IdempotencyClaim, StoreError> {
            self.0.idempotency_begin(k, n, p, e).await
        }
        async fn idempotency_complete(&self, k: &str, r: &str, e: u64) -> Result<(), StoreError> {
            self.0.idempotency_complete(k, r, e).await
        }
        async fn idempotency_release(&self, k: &str) -> Result<(), StoreError> {
            self.0.idempotency_release(k).await
        }
        async fn count_security_event(&self, k: &str, now: u64) -> Result<u64, StoreError> {
            self.0.count_security_event(k, now).await
        }
        async fn security_event_count(&self, k: &str) -> Result<(u64, Option<u64>), StoreError> {
            self.0.security_event_count(k).await
        }
        async fn record_heartbeat(
            &self,
            t: &crate::telemetry::InstallTelemetry,
        ) -> Result<crate::telemetry::InstallTelemetry, StoreError> {
            self.0.record_heartbeat(t).await
        }
        async fn get_telemetry(
            &self,
            i: &InstallId,
        ) -> Result<Option<crate::telemetry::InstallTelemetry>, StoreError> {
            self.0.get_telemetry(i).await
        }
        async fn stale_syncs(
            &self,
            before: u64,
            p: &PageRequest,
        ) -> Result<Page<SyncJob>, StoreError> {
            self.0.stale_syncs(before, p).await
        }
        async fn builds_by_component(
            &self,
            a: &AppName,
            c: &ComponentName,
            p: &PageRequest,
        ) -> Result<Page<Build>, StoreError> {
            self.0.builds_by_component(a, c, p).await
        }
        async fn syncs_by_install(
            &self,
            i: &InstallId,
            p: &PageRequest,
        ) -> Result<Page<SyncJob>, StoreError> {
            self.0.syncs_by_install(i, p).await
        }
        async fn syncs_by_build(
            &self,
            b: &BuildId,
            p: &PageRequest,
        ) -> Result<Page<SyncJob>, StoreError> {
            self.0.syncs_by_build(b, p).await
        }
        async fn installs_by_component(
            &self,
            a: &AppName,
            c: &ComponentName,
            p: &PageRequest,
        ) -> Result<Page<Install>, StoreError> {
            self.0.installs_by_component(a, c, p).await
        }
        async fn lineage_by_digest(
            &self,
            d: &Digest,
            p: &PageRequest,
        ) -> Result<Page<LineageRecord>, StoreError> {
            self.0.lineage_by_digest(d, p).await
        }
    }
}
