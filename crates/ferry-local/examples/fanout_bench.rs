//! The local release fan-out benchmark (issue 12; run by `scripts/bench-fanout-local.sh`):
//! one release of one build to N installs on the local backend, drained by the real IMS
//! workers (ferry-core's handlers over the SQLite store and queues, the real grant minter over
//! an `AccessControl`, sealing each grant to the install's agent key).
//!
//! It prints one JSON line: the time from `release create` to every install's job enqueued and
//! to the release completed, and the peak RSS of this process (which runs every worker) during
//! the release (`VmHWM`, reset through `/proc/self/clear_refs` after the installs are
//! registered). A step holds at most `MAX_INSTALLS_PER_STEP` installs and the next step starts
//! only when every sync of the current one is terminal, so stand-in agents (not real ones:
//! nothing is copied) take each job and report it succeeded, signed with the test agent key.
//! This is a benchmark, not a library: it panics on any error, and must never be run against
//! a state directory that matters (it makes its own in a temp dir).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::domain::{Component, ComponentKind, Install, RegistryTarget};
use ferry_core::event::{
    parse_sync_job, BuildCompleted, BuildOutcome, Event, Payload, SyncReportStatus, SyncReported,
};
use ferry_core::id::{AppName, ComponentName, Digest, InstallId, QueueName, Repository};
use ferry_core::id::{BuildId, ReleaseId};
use ferry_core::ports::{Batch, EventBus as _, JobStore as _, Queue as _, ReceiveOptions};
use ferry_core::release::{
    FailureBudget, ReleasePolicy, ReleaseStatus, ReleaseStore as _, MAX_INSTALLS_PER_STEP,
};
use ferry_core::rollout::{ReleaseRequest, Releases as _};
use ferry_core::state::JobStatus;
use ferry_core::testing::{signed_by_test_agent, test_agent_key, test_vendor_key, MemBuilder};
use ferry_local::clock::{RandomIds, SystemClock};
use ferry_local::db::Db;
use ferry_local::minter::LocalGrantMinter;
use ferry_local::queue::QueueConfig;
use ferry_local::worker::{ImsOptions, LocalIms, WorkerOptions};
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};

