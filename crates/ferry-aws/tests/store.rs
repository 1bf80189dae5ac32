//! DynamoStore against moto: the ferry-core JobStore and ReleaseStore contracts, unchanged.

mod common;

use common::{unique, Moto};
use ferry_aws::DynamoStore;

#[tokio::test]
async fn dynamo_store_keeps_the_job_store_contract() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    ferry_core::contract::job_store_contract(|| {
        let config = config.clone();
        async move {
            let store = DynamoStore::new(&config, unique("ferry-jobs"));
            store.create_table().await.unwrap();
            store
        }
    })
    .await;
}

#[tokio::test]
async fn dynamo_store_keeps_the_release_store_contract() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    ferry_core::release_contract::release_store_contract(|| {
        let config = config.clone();
        async move {
            let store = DynamoStore::new(&config, unique("ferry-jobs"));
            store.create_table().await.unwrap();
            store
        }
    })
    .await;
}

/// BatchGetItem and TransactWriteItems on moto: a page of targets is written at once.
#[tokio::test]
async fn dynamo_store_writes_target_batches_at_once() {
    let moto = Moto::start().await;
    let store = DynamoStore::new(&moto.config().await, unique("ferry-jobs"));
    store.create_table().await.unwrap();
    ferry_core::release_contract::release_batch_contract(&store, true).await;
}

#[tokio::test]
async fn revocations_are_recorded() {
    let moto = Moto::start().await;
    let store = DynamoStore::new(&moto.config().await, unique("ferry-jobs"));
    store.create_table().await.unwrap();
    let sync = ferry_core::id::SyncId::new("s-1").unwrap();
    let first = ferry_core::ports::GrantId::new(sync.clone(), 1);
    let second = ferry_core::ports::GrantId::new(sync, 2);
    assert!(!store.is_grant_revoked(&first).await.unwrap());
    store.revoke_grant(&first, 1_000).await.unwrap();
    store.revoke_grant(&first, 2_000).await.unwrap();
    assert!(store.is_grant_revoked(&first).await.unwrap());
    assert!(
        !store.is_grant_revoked(&second).await.unwrap(),
        "revocation is per attempt: the next attempt's grant is not revoked"
    );
}

/// The management port's contract on moto: DynamoDB catalog and indexes, SQS install queues
/// with their DLQs and policies, EventBridge build requests.
#[tokio::test]
async fn aws_management_keeps_the_management_contract() {
    use ferry_aws::manage::{AwsManagement, StackSettings, INSTALL_QUEUE_MAX_RECEIVES};
    let moto = Moto::start().await;
    let config = moto.config().await;
    let prefix = unique("fm");
    let settings = StackSettings {
        table: format!("{prefix}-jobs"),
        bus: "default".into(),
        install_queue_prefix: format!("{prefix}-install-"),
        report_queue_url: format!("{}/123456789012/{prefix}-sync-reported", moto.endpoint()),
        vendor_registry: "123456789012.dkr.ecr.us-east-1.amazonaws.com".into(),
        vendor_public_key: None,
    };
    let manage = AwsManagement::new(&config, settings);
    manage.store().create_table().await.unwrap();
    ferry_core::manage_contract::management_contract(
        ferry_core::manage_contract::ManagementFixture {
            store: manage.store().clone(),
            queue: manage.queue().clone(),
            manage,
            install_queue_max_receives: INSTALL_QUEUE_MAX_RECEIVES,
            agent_role_arn: |i| Some(format!("arn:aws:iam::210987654321:role/ferry-agent-{i}")),
        },
    )
    .await;
}
