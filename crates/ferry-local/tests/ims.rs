//! The local IMS end to end: queue workers running ferry-core's real handlers over the SQLite
//! store and queues, with ferry-core's fakes for the builder and the grant minter.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use ferry_core::domain::{Build, Component, ComponentKind, Install, RegistryTarget, SyncJob};
use ferry_core::event::{
    parse_sync_job, BuildCompleted, BuildOutcome, BuildRequested, Event, Payload, SyncJobMessage,
    SyncReportStatus, SyncReported,
};
use ferry_core::id::{
    AppName, BuildId, ComponentName, Digest, EventId, InstallId, QueueName, Repository,
};
use ferry_core::ports::{Batch, EventBus, JobStore, PageRequest, Queue, ReceiveOptions};
use ferry_core::state::JobStatus;
use ferry_core::testing::{ManualClock, MemBuilder, MemMinter, SeqIds};
use ferry_local::bus::{ims_queues, BUILD_COMPLETED_QUEUE, BUILD_REQUESTED_QUEUE};
use ferry_local::db::Db;
use ferry_local::queue::QueueConfig;
use ferry_local::worker::{
    dlq_name, ImsOptions, LocalIms, RunningIms, WorkerOptions, DEAD_LETTERED,
};

type Ims = LocalIms<MemBuilder, MemMinter, ManualClock, SeqIds>;

const INSTALLS: [&str; 3] = ["i-1", "i-2", "i-3"];

struct Env {
    _dir: tempfile::TempDir,
    ims: Ims,
    running: Option<RunningIms>,
    builder: MemBuilder,
    minter: MemMinter,
    clock: ManualClock,
}

fn app() -> AppName {
    AppName::new("shop").unwrap()
}
fn web() -> ComponentName {
    ComponentName::new("web").unwrap()
}
fn digest() -> Digest {
    Digest::new(format!("sha256:{}", "6c".repeat(32))).unwrap()
}
fn agent_queue(i: &str) -> QueueName {
    QueueName::new(format!("agent-{i}")).unwrap()
}

async fn env(visibility: Duration, max_receive_count: u32) -> Env {
    env_with(visibility, max_receive_count, &INSTALLS, true).await
}

async fn env_with(
    visibility: Duration,
    max_receive_count: u32,
    installs: &[&str],
    fan_out_on_build: bool,
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("ferry.db")).unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let builder = MemBuilder::default();
    let minter = MemMinter::new(clock.clone());
    let options = ImsOptions {
        visibility_timeout: visibility,
        max_receive_count,
        worker: WorkerOptions {
            wait_seconds: 1,
            ..WorkerOptions::default()
        },
        handlers: ferry_core::Config {
            fan_out_on_build,
            ..ferry_core::Config::default()
        },
        // The tests drive time by hand; a reconciler pass runs only when a test asks.
        reconcile_every: None,
        reconcile: ferry_core::reconcile::ReconcileConfig::default(),
    };
    let ims = LocalIms::new(
        db,
        builder.clone(),
        minter.clone(),
        clock.clone(),
        SeqIds::default(),
        options,
        std::sync::Arc::new(ferry_core::testing::test_vendor_key()),
    )
    .await
    .unwrap();
    let store = ims.store();
    store
        .put_component(&Component {
            app: app(),
            name: web(),
            kind: ComponentKind::Image {
                source: "docker.io/library/nginx".into(),
            },
            repository: Repository::new("shop/web").unwrap(),
            verify: None,
            credentials: None,
        })
        .await
        .unwrap();
    for &i in installs {
        ims.queue()
            .create_queue(&agent_queue(i), QueueConfig::default())
            .await
            .unwrap();
        store
            .put_install(&Install {
                id: InstallId::new(i).unwrap(),
                app: app(),
                registry: RegistryTarget {
                    endpoint: format!("{i}.registry.test"),
                    namespace: "vendor".into(),
                },
                agent_public_key: format!("agent-key-{i}"),
                agent_report_key: ferry_core::testing::test_agent_key(&InstallId::new(i).unwrap())
                    .report_key()
                    .public_key_string(),
                queue: agent_queue(i),
                components: vec![web()],
            })
            .await
            .unwrap();
    }
    let running = Some(ims.spawn());
    Env {
        _dir: dir,
        ims,
        running,
        builder,
        minter,
        clock,
    }
}

