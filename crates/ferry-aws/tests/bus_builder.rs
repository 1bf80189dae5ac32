//! EventBridgeBus and CodeBuildBuilder against moto, and the CodeBuild state-change mapping.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use aws_sdk_codebuild::types::{
    ArtifactsType, ComputeType, EnvironmentType, ProjectArtifacts, ProjectEnvironment,
    ProjectSource, SourceType,
};
use aws_sdk_eventbridge::types::Target;
use common::{unique, Fault, FaultProxy, Moto};
use ferry_aws::builder::CodeBuildStateChange;
use ferry_aws::{CodeBuildBuilder, EventBridgeBus, SqsQueue};
use ferry_core::domain::{Component, ComponentKind};
use ferry_core::event::{BuildOutcome, BuildRequested};
use ferry_core::id::{AppName, BuildId, ComponentName, QueueName, Repository};
use ferry_core::ports::{Batch, BuildSpec, Builder, EventBus, Queue, ReceiveOptions};
use ferry_core::{parse_event, Event, Payload};

fn request(n: usize) -> Event {
    Event::new(Payload::BuildRequested(BuildRequested {
        build_id: Some(BuildId::new(format!("b-{n}")).unwrap()),
        app: AppName::new("shop").unwrap(),
        component: ComponentName::new("web").unwrap(),
        source_ref: format!("refs/tags/v{n}"),
        requested_by: "test".into(),
    }))
}

