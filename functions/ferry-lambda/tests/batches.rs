//! `handle_sqs_batch` against moto: partial batch failures, replays, wrong event types, and the
//! whole build → sync flow through the four kinds.

#![allow(clippy::unwrap_used)]

mod common;

use common::{batch, failed_ids, record, record_received, unique, Moto};
use ferry_core::domain::{Component, ComponentKind, Install, RegistryTarget};
use ferry_core::event::{parse_sync_job, Event, Payload, SyncReportStatus, SyncReported};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository};
use ferry_core::ports::{JobStore, PageRequest, Queue, ReceiveOptions};
use ferry_core::record::DEAD_LETTERED;
use ferry_core::seal::AgentKeypair;
use ferry_core::state::JobStatus;
use ferry_lambda::{handle_sqs_batch, process_records, Kind, RecordError};

fn app() -> AppName {
    AppName::new("shop").unwrap()
}
fn web() -> ComponentName {
    ComponentName::new("web").unwrap()
}

fn component() -> Component {
    Component {
        app: app(),
        name: web(),
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
        "version": 1, "type": "build.requested", "id": format!("req-{build}"),
        "build_id": build, "app": "shop", "component": "web",
        "source_ref": format!("refs/tags/{build}"), "requested_by": "test",
    })
    .to_string()
}

/// As the EventBridge rule's SQS target delivers it.
fn in_envelope(detail_type: &str, event_id: &str, detail: &str) -> String {
    let detail: serde_json::Value = serde_json::from_str(detail).unwrap();
    serde_json::json!({
        "version": "0", "id": event_id, "detail-type": detail_type, "source": "ferry",
        "account": common::ACCOUNT, "time": "2026-01-15T10:21:43Z", "region": common::REGION,
        "resources": [], "detail": detail,
    })
    .to_string()
}

const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";

/// What ferry-build posts on success (`ferry_build::completion`), as the Ferry bus rule for
/// source `ferry.build` delivers it.
fn ferry_build_completed(event_id: &str, build: &str) -> String {
    let detail = serde_json::json!({
        "version": 1, "type": "build.completed", "build_id": build, "status": "succeeded",
        "digest": DIGEST, "repository": "shop/web",
        "media_type": "application/vnd.oci.image.manifest.v1+json",
    });
    serde_json::json!({
        "version": "0", "id": event_id, "detail-type": "build.completed",
        "source": ferry_aws::builder::BUILD_SOURCE,
        "account": common::ACCOUNT, "time": "2026-01-15T10:21:43Z", "region": common::REGION,
        "resources": [], "detail": detail,
    })
    .to_string()
}

/// What ferry-build posts when the build itself failed.
fn ferry_build_failed(event_id: &str, build: &str) -> String {
    let detail = serde_json::json!({
        "version": 1, "type": "build.completed", "build_id": build, "status": "failed",
        "error": "chart directory charts/shop not found",
    });
    serde_json::json!({
        "version": "0", "id": event_id, "detail-type": "build.completed",
        "source": ferry_aws::builder::BUILD_SOURCE,
        "account": common::ACCOUNT, "region": common::REGION, "detail": detail,
    })
    .to_string()
}

/// CodeBuild's state change for a Ferry build (the fields of AWS's published sample only).
fn codebuild_state(event_id: &str, build: &str, status: &str) -> String {
    serde_json::json!({
        "version": "0", "id": event_id, "detail-type": "CodeBuild Build State Change",
        "source": "aws.codebuild", "account": common::ACCOUNT, "region": common::REGION,
        "detail": {
            "build-status": status, "project-name": "ferry-build",
            "additional-information": {
                "environment": {"environment-variables": [
                    {"name": "FERRY_BUILD_ID", "type": "PLAINTEXT", "value": build},
                    {"name": "FERRY_REPOSITORY", "type": "PLAINTEXT", "value": "shop/web"}
                ]},
                "phases": [
                    {"phase-type": "BUILD", "phase-status": status,
                     "phase-context": ["COMMAND_EXECUTION_ERROR: exit status 3"]}
                ]
            }
        }
    })
    .to_string()
}

