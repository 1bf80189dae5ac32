//! Crash recovery: the `ferry-agent` binary is SIGKILLed mid-copy; the message reappears
//! after its visibility timeout and a fresh agent finishes the sync. The tag is never visible
//! before the artifact is complete.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_agent::{Agent, AgentConfig, QueueReporter};
use ferry_core::id::InstallId;
use ferry_core::ports::ReceiveOptions;
use ferry_core::seal::AgentKeypair;
use ferry_oci::Secret;
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn killed_mid_copy_the_next_agent_completes_and_no_partial_tag_is_ever_visible() {
    let env = start().await;
    let layers: Vec<Vec<u8>> = (0..4).map(|i| data(40 + i, 8 << 20)).collect();
    let total: u64 = layers.iter().map(|l| l.len() as u64).sum();
    let digest = env.push(VENDOR_REPO, "v1", &layers).await;
    let key = AgentKeypair::generate().unwrap();
    let msg = env
        .job(&env.install("a", &key), &digest, "s-crash", 1)
        .await;
    env.send("install-a", &msg).await;

    let key_file = env.dir.path().join("agent.key");
    std::fs::write(&key_file, key.to_secret_string().as_bytes()).unwrap();
    let secret_file = env.dir.path().join("identity.secret");
    std::fs::write(&secret_file, AGENT_A_SECRET).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .arg("run")
        .args(["--install", "a", "--install-registry", &env.host])
        .args(["--vendor-registry", &env.host])
        .args(["--vendor-public-key", &env.vendor_key.public_key_string()])
        .arg("--queue-db")
        .arg(&env.db_path)
        .arg("--key-file")
        .arg(&key_file)
        .arg("--identity-secret-file")
        .arg(&secret_file)
        .args(["--visibility-seconds", "2", "--wait-seconds", "1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("blob started") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(started, "the agent never started a blob:\n{seen}");
    child.kill().await.unwrap(); // SIGKILL: no cleanup at all
    assert!(seen.contains("s-crash"), "logs carry the sync id:\n{seen}");
    assert!(!seen.contains(AGENT_A_SECRET));

    let reader = env.agent_client("a", AGENT_A_SECRET);
    let dst = env.repo("installs/a/demo/app");
    let tag = digest.as_str().replacen(':', "-", 1);
    assert!(
        reader.head_manifest(&dst, &tag).await.unwrap().is_none(),
        "a tag is visible before the copy finished"
    );
    assert!(reader
        .head_manifest(&dst, digest.as_str())
        .await
        .unwrap()
        .is_none());
    assert_eq!(env.pending_reports().await, 0);

    // A fresh agent picks the job up once its visibility timeout ran out.
    let mut config = AgentConfig::new(
        InstallId::new("a").unwrap(),
        qn("install-a"),
        env.vendor_trust(),
        env.host.clone(),
        Secret::new(AGENT_A_SECRET),
    )
    .with_receive(ReceiveOptions::new(1, 1, 30).unwrap());
    // Only the job's report on the report queue (heartbeats are tests/heartbeat.rs's).
    config.telemetry_every = None;
    let reporter = Arc::new(QueueReporter::new(env.queue.clone(), qn("sync-reported")));
    let agent = Agent::new(config, env.queue.clone(), reporter, key);
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move { agent.run(s).await.unwrap() });
    let report = env.next_report(60).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    let moved =
        report["bytes_copied"].as_u64().unwrap() + report["bytes_skipped"].as_u64().unwrap();
    assert!(moved >= total, "{report}");
    let by_tag = reader.head_manifest(&dst, &tag).await.unwrap().unwrap();
    assert_eq!(by_tag.digest, digest);
    assert_eq!(env.depth("install-a").await, 0);
}