/// How often the bench looks at the queues (the resolution of its timings).
const POLL: Duration = Duration::from_millis(20);
/// The whole run gives up after this long.
const LIMIT: Duration = Duration::from_secs(1800);

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let installs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("usage: fanout_bench INSTALLS"))
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(installs));
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("ferry.db");
    let db = Db::open(&db_path).unwrap();
    let access = Arc::new(
        AccessControl::open(
            AuthConfig::new("ferry-bench", dir.path().join("auth")),
            AccessPolicy::new(),
        )
        .unwrap(),
    );
    let builder = MemBuilder::default();
    let ims = LocalIms::new(
        db.clone(),
        builder.clone(),
        LocalGrantMinter::new(access, "127.0.0.1:5000"),
        SystemClock,
        RandomIds,
        ImsOptions {
            worker: WorkerOptions {
                wait_seconds: 1,
                ..WorkerOptions::default()
            },
            handlers: ferry_core::Config {
                fan_out_on_build: false,
                ..ferry_core::Config::default()
            },
            reconcile_every: None,
            ..ImsOptions::default()
        },
        Arc::new(test_vendor_key()),
    )
    .await
    .unwrap();
    let app = AppName::new("shop").unwrap();
    let web = ComponentName::new("web").unwrap();
    let repository = Repository::new("vendor/shop/web").unwrap();
    let store = ims.store();
    store
        .put_component(&Component {
            app: app.clone(),
            name: web.clone(),
            kind: ComponentKind::Image {
                source: "docker.io/library/nginx".into(),
            },
            repository: repository.clone(),
            verify: None,
            credentials: None,
        })
        .await
        .unwrap();

    let t = Instant::now();
    for i in 0..n {
        let id = InstallId::new(format!("i-{i:06}")).unwrap();
        let queue = QueueName::new(format!("agent-{id}")).unwrap();
        ims.queue()
            .create_queue(&queue, QueueConfig::default())
            .await
            .unwrap();
        let key = test_agent_key(&id);
        store
            .put_install(&Install {
                id: id.clone(),
                app: app.clone(),
                registry: RegistryTarget {
                    endpoint: format!("{id}.registry.test"),
                    namespace: format!("installs/{id}"),
                },
                agent_public_key: key.public_key_string(),
                agent_report_key: key.report_key().public_key_string(),
                queue,
                components: vec![web.clone()],
            })
            .await
            .unwrap();
    }
    let register_s = t.elapsed().as_secs_f64();

    let running = ims.spawn();
    let build = ims
        .request_build(app.clone(), web.clone(), "v1".into(), "bench".into())
        .await
        .unwrap();
    wait_build(&ims, &build, JobStatus::Running).await;
    publish(
        &ims,
        vec![Event::new(Payload::BuildCompleted(BuildCompleted {
            build_id: build.clone(),
            status: BuildOutcome::Succeeded,
            digest: Some(Digest::new(format!("sha256:{}", "6c".repeat(32))).unwrap()),
            repository: Some(repository),
            media_type: None,
            error: None,
            revision: None,
        }))],
    )
    .await;
    wait_build(&ims, &build, JobStatus::Succeeded).await;

    // Peak RSS from here on: the release, not the set-up.
    let rss_before_kib = status_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux only)");
    let reader = rusqlite::Connection::open(&db_path).unwrap();
    let t = Instant::now();
    let per_step = u32::try_from(n).unwrap().clamp(1, MAX_INSTALLS_PER_STEP);
    let release = ims
        .ports()
        .create(&ReleaseRequest {
            id: ReleaseId::new("rel-bench").unwrap(),
            app,
            builds: vec![build],
            installs: None,
            policy: ReleasePolicy {
                installs_per_step: per_step,
                delay_ms: 0,
                max_failures: FailureBudget::parse("1").unwrap(),
            },
            requested_by: "bench".into(),
        })
        .await
        .unwrap();
    let create_s = t.elapsed().as_secs_f64();
    let create_peak_kib = status_kib("VmHWM:");
    // (seconds since create, RSS MiB) each time a step's jobs are all taken.
    let mut steps_taken = Vec::new();

    // Stand-in agents: each job taken is reported succeeded, so the next step can start.
    let mut enqueued = 0usize;
    let mut first_step_s = None;
    let all_enqueued_s;
    loop {
        let due: Vec<String> = {
            let mut stmt = reader
                .prepare("SELECT DISTINCT queue FROM messages WHERE queue LIKE 'agent-%'")
                .unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        };
        let mut reports = Vec::new();
        let mut taken = Vec::new();
        for q in due {
            let q = QueueName::new(q).unwrap();
            let got = ims
                .queue()
                .receive(&q, &ReceiveOptions::new(10, 0, 60).unwrap())
                .await
                .unwrap();
            for m in got {
                let job = parse_sync_job(m.body.as_bytes()).unwrap();
                reports.push(Event::new(Payload::SyncReported(signed_by_test_agent(
                    SyncReported {
                        sync_id: job.sync_id.clone(),
                        install_id: job.install_id.clone(),
                        status: SyncReportStatus::Succeeded,
                        digest: job.digest.clone(),
                        bytes_copied: 1,
                        bytes_skipped: 0,
                        duration_ms: 1,
                        error: None,
                        attempt: job.attempt,
                        signature: String::new(),
                    },
                ))));
                taken.push((q.clone(), m.receipt_handle));
            }
        }
        let before = enqueued;
        enqueued += taken.len();
        if enqueued / per_step as usize > before / per_step as usize {
            steps_taken.push((
                round(t.elapsed().as_secs_f64()),
                status_kib("VmRSS:") / 1024,
            ));
        }
        // Reported in PutEvents-sized batches, as the agents' reports arrive on AWS.
        for chunk in reports.chunks(10) {
            publish(&ims, chunk.to_vec()).await;
        }
        for (q, receipt) in taken {
            ims.queue().delete(&q, &receipt).await.unwrap();
        }
        if first_step_s.is_none() && enqueued >= per_step as usize {
            first_step_s = Some(t.elapsed().as_secs_f64());
        }
        if enqueued >= n {
            all_enqueued_s = t.elapsed().as_secs_f64();
            break;
        }
        assert!(
            t.elapsed() < LIMIT,
            "only {enqueued} of {n} jobs within {LIMIT:?}"
        );
        let r = store.get_release(&release.id).await.unwrap().unwrap();
        assert!(
            !matches!(r.status, ReleaseStatus::Halted | ReleaseStatus::Aborted),
            "the release stopped after {enqueued} jobs: {:?}",
            r.reason
        );
        tokio::time::sleep(POLL).await;
    }
    let completed_s = loop {
        let r = store.get_release(&release.id).await.unwrap().unwrap();
        if r.status == ReleaseStatus::Completed {
            break t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < LIMIT, "release not completed: {r:?}");
        tokio::time::sleep(POLL).await;
    };
    let peak_kib = status_kib("VmHWM:");
    let jobs: i64 = reader
        .query_row(
            "SELECT COUNT(*) FROM syncs WHERE status = 'succeeded'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let left: i64 = reader
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE queue LIKE 'agent-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(enqueued, n, "every install got exactly one job");
    assert_eq!(left, 0, "no second job for any install");
    assert_eq!(jobs as usize, n, "one succeeded sync per install");
    for (queue, r) in running.shutdown().await {
        r.unwrap_or_else(|e| panic!("worker {queue}: {e}"));
    }
    println!(
        "{}",
        serde_json::json!({
            "installs": n,
            "steps": release.steps,
            "installs_per_step": per_step,
            "register_s": round(register_s),
            "create_s": round(create_s),
            "first_step_enqueued_s": first_step_s.map(round),
            "all_enqueued_s": round(all_enqueued_s),
            "completed_s": round(completed_s),
            "installs_per_s": round(n as f64 / all_enqueued_s),
            "rss_before_mib": rss_before_kib / 1024,
            "create_peak_rss_mib": create_peak_kib / 1024,
            "steps_taken_s_rss_mib": steps_taken,
            "release_peak_rss_mib": peak_kib / 1024,
        })
    );
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn publish<B, G, C, I>(ims: &LocalIms<B, G, C, I>, events: Vec<Event>)
where
    B: ferry_core::ports::Builder + 'static,
    G: ferry_core::ports::GrantMinter + 'static,
    C: ferry_core::ports::Clock + 'static,
    I: ferry_core::ports::IdGenerator,
{
    let results = ims
        .bus()
        .put_events(&Batch::new(events).unwrap())
        .await
        .unwrap();
    for r in results {
        r.expect("event published");
    }
}

async fn wait_build<B, G, C, I>(ims: &LocalIms<B, G, C, I>, id: &BuildId, want: JobStatus)
where
    B: ferry_core::ports::Builder + 'static,
    G: ferry_core::ports::GrantMinter + 'static,
    C: ferry_core::ports::Clock + 'static,
    I: ferry_core::ports::IdGenerator,
{
    let t = Instant::now();
    loop {
        if let Some(b) = ims.store().get_build(id).await.unwrap() {
            if b.status() == want {
                return;
            }
        }
        assert!(t.elapsed() < LIMIT, "build {id} never {want:?}");
        tokio::time::sleep(POLL).await;
    }
}
