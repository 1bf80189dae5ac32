//! Shutdown in the middle of a copy. One test per binary: it installs the global log capture.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_agent::{Agent, QueueReporter};
use ferry_core::seal::AgentKeypair;

#[tokio::test(flavor = "current_thread")]
async fn shutdown_mid_job_without_grace_releases_the_message_and_writes_no_tag() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let env = start().await;
    let layers: Vec<Vec<u8>> = (0..4).map(|i| data(10 + i, 8 << 20)).collect();
    let digest = env.push(VENDOR_REPO, "v1", &layers).await;
    let key_a = AgentKeypair::generate().unwrap();
    let msg = env
        .job(&env.install("a", &key_a), &digest, "s-stop", 1)
        .await;
    env.send("install-a", &msg).await;
    let mut a = agent(&env, "a", AGENT_A_SECRET, &key_a);
    let mut config = a.config().clone();
    config.shutdown_grace = Duration::ZERO;
    a = Agent::new(
        config,
        env.queue.clone(),
        Arc::new(QueueReporter::new(env.queue.clone(), qn("sync-reported"))),
        clone_key(&key_a),
    );
    let (s, h) = spawn(a);
    // Cut in once a blob transfer has started.
    while !logs.text().contains("blob started") {
        tokio::task::yield_now().await;
    }
    stop(s, h).await;
    let d = env.queue.approximate_depth(&qn("install-a")).await.unwrap();
    assert_eq!(
        (d.visible, d.in_flight),
        (1, 0),
        "released for the next attempt"
    );
    assert_eq!(env.depth("sync-reported").await, 0, "nothing reported");
    let reader = env.agent_client("a", AGENT_A_SECRET);
    let tag = digest.as_str().replacen(':', "-", 1);
    assert!(reader
        .head_manifest(&env.repo("installs/a/demo/app"), &tag)
        .await
        .unwrap()
        .is_none());
}
