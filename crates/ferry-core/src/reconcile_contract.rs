//! The reconciler's scenario on a real store and queue (features `contract` + `testing`): run
//! by ferry-local on SQLite and by ferry-aws on DynamoDB and SQS in moto, with the injected
//! [`ManualClock`] as the time and the fakes for the ports the reconciler does not exercise.
//!
//! One install's job message is deleted (a lost message) while its agent keeps sending
//! heartbeats; another install's agent goes silent. However often the reconciler runs, the
//! first job is re-driven exactly once (one new job message, attempt 2) and the second is
//! failed exactly once with `agent_gone`, naming the install and its last-seen time. It panics
//! with a message naming the broken rule and never sleeps.

use crate::domain::{Component, ComponentKind, Install, RegistryTarget};
use crate::event::{parse_sync_job, Event, InstallHeartbeat, Payload, SyncRequested};
use crate::handlers::{dispatch, Ports};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository, SyncId,
};
use crate::ports::{Backend, Clock, JobStore, Queue, ReceiveOptions};
use crate::reconcile::{reconcile, ReconcileConfig};
use crate::state::JobStatus;
use crate::testing::{test_agent_key, ManualClock};

const MINUTE: u64 = 60_000;

fn must<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("reconcile scenario: {what}: {e:?}"))
}

/// What the scenario needs from the caller: ports over the backend under test whose clock is
/// `clock`, and two install queues that already exist on its queue adapter.
pub struct ReconcileFixture<'a, P: Backend> {
    pub ports: &'a Ports<P>,
    pub clock: &'a ManualClock,
    /// The queues of the install whose message is lost and of the install whose agent is gone.
    pub queues: [QueueName; 2],
}

fn heartbeat<P: Backend>(ports: &Ports<P>, install: &InstallId) -> Event {
    let mut h = InstallHeartbeat {
        install_id: install.clone(),
        agent_version: "test".into(),
        last_poll_at: Some(ports.clock.now_ms()),
        last_sync_at: None,
        health: "ok".into(),
        sent_at: ports.clock.now_ms(),
        signature: String::new(),
    };
    test_agent_key(install).report_key().sign_heartbeat(&mut h);
    Event::new(Payload::InstallHeartbeat(h))
}

/// Runs the scenario (see the module doc).
pub async fn reconcile_scenario<P: Backend>(f: ReconcileFixture<'_, P>) {
    let p = f.ports;
    let app = must(AppName::new("shop"), "app");
    let web = must(ComponentName::new("web"), "component");
    must(
        p.store
            .put_component(&Component {
                app: app.clone(),
                name: web.clone(),
                kind: ComponentKind::Image {
                    source: "docker.io/library/busybox".into(),
                },
                repository: must(Repository::new("vendor/shop/web"), "repository"),
                verify: None,
                credentials: None,
            })
            .await,
        "put_component",
    );
    let ids = [
        must(InstallId::new("rc-alive"), "install id"),
        must(InstallId::new("rc-gone"), "install id"),
    ];
    for (id, queue) in ids.iter().zip(&f.queues) {
        must(
            p.store
                .put_install(&Install {
                    id: id.clone(),
                    app: app.clone(),
                    registry: RegistryTarget {
                        endpoint: "registry.test".into(),
                        namespace: format!("installs/{id}"),
                    },
                    agent_public_key: format!("agent-key-{id}"),
                    agent_report_key: test_agent_key(id).report_key().public_key_string(),
                    queue: queue.clone(),
                    components: vec![web.clone()],
                })
                .await,
            "put_install",
        );
    }
    let t0 = f.clock.now_ms();
    must(
        dispatch(p, &heartbeat(p, &ids[1])).await,
        "gone agent's last heartbeat",
    );
    let digest = must(Digest::new(format!("sha256:{}", "ab".repeat(32))), "digest");
    let mut syncs = Vec::new();
    for id in &ids {
        let sync_id = p
            .vendor_key
            .sync_id(&must(BuildId::new("b-rc"), "build"), id);
        let ev = Event::new(Payload::SyncRequested(SyncRequested {
            sync_id: sync_id.clone(),
            build_id: must(BuildId::new("b-rc"), "build"),
            install_id: id.clone(),
            repository: must(Repository::new("vendor/shop/web"), "repository"),
            digest: digest.clone(),
            release_id: None,
            context: None,
        }));
        must(dispatch(p, &ev).await, "sync.requested");
        syncs.push(sync_id);
    }
    // The alive install's job message is lost: received and deleted without a report.
    let opts = must(ReceiveOptions::new(10, 1, 30), "receive options");
    let got = must(p.queue.receive(&f.queues[0], &opts).await, "receive");
    assert_eq!(
        got.len(),
        1,
        "reconcile scenario: one job message was enqueued"
    );
    for m in &got {
        must(
            p.queue.delete(&f.queues[0], &m.receipt_handle).await,
            "delete",
        );
    }

    let config = ReconcileConfig {
        sync_deadline_ms: 30 * MINUTE,
        agent_gone_after_ms: 60 * MINUTE,
        release_deadline_ms: 15 * MINUTE,
        max_syncs: 20,
        max_releases: 5,
    };
    f.clock.advance(10 * MINUTE);
    let early = must(reconcile(p, &config).await, "reconcile");
    assert!(
        early.redriven.is_empty() && early.failed.is_empty(),
        "reconcile scenario: nothing is touched before its deadline ({early:?})"
    );
    f.clock.advance(2 * 60 * MINUTE);
    must(
        dispatch(p, &heartbeat(p, &ids[0])).await,
        "alive agent's heartbeat",
    );
    let (mut redriven, mut failed) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let r = must(reconcile(p, &config).await, "reconcile");
        redriven.extend(r.redriven);
        failed.extend(r.failed);
    }
    assert_eq!(
        redriven,
        vec![syncs[0].clone()],
        "reconcile scenario: the lost message is re-driven once, however often the pass runs"
    );
    assert_eq!(
        failed,
        vec![syncs[1].clone()],
        "reconcile scenario: the gone agent's job is failed once"
    );
    let again = must(p.queue.receive(&f.queues[0], &opts).await, "receive");
    assert_eq!(
        again.len(),
        1,
        "reconcile scenario: exactly one new job message after three passes"
    );
    let msg = must(parse_sync_job(again[0].body.as_bytes()), "job message");
    assert_eq!((msg.sync_id.clone(), msg.attempt), (syncs[0].clone(), 2));
    let job = must(p.store.get_sync(&syncs[0]).await, "get_sync")
        .unwrap_or_else(|| panic!("reconcile scenario: the re-driven job exists"));
    assert_eq!((job.status(), job.state.attempts), (JobStatus::Running, 2));
    let dead: SyncId = syncs[1].clone();
    let dead = must(p.store.get_sync(&dead).await, "get_sync")
        .unwrap_or_else(|| panic!("reconcile scenario: the failed job exists"));
    let err = dead
        .state
        .error
        .unwrap_or_else(|| panic!("reconcile scenario: a failed job carries its error"));
    assert_eq!(err.code, "agent_gone");
    assert!(
        err.message.contains("install rc-gone") && err.message.contains(&format!("at {t0}")),
        "reconcile scenario: the error names the install and its last-seen time: {}",
        err.message
    );
}
