//! ferry-core's port contract suites against the SQLite store and queues, on temp files.

use ferry_core::contract::{job_store_contract, queue_contract, QueueFixture};
use ferry_core::id::QueueName;
use ferry_local::queue::{QueueConfig, SqliteQueue};
use ferry_local::store::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_the_job_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    job_store_contract(|| {
        let path = dir.path().join(format!(
            "store-{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        async move { SqliteStore::open(path).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_the_contract_in_memory_too() {
    job_store_contract(|| async { SqliteStore::open_in_memory().unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_keeps_the_queue_contract() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    queue_contract(|| {
        let path = dir.path().join(format!(
            "queue-{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        async move {
            let queue = SqliteQueue::open(path).unwrap();
            let (a, b) = (QueueName::new("a").unwrap(), QueueName::new("b").unwrap());
            queue
                .create_queue(&a, QueueConfig::default())
                .await
                .unwrap();
            queue
                .create_queue(&b, QueueConfig::default())
                .await
                .unwrap();
            QueueFixture {
                queue,
                a,
                b,
                missing: QueueName::new("missing").unwrap(),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_the_release_store_contract() {
    ferry_core::release_contract::release_store_contract(|| async {
        SqliteStore::open_in_memory().unwrap()
    })
    .await;
}

#[tokio::test]
async fn sqlite_store_writes_target_batches_at_once() {
    let store = SqliteStore::open_in_memory().unwrap();
    ferry_core::release_contract::release_batch_contract(&store, true).await;
}
