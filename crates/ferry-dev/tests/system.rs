//! The dev system started in-process: request a build of each demo component and wait until
//! every artifact is synced into every install, driving the library directly (no binary).

use std::path::Path;
use std::time::Duration;

use ferry_core::state::JobStatus;
use ferry_dev::{DevOptions, DevSystem};

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
    assert_eq!(requested.len(), 4, "one build per demo component");
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
    system.shutdown().await;
    assert!(
        !dir.path().join("state/dev.json").exists(),
        "shutdown forgets the process"
    );
}
