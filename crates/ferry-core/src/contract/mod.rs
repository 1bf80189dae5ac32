//! Port contract suites (feature `contract`): the semantics every `JobStore` and `Queue`
//! adapter must keep, as plain async functions the adapters' own tests call.
//!
//! ```ignore
//! #[tokio::test]
//! async fn sqlite_store_keeps_the_contract() {
//!     ferry_core::contract::job_store_contract(|| async { SqliteStore::open_in_memory() }).await;
//! }
//! ```
//!
//! Each suite panics with a message naming the broken rule. The suites never sleep and never
//! depend on wall-clock time: idempotency TTLs use explicit `now` values, and visibility is
//! reset with `change_visibility(.., 0)`. They must never assert what SQS or DynamoDB do not
//! guarantee (message order on a standard queue, exact page sizes before the last page).

use std::fmt::Debug;
use std::future::Future;

use crate::domain::{Build, Install, RegistryTarget, SyncJob};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository, SyncId,
};
use crate::ports::{Page, PageRequest, StoreError};

mod queue;
mod store;
mod store_jobs;
#[cfg(test)]
mod tests;

pub use queue::{queue_contract, QueueFixture};
pub use store::job_store_contract;

fn ok<T, E: Debug>(r: Result<T, E>, rule: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("contract: {rule}: unexpected error {e:?}"),
    }
}

fn id<T, E: Debug>(r: Result<T, E>) -> T {
    ok(r, "building a test id")
}

fn app(s: &str) -> AppName {
    id(AppName::new(s))
}

fn comp(s: &str) -> ComponentName {
    id(ComponentName::new(s))
}

fn digest(n: u8) -> Digest {
    id(Digest::new(format!("sha256:{}", hex::encode([n; 32]))))
}

fn repo(s: &str) -> Repository {
    id(Repository::new(s))
}

fn build(n: u32, a: &str, c: &str, created_at: u64) -> Build {
    Build::new(
        id(BuildId::new(format!("cb-{n:04}"))),
        app(a),
        comp(c),
        "refs/heads/main".into(),
        "contract".into(),
        created_at,
    )
}

fn sync(n: u32, b: &str, i: &str, created_at: u64) -> SyncJob {
    SyncJob::new(
        id(SyncId::new(format!("cs-{n:04}"))),
        id(BuildId::new(b)),
        id(InstallId::new(i)),
        repo("shop/web"),
        digest(1),
        created_at,
    )
}

fn install(i: &str, a: &str, components: &[&str]) -> Install {
    Install {
        id: id(InstallId::new(i)),
        app: app(a),
        registry: RegistryTarget {
            endpoint: "registry.install.test".into(),
            namespace: "vendor".into(),
        },
        agent_public_key: format!("key-{i}"),
        agent_report_key: format!("report-key-{i}"),
        queue: id(QueueName::new(format!("q-{i}"))),
        components: components.iter().map(|c| comp(c)).collect(),
    }
}

/// Follows cursors to the end (bounded, so a cursor loop fails instead of hanging).
async fn collect<T, F, Fut>(limit: u32, mut query: F) -> Vec<T>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page<T>, StoreError>>,
{
    let mut out = Vec::new();
    let mut page = PageRequest::first(limit);
    for _ in 0..1000 {
        let got = ok(query(page.clone()).await, "queries page without error");
        assert!(
            got.items.len() <= limit as usize,
            "contract: a page holds at most `limit` items"
        );
        out.extend(got.items);
        match got.next {
            Some(c) => page = PageRequest::after(limit, c),
            None => return out,
        }
    }
    panic!("contract: pagination must terminate")
}
