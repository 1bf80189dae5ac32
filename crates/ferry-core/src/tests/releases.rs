//! Releases over the fakes: steps, the failure budget, halt and resume, pause/abort,
//! re-release as a no-op, and a fan-out interrupted at any point that still enqueues every
//! install exactly once.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::flow::{build_requested, build_succeeded, digest, install_id, report, setup};
use crate::event::{parse_event, parse_sync_job, SyncReportStatus};
use crate::handlers::{dispatch, HandlerError};
use crate::id::{AppName, BuildId, InstallId, QueueName, ReleaseId};
use crate::ports::{Clock as _, Queue as _, ReceiveOptions};
use crate::release::{
    FailureBudget, Release, ReleasePolicy, ReleaseStatus, ReleaseStore as _, StepPhase, TargetState,
};
use crate::rollout::{
    abort_release, create_release, pause_release, release_targets, resume_release, ReleaseRequest,
};
use crate::testing::{FakePorts, FAKE_RELEASE_QUEUE};

const MINUTE: u64 = 60_000;

/// A completed build `b` of shop/web with digest `d`, and no implicit fan-out.
pub(super) async fn ready(n: usize, build: &str, d: u8) -> FakePorts {
    let mut p = setup(n).await;
    p.config.fan_out_on_build = false;
    built(&p, build, d).await;
    p
}

async fn built(p: &FakePorts, build: &str, d: u8) {
    dispatch(p, &build_requested(build)).await.unwrap();
    dispatch(p, &build_succeeded(build, digest(d)))
        .await
        .unwrap();
}

pub(super) fn request(
    id: &str,
    build: &str,
    per_step: u32,
    delay_ms: u64,
    budget: &str,
) -> ReleaseRequest {
    ReleaseRequest {
        id: ReleaseId::new(id).unwrap(),
        app: AppName::new("shop").unwrap(),
        builds: vec![BuildId::new(build).unwrap()],
        installs: None,
        policy: ReleasePolicy {
            installs_per_step: per_step,
            delay_ms,
            max_failures: FailureBudget::parse(budget).unwrap(),
        },
        requested_by: "alice".into(),
    }
}

/// Runs the system until nothing moves: bus events, release timers that are due, and every
/// install agent (which reports failure when `fails` names its install). Returns how many job
/// messages each install received.
pub(super) struct Pump {
    bus_seen: usize,
    jobs: BTreeMap<InstallId, usize>,
}

impl Pump {
    pub(super) fn new() -> Pump {
        Pump {
            bus_seen: 0,
            jobs: BTreeMap::new(),
        }
    }

