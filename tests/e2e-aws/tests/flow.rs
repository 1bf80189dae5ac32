//! The AWS backend end to end on moto: build.requested on EventBridge → build-requested
//! (from its SQS queue, through ferry-lambda's `handle_sqs_batch`) → CodeBuild StartBuild →
//! ferry-build pushes to the vendor registry and posts its own build.completed (source
//! ferry.build) to the Ferry bus → build-completed → sync-requested (STS + ECR grant, sealed) → two install agents in AWS mode
//! → sync-reported → DynamoDB says synced, and each install registry serves the digest.
//!
//! On the way: a malformed record in a batch (partial failure, then the DLQ after
//! maxReceiveCount with a 1 s visibility timeout), every event put three times (no duplicate
//! build or job), a proxy in front of moto that throttles or fails every 7th call, and a sweep
//! of logs (TRACE, SDK included), DynamoDB items and every body on the wire for the clear ECR
//! password and the agents' private keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{aws_json, create_role, DockerRegistry, FaultProxy, Logs, Moto, ACCOUNT, REGION};
use ferry_agent::aws::{aws_agent, load_keypair, AwsAgentOptions, KeySource};
use ferry_agent::VendorTrust;
use ferry_aws::{DynamoStore, EcrGrantSettings, EcrRepositories, EventBridgeBus, SqsQueue};
use ferry_core::domain::{Component, ComponentKind, Install, RegistryTarget};
use ferry_core::event::BuildRequested;
use ferry_core::event::{SyncReportStatus, SyncReported};
use ferry_core::handlers::SecurityEvent;
use ferry_core::id::{AppName, ComponentName, EventId, InstallId, QueueName, Repository};
use ferry_core::ports::{Batch, BuildSpec, EventBus, JobStore, PageRequest, Queue, ReceiveOptions};
use ferry_core::seal::AgentKeypair;
use ferry_core::state::JobStatus;
use ferry_core::trust::VendorKey;
use ferry_core::{Event, Payload};
use ferry_lambda::{handle_sqs_batch, AwsOverrides, Context, Deps, Kind, LambdaEvent, Settings};
use tokio_util::sync::CancellationToken;

const FAULT_EVERY: usize = 7;
const MAX_RECEIVES: u32 = 3;

async fn sdk_config(endpoint: &str) -> ferry_aws::SdkConfig {
    ferry_aws::config::loader()
        .endpoint_url(endpoint)
        .region(REGION)
        .test_credentials()
        .load()
        .await
}

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

/// What driving one function's queue saw.
#[derive(Default, Debug)]
struct Drive {
    batches: usize,
    records: usize,
    /// (records in the batch, message ids that failed)
    failures: Vec<(usize, Vec<String>)>,
    bodies: Vec<String>,
}

