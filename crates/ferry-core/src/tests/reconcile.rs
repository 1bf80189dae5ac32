//! The reconciler and install telemetry over the fakes: a stuck sync whose message was deleted
//! is re-driven once, one whose agent is gone is failed once, however often the pass runs; a
//! release whose `release.synced` was lost is re-tallied; heartbeats are authenticated like
//! reports and make an install stale when they stop.

use super::flow::{agent_key, build_requested, build_succeeded, digest, install_id, report, setup};
use crate::event::{
    parse_event, parse_sync_job, Event, InstallHeartbeat, Payload, SyncReportStatus,
};
use crate::handlers::{dispatch, Outcome, SecurityEvent};
use crate::id::{AppName, BuildId, InstallId, QueueName, ReleaseId};
use crate::ports::{Clock as _, JobStore as _, Queue as _, ReceiveOptions};
use crate::reconcile::{reconcile, ReconcileConfig};
use crate::release::{FailureBudget, ReleasePolicy, ReleaseStatus, ReleaseStore as _};
use crate::rollout::{create_release, ReleaseRequest};
use crate::state::JobStatus;
use crate::telemetry::{liveness, Liveness};
use crate::testing::{FakePorts, FAKE_RELEASE_QUEUE};

const MINUTE: u64 = 60_000;

fn heartbeat(p: &FakePorts, install: &InstallId, signer: &InstallId, health: &str) -> Event {
    let mut h = InstallHeartbeat {
        install_id: install.clone(),
        agent_version: "0.1.0".into(),
        last_poll_at: Some(p.clock.now_ms()),
        last_sync_at: None,
        health: health.into(),
        sent_at: p.clock.now_ms(),
        signature: String::new(),
    };
    agent_key(signer).report_key().sign_heartbeat(&mut h);
    Event::new(Payload::InstallHeartbeat(h))
}

fn agent_queue(n: usize) -> QueueName {
    QueueName::new(format!("agent-{}", install_id(n))).unwrap()
}

/// Delivers every event on the bus once (from `seen` on); returns the new `seen`.
async fn drain_bus(p: &FakePorts, mut seen: usize) -> usize {
    loop {
        let events = p.bus.accepted();
        if seen >= events.len() {
            return seen;
        }
        while seen < events.len() {
            dispatch(p, &events[seen]).await.unwrap();
            seen += 1;
        }
    }
}

fn config() -> ReconcileConfig {
    ReconcileConfig {
        sync_deadline_ms: 30 * MINUTE,
        agent_gone_after_ms: 60 * MINUTE,
        release_deadline_ms: 15 * MINUTE,
        max_syncs: 50,
        max_releases: 5,
    }
}

#[tokio::test]
async fn heartbeats_are_authenticated_and_stopping_them_makes_an_install_stale() {
    let p = setup(2).await;
    let (a, b) = (install_id(0), install_id(1));
    let out = dispatch(&p, &heartbeat(&p, &a, &a, "ok")).await.unwrap();
    assert!(matches!(out, Outcome::HeartbeatRecorded { .. }), "{out:?}");
    let t = p.store.get_telemetry(&a).await.unwrap().unwrap();
    assert_eq!((t.last_seen, t.health.as_str()), (p.clock.now_ms(), "ok"));

    // B's key cannot speak for A: refused, counted, nothing recorded for A.
    p.clock.advance(2 * MINUTE);
    let forged = dispatch(&p, &heartbeat(&p, &a, &b, "forged"))
        .await
        .unwrap();
    assert!(
        matches!(forged, Outcome::HeartbeatRefused { .. }),
        "{forged:?}"
    );
    let kind = SecurityEvent::ReportUnauthenticated.as_str();
    assert_eq!(p.store.security_event_count(kind).await.unwrap().0, 1);
    assert_eq!(
        p.store.get_telemetry(&a).await.unwrap().unwrap().health,
        "ok"
    );

    // A replayed (old) heartbeat is not recorded.
    let old = heartbeat(&p, &a, &a, "old");
    p.clock.advance(20 * MINUTE);
    assert!(matches!(
        dispatch(&p, &old).await.unwrap(),
        Outcome::HeartbeatRefused { .. }
    ));

    // The agent stopped 22 minutes ago: stale by the one rule, with a 15 minute threshold.
    let seen = p
        .store
        .get_telemetry(&a)
        .await
        .unwrap()
        .map(|t| t.last_seen);
    assert_eq!(
        liveness(seen, p.clock.now_ms(), 15 * MINUTE),
        Liveness::Stale
    );
    let none = p
        .store
        .get_telemetry(&b)
        .await
        .unwrap()
        .map(|t| t.last_seen);
    assert_eq!(
        liveness(none, p.clock.now_ms(), 15 * MINUTE),
        Liveness::Never
    );
    dispatch(&p, &heartbeat(&p, &a, &a, "ok again"))
        .await
        .unwrap();
    let seen = p
        .store
        .get_telemetry(&a)
        .await
        .unwrap()
        .map(|t| t.last_seen);
    assert_eq!(
        liveness(seen, p.clock.now_ms(), 15 * MINUTE),
        Liveness::Live
    );
}