#[tokio::test]
async fn one_malformed_record_fails_alone_and_replays_change_nothing() {
    let moto = Moto::start().await;
    let (deps, settings) = common::deps(&moto).await;
    let store = &deps.ports.store;
    store.put_component(&component()).await.unwrap();

    let builds: Vec<String> = (0..9).map(|n| format!("b-batch-{n}")).collect();
    let mut records = Vec::new();
    for (n, build) in builds.iter().enumerate() {
        // Half raw, half in the EventBridge envelope: both are what the queue may hold.
        let body = if n % 2 == 0 {
            build_requested(build)
        } else {
            in_envelope(
                "build.requested",
                &format!("eb-{build}"),
                &build_requested(build),
            )
        };
        records.push(record(&format!("m-{n}"), &body));
        if n == 4 {
            records.push(record("m-bad", "{\"version\": 1, \"type\": \"build.req"));
        }
    }
    assert_eq!(records.len(), 10);

    let response = handle_sqs_batch(batch(records.clone()), &deps, Kind::BuildRequested)
        .await
        .unwrap();
    assert_eq!(failed_ids(&response), vec!["m-bad".to_owned()]);
    // The wire shape Lambda reads.
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-bad"}]})
    );

    let mut first = Vec::new();
    for build in &builds {
        let b = store
            .get_build(&BuildId::new(build.as_str()).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("build {build} was not stored"));
        assert_eq!(b.status(), JobStatus::Running, "{build}");
        assert!(b.external_id.is_some(), "{build} has its CodeBuild id");
        first.push(b);
    }
    assert_eq!(moto.codebuild_build_count(&settings.build_project).await, 9);

    // At-least-once delivery: the same batch three more times.
    for _ in 0..3 {
        let again = handle_sqs_batch(batch(records.clone()), &deps, Kind::BuildRequested)
            .await
            .unwrap();
        assert_eq!(failed_ids(&again), vec!["m-bad".to_owned()]);
    }
    for before in &first {
        let now = store.get_build(&before.id).await.unwrap().unwrap();
        assert_eq!(&now, before, "a replay changed build {}", before.id);
    }
    let page = store
        .builds_by_component(&app(), &web(), &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 9, "no duplicate builds");
    assert_eq!(
        moto.codebuild_build_count(&settings.build_project).await,
        9,
        "no second CodeBuild start"
    );
}

#[tokio::test]
async fn a_record_of_another_type_fails_with_a_clear_error_and_the_rest_go_through() {
    let moto = Moto::start().await;
    let (deps, _settings) = common::deps(&moto).await;
    deps.ports.store.put_component(&component()).await.unwrap();

    let reported = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sync.reported.json"
    ))
    .unwrap();
    let records = vec![
        record("m-wrong", &reported),
        record(
            "m-wrong-envelope",
            &in_envelope("sync.reported", "eb-1", &reported),
        ),
        record("m-good", &build_requested("b-typed")),
    ];
    let failures = process_records(&deps, Kind::BuildRequested, &records).await;
    let ids: Vec<&str> = failures.iter().map(|f| f.message_id.as_str()).collect();
    assert_eq!(ids, ["m-wrong", "m-wrong-envelope"]);
    for f in &failures {
        assert!(
            matches!(f.error, RecordError::WrongType { .. }),
            "{:?}",
            f.error
        );
        assert!(!f.error.is_retryable());
        let text = f.error.to_string();
        assert!(
            text.contains("build-requested function handles only build.requested events")
                && text.contains("this record is a sync.reported event")
                && text.contains("EventBridge rule"),
            "{text}"
        );
    }
    let good = deps
        .ports
        .store
        .get_build(&BuildId::new("b-typed").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(good.status(), JobStatus::Running);

    // The build-completed function takes state changes, not requests.
    let failures = process_records(
        &deps,
        Kind::BuildCompleted,
        &[record("m-req", &build_requested("b-other"))],
    )
    .await;
    assert_eq!(failures.len(), 1);
    let text = failures[0].error.to_string();
    assert!(
        text.contains("build-completed function handles only CodeBuild"),
        "{text}"
    );
}

