//! SqsQueue against moto: the ferry-core Queue contract, unchanged, and the DLQ redrive.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{unique, Moto};
use ferry_aws::SqsQueue;
use ferry_core::contract::QueueFixture;
use ferry_core::id::QueueName;
use ferry_core::ports::{Queue, ReceiveOptions};

fn name(prefix: &str) -> QueueName {
    QueueName::new(unique(prefix)).unwrap()
}

#[tokio::test]
async fn sqs_queue_keeps_the_queue_contract() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    ferry_core::contract::queue_contract(|| {
        let config = config.clone();
        async move {
            let queue = SqsQueue::new(&config);
            let (a, b) = (name("a"), name("b"));
            queue.create_queue(&a, HashMap::new()).await.unwrap();
            queue.create_queue(&b, HashMap::new()).await.unwrap();
            QueueFixture {
                queue,
                a,
                b,
                missing: name("missing"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_never_deleted_message_moves_to_the_dlq_after_max_receives() {
    let moto = Moto::start().await;
    let q = SqsQueue::new(&moto.config().await);
    let main = name("agent");
    let pair = q.create_queue_with_dlq(&main, 2, 1).await.unwrap();
    assert_eq!(pair.dlq.as_str(), format!("{main}-dlq"));
    let sent = q.send(&main, "poison").await.unwrap();

    // Each receive hides the message for 1 s; a long poll picks it up again once visible.
    let opts = ReceiveOptions::new(10, 2, 1).unwrap();
    let mut counts = Vec::new();
    for _ in 0..10 {
        for m in q.receive(&main, &opts).await.unwrap() {
            assert_eq!(m.message_id, sent);
            counts.push(m.receive_count);
        }
        if counts.len() == 2 {
            break;
        }
    }
    assert_eq!(counts, vec![1, 2], "two receives, counted by SQS");

    // The third receive attempt finds it past maxReceiveCount: SQS redrives it to the DLQ.
    let mut in_dlq = Vec::new();
    for _ in 0..10 {
        assert!(
            q.receive(&main, &opts).await.unwrap().is_empty(),
            "the message must not be delivered a third time"
        );
        in_dlq = q
            .receive(&pair.dlq, &ReceiveOptions::new(10, 1, 30).unwrap())
            .await
            .unwrap();
        if !in_dlq.is_empty() {
            break;
        }
    }
    assert_eq!(in_dlq.len(), 1, "the poison message is in the DLQ");
    assert_eq!(in_dlq[0].body, "poison");
    assert_eq!(in_dlq[0].message_id, sent);
}

#[tokio::test]
async fn a_missing_queue_is_named_in_the_error() {
    let moto = Moto::start().await;
    let q = SqsQueue::new(&moto.config().await);
    let missing = name("nope");
    let err = q
        .receive(&missing, &ReceiveOptions::new(1, 0, 0).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(missing.as_str()), "{err}");
}