impl Env {
    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            for (queue, result) in r.shutdown().await {
                assert!(result.is_ok(), "worker {queue} failed: {result:?}");
            }
        }
    }

    async fn publish(&self, event: Event) {
        let results = self
            .ims
            .bus()
            .put_events(&Batch::new(vec![event]).unwrap())
            .await
            .unwrap();
        results[0].as_ref().unwrap();
    }

    async fn build(&self, id: &BuildId) -> Option<Build> {
        self.ims.store().get_build(id).await.unwrap()
    }

    async fn syncs(&self, build: &BuildId) -> Vec<SyncJob> {
        self.ims
            .store()
            .syncs_by_build(build, &PageRequest::first(100))
            .await
            .unwrap()
            .items
    }

    /// Waits until every IMS queue is empty (messages are deleted only after their handler,
    /// which publishes follow-ups first, so an empty set of queues means the chain is done).
    async fn quiescent(&self) {
        eventually("the IMS queues to drain", || async {
            for q in ims_queues() {
                if self
                    .ims
                    .queue()
                    .approximate_depth(&q)
                    .await
                    .unwrap()
                    .total()
                    > 0
                {
                    return None;
                }
            }
            Some(())
        })
        .await
    }
}

/// Polls `check` until it yields, with a bounded deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed(build: &BuildId) -> Event {
    Event::new(Payload::BuildCompleted(BuildCompleted {
        build_id: build.clone(),
        status: BuildOutcome::Succeeded,
        digest: Some(digest()),
        repository: Some(Repository::new("shop/web").unwrap()),
        media_type: None,
        error: None,
        revision: None,
    }))
}

fn reported(job: &SyncJobMessage) -> Event {
    Event::new(Payload::SyncReported(
        ferry_core::testing::signed_by_test_agent(SyncReported {
            sync_id: job.sync_id.clone(),
            install_id: job.install_id.clone(),
            status: SyncReportStatus::Succeeded,
            digest: job.digest.clone(),
            bytes_copied: 1234,
            bytes_skipped: 0,
            duration_ms: 10,
            error: None,
            attempt: job.attempt,
            signature: String::new(),
        }),
    ))
}

