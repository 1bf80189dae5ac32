//! The `Queue` contract: delays, visibility and receive counts, batches, isolation and
//! errors. It must never assert message order on a standard queue, nor wait on a clock.

use std::collections::BTreeSet;
use std::future::Future;

use super::ok;
use crate::id::QueueName;
use crate::ports::{Batch, Queue, QueueError, ReceiptHandle, ReceiveOptions, ReceivedMessage};

/// Queues for one run of the queue contract: `a` and `b` exist and are empty; `missing`
/// does not exist.
pub struct QueueFixture<Q> {
    pub queue: Q,
    pub a: QueueName,
    pub b: QueueName,
    pub missing: QueueName,
}

fn opts(max: u32, visibility: u32) -> ReceiveOptions {
    // One second of long poll: lets SQS gather messages, costs nothing in memory.
    ok(
        ReceiveOptions::new(max, 1, visibility),
        "valid receive options",
    )
}

/// Receives until `want` messages arrived (SQS may return fewer than asked per call).
async fn receive_n<Q: Queue>(q: &Q, name: &QueueName, want: usize) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    for _ in 0..30 {
        if got.len() >= want {
            break;
        }
        got.extend(ok(q.receive(name, &opts(10, 60)).await, "receive"));
    }
    got
}

/// The `Queue` contract. `make` returns a fresh fixture for each call.
pub async fn queue_contract<Q, F, Fut>(make: F)
where
    Q: Queue,
    F: Fn() -> Fut,
    Fut: Future<Output = QueueFixture<Q>>,
{
    queue_visibility_and_receive_count(&make().await).await;
    queue_batches(&make().await).await;
    queue_isolation_and_errors(&make().await).await;
    queue_delays(&make().await).await;
}

/// A delayed message is not received before its delay; a delay past the SQS limit is refused.
async fn queue_delays<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    let e = q.send_delayed(&f.a, "late", 901).await;
    assert!(
        matches!(e, Err(QueueError::Invalid { .. })),
        "contract: a delay over 900 s is refused as Invalid, got {e:?}"
    );
    ok(
        q.send_delayed(&f.a, "{\"later\":1}", 600).await,
        "send_delayed",
    );
    assert!(
        ok(q.receive(&f.a, &opts(10, 60)).await, "receive").is_empty(),
        "contract: a delayed message stays invisible until its delay has passed"
    );
    ok(
        q.send_delayed(&f.a, "{\"now\":1}", 0).await,
        "send_delayed 0",
    );
    let got = receive_n(q, &f.a, 1).await;
    assert_eq!(got.len(), 1, "contract: a zero delay is an ordinary send");
    assert_eq!(got[0].body, "{\"now\":1}");
}

async fn queue_visibility_and_receive_count<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    let sent = ok(q.send(&f.a, "{\"hello\":1}").await, "send");
    let first = receive_n(q, &f.a, 1).await;
    assert_eq!(first.len(), 1, "contract: a sent message can be received");
    let m = &first[0];
    assert_eq!(
        m.message_id, sent,
        "contract: receive returns the id send returned"
    );
    assert_eq!(m.body, "{\"hello\":1}", "contract: bodies arrive unchanged");
    assert_eq!(m.receive_count, 1, "contract: the first receive counts 1");
    assert!(
        ok(q.receive(&f.a, &opts(10, 60)).await, "receive").is_empty(),
        "contract: a received message is invisible for its visibility timeout"
    );

    let mut handle = m.receipt_handle.clone();
    for count in 2..=3 {
        ok(
            q.change_visibility(&f.a, &handle, 0).await,
            "change_visibility to 0",
        );
        let again = receive_n(q, &f.a, 1).await;
        assert_eq!(
            again.len(),
            1,
            "contract: visibility 0 makes a message visible again"
        );
        assert_eq!(again[0].message_id, sent);
        assert_eq!(
            again[0].receive_count, count,
            "contract: every receive increments the receive count (it drives the DLQ redrive)"
        );
        assert_ne!(
            again[0].receipt_handle, handle,
            "contract: each receive gets a new receipt handle"
        );
        handle = again[0].receipt_handle.clone();
    }
    ok(
        q.delete(&f.a, &handle).await,
        "delete with the latest handle",
    );
    assert!(
        ok(q.receive(&f.a, &opts(10, 0)).await, "receive").is_empty(),
        "contract: a deleted message never comes back"
    );
}

async fn queue_batches<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    let bodies: Vec<String> = (0..10).map(|n| format!("{{\"n\":{n}}}")).collect();
    let batch = ok(Batch::new(bodies.clone()), "a batch of 10");
    let results = ok(q.send_batch(&f.a, &batch).await, "send_batch");
    assert_eq!(results.len(), 10, "contract: send_batch answers per entry");
    let ids: BTreeSet<_> = results
        .into_iter()
        .map(|r| ok(r, "every entry of a valid batch is accepted"))
        .collect();
    assert_eq!(ids.len(), 10, "contract: message ids are distinct");

    let few = ok(q.receive(&f.a, &opts(3, 60)).await, "receive");
    assert!(
        few.len() <= 3,
        "contract: receive returns at most max_messages"
    );
    let mut got = few;
    got.extend(receive_n(q, &f.a, 10 - got.len()).await);
    let mut seen: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    seen.sort();
    let mut want = bodies;
    want.sort();
    assert_eq!(
        seen, want,
        "contract: every batched message is received exactly once"
    );

    let handles: Vec<ReceiptHandle> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    let handles = ok(Batch::new(handles), "a batch of 10 handles");
    let deleted = ok(q.delete_batch(&f.a, &handles).await, "delete_batch");
    assert_eq!(
        deleted.len(),
        10,
        "contract: delete_batch answers per entry"
    );
    assert!(
        deleted.iter().all(Result::is_ok),
        "contract: valid handles delete"
    );
    for m in &got {
        // Making deleted messages visible must fail or do nothing; they must not reappear.
        let _ = q.change_visibility(&f.a, &m.receipt_handle, 0).await;
    }
    assert!(
        ok(q.receive(&f.a, &opts(10, 0)).await, "receive").is_empty(),
        "contract: batch-deleted messages never come back"
    );
}

async fn queue_isolation_and_errors<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    ok(q.send(&f.a, "only-in-a").await, "send");
    assert!(
        ok(q.receive(&f.b, &opts(10, 60)).await, "receive").is_empty(),
        "contract: queues are isolated"
    );
    let got = receive_n(q, &f.a, 1).await;
    assert_eq!(got.len(), 1);
    assert!(
        matches!(
            q.send(&f.missing, "x").await,
            Err(QueueError::NoSuchQueue { .. })
        ),
        "contract: sending to a missing queue is NoSuchQueue"
    );
    assert!(
        q.delete(&f.a, &ReceiptHandle("made-up-handle".into()))
            .await
            .is_err(),
        "contract: a made-up receipt handle is refused"
    );
    assert!(
        ok(q.receive(&f.a, &opts(10, 0)).await, "receive").is_empty(),
        "contract: a refused delete leaves the message in flight, not duplicated"
    );
}