#[tokio::test]
async fn build_to_sync_through_the_four_functions_and_replays_are_no_ops() {
    let moto = Moto::start().await;
    let (deps, _settings) = common::deps(&moto).await;
    let store = &deps.ports.store;
    store.put_component(&component()).await.unwrap();
    let agent = AgentKeypair::generate().unwrap();
    let install_queue = QueueName::new(unique("ferry-install-i-acme")).unwrap();
    deps.ports
        .queue
        .create_queue_with_dlq(&install_queue, 5, 60)
        .await
        .unwrap();
    let install = Install {
        id: InstallId::new("i-acme").unwrap(),
        app: app(),
        registry: RegistryTarget {
            endpoint: "111122223333.dkr.ecr.eu-west-1.amazonaws.com".into(),
            namespace: "vendor".into(),
        },
        agent_public_key: agent.public_key_string(),
        agent_report_key: agent.report_key().public_key_string(),
        queue: install_queue.clone(),
        components: vec![web()],
    };
    store.put_install(&install).await.unwrap();

    let build = BuildId::new("b-flow").unwrap();
    let sync = deps.ports.vendor_key.sync_id(&build, &install.id);
    let requested = vec![record("m-1", &build_requested("b-flow"))];
    let completed = vec![
        record("m-2", &ferry_build_completed("eb-done-1", "b-flow")),
        // CodeBuild's SUCCEEDED adds nothing: ferry-build posted the result.
        record("m-2a", &codebuild_state("cb-evt-1", "b-flow", "SUCCEEDED")),
        // An IN_PROGRESS change is not a failure: nothing to do yet.
        record(
            "m-2b",
            r#"{"id":"cb-evt-0","source":"aws.codebuild","detail-type":"CodeBuild Build State Change","detail":{"build-status":"IN_PROGRESS"}}"#,
        ),
    ];
    let sync_requested = serde_json::json!({
        "version": 1, "type": "sync.requested", "id": sync.as_str(), "sync_id": sync.as_str(),
        "build_id": "b-flow", "install_id": "i-acme", "repository": "shop/web", "digest": DIGEST,
    })
    .to_string();
    let sync_requested = vec![record(
        "m-3",
        &in_envelope("sync.requested", "eb-sync", &sync_requested),
    )];
    let mut report = SyncReported {
        sync_id: sync.clone(),
        install_id: install.id.clone(),
        status: SyncReportStatus::Succeeded,
        digest: Digest::new(DIGEST).unwrap(),
        bytes_copied: 10,
        bytes_skipped: 0,
        duration_ms: 5,
        error: None,
        attempt: 1,
        signature: String::new(),
    };
    agent.report_key().sign(&mut report);
    let reported = vec![record(
        "m-4",
        &Event::new(Payload::SyncReported(report)).to_json().unwrap(),
    )];
    let steps = [
        (Kind::BuildRequested, &requested),
        (Kind::BuildCompleted, &completed),
        (Kind::SyncRequested, &sync_requested),
        (Kind::SyncReported, &reported),
    ];

    for (kind, records) in steps {
        let failures = process_records(&deps, kind, records).await;
        assert!(failures.is_empty(), "{kind:?}: {failures:?}");
        if kind == Kind::SyncRequested {
            // The agent's message is on the install queue, with a sealed grant only.
            let got = deps
                .ports
                .queue
                .receive(&install_queue, &ReceiveOptions::new(10, 1, 60).unwrap())
                .await
                .unwrap();
            assert_eq!(got.len(), 1);
            let job = parse_sync_job(got[0].body.as_bytes()).unwrap();
            assert_eq!((job.sync_id.as_str(), job.attempt), (sync.as_str(), 1));
        }
    }
    let b = store.get_build(&build).await.unwrap().unwrap();
    assert_eq!(b.status(), JobStatus::Succeeded);
    assert_eq!(b.artifact.as_ref().unwrap().digest.as_str(), DIGEST);
    let s = store.get_sync(&sync).await.unwrap().unwrap();
    assert_eq!(s.status(), JobStatus::Succeeded);
    let digest = Digest::new(DIGEST).unwrap();
    let lineage = store
        .lineage_by_digest(&digest, &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(lineage.items.len(), 1);

    // Replays of every step: no failure, no change, no second job message.
    for (kind, records) in steps {
        let failures = process_records(&deps, kind, records).await;
        assert!(failures.is_empty(), "replay {kind:?}: {failures:?}");
    }
    assert_eq!(store.get_build(&build).await.unwrap().unwrap(), b);
    assert_eq!(store.get_sync(&sync).await.unwrap().unwrap(), s);
    let more = deps
        .ports
        .queue
        .receive(&install_queue, &ReceiveOptions::new(10, 0, 60).unwrap())
        .await
        .unwrap();
    assert!(more.is_empty(), "a replay enqueued another job: {more:?}");
}

#[tokio::test]
async fn a_poisoned_record_on_its_last_receive_leaves_its_job_with_the_error() {
    let moto = Moto::start().await;
    let (deps, _settings) = common::deps(&moto).await;
    let store = &deps.ports.store;
    store.put_component(&component()).await.unwrap();
    let failures = process_records(
        &deps,
        Kind::BuildRequested,
        &[record("m-req", &build_requested("b-poison"))],
    )
    .await;
    assert!(failures.is_empty(), "{failures:?}");
    let id = BuildId::new("b-poison").unwrap();
    assert_eq!(
        store.get_build(&id).await.unwrap().unwrap().status(),
        JobStatus::Running
    );

    // A completion that names its build but never parses (not a sha256 digest).
    let poison = serde_json::json!({
        "version": 1, "type": "build.completed", "id": "done-b-poison", "build_id": "b-poison",
        "status": "succeeded", "digest": "sha256:nothex", "repository": "shop/web",
    })
    .to_string();
    assert_eq!(deps.max_receive_count, 5);
    // Before the last receive: redelivered, the job untouched.
    for n in 1..5 {
        let failures = process_records(
            &deps,
            Kind::BuildCompleted,
            &[record_received("m-poison", &poison, n)],
        )
        .await;
        assert_eq!(failures.len(), 1);
        assert!(matches!(failures[0].error, RecordError::Malformed(_)));
        assert_eq!(
            store.get_build(&id).await.unwrap().unwrap().status(),
            JobStatus::Running,
            "receive {n}"
        );
    }
    // The last receive: still a failure (SQS moves it to the DLQ), and the job says why.
    let failures = process_records(
        &deps,
        Kind::BuildCompleted,
        &[record_received("m-poison", &poison, 5)],
    )
    .await;
    assert_eq!(failures.len(), 1);
    let b = store.get_build(&id).await.unwrap().unwrap();
    assert_eq!(b.status(), JobStatus::Failed);
    let err = b.state.error.unwrap();
    assert_eq!(err.code, DEAD_LETTERED);
    assert!(
        err.message.contains("digest")
            && err
                .message
                .contains("build-completed function's dead-letter queue")
            && err.message.contains("5 times"),
        "{}",
        err.message
    );
}

/// ferry-build's completion and CodeBuild's state change may arrive in either order; the first
/// result recorded stands, and a later state change is a no-op, never a failed record.
#[tokio::test]
async fn a_state_change_never_overrides_a_recorded_result_in_either_order() {
    let moto = Moto::start().await;
    let (deps, _settings) = common::deps(&moto).await;
    let store = &deps.ports.store;
    store.put_component(&component()).await.unwrap();
    let requested = vec![
        record("r-1", &build_requested("b-first")),
        record("r-2", &build_requested("b-late")),
    ];
    assert!(process_records(&deps, Kind::BuildRequested, &requested)
        .await
        .is_empty());

    // b-first: ferry-build's success first, then CodeBuild times out / is stopped.
    let records = vec![
        record("c-1", &ferry_build_completed("eb-first", "b-first")),
        record(
            "c-2",
            &codebuild_state("cb-first-1", "b-first", "TIMED_OUT"),
        ),
        record("c-3", &codebuild_state("cb-first-2", "b-first", "STOPPED")),
    ];
    let failures = process_records(&deps, Kind::BuildCompleted, &records).await;
    assert!(failures.is_empty(), "{failures:?}");
    let first = store
        .get_build(&BuildId::new("b-first").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), JobStatus::Succeeded);
    assert_eq!(first.artifact.as_ref().unwrap().digest.as_str(), DIGEST);

    // b-late: CodeBuild's failure first (with the phase and reason), then ferry-build's own
    // failed completion: the same outcome, kept.
    let records = vec![
        record("c-4", &codebuild_state("cb-late", "b-late", "FAILED")),
        record("c-5", &ferry_build_failed("eb-late", "b-late")),
    ];
    let failures = process_records(&deps, Kind::BuildCompleted, &records).await;
    assert!(failures.is_empty(), "{failures:?}");
    let late = store
        .get_build(&BuildId::new("b-late").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.status(), JobStatus::Failed);
    let error = late.state.error.as_ref().unwrap().message.clone();
    assert!(
        error.contains("FAILED in phase BUILD") && error.contains("exit status 3"),
        "{error}"
    );
    // Redelivered, all of it changes nothing.
    let again = process_records(&deps, Kind::BuildCompleted, &records).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        store
            .get_build(&BuildId::new("b-late").unwrap())
            .await
            .unwrap()
            .unwrap(),
        late
    );
}