    pub(super) async fn run(&mut self, p: &FakePorts, n: usize, fails: &BTreeSet<InstallId>) {
        let opts = ReceiveOptions::new(10, 0, 30).unwrap();
        let release_q = QueueName::new(FAKE_RELEASE_QUEUE).unwrap();
        loop {
            let mut moved = false;
            let events = p.bus.accepted();
            while self.bus_seen < events.len() {
                let ev = events[self.bus_seen].clone();
                self.bus_seen += 1;
                dispatch(p, &ev).await.unwrap();
                moved = true;
            }
            for m in p.queue.receive(&release_q, &opts).await.unwrap() {
                let ev = parse_event(m.body.as_bytes()).unwrap();
                match dispatch(p, &ev).await {
                    Ok(_) => p.queue.delete(&release_q, &m.receipt_handle).await.unwrap(),
                    Err(e) => assert!(e.is_retryable(), "{e}"),
                }
                moved = true;
            }
            for i in 0..n {
                let q = QueueName::new(format!("agent-{}", install_id(i))).unwrap();
                for m in p.queue.receive(&q, &opts).await.unwrap() {
                    let job = parse_sync_job(m.body.as_bytes()).unwrap();
                    *self.jobs.entry(job.install_id.clone()).or_default() += 1;
                    let status = if fails.contains(&job.install_id) {
                        SyncReportStatus::Failed
                    } else {
                        SyncReportStatus::Succeeded
                    };
                    dispatch(p, &report(&job, status, None)).await.unwrap();
                    p.queue.delete(&q, &m.receipt_handle).await.unwrap();
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }
}

pub(super) async fn release(p: &FakePorts, id: &str) -> Release {
    p.store
        .get_release(&ReleaseId::new(id).unwrap())
        .await
        .unwrap()
        .unwrap()
}

pub(super) async fn states(p: &FakePorts, r: &Release) -> Vec<(String, TargetState)> {
    release_targets(p, r)
        .await
        .unwrap()
        .iter()
        .map(|t| (t.install_id.to_string(), t.state(r.round)))
        .collect()
}

#[tokio::test]
async fn a_failing_install_halts_after_its_step_and_resume_finishes_it() {
    let p = ready(6, "b-1", 1).await;
    create_release(&p, &request("r-1", "b-1", 2, 10 * MINUTE, "1"))
        .await
        .unwrap();
    let mut pump = Pump::new();
    let broken: BTreeSet<InstallId> = [install_id(3)].into();
    pump.run(&p, 6, &broken).await;

    // Step 1 done; step 2 waits for its delay: nothing of it has started.
    let r = release(&p, "r-1").await;
    assert_eq!(r.step, 1);
    assert!(
        matches!(r.phase, StepPhase::Waiting { .. }),
        "{:?}",
        r.phase
    );
    assert_eq!(
        pump.jobs.len(),
        2,
        "only step 1 was synced: {:?}",
        pump.jobs
    );

    p.clock.advance(10 * MINUTE);
    pump.run(&p, 6, &broken).await;
    let r = release(&p, "r-1").await;
    assert_eq!((r.status, r.step), (ReleaseStatus::Halted, 1));
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("1 install(s) failed") && reason.contains("ferry release resume"),
        "{reason}"
    );
    let targets = release_targets(&p, &r).await.unwrap();
    let failed: Vec<_> = targets
        .iter()
        .filter(|t| t.state(r.round) == TargetState::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].install_id, install_id(3));
    assert!(failed[0].error().unwrap().message.contains("disk full"));
    // Halted keeps what was synced and starts nothing more, whatever time passes.
    p.clock.advance(60 * MINUTE);
    pump.run(&p, 6, &broken).await;
    assert_eq!(pump.jobs.len(), 4, "{:?}", pump.jobs);

    // The registry is fixed; resume retries the failed install, then goes on.
    let resumed = resume_release(&p, &r.id).await.unwrap();
    assert_eq!((resumed.status, resumed.round), (ReleaseStatus::Running, 1));
    pump.run(&p, 6, &BTreeSet::new()).await;
    p.clock.advance(10 * MINUTE);
    pump.run(&p, 6, &BTreeSet::new()).await;
    let r = release(&p, "r-1").await;
    assert_eq!(r.status, ReleaseStatus::Completed, "{r:?}");
    assert!(states(&p, &r)
        .await
        .iter()
        .all(|(_, s)| *s == TargetState::Succeeded));
    // Every install got exactly one job, except the retried one (two: the failed and the fix).
    let expected: BTreeMap<InstallId, usize> = (0..6)
        .map(|i| (install_id(i), if i == 3 { 2 } else { 1 }))
        .collect();
    assert_eq!(pump.jobs, expected);
}

#[tokio::test]
async fn releasing_the_same_build_again_syncs_nothing() {
    let p = ready(3, "b-1", 1).await;
    create_release(&p, &request("r-1", "b-1", 10, 0, "1"))
        .await
        .unwrap();
    let mut pump = Pump::new();
    pump.run(&p, 3, &BTreeSet::new()).await;
    assert_eq!(release(&p, "r-1").await.status, ReleaseStatus::Completed);
    let syncs = p.store.syncs().len();

    // The same request again is the same release.
    let again = create_release(&p, &request("r-1", "b-1", 10, 0, "1"))
        .await
        .unwrap();
    assert_eq!(again.id.as_str(), "r-1");
    // A new release of the same build: every install is already current.
    create_release(&p, &request("r-2", "b-1", 10, 0, "1"))
        .await
        .unwrap();
    pump.run(&p, 3, &BTreeSet::new()).await;
    let r2 = release(&p, "r-2").await;
    assert_eq!(r2.status, ReleaseStatus::Completed);
    assert!(states(&p, &r2)
        .await
        .iter()
        .all(|(_, s)| *s == TargetState::Current));
    assert_eq!(p.store.syncs().len(), syncs, "no new sync job");
    assert!(pump.jobs.values().all(|n| *n == 1), "{:?}", pump.jobs);

    // A new build is different: it is synced.
    built(&p, "b-2", 2).await;
    create_release(&p, &request("r-3", "b-2", 10, 0, "1"))
        .await
        .unwrap();
    pump.run(&p, 3, &BTreeSet::new()).await;
    assert_eq!(p.store.syncs().len(), syncs + 3);
}

#[tokio::test]
async fn pause_holds_the_next_step_and_abort_ends_the_release() {
    let p = ready(4, "b-1", 1).await;
    create_release(&p, &request("r-1", "b-1", 1, 0, "50%"))
        .await
        .unwrap();
    let id = ReleaseId::new("r-1").unwrap();
    pause_release(&p, &id).await.unwrap();
    let mut pump = Pump::new();
    pump.run(&p, 4, &BTreeSet::new()).await;
    assert!(
        pump.jobs.is_empty(),
        "paused before its first step: {:?}",
        pump.jobs
    );

    resume_release(&p, &id).await.unwrap();
    pump.run(&p, 1, &BTreeSet::new()).await; // only install 0's agent runs
    let r = release(&p, "r-1").await;
    assert_eq!(r.step, 1, "{r:?}");
    // Pause while step 2 is in flight: it finishes, step 3 does not start.
    pause_release(&p, &id).await.unwrap();
    pump.run(&p, 4, &BTreeSet::new()).await;
    let r = release(&p, "r-1").await;
    assert_eq!((r.status, r.step), (ReleaseStatus::Paused, 2));
    assert_eq!(pump.jobs.len(), 2);

    let aborted = abort_release(&p, &id, "ops").await.unwrap();
    assert_eq!(aborted.status, ReleaseStatus::Aborted);
    p.clock.advance(MINUTE);
    pump.run(&p, 4, &BTreeSet::new()).await;
    assert_eq!(pump.jobs.len(), 2, "nothing starts after abort");
    let e = resume_release(&p, &id).await.unwrap_err();
    assert!(matches!(e, HandlerError::ReleaseTransition(_)), "{e}");
    assert!(e.to_string().contains("create a new release"), "{e}");
}

#[tokio::test]
async fn bad_requests_say_what_to_fix() {
    let p = ready(2, "b-1", 1).await;
    dispatch(&p, &build_requested("b-9")).await.unwrap();
    for (req, needle) in [
        (request("r-1", "b-404", 1, 0, "1"), "does not exist"),
        (request("r-1", "b-9", 1, 0, "1"), "only a succeeded build"),
        (request("r-1", "b-1", 0, 0, "1"), "installs per step"),
        (
            ReleaseRequest {
                installs: Some(vec![InstallId::new("nope").unwrap()]),
                ..request("r-1", "b-1", 1, 0, "1")
            },
            "not registered",
        ),
    ] {
        let e = create_release(&p, &req).await.unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert!(p
        .store
        .get_release(&ReleaseId::new("r-1").unwrap())
        .await
        .unwrap()
        .is_none());
    create_release(&p, &request("r-1", "b-1", 1, 0, "1"))
        .await
        .unwrap();
    let e = create_release(&p, &request("r-1", "b-1", 2, 0, "1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");
}

#[tokio::test]
async fn a_long_delay_is_chained_through_the_queue_limit() {
    let p = ready(2, "b-1", 1).await;
    create_release(&p, &request("r-1", "b-1", 1, 40 * MINUTE, "1"))
        .await
        .unwrap();
    let mut pump = Pump::new();
    pump.run(&p, 2, &BTreeSet::new()).await;
    assert_eq!(pump.jobs.len(), 1);
    for _ in 0..2 {
        p.clock.advance(15 * MINUTE);
        pump.run(&p, 2, &BTreeSet::new()).await;
        assert_eq!(pump.jobs.len(), 1, "not due yet at {}", p.clock.now_ms());
    }
    p.clock.advance(10 * MINUTE);
    pump.run(&p, 2, &BTreeSet::new()).await;
    assert_eq!(pump.jobs.len(), 2);
    assert_eq!(release(&p, "r-1").await.status, ReleaseStatus::Completed);
}

/// One step of 120 installs (2 pages), with the handler cut short at a chosen point: before
/// the `kill_at`-th release message, the next `entries` bus entries (or the next queue send)
/// fail, as a function killed mid-call would leave it, and the message comes back after its
/// visibility timeout. Every install is still enqueued exactly once.
async fn interrupted_fan_out(kill_at: usize, via_bus: bool, entries: usize) {
    let n = 120;
    let p = ready(n, "b-1", 1).await;
    create_release(&p, &request("r-1", "b-1", 1000, 0, "1"))
        .await
        .unwrap();
    let opts = ReceiveOptions::new(1, 0, 30).unwrap();
    let release_q = QueueName::new(FAKE_RELEASE_QUEUE).unwrap();
    let mut delivered = 0;
    let mut failures = 0;
    for _ in 0..100 {
        let mut msgs = p.queue.receive(&release_q, &opts).await.unwrap();
        if msgs.is_empty() {
            p.clock.advance(31_000);
            msgs = p.queue.receive(&release_q, &opts).await.unwrap();
            if msgs.is_empty() {
                break;
            }
        }
        for m in msgs {
            if delivered == kill_at {
                if via_bus {
                    p.bus.fail_next_entries(entries);
                } else {
                    p.queue.fail_next_sends(1);
                }
            }
            delivered += 1;
            let ev = parse_event(m.body.as_bytes()).unwrap();
            match dispatch(&p, &ev).await {
                Ok(_) => p.queue.delete(&release_q, &m.receipt_handle).await.unwrap(),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    failures += 1;
                }
            }
        }
    }
    p.bus.fail_next_entries(0);
    p.queue.fail_next_sends(0);
    // Every sync.requested the bus accepted, duplicates included, handled once each.
    for ev in p.bus.accepted() {
        dispatch(&p, &ev).await.unwrap();
    }
    for i in 0..n {
        let q = QueueName::new(format!("agent-{}", install_id(i))).unwrap();
        assert_eq!(
            p.queue.bodies(&q).len(),
            1,
            "install {i} after {failures} failure(s) at message {kill_at}"
        );
    }
    assert_eq!(p.store.syncs().len(), n);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]
    #[test]
    fn a_fan_out_interrupted_anywhere_enqueues_every_install_once(
        kill_at in 0usize..3,
        via_bus in any::<bool>(),
        entries in 1usize..40,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(interrupted_fan_out(kill_at, via_bus, entries));
    }
}
