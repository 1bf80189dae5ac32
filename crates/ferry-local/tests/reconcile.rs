//! The reconciler on SQLite (store and queues): ferry-core's reconcile scenario, with the
//! injected clock; the ports it does not exercise (bus, builder, minter) are the fakes.

use std::sync::Arc;

use ferry_core::handlers::{Config, Ports};
use ferry_core::id::QueueName;
use ferry_core::ports::Backend;
use ferry_core::reconcile_contract::{reconcile_scenario, ReconcileFixture};
use ferry_core::testing::{test_vendor_key, ManualClock, MemBuilder, MemBus, MemMinter};
use ferry_local::db::Db;
use ferry_local::queue::{QueueConfig, SqliteQueue};
use ferry_local::store::SqliteStore;

struct Sqlite;

impl Backend for Sqlite {
    type Store = SqliteStore;
    type Queue = SqliteQueue;
    type Bus = MemBus;
    type Builder = MemBuilder;
    type Minter = MemMinter;
    type Clock = ManualClock;
}

#[tokio::test]
async fn the_reconciler_redrives_a_lost_message_and_fails_a_gone_agent_once_each_on_sqlite() {
    let db = Db::open_in_memory().unwrap();
    let queue = SqliteQueue::new(db.clone());
    let clock = ManualClock::new(1_700_000_000_000);
    let queues = [
        QueueName::new("install-rc-alive").unwrap(),
        QueueName::new("install-rc-gone").unwrap(),
    ];
    for q in queues.iter().chain([&QueueName::new("release").unwrap()]) {
        queue.create_queue(q, QueueConfig::default()).await.unwrap();
    }
    let ports: Ports<Sqlite> = Ports {
        store: SqliteStore::new(db),
        queue,
        bus: MemBus::default(),
        builder: MemBuilder::default(),
        minter: MemMinter::new(clock.clone()),
        clock: clock.clone(),
        config: Config::default(),
        vendor_key: Arc::new(test_vendor_key()),
        release_queue: QueueName::new("release").unwrap(),
    };
    reconcile_scenario(ReconcileFixture {
        ports: &ports,
        clock: &clock,
        queues,
    })
    .await;
}
