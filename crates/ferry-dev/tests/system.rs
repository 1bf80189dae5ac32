//! The dev system started in-process: request a build of each demo component and wait until
//! every artifact is synced into every install, driving the library directly (no binary).

use std::path::Path;
use std::time::Duration;

use ferry_core::state::JobStatus;
use ferry_dev::{DevOptions, DevSystem};

#[path = "support/node_pull.rs"]
mod node_pull;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_in_process_builds_and_syncs_every_install() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let system = DevSystem::start(DevOptions {
        state_dir: dir.path().join("state"),
        app_dir: demo,
        installs: 2,
        registry_addr: "127.0.0.1:0".parse().unwrap(),
        manual_releases: false,
    })
    .await
    .unwrap();
    let mut running = system.running_agents().await;
    running.sort();
    assert_eq!(
        running.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
        ["dev-1", "dev-2"]
    );

    let requested = system.request_builds("test").await.unwrap();
    assert_eq!(requested.len(), 6, "one build per demo component");
    let snap = system
        .wait_until_done(&requested, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(snap.failures().is_empty(), "{:#?}", snap.failures());
    for b in &snap.builds {
        assert_eq!(b.status(), JobStatus::Succeeded, "{}", b.component);
        let syncs = snap.syncs_of(&b.id);
        assert_eq!(syncs.len(), 2, "{}: one sync per install", b.component);
        assert!(syncs.iter().all(|s| s.status() == JobStatus::Succeeded));
    }

    // dev-1's nodes pull the multi-platform demo image with their own pull-only identity.
    let base = snap
        .builds
        .iter()
        .find(|b| b.component.as_str() == "base")
        .and_then(|b| b.artifact.clone())
        .expect("the base image was built");
    let digest = base.digest.as_str().to_string();
    let runtime = tokio::task::block_in_place(|| {
        node_pull::check(&system, "dev-1", "dev-2", "demo/base", &digest)
    });
    eprintln!("node pull ran with {runtime:?}");

    system.shutdown().await;
    assert!(
        !dir.path().join("state/dev.json").exists(),
        "shutdown forgets the process"
    );
}

/// The management port's contract on a fresh state dir (SQLite store and queues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_management_keeps_the_management_contract() {
    let dir = tempfile::tempdir().unwrap();
    let state = ferry_dev::state::StateDir::new(dir.path().join("state"));
    state.create().unwrap();
    let db = ferry_local::db::Db::open(state.db_path()).unwrap();
    let manage = ferry_dev::manage::LocalManagement::new(state, db.clone());
    // As a started `ferry dev` leaves them: the bus routes build.requested to its queue.
    ferry_local::worker::create_ims_queues(manage.queue(), Duration::from_secs(30), 5)
        .await
        .unwrap();
    ferry_core::manage_contract::management_contract(
        ferry_core::manage_contract::ManagementFixture {
            store: manage.store().clone(),
            queue: manage.queue().clone(),
            manage,
            install_queue_max_receives: ferry_dev::state::INSTALL_QUEUE_MAX_RECEIVES,
            agent_role_arn: |_| None,
        },
    )
    .await;
}
