//! The sync-requested path of issue 12 over the fakes: the job as its own idempotency claim
//! (concurrent deliveries, a dispatcher killed at any point and taken over once its lock ran
//! out), and the dispatch context a release step carries (used only when it verifies).

use proptest::prelude::*;

use super::flow::{build_requested, build_succeeded, digest, install_id, job_messages, setup};
use crate::domain::SyncJob;
use crate::event::{Event, Payload, SyncRequested};
use crate::handlers::{dispatch, HandlerError, Outcome};
use crate::id::QueueName;
use crate::ports::{Clock as _, JobStore as _};
use crate::state::JobStatus;
use crate::testing::FakePorts;
use crate::trust::VendorKey;

/// `n` installs, a succeeded build, and the sync.requested the implicit fan-out sent each
/// install (taken off the bus, not yet delivered).
async fn requests(n: usize) -> (FakePorts, Vec<Event>) {
    let p = setup(n).await;
    dispatch(&p, &build_requested("b-1")).await.unwrap();
    dispatch(&p, &build_succeeded("b-1", digest(1)))
        .await
        .unwrap();
    let evs: Vec<Event> = p
        .bus
        .accepted()
        .into_iter()
        .filter(|e| matches!(e.payload, Payload::SyncRequested(_)))
        .collect();
    assert_eq!(evs.len(), n);
    (p, evs)
}

fn sync_requested(ev: &Event) -> &SyncRequested {
    match &ev.payload {
        Payload::SyncRequested(s) => s,
        other => panic!("not a sync.requested: {other:?}"),
    }
}

/// What a dispatcher killed right after its create leaves: the job, Queued, held until `until`.
async fn killed_after_create(p: &FakePorts, ev: &Event, until: u64) {
    let s = sync_requested(ev);
    let job = SyncJob::new(
        s.sync_id.clone(),
        s.build_id.clone(),
        s.install_id.clone(),
        s.repository.clone(),
        s.digest.clone(),
        p.clock.now_ms(),
    )
    .claimed_until(Some(until));
    p.store.create_sync(&job).await.unwrap();
}

#[tokio::test]
async fn two_deliveries_at_once_enqueue_one_job() {
    let (p, evs) = requests(1).await;
    let (a, b) = futures::join!(dispatch(&p, &evs[0]), dispatch(&p, &evs[0]));
    let dispatched = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Ok(Outcome::SyncDispatched { .. })))
        .count();
    assert_eq!(dispatched, 1, "a: {a:?}, b: {b:?}");
    for r in [&a, &b] {
        assert!(
            matches!(
                r,
                Ok(Outcome::SyncDispatched { .. })
                    | Ok(Outcome::Replayed { .. })
                    | Err(HandlerError::InProgress { .. })
            ),
            "{r:?}"
        );
    }
    assert_eq!(job_messages(&p, 1).len(), 1);
}

#[tokio::test]
async fn a_dispatcher_killed_after_its_create_is_taken_over_once_its_lock_runs_out() {
    let (p, evs) = requests(1).await;
    let until = p.clock.now_ms() + 60_000;
    killed_after_create(&p, &evs[0], until).await;
    let err = dispatch(&p, &evs[0]).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::InProgress { until: u, .. } if u == until),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(job_messages(&p, 1).is_empty());
    p.clock.advance(60_000);
    let out = dispatch(&p, &evs[0]).await.unwrap();
    assert!(
        matches!(out, Outcome::SyncDispatched { attempt: 1, .. }),
        "{out:?}"
    );
    let out = dispatch(&p, &evs[0]).await.unwrap();
    assert!(matches!(out, Outcome::Replayed { .. }), "{out:?}");
    assert_eq!(job_messages(&p, 1).len(), 1);
    let job = stored_job(&p, &evs[0]).await;
    assert_eq!(
        (job.status(), job.dispatch_until),
        (JobStatus::Running, None)
    );
}

#[tokio::test]
async fn a_failed_dispatch_hands_the_job_back_at_once() {
    let (p, evs) = requests(1).await;
    p.minter.refuse_with("x");
    // A refused grant fails the sync for good (not a retry).
    let out = dispatch(&p, &evs[0]).await.unwrap();
    assert!(matches!(out, Outcome::SyncRejected { .. }), "{out:?}");
    let (p, evs) = requests(1).await;
    p.queue.fail_next_sends(1);
    assert!(dispatch(&p, &evs[0]).await.unwrap_err().is_retryable());
    // No wait for the lock: the failed handler handed the job back.
    let out = dispatch(&p, &evs[0]).await.unwrap();
    assert!(matches!(out, Outcome::SyncDispatched { .. }), "{out:?}");
    assert_eq!(job_messages(&p, 1).len(), 1);
}

/// The sync job `ev` asked for, as stored.
async fn stored_job(p: &FakePorts, ev: &Event) -> SyncJob {
    p.store
        .get_sync(&sync_requested(ev).sync_id)
        .await
        .unwrap()
        .unwrap()
}