async fn take_job(env: &Env, install: &str) -> SyncJobMessage {
    let got = env
        .ims
        .queue()
        .receive(
            &agent_queue(install),
            &ReceiveOptions::new(10, 5, 60).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "exactly one job message for {install}");
    env.ims
        .queue()
        .delete(&agent_queue(install), &got[0].receipt_handle)
        .await
        .unwrap();
    parse_sync_job(got[0].body.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_flows_to_three_installs_and_back() {
    let mut env = env(Duration::from_secs(30), 5).await;
    let build_id = env
        .ims
        .request_build(app(), web(), "v1.2.3".into(), "test".into())
        .await
        .unwrap();
    let b = eventually("the build to start", || async {
        env.build(&build_id)
            .await
            .filter(|b| b.status() == JobStatus::Running)
    })
    .await;
    assert_eq!(
        b.external_id.as_deref(),
        Some(format!("ext-{build_id}").as_str())
    );
    assert_eq!(env.builder.starts().len(), 1);

    env.publish(completed(&build_id)).await;
    let syncs = eventually("three dispatched syncs", || async {
        let s = env.syncs(&build_id).await;
        (s.len() == 3 && s.iter().all(|j| j.status() == JobStatus::Running)).then_some(s)
    })
    .await;
    let installs: Vec<&str> = syncs.iter().map(|s| s.install_id.as_str()).collect();
    assert_eq!(installs, INSTALLS);

    let minted = env.minter.minted();
    assert_eq!(minted.len(), 3);
    let mut jobs = Vec::new();
    for i in INSTALLS {
        let job = take_job(&env, i).await;
        assert_eq!(job.install_id.as_str(), i);
        assert_eq!(job.digest, digest());
        // The message carries the minter's sealed grant, for this install's key only.
        let m = minted.iter().find(|m| m.sync_id == job.sync_id).unwrap();
        assert_eq!(job.grant, m.grant);
        let sealed = String::from_utf8_lossy(job.grant.ciphertext()).to_string();
        assert!(
            sealed.starts_with(&format!("sealed-to:agent-key-{i}:")),
            "{sealed}"
        );
        jobs.push(job);
    }
    // The store keeps only the grant's expiry, never the grant.
    let dump = env.ims.store().export_json().await.unwrap();
    assert!(
        !dump.contains("ciphertext") && !dump.contains("sealed-to"),
        "{dump}"
    );
    assert!(dump.contains("grant_expires_at"));

    for job in &jobs {
        env.publish(reported(job)).await;
    }
    eventually("three succeeded syncs", || async {
        let s = env.syncs(&build_id).await;
        s.iter()
            .all(|j| {
                j.status() == JobStatus::Succeeded
                    && j.stats.is_some_and(|st| st.bytes_copied == 1234)
            })
            .then_some(())
    })
    .await;
    let lineage = env
        .ims
        .store()
        .lineage_by_digest(&digest(), &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    let holders: Vec<&str> = lineage.iter().map(|l| l.install_id.as_str()).collect();
    assert_eq!(holders, INSTALLS);
    assert!(lineage.iter().all(|l| l.build_id == build_id));
    assert_eq!(env.minter.revoked().len(), 3);
    env.quiescent().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_change_nothing() {
    let mut env = env(Duration::from_secs(30), 5).await;
    let build_id = BuildId::new("b-replay").unwrap();
    let requested = Event::with_id(
        EventId::new("b-replay").unwrap(),
        Payload::BuildRequested(BuildRequested {
            build_id: Some(build_id.clone()),
            app: app(),
            component: web(),
            source_ref: "main".into(),
            requested_by: "test".into(),
        }),
    );
    env.publish(requested.clone()).await;
    env.quiescent().await;
    env.publish(completed(&build_id)).await;
    env.quiescent().await;
    let mut reports = Vec::new();
    for i in INSTALLS {
        let job = take_job(&env, i).await;
        reports.push(reported(&job));
    }
    for r in &reports {
        env.publish(r.clone()).await;
    }
    env.quiescent().await;
    let before = env.ims.store().export_json().await.unwrap();
    assert!(before.contains("\"succeeded\""));

    // Any write from a replay would now carry a later timestamp.
    env.clock.advance(60_000);
    for _ in 0..2 {
        env.publish(requested.clone()).await;
        env.publish(completed(&build_id)).await;
        for r in &reports {
            env.publish(r.clone()).await;
        }
    }
    env.quiescent().await;
    let after = env.ims.store().export_json().await.unwrap();
    assert_eq!(before, after, "replays must not change the store");
    assert_eq!(env.builder.starts().len(), 1, "the builder started once");
    assert_eq!(env.minter.minted().len(), 3, "one grant per install");
    for i in INSTALLS {
        let depth = env
            .ims
            .queue()
            .approximate_depth(&agent_queue(i))
            .await
            .unwrap();
        assert_eq!(depth.total(), 0, "no duplicate job message for {i}");
    }
    for q in ims_queues() {
        assert!(env
            .ims
            .queue()
            .dlq_messages(&dlq_name(&q).unwrap())
            .await
            .unwrap()
            .is_empty());
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dlq_and_the_rest_go_through() {
    // Short visibility so the N receives happen within a few seconds.
    let mut env = env(Duration::from_secs(1), 3).await;
    let requested = QueueName::new(BUILD_REQUESTED_QUEUE).unwrap();
    let mut bodies: Vec<String> = (1..=9)
        .map(|n| {
            Event::with_id(
                EventId::new(format!("b-good-{n}")).unwrap(),
                Payload::BuildRequested(BuildRequested {
                    build_id: Some(BuildId::new(format!("b-good-{n}")).unwrap()),
                    app: app(),
                    component: web(),
                    source_ref: "main".into(),
                    requested_by: "test".into(),
                }),
            )
            .to_json()
            .unwrap()
        })
        .collect();
    let poison = r#"{"version":1,"type":"build.requested","app":"shop","component":"web","source_ref":"main","requested_by":"test","colour":"red"}"#;
    bodies.insert(4, poison.to_string());
    let results = env
        .ims
        .queue()
        .send_batch(&requested, &Batch::new(bodies).unwrap())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));

    let good: Vec<BuildId> = (1..=9)
        .map(|n| BuildId::new(format!("b-good-{n}")).unwrap())
        .collect();
    eventually("the nine good builds to start", || async {
        for id in &good {
            env.build(id).await?;
        }
        Some(())
    })
    .await;

    // A build.completed that does not parse (bad digest) for a running build: once it is given
    // up on, the build itself records why.
    let completed_q = QueueName::new(BUILD_COMPLETED_QUEUE).unwrap();
    let bad_completion = r#"{"version":1,"type":"build.completed","build_id":"b-good-1","status":"succeeded","digest":"sha256:not-hex","repository":"shop/web"}"#;
    env.ims
        .queue()
        .send(&completed_q, bad_completion)
        .await
        .unwrap();

    let dead = eventually("the poison message in the DLQ", || async {
        let d = env
            .ims
            .queue()
            .dlq_messages(&dlq_name(&requested).unwrap())
            .await
            .unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, poison);
    assert_eq!(dead[0].receive_count, 3);
    let last = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(last.contains("unknown field \"colour\""), "{last}");

    let failed = eventually("the bad completion to fail its build", || async {
        env.build(&good[0])
            .await
            .filter(|b| b.status() == JobStatus::Failed)
    })
    .await;
    let err = failed.state.error.unwrap();
    assert_eq!(err.code, DEAD_LETTERED);
    assert!(err.message.contains("digest"), "{}", err.message);
    assert!(
        err.message.contains("build-completed-dlq"),
        "{}",
        err.message
    );
    eventually("the bad completion in its DLQ", || async {
        let d = env
            .ims
            .queue()
            .dlq_messages(&dlq_name(&completed_q).unwrap())
            .await
            .unwrap();
        (d.len() == 1).then_some(())
    })
    .await;

    for id in &good[1..] {
        assert_eq!(
            env.build(id).await.unwrap().status(),
            JobStatus::Running,
            "{id}"
        );
    }
    assert_eq!(env.builder.starts().len(), 9);
    env.quiescent().await;
    env.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Releases on the SQLite store and queues, drained by the real workers

mod releases {
    use super::*;
    use ferry_core::id::ReleaseId;
    use ferry_core::release::{FailureBudget, ReleasePolicy, ReleaseStatus, TargetState};
    use ferry_core::rollout::{ReleaseRequest, Releases as _};

    const SIX: [&str; 6] = ["r-0", "r-1", "r-2", "r-3", "r-4", "r-5"];

    fn request(id: &str, build: &BuildId, per_step: u32) -> ReleaseRequest {
        ReleaseRequest {
            id: ReleaseId::new(id).unwrap(),
            app: app(),
            builds: vec![build.clone()],
            installs: None,
            policy: ReleasePolicy {
                installs_per_step: per_step,
                delay_ms: 0,
                max_failures: FailureBudget::parse("1").unwrap(),
            },
            requested_by: "test".into(),
        }
    }

    /// Every agent takes what is on its queue and reports; `refusing` installs report that
    /// their registry refused the push. Returns how many jobs were taken.
    async fn agents(env: &Env, refusing: &[&str]) -> usize {
        let mut taken = 0;
        for i in SIX {
            let q = agent_queue(i);
            let got = env
                .ims
                .queue()
                .receive(&q, &ReceiveOptions::new(10, 0, 60).unwrap())
                .await
                .unwrap();
            for m in got {
                let job = parse_sync_job(m.body.as_bytes()).unwrap();
                let mut report = reported(&job);
                if refusing.contains(&i) {
                    if let Payload::SyncReported(r) = &mut report.payload {
                        r.status = SyncReportStatus::Failed;
                        r.error = Some(format!(
                            "the install registry {i}.registry.test refused the push: 403 denied"
                        ));
                        r.signature = String::new();
                        *r = ferry_core::testing::signed_by_test_agent(r.clone());
                    }
                }
                env.publish(report).await;
                env.ims.queue().delete(&q, &m.receipt_handle).await.unwrap();
                taken += 1;
            }
        }
        taken
    }

    /// Runs the agents until nothing moves: the IMS queues are empty and no agent has a job.
    async fn settle(env: &Env) -> usize {
        let mut taken = 0;
        loop {
            env.quiescent().await;
            let n = agents(env, &[]).await;
            if n == 0 {
                return taken;
            }
            taken += n;
        }
    }

    /// Runs the agents until the release stops at `want`.
    async fn until(env: &Env, id: &ReleaseId, refusing: &[&str], want: ReleaseStatus) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut taken = 0;
        loop {
            taken += agents(env, refusing).await;
            let (r, _) = env.ims.ports().show(id).await.unwrap();
            if r.status == want {
                return taken;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for release {id} to be {want}: {r:?}"
            );
            env.quiescent().await;
        }
    }

    async fn built(env: &Env, name: &str) -> BuildId {
        let b = BuildId::new(name).unwrap();
        env.publish(Event::with_id(
            EventId::new(format!("req-{name}")).unwrap(),
            Payload::BuildRequested(BuildRequested {
                build_id: Some(b.clone()),
                app: app(),
                component: web(),
                source_ref: "v1".into(),
                requested_by: "test".into(),
            }),
        ))
        .await;
        eventually("the build to start", || async {
            env.build(&b)
                .await
                .filter(|x| x.status() == JobStatus::Running)
        })
        .await;
        env.publish(completed(&b)).await;
        eventually("the build to succeed", || async {
            env.build(&b)
                .await
                .filter(|x| x.status() == JobStatus::Succeeded)
        })
        .await;
        b
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusing_install_halts_its_step_and_resume_finishes_the_release() {
        let mut env = env_with(Duration::from_secs(30), 5, &SIX, false).await;
        let b = built(&env, "b-rel").await;
        assert!(env.syncs(&b).await.is_empty(), "no implicit release");
        let ports = env.ims.ports().clone();
        let r = ports.create(&request("rel-1", &b, 2)).await.unwrap();
        assert_eq!(r.steps, 3);
        let taken = until(&env, &r.id, &["r-3"], ReleaseStatus::Halted).await;
        assert_eq!(taken, 4, "steps 1 and 2 ran, step 3 did not");
        let (halted, targets) = ports.show(&r.id).await.unwrap();
        assert_eq!(halted.step, 1);
        assert!(halted.reason.unwrap().contains("ferry release resume"));
        let failed: Vec<_> = targets
            .iter()
            .filter(|t| t.state(halted.round) == TargetState::Failed)
            .collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].install_id.as_str(), "r-3");
        assert!(
            failed[0]
                .error()
                .unwrap()
                .message
                .contains("refused the push"),
            "{:?}",
            failed[0].error()
        );
        assert_eq!(
            targets
                .iter()
                .filter(|t| t.state(halted.round) == TargetState::Pending)
                .count(),
            2
        );

        // The registry is fixed: resume retries r-3, then runs step 3.
        ports.resume(&r.id).await.unwrap();
        let taken = until(&env, &r.id, &[], ReleaseStatus::Completed).await;
        assert_eq!(taken, 3);
        let (done, targets) = ports.show(&r.id).await.unwrap();
        assert!(targets
            .iter()
            .all(|t| t.state(done.round) == TargetState::Succeeded));

        // Releasing the same build again syncs nothing.
        let syncs = env.syncs(&b).await.len();
        let again = ports.create(&request("rel-2", &b, 6)).await.unwrap();
        until(&env, &again.id, &[], ReleaseStatus::Completed).await;
        let (_, targets) = ports.show(&again.id).await.unwrap();
        assert!(targets.iter().all(|t| t.state(0) == TargetState::Current));
        assert_eq!(env.syncs(&b).await.len(), syncs);
        env.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pause_resume_and_abort_on_sqlite() {
        let mut env = env_with(Duration::from_secs(30), 5, &SIX, false).await;
        let b = built(&env, "b-pause").await;
        let ports = env.ims.ports().clone();
        let r = ports.create(&request("rel-p", &b, 2)).await.unwrap();
        ports.pause(&r.id).await.unwrap();
        // Whatever step was in flight finishes; no further step starts while paused.
        let taken = settle(&env).await;
        let (paused, _) = ports.show(&r.id).await.unwrap();
        assert_eq!(paused.status, ReleaseStatus::Paused);
        assert!(
            taken <= 2,
            "at most the first step ran while paused: {taken}"
        );
        ports.resume(&r.id).await.unwrap();
        until(&env, &r.id, &[], ReleaseStatus::Completed).await;
        let e = ports.abort(&r.id, "ops").await.unwrap_err();
        assert!(e.to_string().contains("already completed"), "{e}");

        let b2 = built(&env, "b-abort").await;
        let r2 = ports.create(&request("rel-a", &b2, 2)).await.unwrap();
        let aborted = ports.abort(&r2.id, "ops").await.unwrap();
        assert_eq!(aborted.status, ReleaseStatus::Aborted);
        settle(&env).await;
        assert!(
            env.syncs(&b2).await.len() <= 2,
            "nothing past the first step"
        );
        env.stop().await;
    }
}