#[tokio::test]
async fn twelve_events_reach_an_sqs_target_in_two_batches() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let sqs = SqsQueue::new(&config);
    let target = QueueName::new(unique("events")).unwrap();
    sqs.create_queue(&target, HashMap::new()).await.unwrap();
    let arn = sqs.arn(&target).await.unwrap();

    let bus = EventBridgeBus::new(&config, "default");
    let rule = unique("ferry-build-requested");
    bus.client()
        .put_rule()
        .name(&rule)
        .event_pattern(r#"{"source":["ferry"],"detail-type":["build.requested"]}"#)
        .send()
        .await
        .unwrap();
    bus.client()
        .put_targets()
        .rule(&rule)
        .targets(Target::builder().id("q").arn(arn).build().unwrap())
        .send()
        .await
        .unwrap();

    let batches = Batch::chunks((0..12).map(request).collect());
    assert_eq!(batches.len(), 2);
    let mut ids = Vec::new();
    for b in &batches {
        for r in bus.put_events(b).await.unwrap() {
            ids.push(r.unwrap());
        }
    }
    assert_eq!(ids.len(), 12);

    let mut refs = Vec::new();
    let opts = ReceiveOptions::new(10, 1, 60).unwrap();
    for _ in 0..20 {
        if refs.len() == 12 {
            break;
        }
        for m in sqs.receive(&target, &opts).await.unwrap() {
            let envelope: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            assert_eq!(envelope["source"], "ferry");
            assert_eq!(envelope["detail-type"], "build.requested");
            // The IMS parses the whole envelope: ferry-core unwraps detail.
            match parse_event(m.body.as_bytes()).unwrap().payload {
                Payload::BuildRequested(r) => refs.push(r.source_ref),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    refs.sort();
    let mut want: Vec<String> = (0..12).map(|n| format!("refs/tags/v{n}")).collect();
    want.sort();
    assert_eq!(refs, want, "every event arrived once");
}

fn spec(build: &str) -> BuildSpec {
    BuildSpec {
        build_id: BuildId::new(build).unwrap(),
        component: Component {
            app: AppName::new("shop").unwrap(),
            name: ComponentName::new("web").unwrap(),
            kind: ComponentKind::Image {
                source: "docker.io/library/alpine".into(),
            },
            repository: Repository::new("shop/web").unwrap(),
            verify: None,
            credentials: None,
        },
        source_ref: "3.20".into(),
    }
}

#[tokio::test]
async fn start_build_passes_ferry_overrides_and_the_build_id_token() {
    let moto = Moto::start().await;
    // The proxy records what went on the wire: moto keeps the build but drops the overrides.
    let proxy = FaultProxy::start(moto.endpoint(), 0, Fault::Throttle429).await;
    let config = common::config_for(&proxy.endpoint()).await;
    let project = unique("ferry-build");
    let builder = CodeBuildBuilder::new(&config, &project);
    builder
        .client()
        .create_project()
        .name(&project)
        .source(
            ProjectSource::builder()
                .r#type(SourceType::S3)
                .location("ferry-sources/source.zip")
                .build()
                .unwrap(),
        )
        .artifacts(
            ProjectArtifacts::builder()
                .r#type(ArtifactsType::NoArtifacts)
                .build()
                .unwrap(),
        )
        .environment(
            ProjectEnvironment::builder()
                .r#type(EnvironmentType::ArmContainer)
                .image("aws/codebuild/amazonlinux2-aarch64-standard:3.0")
                .compute_type(ComputeType::BuildGeneral1Small)
                .build()
                .unwrap(),
        )
        .service_role("arn:aws:iam::123456789012:role/ferry-codebuild")
        .send()
        .await
        .unwrap();

    let id = builder.start(&spec("b-42")).await.unwrap();
    assert!(id.starts_with(&format!("{project}:")), "{id}");
    let got = builder
        .client()
        .batch_get_builds()
        .ids(&id)
        .send()
        .await
        .unwrap();
    let builds = got.builds.unwrap_or_default();
    assert_eq!(builds.len(), 1, "CodeBuild recorded the build");
    assert_eq!(builds[0].project_name.as_deref(), Some(project.as_str()));

    let bodies = proxy.bodies.lock().unwrap().clone();
    let start: serde_json::Value = bodies
        .iter()
        .filter(|b| b.contains("environmentVariablesOverride"))
        .map(|b| serde_json::from_str(b).unwrap())
        .next()
        .expect("a StartBuild request");
    assert_eq!(start["projectName"], project.as_str());
    assert_eq!(start["idempotencyToken"], "b-42");
    let env: HashMap<String, String> = start["environmentVariablesOverride"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["type"], "PLAINTEXT");
            (
                v["name"].as_str().unwrap().into(),
                v["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(env["FERRY_BUILD_ID"], "b-42");
    assert_eq!(env["FERRY_SOURCE_REF"], "3.20");
    assert_eq!(env["FERRY_REPOSITORY"], "shop/web");
    let component: Component = serde_json::from_str(&env["FERRY_COMPONENT"]).unwrap();
    assert_eq!(component, spec("b-42").component);
    assert!(
        start.get("secondarySourcesOverride").is_none(),
        "an image has no git source: {start}"
    );

    // A component with its own GitHub repository: a secondary source override at the
    // request's ref (the component's ref is the default).
    let mut git = spec("b-43");
    git.component.kind = ComponentKind::DockerBuild {
        context: "web".into(),
        dockerfile: "Dockerfile".into(),
        source: Some(ferry_core::domain::GitSource {
            git: "https://github.com/acme/shop.git".into(),
            reference: Some("main".into()),
            path: Some("services".into()),
        }),
    };
    git.source_ref = "v2.1.0".into();
    builder.start(&git).await.unwrap();
    let bodies = proxy.bodies.lock().unwrap().clone();
    let start: serde_json::Value = bodies
        .iter()
        .filter(|b| b.contains("secondarySourcesOverride"))
        .map(|b| serde_json::from_str(b).unwrap())
        .next()
        .expect("a StartBuild request with a source override");
    let source = &start["secondarySourcesOverride"][0];
    assert_eq!(source["type"], "GITHUB", "{start}");
    assert_eq!(source["location"], "https://github.com/acme/shop.git");
    assert_eq!(source["sourceIdentifier"], "component");
    let version = &start["secondarySourcesVersionOverride"][0];
    assert_eq!(version["sourceIdentifier"], "component");
    assert_eq!(version["sourceVersion"], "v2.1.0");
    // A host CodeBuild has no source type for is checked out by ferry-build itself.
    if let ComponentKind::DockerBuild { source, .. } = &mut git.component.kind {
        source.as_mut().unwrap().git = "https://git.example.com/acme/shop.git".into();
    }
    assert!(ferry_aws::builder::source_override(&git).is_none());
}

#[tokio::test]
async fn an_unknown_project_is_a_rejection() {
    let moto = Moto::start().await;
    let builder = CodeBuildBuilder::new(&moto.config().await, "no-such-project");
    let err = builder.start(&spec("b-1")).await.unwrap_err();
    assert!(
        matches!(err, ferry_core::ports::BuilderError::Rejected { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-project"), "{err}");
}

fn sample(name: &str) -> CodeBuildStateChange {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    CodeBuildStateChange::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn completed(e: Event) -> ferry_core::event::BuildCompleted {
    // Round-trip through the wire format the IMS parses.
    match parse_event(e.to_json().unwrap().as_bytes())
        .unwrap()
        .payload
    {
        Payload::BuildCompleted(c) => c,
        other => panic!("unexpected {other:?}"),
    }
}

/// A state change with another `build-status` (the samples cover SUCCEEDED, FAILED, STOPPED,
/// IN_PROGRESS; TIMED_OUT and FAULT are the same event with another status).
fn with_status(name: &str, status: &str) -> CodeBuildStateChange {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["detail"]["build-status"] = status.into();
    CodeBuildStateChange::parse(v.to_string().as_bytes()).unwrap()
}

#[test]
fn state_changes_catch_only_builds_that_ended_without_ferry_build() {
    // SUCCEEDED: ferry-build posted its own completion; the state change adds nothing, and
    // no digest is ever read from it.
    assert!(sample("codebuild-succeeded.json")
        .to_build_completed()
        .unwrap()
        .is_none());

    let failed = completed(
        sample("codebuild-failed.json")
            .to_build_completed()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(failed.build_id.as_str(), "b-0123456789abcdef");
    assert_eq!(failed.status, BuildOutcome::Failed);
    let why = failed.error.unwrap();
    assert!(
        why.contains("FAILED in phase BUILD") && why.contains("exit status 2"),
        "{why}"
    );
    assert!(failed.digest.is_none() && failed.repository.is_none());

    for status in ["TIMED_OUT", "FAULT"] {
        let c = completed(
            with_status("codebuild-failed.json", status)
                .to_build_completed()
                .unwrap()
                .unwrap(),
        );
        assert_eq!(c.status, BuildOutcome::Failed, "{status}");
        let why = c.error.unwrap();
        assert!(why.contains("phase BUILD"), "{status}: {why}");
        if status == "TIMED_OUT" {
            assert!(why.contains("timed out"), "{why}");
        }
    }

    let stopped = completed(
        sample("codebuild-stopped.json")
            .to_build_completed()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(stopped.status, BuildOutcome::Cancelled);
    assert!(stopped.error.unwrap().contains("stopped"));

    assert!(sample("codebuild-in-progress.json")
        .to_build_completed()
        .unwrap()
        .is_none());
    // Every status the template's rule forwards maps to a completion.
    for status in ferry_aws::builder::CAUGHT_STATUSES {
        assert!(
            with_status("codebuild-failed.json", status)
                .to_build_completed()
                .unwrap()
                .is_some(),
            "{status}"
        );
    }
}

#[test]
fn the_event_id_dedupes_redeliveries() {
    let a = sample("codebuild-failed.json")
        .to_build_completed()
        .unwrap()
        .unwrap();
    let b = sample("codebuild-failed.json")
        .to_build_completed()
        .unwrap()
        .unwrap();
    assert_eq!(a.idempotency_key(), b.idempotency_key());
    let path = format!(
        "{}/tests/data/codebuild-failed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert!(
        a.idempotency_key().contains(v["id"].as_str().unwrap()),
        "{}",
        a.idempotency_key()
    );
}

#[test]
fn foreign_events_are_refused() {
    assert!(CodeBuildStateChange::parse(br#"{"source":"aws.s3","detail":{}}"#).is_err());
    assert!(CodeBuildStateChange::parse(b"not json").is_err());
    let no_id = CodeBuildStateChange::parse(
        br#"{"source":"aws.codebuild","detail":{"build-status":"FAILED"}}"#,
    )
    .unwrap();
    let err = no_id.to_build_completed().unwrap_err();
    assert!(err.to_string().contains("FERRY_BUILD_ID"), "{err}");
}

/// ferry-build's completion: posted under `ferry.build`, it reaches a rule that matches that
/// source (the template's BuildCompletedRule) and parses as the build.completed it was; a rule
/// for Ferry's own source does not see it; any other event type is refused before the call.
#[tokio::test]
async fn ferry_build_posts_its_completion_under_its_own_source() {
    use ferry_aws::builder::{post_completion, BUILD_SOURCE};
    use ferry_core::event::BuildCompleted;
    use ferry_core::id::Digest;

    let moto = Moto::start().await;
    let config = moto.config().await;
    let sqs = SqsQueue::new(&config);
    let bus = EventBridgeBus::new(&config, "ferry");
    bus.client()
        .create_event_bus()
        .name("ferry")
        .send()
        .await
        .unwrap();
    let mut queues = Vec::new();
    for (rule, source) in [("completed", BUILD_SOURCE), ("ferry", "ferry")] {
        let q = QueueName::new(unique(rule)).unwrap();
        sqs.create_queue(&q, HashMap::new()).await.unwrap();
        let pattern = serde_json::json!({"source": [source], "detail-type": ["build.completed"]});
        bus.client()
            .put_rule()
            .name(rule)
            .event_bus_name("ferry")
            .event_pattern(pattern.to_string())
            .send()
            .await
            .unwrap();
        bus.client()
            .put_targets()
            .rule(rule)
            .event_bus_name("ferry")
            .targets(
                Target::builder()
                    .id("q")
                    .arn(sqs.arn(&q).await.unwrap())
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        queues.push(q);
    }

    let done = Event::new(Payload::BuildCompleted(BuildCompleted {
        build_id: BuildId::new("b-posted").unwrap(),
        status: BuildOutcome::Succeeded,
        digest: Some(Digest::new(format!("sha256:{}", "cd".repeat(32))).unwrap()),
        repository: Some(Repository::new("ferry/shop/web").unwrap()),
        media_type: Some("application/vnd.oci.image.index.v1+json".into()),
        error: None,
        revision: None,
    }));
    let id = post_completion(&config, "ferry", &done).await.unwrap();
    assert!(!id.is_empty());

    let opts = ReceiveOptions::new(10, 1, 60).unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(sqs.receive(&queues[0], &opts).await.unwrap());
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(
        got.len(),
        1,
        "one completion on the build-completed rule's queue"
    );
    let envelope: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(envelope["source"], BUILD_SOURCE);
    assert_eq!(envelope["detail-type"], "build.completed");
    let parsed = parse_event(got[0].body.as_bytes()).unwrap();
    // EventBridge's id (kept across redeliveries) is the one the handler dedupes on.
    assert_eq!(
        parsed.id.as_ref().map(|i| i.as_str()),
        envelope["id"].as_str()
    );
    assert_eq!(completed(parsed), completed(done.clone()));
    let short = ReceiveOptions::new(10, 0, 60).unwrap();
    assert!(
        sqs.receive(&queues[1], &short).await.unwrap().is_empty(),
        "a rule on source ferry does not see ferry-build's completion"
    );

    let err = post_completion(&config, "ferry", &request(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only build.completed"), "{err}");
}