/// Plays the Lambda event source mapping for `kind`: receive a batch, call the function,
/// delete what succeeded; until the queue stays empty twice in a row (or the deadline).
async fn drive(deps: &Deps, sqs: &SqsQueue, queue: &QueueName, kind: Kind, arn: &str) -> Drive {
    let mut seen = Drive::default();
    let opts = ReceiveOptions::new(10, 1, 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut empty = 0;
    while empty < 2 {
        assert!(Instant::now() < deadline, "{queue} did not drain: {seen:?}");
        let msgs = match sqs.receive(queue, &opts).await {
            Ok(m) => m,
            Err(e) => panic!("receive from {queue}: {e}"),
        };
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        let records: Vec<serde_json::Value> = msgs
            .iter()
            .map(|m| {
                serde_json::json!({
                    "messageId": m.message_id.0,
                    "receiptHandle": m.receipt_handle.0,
                    "body": m.body,
                    "md5OfBody": "",
                    "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": REGION,
                })
            })
            .collect();
        let event = serde_json::from_value(serde_json::json!({ "Records": records })).unwrap();
        let response = handle_sqs_batch(LambdaEvent::new(event, Context::default()), deps, kind)
            .await
            .unwrap();
        let response = serde_json::to_value(&response).unwrap();
        let failed: Vec<String> = response["batchItemFailures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        seen.batches += 1;
        seen.records += msgs.len();
        if !failed.is_empty() {
            seen.failures.push((msgs.len(), failed.clone()));
        }
        for m in &msgs {
            seen.bodies.push(m.body.clone());
            if !failed.contains(&m.message_id.0) {
                // A stale handle (the 1 s visibility passed) only means another delivery,
                // which the handler treats as a replay.
                let _ = sqs.delete(queue, &m.receipt_handle).await;
            }
        }
    }
    seen
}

/// Receives and deletes messages from a queue until at least `want` came and a receive came
/// back empty (or 30 s passed).
async fn take(sqs: &SqsQueue, queue: &QueueName, want: usize) -> Vec<String> {
    let opts = ReceiveOptions::new(10, 1, 30).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let got = sqs.receive(queue, &opts).await.unwrap();
        if got.is_empty() && out.len() >= want {
            break;
        }
        for m in got {
            sqs.delete(queue, &m.receipt_handle).await.unwrap();
            out.push(m.body);
        }
    }
    out
}

struct TestInstall {
    id: InstallId,
    queue_url: String,
    registry: DockerRegistry,
    key: KeySource,
    secret_text: String,
}

#[tokio::test(flavor = "current_thread")]
async fn a_build_reaches_every_install_through_aws() {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let moto = Moto::start().await;
    let direct = moto.endpoint();
    let proxy = FaultProxy::start(direct.clone(), FAULT_EVERY).await;
    let config = sdk_config(&proxy.endpoint()).await;
    let vendor = DockerRegistry::start().await;

    // ---- 1. the vendor stack ---------------------------------------------------------------
    let table = "ferry-jobs";
    let store = DynamoStore::new(&config, table);
    store.create_table().await.unwrap();
    let sqs = SqsQueue::new(&config);
    let mut arns = HashMap::new();
    for f in [
        "build-requested",
        "build-completed",
        "sync-requested",
        "sync-reported",
        // The release queue (template.yaml's ReleaseQueue); no release runs in this flow.
        "release",
    ] {
        sqs.create_queue_with_dlq(&q(f), MAX_RECEIVES, 1)
            .await
            .unwrap();
        arns.insert(f, sqs.arn(&q(f)).await.unwrap());
    }
    aws_json(
        &direct,
        "events",
        "AWSEvents.CreateEventBus",
        serde_json::json!({"Name": "ferry"}),
    )
    .await;
    let rules = [
        ("ferry", "ferry-build-requested", r#"{"source":["ferry"],"detail-type":["build.requested"]}"#.to_owned(), "build-requested"),
        ("ferry", "ferry-sync-requested", r#"{"source":["ferry"],"detail-type":["sync.requested"]}"#.to_owned(), "sync-requested"),
        ("ferry", "ferry-sync-reported", r#"{"source":["ferry"],"detail-type":["sync.reported"]}"#.to_owned(), "sync-reported"),
        (
            "ferry",
            "ferry-build-completed",
            serde_json::json!({
                "source": [ferry_aws::builder::BUILD_SOURCE],
                "detail-type": ["build.completed"],
            })
            .to_string(),
            "build-completed",
        ),
        (
            "default",
            "ferry-codebuild-state",
            serde_json::json!({
                "source": ["aws.codebuild"],
                "detail-type": ["CodeBuild Build State Change"],
                "detail": {"build-status": ferry_aws::builder::CAUGHT_STATUSES, "project-name": ["ferry-build"]},
            })
            .to_string(),
            "build-completed",
        ),
    ];
    for (bus, rule, pattern, target) in &rules {
        aws_json(
            &direct,
            "events",
            "AWSEvents.PutRule",
            serde_json::json!({"Name": rule, "EventBusName": bus, "EventPattern": pattern}),
        )
        .await;
        aws_json(
            &direct,
            "events",
            "AWSEvents.PutTargets",
            serde_json::json!({"Rule": rule, "EventBusName": bus,
                "Targets": [{"Id": target, "Arn": arns[target]}]}),
        )
        .await;
    }
    aws_json(
        &direct,
        "codebuild",
        "CodeBuild_20161006.CreateProject",
        serde_json::json!({
            "name": "ferry-build",
            "source": {"type": "S3", "location": "ferry-sources/source.zip"},
            "artifacts": {"type": "NO_ARTIFACTS"},
            "environment": {"type": "ARM_CONTAINER", "computeType": "BUILD_GENERAL1_SMALL",
                "image": "aws/codebuild/amazonlinux2-aarch64-standard:3.0"},
            "serviceRole": format!("arn:aws:iam::{ACCOUNT}:role/ferry-codebuild"),
        }),
    )
    .await;
    let pull_role = create_role(&direct, "ferry-pull").await;
    let repository = Repository::new("shop/web").unwrap();
    EcrRepositories::new(&config)
        .ensure_repository(&repository)
        .await
        .unwrap();
    let component = Component {
        app: AppName::new("shop").unwrap(),
        name: ComponentName::new("web").unwrap(),
        kind: ComponentKind::OpentofuModule {
            dir: "module".into(),
            source: None,
        },
        repository: repository.clone(),
        verify: None,
        credentials: None,
    };
    store.put_component(&component).await.unwrap();

    // ---- the installs: a keypair, a queue, a registry each; A's key in Secrets Manager ------
    let mut installs = Vec::new();
    let key_dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let id = InstallId::new(format!("i-{name}")).unwrap();
        let kp = AgentKeypair::generate().unwrap();
        let secret_text = kp.to_secret_string().to_string();
        let key = if name == "a" {
            let out = aws_json(
                &direct,
                "secretsmanager",
                "secretsmanager.CreateSecret",
                serde_json::json!({"Name": format!("ferry/agent/{id}/key"), "SecretString": secret_text}),
            )
            .await;
            KeySource::SecretArn(out["ARN"].as_str().unwrap().to_owned())
        } else {
            let path = key_dir.path().join("agent.key");
            std::fs::write(&path, &secret_text).unwrap();
            KeySource::File(path)
        };
        let queue = q(&format!("ferry-install-{id}"));
        let created = sqs
            .create_queue_with_dlq(&queue, MAX_RECEIVES, 30)
            .await
            .unwrap();
        let registry = DockerRegistry::start().await;
        store
            .put_install(&Install {
                id: id.clone(),
                app: component.app.clone(),
                registry: RegistryTarget {
                    endpoint: registry.host(),
                    namespace: "ferry".into(),
                },
                agent_public_key: kp.public_key_string(),
                agent_report_key: kp.report_key().public_key_string(),
                queue,
                components: vec![component.name.clone()],
            })
            .await
            .unwrap();
        installs.push(TestInstall {
            id,
            queue_url: created.queue_url,
            registry,
            key,
            secret_text,
        });
    }

    // The functions' ports, as a Lambda would build them (grants name the vendor registry), with
    // the vendor key in Secrets Manager as the stack keeps it.
    let vendor_key = VendorKey::generate().unwrap();
    let settings = Settings {
        table: table.into(),
        event_bus: "ferry".into(),
        build_project: "ferry-build".into(),
        grants: EcrGrantSettings {
            pull_role_arn: pull_role,
            registry_account_id: ACCOUNT.into(),
            region: REGION.into(),
            registry_host: Some(vendor.host()),
        },
        vendor_key_secret: "ferry-vendor-key".into(),
        // The template's MaxReceiveCount default.
        max_receive_count: 5,
        release_queue_url: Some(sqs.url(&q("release")).await.unwrap()),
        fan_out_on_build: true,
        mint_pace: None,
    };
    ferry_testkit::create_secret(
        &moto.endpoint(),
        &settings.vendor_key_secret,
        &vendor_key.to_secret_string(),
    )
    .await;
    let deps = Deps::connect(
        &settings,
        &AwsOverrides {
            endpoint_url: Some(proxy.endpoint()),
            region: Some(REGION),
            test_credentials: true,
            ..AwsOverrides::default()
        },
    )
    .await
    .unwrap();

    // ---- 2. build.requested, put three times, and one poison record -----------------------
    let poison_id = sqs
        .send(&q("build-requested"), "{\"this is\": \"not an event\"")
        .await
        .unwrap()
        .0;
    let bus = EventBridgeBus::new(&config, "ferry");
    let requested = Event::with_id(
        EventId::new("e-build-1").unwrap(),
        Payload::BuildRequested(BuildRequested {
            build_id: None,
            app: component.app.clone(),
            component: component.name.clone(),
            source_ref: "v1.0.0".into(),
            requested_by: "e2e".into(),
        }),
    );
    for _ in 0..3 {
        let r = bus
            .put_events(&Batch::new(vec![requested.clone()]).unwrap())
            .await
            .unwrap();
        assert!(r.iter().all(Result::is_ok), "{r:?}");
    }
    let seen_br = drive(
        &deps,
        &sqs,
        &q("build-requested"),
        Kind::BuildRequested,
        &arns["build-requested"],
    )
    .await;
    // One bad record never sinks the batch: only it is reported failed.
    assert!(
        !seen_br.failures.is_empty(),
        "the poison record failed: {seen_br:?}"
    );
    for (_, failed) in &seen_br.failures {
        assert_eq!(failed, &vec![poison_id.clone()], "{seen_br:?}");
    }
    assert!(
        seen_br.failures.iter().any(|(n, _)| *n > 1),
        "a batch held the poison record and good ones: {seen_br:?}"
    );
    let dlq = take(&sqs, &q("build-requested-dlq"), 1).await;
    assert_eq!(dlq, vec!["{\"this is\": \"not an event\"".to_owned()]);

    // ---- 3. exactly one build, started in CodeBuild; ferry-build pushes the artifact -------
    let builds = store
        .builds_by_component(&component.app, &component.name, &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(builds.len(), 1, "three replays, one build: {builds:?}");
    let build = &builds[0];
    let external = build
        .external_id
        .clone()
        .expect("the CodeBuild build id is recorded");
    let listed = aws_json(
        &direct,
        "codebuild",
        "CodeBuild_20161006.ListBuildsForProject",
        serde_json::json!({"projectName": "ferry-build"}),
    )
    .await;
    assert_eq!(listed["ids"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["ids"][0], external.as_str());

    let app_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(app_root.path().join("module")).unwrap();
    std::fs::write(
        app_root.path().join("module/main.tf"),
        "variable \"name\" { default = \"ferry\" }\n",
    )
    .unwrap();
    let builder = ferry_build::ArtifactBuilder::new(ferry_build::BuildConfig::new(
        vendor.host(),
        app_root.path(),
    ))
    .unwrap();
    let result = builder
        .build(&BuildSpec {
            build_id: build.id.clone(),
            component: component.clone(),
            source_ref: build.source_ref.clone(),
        })
        .await;
    let artifact = result.as_ref().unwrap().clone();
    assert_eq!(artifact.repository, repository);
    let digest = artifact.digest.to_string();

    // ferry-build's own completion, posted to the Ferry bus as the binary posts it (three
    // times: a CodeBuild retry or a redelivery). CodeBuild's SUCCEEDED state change is not
    // forwarded by the rule at all.
    let completion = ferry_build::completion::completion_event(&build.id, &result);
    for _ in 0..3 {
        ferry_build::completion::post(&config, "ferry", &completion)
            .await
            .unwrap();
    }
    let succeeded = serde_json::json!({
        "build-status": "SUCCEEDED", "project-name": "ferry-build", "build-id": external,
        "additional-information": {"environment": {"environment-variables": [
            {"name": "FERRY_BUILD_ID", "type": "PLAINTEXT", "value": build.id.as_str()}]}},
    });
    let out = aws_json(
        &direct,
        "events",
        "AWSEvents.PutEvents",
        serde_json::json!({"Entries": [{
            "Source": "aws.codebuild",
            "DetailType": "CodeBuild Build State Change",
            "Detail": succeeded.to_string(),
            "Resources": [external],
        }]}),
    )
    .await;
    assert_eq!(out["FailedEntryCount"], 0, "{out}");

    // ---- 4. build-completed, then sync-requested (each sync.requested replayed 3×) --------
    let seen_bc = drive(
        &deps,
        &sqs,
        &q("build-completed"),
        Kind::BuildCompleted,
        &arns["build-completed"],
    )
    .await;
    assert!(seen_bc.failures.is_empty(), "{seen_bc:?}");
    assert_eq!(
        seen_bc.records, 3,
        "three completions arrived, no SUCCEEDED state change"
    );
    // Each replayed completion may publish its sync.requested again, under the same id.
    let published = take(&sqs, &q("sync-requested"), 2).await;
    let mut by_sync: HashMap<String, String> = HashMap::new();
    for body in &published {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        by_sync.insert(
            v["detail"]["sync_id"].as_str().unwrap().to_owned(),
            body.clone(),
        );
    }
    assert_eq!(by_sync.len(), 2, "one sync per install: {published:?}");
    // Put back what was published, and each once more three times.
    for body in published
        .iter()
        .chain(by_sync.values().flat_map(|b| [b, b, b]))
    {
        sqs.send(&q("sync-requested"), body).await.unwrap();
    }
    let seen_sr = drive(
        &deps,
        &sqs,
        &q("sync-requested"),
        Kind::SyncRequested,
        &arns["sync-requested"],
    )
    .await;
    assert!(seen_sr.failures.is_empty(), "{seen_sr:?}");
    let syncs = store
        .syncs_by_build(&build.id, &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(syncs.len(), 2, "two installs, two syncs: {syncs:?}");

    // ---- 4b. a hostile tenant: install a forges reports about install b's sync ------------
    let victim = &installs[1];
    let victim_sync = store
        .syncs_by_install(&victim.id, &PageRequest::first(10))
        .await
        .unwrap()
        .items
        .remove(0);
    let attacker_key = AgentKeypair::from_secret_string(&installs[0].secret_text)
        .unwrap()
        .report_key();
    let forged = |claimed: &InstallId| {
        let mut r = SyncReported {
            sync_id: victim_sync.id.clone(),
            install_id: claimed.clone(),
            status: SyncReportStatus::Succeeded,
            digest: victim_sync.digest.clone(),
            bytes_copied: 1,
            bytes_skipped: 0,
            duration_ms: 1,
            error: None,
            attempt: victim_sync.state.attempts,
            signature: String::new(),
        };
        attacker_key.sign(&mut r);
        Event::new(Payload::SyncReported(r)).to_json().unwrap()
    };
    for claimed in [&installs[0].id, &victim.id] {
        sqs.send(&q("sync-reported"), &forged(claimed))
            .await
            .unwrap();
    }
    let seen_forged = drive(
        &deps,
        &sqs,
        &q("sync-reported"),
        Kind::SyncReported,
        &arns["sync-reported"],
    )
    .await;
    assert!(
        seen_forged.failures.is_empty(),
        "refused, not retried into the DLQ: {seen_forged:?}"
    );
    assert_eq!(seen_forged.records, 2);
    let after = store.get_sync(&victim_sync.id).await.unwrap().unwrap();
    assert_eq!(after, victim_sync, "the victim's sync is untouched");
    assert_eq!(
        store
            .security_event_count(SecurityEvent::ReportUnauthenticated.as_str())
            .await
            .unwrap()
            .0,
        2,
        "both forgeries were counted"
    );

    // ---- 5. the agents, AWS mode, from their own queues ------------------------------------
    let report_url = sqs.url(&q("sync-reported")).await.unwrap();
    let mut secrets = Vec::new();
    for inst in &installs {
        let keypair = load_keypair(&config, &inst.key).await.unwrap();
        let (agent, access) = aws_agent(
            &config,
            AwsAgentOptions {
                install_id: inst.id.clone(),
                queue_url: inst.queue_url.clone(),
                report_queue_url: report_url.clone(),
                install_registry: inst.registry.host(),
                install_namespace: Some("ferry".into()),
                // The vendor repositories here have no prefix (shop/web).
                vendor_prefix: String::new(),
                protections: Default::default(),
                vendor: VendorTrust {
                    registry: vendor.host(),
                    public_key: vendor_key.public_key_string(),
                },
                receive: ReceiveOptions::new(1, 1, 30).unwrap(),
                shutdown_grace: Duration::from_secs(5),
            },
            keypair,
        )
        .unwrap();
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut handled, mut empty) = (0, 0);
        while empty < 2 {
            assert!(
                Instant::now() < deadline,
                "agent {} did not finish",
                inst.id
            );
            match agent.poll_once(&stop).await {
                Ok(0) => empty += 1,
                Ok(n) => {
                    handled += n;
                    empty = 0;
                }
                // A receive that ran out of SDK retries: poll again.
                Err(_) => {}
            }
        }
        assert_eq!(
            handled, 1,
            "exactly one job for {} despite replays",
            inst.id
        );
        assert_eq!(access.logins(), 1, "one ECR login, reused");
        secrets.push(inst.secret_text.clone());
    }

    // ---- 6. sync-reported, then the store and the registries ------------------------------
    let seen_rep = drive(
        &deps,
        &sqs,
        &q("sync-reported"),
        Kind::SyncReported,
        &arns["sync-reported"],
    )
    .await;
    assert!(seen_rep.failures.is_empty(), "{seen_rep:?}");
    // Two reports, and each agent's heartbeats (the first after its first poll, then at most
    // one a minute), which share the report queue.
    assert!(
        (4..=6).contains(&seen_rep.records),
        "two reports and the agents' heartbeats: {seen_rep:?}"
    );
    for inst in &installs {
        let syncs = store
            .syncs_by_install(&inst.id, &PageRequest::first(10))
            .await
            .unwrap()
            .items;
        assert_eq!(syncs.len(), 1, "{syncs:?}");
        assert_eq!(
            syncs[0].state.status,
            JobStatus::Succeeded,
            "{:?}",
            syncs[0]
        );
        assert_eq!(syncs[0].digest.as_str(), digest);
        assert_eq!(
            inst.registry
                .head_digest("ferry/shop/web", &digest)
                .await
                .as_deref(),
            Some(digest.as_str()),
            "install {} serves the exact digest",
            inst.id
        );
    }
    assert!(
        proxy.faults() > 5,
        "the proxy injected faults: {}",
        proxy.faults()
    );

    // ---- token hygiene ----------------------------------------------------------------------
    let exchanges = proxy.exchanges.lock().unwrap().clone();
    let mut tokens = HashSet::new();
    for x in exchanges
        .iter()
        .filter(|x| x.operation.ends_with("GetAuthorizationToken"))
    {
        let v: serde_json::Value = serde_json::from_str(&x.response).unwrap();
        for d in v["authorizationData"].as_array().unwrap() {
            let t = d["authorizationToken"].as_str().unwrap().to_owned();
            if let Some((_, password)) = ferry_aws::minter::split_basic(&t) {
                tokens.insert(password.to_string());
            }
            tokens.insert(t);
        }
    }
    assert!(!tokens.is_empty(), "ECR tokens were issued");
    let mut forbidden: Vec<String> = tokens.into_iter().collect();
    for s in &secrets {
        forbidden.push(s.clone());
        forbidden.push(s.trim_start_matches("FERRY-X25519-SECRET-1:").to_owned());
    }
    let items = aws_json(
        &direct,
        "dynamodb",
        "DynamoDB_20120810.Scan",
        serde_json::json!({"TableName": table}),
    )
    .await
    .to_string();
    assert!(
        items.contains("i-a") && items.contains(&digest),
        "the scan saw the jobs"
    );
    let log_text = logs.text();
    assert!(
        log_text.contains("sync reported"),
        "agent logs were captured"
    );
    assert!(
        log_text.contains("TRACE"),
        "TRACE logs (the SDK's too) were captured"
    );
    let bodies: Vec<&String> = seen_br
        .bodies
        .iter()
        .chain(&seen_bc.bodies)
        .chain(&seen_sr.bodies)
        .chain(&seen_rep.bodies)
        .collect();
    for secret in &forbidden {
        if let Some(line) = log_text.lines().find(|l| l.contains(secret.as_str())) {
            // Shows what led up to the secret, never the secret itself.
            let at = line.find(secret.as_str()).unwrap_or(0);
            let from = line[..at]
                .char_indices()
                .rev()
                .nth(500)
                .map_or(0, |(i, _)| i);
            panic!("a secret in the logs, after: {}", &line[from..at]);
        }
        assert!(!items.contains(secret.as_str()), "a secret in DynamoDB");
        assert!(
            !bodies.iter().any(|b| b.contains(secret.as_str())),
            "a secret in a queue body"
        );
        for x in &exchanges {
            // The two calls whose answer is the secret itself.
            let carries = x.operation.ends_with("GetAuthorizationToken")
                || x.operation.ends_with("GetSecretValue");
            assert!(
                !x.request.contains(secret.as_str()),
                "a secret sent in {}",
                x.operation
            );
            assert!(
                carries || !x.response.contains(secret.as_str()),
                "a secret answered by {}",
                x.operation
            );
        }
    }
}
