//! Retries and clear errors under throttling: a fault-injecting proxy in front of moto.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{unique, Fault, FaultProxy, Moto};
use ferry_aws::config::MAX_ATTEMPTS;
use ferry_aws::{DynamoStore, SqsQueue};
use ferry_core::domain::Build;
use ferry_core::id::{AppName, BuildId, ComponentName, QueueName};
use ferry_core::ports::{JobStore, Queue, StoreError, WriteError};

async fn table(moto: &Moto) -> String {
    let name = unique("ferry-jobs");
    DynamoStore::new(&moto.config().await, &name)
        .create_table()
        .await
        .unwrap();
    name
}

fn build(id: &str) -> Build {
    Build::new(
        BuildId::new(id).unwrap(),
        AppName::new("shop").unwrap(),
        ComponentName::new("web").unwrap(),
        "main".into(),
        "test".into(),
        1_000,
    )
}

#[tokio::test]
async fn throttled_dynamodb_calls_are_retried_until_they_succeed() {
    let moto = Moto::start().await;
    let t = table(&moto).await;
    let proxy = FaultProxy::start(moto.endpoint(), 2, Fault::Throttle429).await;
    let store = DynamoStore::new(&common::config_for(&proxy.endpoint()).await, t);
    store.create_build(&build("b-1")).await.unwrap();
    assert_eq!(
        proxy.requests(),
        3,
        "two throttled attempts, then the write"
    );
    assert_eq!(
        store
            .get_build(&BuildId::new("b-1").unwrap())
            .await
            .unwrap(),
        Some(build("b-1"))
    );
}

#[tokio::test]
async fn unavailable_sqs_calls_are_retried_until_they_succeed() {
    let moto = Moto::start().await;
    let name = QueueName::new(unique("q")).unwrap();
    let direct = SqsQueue::new(&moto.config().await);
    direct.create_queue(&name, HashMap::new()).await.unwrap();
    let proxy = FaultProxy::start(moto.endpoint(), 2, Fault::Unavailable503).await;
    let q = SqsQueue::new(&common::config_for(&proxy.endpoint()).await);
    let id = q.send(&name, "hello").await.unwrap();
    assert!(!id.0.is_empty());
    // GetQueueUrl took the two 503s, then SendMessage went through.
    assert_eq!(proxy.requests(), 4);
}

#[tokio::test]
async fn constant_throttling_gives_up_after_max_attempts_with_a_clear_error() {
    let moto = Moto::start().await;
    let t = table(&moto).await;
    let proxy = FaultProxy::start(moto.endpoint(), usize::MAX, Fault::Throttle429).await;
    let store = DynamoStore::new(&common::config_for(&proxy.endpoint()).await, t);
    let err = store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap_err();
    assert_eq!(proxy.requests(), MAX_ATTEMPTS as usize, "bounded retries");
    match &err {
        StoreError::Unavailable { message } => {
            assert!(message.contains("DynamoDB GetItem"), "{message}");
            assert!(message.contains("ThrottlingException"), "{message}");
        }
        other => panic!("throttling must be Unavailable (retry later), got {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_race_needs_no_second_read() {
    // moto honours ReturnValuesOnConditionCheckFailure=ALL_OLD: the conflict carries the
    // current item from the failed PutItem itself.
    let moto = Moto::start().await;
    let t = table(&moto).await;
    let proxy = FaultProxy::start(moto.endpoint(), 0, Fault::Throttle429).await;
    let store = DynamoStore::new(&common::config_for(&proxy.endpoint()).await, t);
    let b = build("b-race");
    store.create_build(&b).await.unwrap();
    let running = b.start(1_100, "ext".into()).unwrap();
    store
        .update_build(&running, b.state.expected())
        .await
        .unwrap();
    let before = proxy.requests();
    let stale = b.cancel(1_200).unwrap();
    match store.update_build(&stale, b.state.expected()).await {
        Err(WriteError::Conflict(c)) => assert_eq!(c.current, Some(running)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(proxy.requests() - before, 1, "one PutItem, no GetItem");
}
