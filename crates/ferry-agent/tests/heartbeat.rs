//! The agent's install heartbeat: sent on the report path after a poll, at most once per
//! `telemetry_every` (the agent's injected clock), signed so the IMS authenticates it against
//! the install's report key and nobody else's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_agent::{Agent, AgentConfig, QueueReporter, VendorTrust};
use ferry_core::event::{parse_event, Payload};
use ferry_core::id::{InstallId, QueueName};
use ferry_core::ports::ReceiveOptions;
use ferry_core::testing::{test_agent_key, ManualClock, MemQueue};
use ferry_core::trust::verify_heartbeat;
use ferry_oci::Secret;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn heartbeats_go_out_at_most_once_per_interval_signed_by_the_install() {
    let install = InstallId::new("a").unwrap();
    let jobs = QueueName::new("install-a").unwrap();
    let reports = QueueName::new("sync-reported").unwrap();
    let queue = Arc::new(MemQueue::new(ManualClock::new(0)));
    queue.create_queue(&jobs);
    queue.create_queue(&reports);
    let mut config = AgentConfig::new(
        install.clone(),
        jobs,
        VendorTrust {
            registry: "127.0.0.1:1".into(),
            public_key: "ferry-vendor-ed25519:unused".into(),
        },
        "127.0.0.1:2",
        Secret::new("unused"),
    )
    .with_receive(ReceiveOptions::new(1, 0, 30).unwrap());
    config.telemetry_every = Some(Duration::from_secs(60));
    let now = Arc::new(AtomicU64::new(1_700_000_000_000));
    let clock = now.clone();
    let agent = Agent::new(
        config,
        queue.clone(),
        Arc::new(QueueReporter::new(queue.clone(), reports.clone())),
        test_agent_key(&install),
    )
    .with_clock(move || clock.load(Ordering::SeqCst));
    let stop = CancellationToken::new();

    agent.poll_once(&stop).await.unwrap();
    assert_eq!(queue.bodies(&reports).len(), 1, "the first poll sends one");
    now.fetch_add(10_000, Ordering::SeqCst);
    agent.poll_once(&stop).await.unwrap();
    assert_eq!(queue.bodies(&reports).len(), 1, "none within the interval");
    now.fetch_add(60_000, Ordering::SeqCst);
    agent.poll_once(&stop).await.unwrap();
    let bodies = queue.bodies(&reports);
    assert_eq!(bodies.len(), 2, "one more after the interval");

    let Payload::InstallHeartbeat(h) = parse_event(bodies[1].as_bytes()).unwrap().payload else {
        panic!("not a heartbeat: {}", bodies[1]);
    };
    assert_eq!(h.install_id, install);
    assert_eq!(h.sent_at, now.load(Ordering::SeqCst));
    assert_eq!(h.last_poll_at, Some(h.sent_at));
    assert_eq!(h.health, "ok");
    let own = test_agent_key(&install).report_key().public_key_string();
    verify_heartbeat(&own, &h).unwrap();
    let other = test_agent_key(&InstallId::new("b").unwrap())
        .report_key()
        .public_key_string();
    assert!(
        verify_heartbeat(&other, &h).is_err(),
        "B's key does not verify A's heartbeat"
    );
}
