//! InProcessBuilder: the Builder port for local runs. One build.completed per build id, even
//! when started twice; failures are published with their error.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{env, spec};
use ferry_build::InProcessBuilder;
use ferry_core::event::{BuildOutcome, Payload};
use ferry_core::ports::Builder;
use ferry_core::testing::MemBus;

#[tokio::test]
async fn publishes_one_build_completed_per_build_id() {
    let env = env().await;
    let app = common::demo();
    let bus = MemBus::default();
    let builder = InProcessBuilder::new(env.builder.clone(), Arc::new(bus.clone()));
    let s = spec(&app, "module", "b-inproc-1");

    let first = builder.start(&s).await.unwrap();
    let second = builder.start(&s).await.unwrap();
    assert_eq!(first, second);
    let done = builder.wait(&s.build_id).await.expect("started here");
    // A start after completion is also a no-op.
    assert_eq!(builder.start(&s).await.unwrap(), first);
    assert_eq!(builder.wait(&s.build_id).await, Some(done.clone()));

    let events = bus.accepted();
    assert_eq!(events.len(), 1, "{events:?}");
    let Payload::BuildCompleted(ev) = &events[0].payload else {
        panic!("not build.completed: {:?}", events[0]);
    };
    assert_eq!(ev, &done);
    assert_eq!(ev.status, BuildOutcome::Succeeded);
    assert_eq!(
        ev.repository.as_ref().unwrap().as_str(),
        "vendor/demo/module"
    );
    assert_eq!(
        ev.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    let pushed = env.manifest("vendor/demo/module", "b-inproc-1").await;
    assert_eq!(pushed.digest.as_str(), ev.digest.as_ref().unwrap().as_str());

    // The event is valid on the wire: it parses back through the strict parser.
    let json = events[0].to_json().unwrap();
    let parsed = ferry_core::parse_event(json.as_bytes()).unwrap();
    assert_eq!(parsed.payload, events[0].payload);
}

#[tokio::test]
async fn a_failed_build_is_published_with_its_error() {
    let env = env().await;
    let app = common::demo();
    let bus = MemBus::default();
    let builder = InProcessBuilder::new(env.builder.clone(), Arc::new(bus.clone()));
    let mut s = spec(&app, "chart", "b-inproc-bad");
    s.component.kind =
        ferry_core::domain::ComponentKind::helm_chart(ferry_core::domain::ChartSource::Dir {
            path: "does-not-exist".into(),
        });
    builder.start(&s).await.unwrap();
    let done = builder.wait(&s.build_id).await.unwrap();
    assert_eq!(done.status, BuildOutcome::Failed);
    assert!(done.digest.is_none());
    assert!(
        done.error.as_deref().unwrap().contains("does-not-exist"),
        "{done:?}"
    );
    assert_eq!(bus.accepted().len(), 1);

    // A transient bus failure is retried: still exactly one accepted event.
    bus.fail_next_entries(1);
    let s2 = spec(&app, "module", "b-inproc-retry");
    builder.start(&s2).await.unwrap();
    builder.wait(&s2.build_id).await.unwrap();
    let accepted: Vec<_> = bus
        .accepted()
        .into_iter()
        .filter(|e| matches!(&e.payload, Payload::BuildCompleted(c) if c.build_id == s2.build_id))
        .collect();
    assert_eq!(accepted.len(), 1);

    assert!(builder
        .wait(&ferry_core::id::BuildId::new("never").unwrap())
        .await
        .is_none());
}