/// Once the job message is sent, a store that fails the write to Running is tried again, so
/// no redelivery takes the job over and sends it a second time.
#[tokio::test]
async fn a_sent_job_is_written_running_through_store_failures_and_sent_once() {
    let (p, evs) = requests(1).await;
    p.store.fail_next_sync_updates(2);
    let out = dispatch(&p, &evs[0]).await.unwrap();
    assert!(matches!(out, Outcome::SyncDispatched { .. }), "{out:?}");
    let job = stored_job(&p, &evs[0]).await;
    assert_eq!(job.status(), JobStatus::Running);
    // A redelivery is a replay: still one message.
    dispatch(&p, &evs[0]).await.unwrap();
    assert_eq!(job_messages(&p, 1).len(), 1);
}

#[tokio::test]
async fn a_carried_context_is_used_only_when_it_verifies() {
    let (p, evs) = requests(2).await;
    let moved = QueueName::new("agent-moved").unwrap();
    p.queue.create_queue(&moved);
    // The install record changes after the step read it (its queue moved).
    for (i, ev) in evs.iter().enumerate() {
        let mut install = p.store.get_install(&install_id(i)).await.unwrap().unwrap();
        let read = install.clone();
        install.queue = moved.clone();
        p.store.put_install(&install).await.unwrap();
        let mut ev = ev.clone();
        if let Payload::SyncRequested(s) = &mut ev.payload {
            // Install 0: sealed with the vendor key, so the handler trusts it and reads
            // nothing. Install 1: sealed with another key, so it is ignored.
            let key = if i == 0 {
                p.vendor_key.clone()
            } else {
                std::sync::Arc::new(VendorKey::generate().unwrap())
            };
            s.context = Some(Box::new(crate::fanout::seal_context(&key, s, read, None)));
        }
        dispatch(&p, &ev).await.unwrap();
    }
    assert_eq!(
        job_messages(&p, 1).len(),
        1,
        "install 0's job went where its verified context said"
    );
    assert_eq!(
        p.queue.bodies(&moved).len(),
        1,
        "install 1's forged context was ignored: the store's queue was used"
    );
}

#[tokio::test]
async fn the_implicit_fan_out_carries_a_context_that_verifies_and_is_used() {
    let (p, evs) = requests(2).await;
    for (i, ev) in evs.iter().enumerate() {
        let s = sync_requested(ev);
        let (install, _) = crate::fanout::open_context(&p.vendor_key, s)
            .unwrap_or_else(|| panic!("install {i}'s request carries no verifying context"));
        assert_eq!(install.id, s.install_id);
    }
    // The install's queue moves after the fan-out read it: the context, not the store, says
    // where the job goes (the store was not read again).
    let moved = QueueName::new("agent-moved").unwrap();
    p.queue.create_queue(&moved);
    let mut install = p.store.get_install(&install_id(0)).await.unwrap().unwrap();
    install.queue = moved.clone();
    p.store.put_install(&install).await.unwrap();
    let first = evs
        .iter()
        .find(|e| sync_requested(e).install_id == install_id(0))
        .unwrap();
    dispatch(&p, first).await.unwrap();
    assert_eq!(job_messages(&p, 1).len(), 1, "sent where the context said");
    assert!(p.queue.bodies(&moved).is_empty());
}

/// `n` installs' sync.requested, each delivered until it succeeds, with one fault chosen per
/// install: none, the minter down (STS/ECR throttled), the send failing, or the dispatcher
/// killed after its create (then its lock must run out). Every install ends with exactly one
/// job message and one job, and a late duplicate delivery is a replay.
async fn interrupted_dispatch(faults: Vec<u8>) {
    let n = faults.len();
    let (p, evs) = requests(n).await;
    for (ev, fault) in evs.iter().zip(&faults) {
        match fault % 4 {
            1 => p.minter.fail_next_mints(1),
            2 => p.queue.fail_next_sends(1),
            3 => killed_after_create(&p, ev, p.clock.now_ms() + 30_000).await,
            _ => {}
        }
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 10, "install never dispatched");
            match dispatch(&p, ev).await {
                Ok(out) => {
                    assert!(matches!(out, Outcome::SyncDispatched { .. }), "{out:?}");
                    break;
                }
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    p.clock.advance(31_000);
                }
            }
        }
        // A late duplicate delivery changes nothing.
        let again = dispatch(&p, ev).await.unwrap();
        assert!(matches!(again, Outcome::Replayed { .. }), "{again:?}");
    }
    for (i, fault) in faults.iter().enumerate() {
        let q = QueueName::new(format!("agent-{}", install_id(i))).unwrap();
        assert_eq!(p.queue.bodies(&q).len(), 1, "install {i}, fault {fault}");
    }
    assert_eq!(p.store.syncs().len(), n);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]
    #[test]
    fn a_dispatch_interrupted_anywhere_enqueues_each_install_once(
        faults in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(interrupted_dispatch(faults));
    }
}
