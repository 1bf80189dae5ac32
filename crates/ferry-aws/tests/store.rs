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
