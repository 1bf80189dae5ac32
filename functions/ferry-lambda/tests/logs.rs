//! The functions' JSON logs, captured from `json_subscriber` while a batch is handled.
//!
//! Alone in its own test binary on purpose: tracing caches per-callsite interest process-wide,
//! so a thread-local subscriber set here can miss events that other tests' threads (running
//! without one) hit first.

#![allow(clippy::unwrap_used)]

mod common;

use common::{batch, failed_ids, record, Moto};
use ferry_core::domain::{Component, ComponentKind};
use ferry_core::id::{AppName, ComponentName, Repository};
use ferry_core::ports::JobStore;
use ferry_lambda::{handle_sqs_batch, Kind};
use ferry_testkit::Logs;

fn component() -> Component {
    Component {
        app: AppName::new("shop").unwrap(),
        name: ComponentName::new("web").unwrap(),
        kind: ComponentKind::Image {
            source: "docker.io/library/alpine".into(),
        },
        repository: Repository::new("shop/web").unwrap(),
        verify: None,
        credentials: None,
    }
}

fn build_requested(build: &str) -> String {
    serde_json::json!({
        "version": 1, "type": "build.requested", "build_id": build, "app": "shop",
        "component": "web", "source_ref": "refs/tags/v1", "requested_by": "test",
    })
    .to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn logs_are_json_lines_carrying_the_message_id_and_the_job_id() {
    let logs = Logs::default();
    let sink = logs.clone();
    let _guard =
        tracing::subscriber::set_default(ferry_lambda::logging::json_subscriber(move || {
            sink.clone()
        }));

    let moto = Moto::start().await;
    let (deps, _settings) = common::deps(&moto).await;
    deps.ports.store.put_component(&component()).await.unwrap();
    let records = vec![
        record("m-log-ok", &build_requested("b-logged")),
        record("m-log-bad", "not json"),
    ];
    let response = handle_sqs_batch(batch(records), &deps, Kind::BuildRequested)
        .await
        .unwrap();
    assert_eq!(failed_ids(&response), vec!["m-log-bad".to_owned()]);

    let text = logs.text();
    assert!(!text.contains('\u{1b}'), "no ANSI codes in {text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    // The record's span (message id, job id) is on every line logged while handling it.
    let in_record = |line: &serde_json::Value, id: &str| {
        line["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "sqs_record" && s["message_id"] == id)
            .cloned()
    };
    let handled: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "record handled")
        .collect();
    assert_eq!(handled.len(), 1, "{text}");
    let span = in_record(handled[0], "m-log-ok").expect("the record span");
    assert_eq!(span["job_id"], "b-logged");
    assert_eq!(span["event_type"], "build.requested");
    assert_eq!(handled[0]["level"], "INFO");
    // The handler's own lines (inside ferry-core) carry it too.
    let started: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "build started")
        .collect();
    assert_eq!(started.len(), 1, "{text}");
    assert_eq!(
        in_record(started[0], "m-log-ok").unwrap()["job_id"],
        "b-logged"
    );

    let failed: Vec<_> = lines
        .iter()
        .filter(|l| in_record(l, "m-log-bad").is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert_eq!(failed[0]["level"], "WARN");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("event is not valid JSON"),
        "{}",
        failed[0]
    );
}
