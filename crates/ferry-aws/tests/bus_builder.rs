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

#[test]
fn state_changes_map_to_build_completed() {
    let ok = completed(
        sample("codebuild-succeeded.json")
            .to_build_completed()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(ok.build_id.as_str(), "b-0123456789abcdef");
    assert_eq!(ok.status, BuildOutcome::Succeeded);
    assert_eq!(
        ok.digest.unwrap().as_str(),
        format!("sha256:{}", "ab".repeat(32))
    );
    assert_eq!(ok.repository.unwrap().as_str(), "shop/web");
    assert_eq!(
        ok.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );

    let failed = completed(
        sample("codebuild-failed.json")
            .to_build_completed()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(failed.status, BuildOutcome::Failed);
    let why = failed.error.unwrap();
    assert!(
        why.contains("BUILD") && why.contains("exit status 2"),
        "{why}"
    );
    assert!(failed.digest.is_none());

    let stopped = completed(
        sample("codebuild-stopped.json")
            .to_build_completed()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(stopped.status, BuildOutcome::Cancelled);

    assert!(sample("codebuild-in-progress.json")
        .to_build_completed()
        .unwrap()
        .is_none());
}

#[test]
fn the_event_id_dedupes_redeliveries() {
    let a = sample("codebuild-succeeded.json")
        .to_build_completed()
        .unwrap()
        .unwrap();
    let b = sample("codebuild-succeeded.json")
        .to_build_completed()
        .unwrap()
        .unwrap();
    assert_eq!(a.idempotency_key(), b.idempotency_key());
    assert!(
        a.idempotency_key().contains("3f5c7d2e"),
        "{}",
        a.idempotency_key()
    );
}

#[test]
fn a_green_build_without_a_digest_fails_clearly() {
    let path = format!(
        "{}/tests/data/codebuild-succeeded.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["detail"]["additional-information"]["exported-environment-variables"] = serde_json::json!([]);
    let ev = CodeBuildStateChange::parse(v.to_string().as_bytes()).unwrap();
    let c = completed(ev.to_build_completed().unwrap().unwrap());
    assert_eq!(c.status, BuildOutcome::Failed);
    assert!(c.error.unwrap().contains("FERRY_ARTIFACT_DIGEST"));
}

#[test]
fn a_build_from_git_reports_its_commit() {
    let path = format!(
        "{}/tests/data/codebuild-succeeded.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let base: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let with_revision = |rev: &str| {
        let mut v = base.clone();
        v["detail"]["additional-information"]["exported-environment-variables"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "FERRY_ARTIFACT_REVISION", "value": rev}));
        CodeBuildStateChange::parse(v.to_string().as_bytes()).unwrap()
    };
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let c = completed(with_revision(commit).to_build_completed().unwrap().unwrap());
    assert_eq!(c.revision.as_deref(), Some(commit));
    let e = with_revision("main").to_build_completed().unwrap_err();
    assert!(e.to_string().contains("FERRY_ARTIFACT_REVISION"), "{e}");
    // No export (a build not from git): no revision.
    let plain = CodeBuildStateChange::parse(base.to_string().as_bytes()).unwrap();
    assert!(completed(plain.to_build_completed().unwrap().unwrap())
        .revision
        .is_none());
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
