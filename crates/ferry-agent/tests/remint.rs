//! A grant that expires before the agent picks its job up is re-minted, on the local backend,
//! end to end: the real IMS handlers (LocalIms over SQLite), the real minter on the embedded
//! registry, and the real agent. The agent's clock is injected: it sees the first grant as
//! expired (no real 15-minute wait), then the true time.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_core::event::{Event, Payload, SyncRequested};
use ferry_core::id::{BuildId, Digest as CoreDigest, EventId, InstallId, Repository};
use ferry_core::ports::{Batch, EventBus as _, JobStore as _};
use ferry_core::seal::AgentKeypair;
use ferry_core::state::JobStatus;
use ferry_core::testing::{MemBuilder, SeqIds};
use ferry_local::clock::SystemClock;
use ferry_local::worker::{ImsOptions, LocalIms, WorkerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_expired_before_pickup_is_re_minted_and_the_sync_succeeds() {
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(21, 50_000)]).await;
    let key = AgentKeypair::generate().unwrap();
    let install = env.install("a", &key);

    let db = ferry_local::db::Db::open(&env.db_path).unwrap();
    let options = ImsOptions {
        worker: WorkerOptions {
            wait_seconds: 1,
            ..WorkerOptions::default()
        },
        ..ImsOptions::default()
    };
    let ims = LocalIms::new(
        db,
        MemBuilder::default(),
        env.minter.clone(),
        SystemClock,
        SeqIds::default(),
        options,
        env.vendor_key.clone(),
    )
    .await
    .unwrap();
    ims.store().put_install(&install).await.unwrap();
    let running = ims.spawn();

    let build = BuildId::new("b-remint").unwrap();
    let sync_id = env.vendor_key.sync_id(&build, &install.id);
    let requested = Event::with_id(
        EventId::new(sync_id.as_str()).unwrap(),
        Payload::SyncRequested(SyncRequested {
            sync_id: sync_id.clone(),
            build_id: build,
            install_id: InstallId::new("a").unwrap(),
            repository: Repository::new(VENDOR_REPO).unwrap(),
            digest: CoreDigest::new(digest.as_str()).unwrap(),
            release_id: None,
            context: None,
        }),
    );
    ims.bus()
        .put_events(&Batch::new(vec![requested]).unwrap())
        .await
        .unwrap();

    // The agent sees its first grant as long expired, then the real time.
    let first = Arc::new(AtomicBool::new(true));
    let agent = agent(&env, "a", AGENT_A_SECRET, &key).with_clock(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if first.swap(false, Ordering::SeqCst) {
            now + 60 * 60 * 1000
        } else {
            now
        }
    });
    let (stop_agent, handle) = spawn(agent);

    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = ims.store().get_sync(&sync_id).await.unwrap();
        if let Some(j) = job.filter(|j| j.status().is_terminal()) {
            break j;
        }
        assert!(Instant::now() < deadline, "the sync never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop(stop_agent, handle).await;
    running.shutdown().await;

    assert_eq!(job.status(), JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.state.attempts, 2, "attempt 1 expired, attempt 2 synced");
    // Attempt 1's grant is revoked, attempt 2's too once reported: per attempt, not per sync.
    for attempt in [1, 2] {
        assert!(env.ac.is_grant_revoked(&format!("{}.a{attempt}", sync_id)));
    }
    let a = env.agent_client("a", AGENT_A_SECRET);
    let held = a
        .head_manifest(&env.repo("installs/a/demo/app"), digest.as_str())
        .await
        .unwrap();
    assert_eq!(held.map(|d| d.digest), Some(digest));
}
