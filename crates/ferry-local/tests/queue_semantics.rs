//! SQS semantics of `SqliteQueue` beyond the shared contract: real visibility timeouts,
//! receive counts, dead-letter redrive, batch limits, stale receipts and long polls.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_core::id::QueueName;
use ferry_core::ports::{Batch, Queue, QueueError, ReceiveOptions, MAX_MESSAGE_BYTES};
use ferry_local::queue::{QueueConfig, SqliteQueue};

fn name(s: &str) -> QueueName {
    QueueName::new(s).unwrap()
}

fn opts(max: u32, wait: u32, visibility: u32) -> ReceiveOptions {
    ReceiveOptions::new(max, wait, visibility).unwrap()
}

async fn fresh() -> (tempfile::TempDir, SqliteQueue, QueueName) {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(dir.path().join("q.db")).unwrap();
    let jobs = name("jobs");
    q.create_queue(&jobs, QueueConfig::default()).await.unwrap();
    (dir, q, jobs)
}

/// Receives until something arrives or `within` passes (polling, bounded).
async fn receive_within(
    q: &SqliteQueue,
    n: &QueueName,
    visibility: u32,
    within: Duration,
) -> Vec<ferry_core::ports::ReceivedMessage> {
    let deadline = Instant::now() + within;
    loop {
        let got = q.receive(n, &opts(10, 1, visibility)).await.unwrap();
        if !got.is_empty() || Instant::now() >= deadline {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_timeout_hides_then_shows_again_with_a_higher_count() {
    let (_d, q, jobs) = fresh().await;
    let id = q.send(&jobs, "m1").await.unwrap();
    let first = q.receive(&jobs, &opts(10, 0, 1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    let hidden_at = Instant::now();
    assert!(
        q.receive(&jobs, &opts(10, 0, 1)).await.unwrap().is_empty(),
        "hidden during its visibility timeout"
    );
    let depth = q.approximate_depth(&jobs).await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 1));

    // The visibility timeout legitimately has to elapse here (1 s).
    let again = receive_within(&q, &jobs, 1, Duration::from_secs(5)).await;
    assert!(
        hidden_at.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, id);
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].receipt_handle, first[0].receipt_handle);

    // The first receipt is stale now: it must neither delete nor move the message.
    assert_eq!(
        q.delete(&jobs, &first[0].receipt_handle).await,
        Err(QueueError::InvalidReceiptHandle)
    );
    assert_eq!(
        q.change_visibility(&jobs, &first[0].receipt_handle, 0)
            .await,
        Err(QueueError::InvalidReceiptHandle)
    );
    assert!(q.receive(&jobs, &opts(10, 0, 1)).await.unwrap().is_empty());
    q.delete(&jobs, &again[0].receipt_handle).await.unwrap();
    assert_eq!(q.approximate_depth(&jobs).await.unwrap().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_visibility_zero_shows_at_once_and_heartbeat_extends() {
    let (_d, q, jobs) = fresh().await;
    q.send(&jobs, "m1").await.unwrap();
    let m = q.receive(&jobs, &opts(1, 0, 1)).await.unwrap().remove(0);
    // A heartbeat pushes it out well past the original 1 s.
    q.change_visibility(&jobs, &m.receipt_handle, 30)
        .await
        .unwrap();
    let start = Instant::now();
    let got = q.receive(&jobs, &opts(1, 2, 1)).await.unwrap();
    assert!(got.is_empty(), "the extended message stays hidden past 1 s");
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "the long poll waited"
    );
    q.change_visibility(&jobs, &m.receipt_handle, 0)
        .await
        .unwrap();
    let back = q.receive(&jobs, &opts(1, 0, 60)).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].receive_count, 2);
    assert!(matches!(
        q.change_visibility(&jobs, &back[0].receipt_handle, 43_201)
            .await,
        Err(QueueError::Invalid { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_redriven_to_the_dlq_after_max_receives() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::open(dir.path().join("q.db")).unwrap();
    let (jobs, dlq) = (name("jobs"), name("jobs-dlq"));
    assert!(
        q.create_queue(
            &jobs,
            QueueConfig {
                dlq: Some(dlq.clone()),
                ..QueueConfig::default()
            }
        )
        .await
        .is_err(),
        "the DLQ must exist first"
    );
    q.create_queue(&dlq, QueueConfig::default()).await.unwrap();
    q.create_queue(
        &jobs,
        QueueConfig {
            visibility_timeout: Duration::from_secs(1),
            max_receive_count: 3,
            dlq: Some(dlq.clone()),
        },
    )
    .await
    .unwrap();
    let id = q.send(&jobs, "poison").await.unwrap();
    for count in 1..=3 {
        let got = q.receive(&jobs, &opts(10, 0, 60)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, count);
        q.note_failure(
            &jobs,
            &got[0].receipt_handle,
            &format!("bad input #{count}"),
        )
        .await
        .unwrap();
        // Fail fast instead of waiting out the visibility timeout.
        q.change_visibility(&jobs, &got[0].receipt_handle, 0)
            .await
            .unwrap();
    }
    q.send(&jobs, "good").await.unwrap();
    // The 4th receive would exceed max_receive_count: the poison moves, the good one comes.
    let got = q.receive(&jobs, &opts(10, 0, 60)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "good");
    assert_eq!(got[0].receive_count, 1);
    let dead = q.dlq_messages(&dlq).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, id);
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].source_queue, "jobs");
    assert_eq!(dead[0].receive_count, 3);
    assert!(
        dead[0].reason.contains("max_receive_count 3"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].last_error.as_deref(), Some("bad input #3"));
    // It can be read from the DLQ like any message.
    let from_dlq = q.receive(&dlq, &opts(10, 0, 60)).await.unwrap();
    assert_eq!(from_dlq.len(), 1);
    assert_eq!(from_dlq[0].body, "poison");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_capped_at_ten_and_answer_per_entry() {
    let (_d, q, jobs) = fresh().await;
    assert!(
        Batch::new(vec![String::new(); 11]).is_err(),
        "11 entries cannot be built"
    );
    let mut bodies: Vec<String> = (0..9).map(|n| format!("m{n}")).collect();
    bodies.insert(4, "x".repeat(MAX_MESSAGE_BYTES + 1));
    let results = q
        .send_batch(&jobs, &Batch::new(bodies).unwrap())
        .await
        .unwrap();
    assert_eq!(results.len(), 10);
    assert!(matches!(&results[4], Err(f) if f.sender_fault && f.message.contains("limit")));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 9);

    for n in 9..25 {
        q.send(&jobs, &format!("m{n}")).await.unwrap();
    }
    let got = q.receive(&jobs, &opts(10, 0, 60)).await.unwrap();
    assert_eq!(got.len(), 10, "a receive returns at most 10");
    let mut handles: Vec<_> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    handles[3] = ferry_core::ports::ReceiptHandle("forged".into());
    let deleted = q
        .delete_batch(&jobs, &Batch::new(handles).unwrap())
        .await
        .unwrap();
    assert!(deleted[3].is_err());
    assert_eq!(deleted.iter().filter(|r| r.is_ok()).count(), 9);
    assert_eq!(q.approximate_depth(&jobs).await.unwrap().total(), 25 - 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_a_local_send_and_on_another_connection() {
    let (dir, q, jobs) = fresh().await;
    let sender = q.clone();
    let start = Instant::now();
    let j = jobs.clone();
    let t = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sender.send(&j, "local").await.unwrap();
    });
    let got = q.receive(&jobs, &opts(10, 10, 60)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "woken by the send, not the 10 s wait"
    );
    t.await.unwrap();

    // A second connection to the file stands in for another process: no Notify, only the poll.
    let other = SqliteQueue::open(dir.path().join("q.db")).unwrap();
    let start = Instant::now();
    let j = jobs.clone();
    let t = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.send(&j, "remote").await.unwrap();
    });
    let got = q.receive(&jobs, &opts(10, 10, 60)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "remote");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "found by the DB poll"
    );
    t.await.unwrap();

    let start = Instant::now();
    assert!(q.receive(&jobs, &opts(10, 1, 60)).await.unwrap().is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "an empty long poll waits its time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queues_and_bad_configs_are_refused_clearly() {
    let (_d, q, jobs) = fresh().await;
    let err = q.receive(&name("nope"), &opts(1, 0, 1)).await.unwrap_err();
    assert!(matches!(err, QueueError::NoSuchQueue { .. }));
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(q.approximate_depth(&name("nope")).await.is_err());
    let own = QueueConfig {
        dlq: Some(jobs.clone()),
        ..QueueConfig::default()
    };
    assert!(matches!(
        q.create_queue(&jobs, own).await,
        Err(QueueError::Invalid { .. })
    ));
    // create_queue is idempotent and updates settings.
    let cfg = QueueConfig {
        visibility_timeout: Duration::from_secs(7),
        ..QueueConfig::default()
    };
    q.create_queue(&jobs, cfg.clone()).await.unwrap();
    assert_eq!(q.queue_config(&jobs).await.unwrap(), cfg);
}
