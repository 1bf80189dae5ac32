//! The reconciler on DynamoDB and SQS in moto: ferry-core's reconcile scenario (the open-sync
//! index, the telemetry item, conditional re-drive and fail, a real job queue), with the
//! injected clock; the ports it does not exercise (bus, builder, minter) are the fakes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{unique, Moto};
use ferry_aws::{DynamoStore, SqsQueue};
use ferry_core::handlers::{Config, Ports};
use ferry_core::id::QueueName;
use ferry_core::ports::Backend;
use ferry_core::reconcile_contract::{reconcile_scenario, ReconcileFixture};
use ferry_core::testing::{test_vendor_key, ManualClock, MemBuilder, MemBus, MemMinter};

struct OnMoto;

impl Backend for OnMoto {
    type Store = DynamoStore;
    type Queue = SqsQueue;
    type Bus = MemBus;
    type Builder = MemBuilder;
    type Minter = MemMinter;
    type Clock = ManualClock;
}

#[tokio::test]
async fn the_reconciler_redrives_a_lost_message_and_fails_a_gone_agent_once_each_on_moto() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let store = DynamoStore::new(&config, unique("ferry-jobs"));
    store.create_table().await.unwrap();
    let queue = SqsQueue::new(&config);
    let queues = [
        QueueName::new(unique("rc-alive")).unwrap(),
        QueueName::new(unique("rc-gone")).unwrap(),
    ];
    let release = QueueName::new(unique("release")).unwrap();
    for q in queues.iter().chain([&release]) {
        queue.create_queue(q, HashMap::new()).await.unwrap();
    }
    let clock = ManualClock::new(1_700_000_000_000);
    let ports: Ports<OnMoto> = Ports {
        store,
        queue,
        bus: MemBus::default(),
        builder: MemBuilder::default(),
        minter: MemMinter::new(clock.clone()),
        clock: clock.clone(),
        config: Config::default(),
        vendor_key: Arc::new(test_vendor_key()),
        release_queue: release,
    };
    reconcile_scenario(ReconcileFixture {
        ports: &ports,
        clock: &clock,
        queues,
    })
    .await;
}