#[tokio::test]
async fn heartbeats_write_at_most_once_per_interval() {
    let p = setup(1).await;
    let a = install_id(0);
    dispatch(&p, &heartbeat(&p, &a, &a, "one")).await.unwrap();
    let writes = p.store.write_count();
    p.clock.advance(1_000);
    dispatch(&p, &heartbeat(&p, &a, &a, "two")).await.unwrap();
    assert_eq!(
        p.store.write_count(),
        writes,
        "a second heartbeat within the interval"
    );
    p.clock.advance(p.config.heartbeat_min_interval_ms);
    dispatch(&p, &heartbeat(&p, &a, &a, "three")).await.unwrap();
    assert_eq!(
        p.store.get_telemetry(&a).await.unwrap().unwrap().health,
        "three"
    );
}

#[tokio::test]
async fn the_reconciler_redrives_a_lost_message_and_fails_a_gone_agent_once_each() {
    let p = setup(2).await;
    let (alive, gone) = (install_id(0), install_id(1));
    // The gone agent was last heard from now; the alive one keeps sending heartbeats.
    dispatch(&p, &heartbeat(&p, &gone, &gone, "ok"))
        .await
        .unwrap();
    dispatch(&p, &build_requested("b-1")).await.unwrap();
    dispatch(&p, &build_succeeded("b-1", digest(1)))
        .await
        .unwrap();
    drain_bus(&p, 0).await;
    // Both jobs are running; the alive install's message is lost (received and deleted).
    let opts = ReceiveOptions::new(10, 0, 30).unwrap();
    let lost = p.queue.receive(&agent_queue(0), &opts).await.unwrap();
    assert_eq!(lost.len(), 1);
    p.queue
        .delete(&agent_queue(0), &lost[0].receipt_handle)
        .await
        .unwrap();

    // Before the deadline nothing is touched.
    p.clock.advance(10 * MINUTE);
    let r = reconcile(&p, &config()).await.unwrap();
    assert!(r.redriven.is_empty() && r.failed.is_empty(), "{r:?}");

    p.clock.advance(2 * 60 * MINUTE);
    dispatch(&p, &heartbeat(&p, &alive, &alive, "ok"))
        .await
        .unwrap();
    let mut redriven = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..3 {
        let r = reconcile(&p, &config()).await.unwrap();
        redriven.extend(r.redriven);
        failed.extend(r.failed);
    }
    assert_eq!(redriven.len(), 1, "re-driven once: {redriven:?}");
    assert_eq!(failed.len(), 1, "failed once: {failed:?}");

    let job = p.store.get_sync(&redriven[0]).await.unwrap().unwrap();
    assert_eq!(job.install_id, alive);
    assert_eq!((job.status(), job.state.attempts), (JobStatus::Running, 2));
    let again = p.queue.bodies(&agent_queue(0));
    assert_eq!(again.len(), 1, "one new job message");
    let msg = parse_sync_job(again[0].as_bytes()).unwrap();
    assert_eq!(msg.attempt, 2);
    // The re-driven job finishes normally.
    dispatch(&p, &report(&msg, SyncReportStatus::Succeeded, None))
        .await
        .unwrap();
    let job = p.store.get_sync(&redriven[0]).await.unwrap().unwrap();
    assert_eq!(job.status(), JobStatus::Succeeded);

    let dead = p.store.get_sync(&failed[0]).await.unwrap().unwrap();
    assert_eq!(dead.install_id, gone);
    let err = dead.state.error.unwrap();
    assert_eq!(err.code, "agent_gone");
    assert!(
        err.message.contains("install i-01") && err.message.contains("last seen at 1700000000000"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_release_whose_synced_event_was_lost_is_retallied() {
    let mut p = setup(2).await;
    p.config.fan_out_on_build = false;
    dispatch(&p, &build_requested("b-1")).await.unwrap();
    dispatch(&p, &build_succeeded("b-1", digest(1)))
        .await
        .unwrap();
    create_release(
        &p,
        &ReleaseRequest {
            id: ReleaseId::new("r-1").unwrap(),
            app: AppName::new("shop").unwrap(),
            builds: vec![BuildId::new("b-1").unwrap()],
            installs: None,
            policy: ReleasePolicy {
                installs_per_step: 2,
                delay_ms: 0,
                max_failures: FailureBudget::Count(1),
            },
            requested_by: "alice".into(),
        },
    )
    .await
    .unwrap();
    let release_q = QueueName::new(FAKE_RELEASE_QUEUE).unwrap();
    let opts = ReceiveOptions::new(10, 0, 30).unwrap();
    // The step timer, then the syncs; the agents report.
    for m in p.queue.receive(&release_q, &opts).await.unwrap() {
        dispatch(&p, &parse_event(m.body.as_bytes()).unwrap())
            .await
            .unwrap();
        p.queue.delete(&release_q, &m.receipt_handle).await.unwrap();
    }
    drain_bus(&p, 0).await;
    for n in 0..2 {
        for m in p.queue.receive(&agent_queue(n), &opts).await.unwrap() {
            let job = parse_sync_job(m.body.as_bytes()).unwrap();
            dispatch(&p, &report(&job, SyncReportStatus::Succeeded, None))
                .await
                .unwrap();
        }
    }
    // Every release.synced is lost.
    let lost = p.queue.receive(&release_q, &opts).await.unwrap();
    assert_eq!(lost.len(), 2);
    for m in lost {
        p.queue.delete(&release_q, &m.receipt_handle).await.unwrap();
    }
    let id = ReleaseId::new("r-1").unwrap();
    let r = p.store.get_release(&id).await.unwrap().unwrap();
    assert_eq!(r.status, ReleaseStatus::Running, "stuck in its step");

    p.clock.advance(20 * MINUTE);
    for _ in 0..3 {
        reconcile(&p, &config()).await.unwrap();
    }
    let r = p.store.get_release(&id).await.unwrap().unwrap();
    assert_eq!(r.status, ReleaseStatus::Completed, "{r:?}");
}

#[tokio::test]
async fn the_reconcile_scenario_holds_on_the_fakes() {
    let p = crate::testing::fake_ports(1_700_000_000_000);
    let queues = [
        QueueName::new("q-rc-alive").unwrap(),
        QueueName::new("q-rc-gone").unwrap(),
    ];
    for q in &queues {
        p.queue.create_queue(q);
    }
    crate::reconcile_contract::reconcile_scenario(crate::reconcile_contract::ReconcileFixture {
        ports: &p,
        clock: &p.clock.clone(),
        queues,
    })
    .await;
}
