//! Releases on a deployed stack (moto) through the `ferry` binary: `ferry release
//! create|show|list|pause|resume|abort` and `ferry install show` on an AWS context.
//!
//! What `sam deploy` creates is made by hand (table, bus + the sync-requested rule and queue,
//! the release queue, the report queue, the vendor key, the pull role, the CodeBuild project);
//! the stack's functions run in-process over the AWS adapters, as the Lambda runtime would run
//! them (ferry-core's `dispatch` on each received message); each install's agent is stood in
//! for by a report signed with that install's registered report key.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_core::event::{parse_sync_job, Payload, SyncReportStatus, SyncReported};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository};
use ferry_core::ports::{Queue as _, ReceiveOptions};
use ferry_core::{Event, Ports};

const INSTALLS: [&str; 4] = ["a0", "a1", "a2", "a3"];

struct MotoAws;

impl ferry_core::ports::Backend for MotoAws {
    type Store = ferry_aws::DynamoStore;
    type Queue = ferry_aws::SqsQueue;
    type Bus = ferry_aws::EventBridgeBus;
    type Builder = ferry_aws::CodeBuildBuilder;
    type Minter = ferry_aws::EcrGrantMinter;
    type Clock = ferry_local::clock::SystemClock;
}

/// The stack's functions, in-process, and the install agents' part.
struct Stack {
    ports: Ports<MotoAws>,
    sync_requested: QueueName,
    release: QueueName,
}

impl Stack {
    /// Drains `queue` once (short polls until empty), dispatching every message; returns how
    /// many were handled.
    async fn drain(&self, queue: &QueueName) -> usize {
        let opts = ReceiveOptions::new(10, 0, 30).unwrap();
        let mut handled = 0;
        loop {
            let msgs = self.ports.queue.receive(queue, &opts).await.unwrap();
            if msgs.is_empty() {
                return handled;
            }
            for m in msgs {
                let event = ferry_core::parse_event(m.body.as_bytes())
                    .unwrap_or_else(|e| panic!("{queue}: {e}: {}", m.body));
                ferry_core::dispatch(&self.ports, &event)
                    .await
                    .unwrap_or_else(|e| panic!("{queue}: {e}"));
                self.ports
                    .queue
                    .delete(queue, &m.receipt_handle)
                    .await
                    .unwrap();
                handled += 1;
            }
        }
    }

    /// Every agent takes the jobs on its queue and reports success (signed with its report
    /// key), handled by the sync-reported function. Returns how many jobs were taken.
    async fn agents(&self) -> usize {
        let opts = ReceiveOptions::new(10, 0, 30).unwrap();
        let mut taken = 0;
        for id in INSTALLS {
            let q = QueueName::new(format!("ferry-install-{id}")).unwrap();
            for m in self.ports.queue.receive(&q, &opts).await.unwrap() {
                let job = parse_sync_job(m.body.as_bytes()).unwrap();
                let report = Event::new(Payload::SyncReported(
                    ferry_core::testing::signed_by_test_agent(SyncReported {
                        sync_id: job.sync_id.clone(),
                        install_id: job.install_id.clone(),
                        status: SyncReportStatus::Succeeded,
                        digest: job.digest.clone(),
                        bytes_copied: 4096,
                        bytes_skipped: 0,
                        duration_ms: 10,
                        error: None,
                        attempt: job.attempt,
                        signature: String::new(),
                    }),
                ));
                ferry_core::dispatch(&self.ports, &report).await.unwrap();
                self.ports
                    .queue
                    .delete(&q, &m.receipt_handle)
                    .await
                    .unwrap();
                taken += 1;
            }
        }
        taken
    }

    /// Runs the functions and the agents until nothing moves; returns the jobs agents took.
    async fn settle(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut taken = 0;
        loop {
            let moved =
                self.drain(&self.release).await + self.drain(&self.sync_requested).await + {
                    let n = self.agents().await;
                    taken += n;
                    n
                };
            if moved == 0 {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "the stack did not settle in 60 s"
            );
        }
    }

    /// A succeeded build of shop/web with `digest`, as build-requested, CodeBuild and
    /// build-completed leave it (no implicit release: the stack runs with FanOutOnBuild=false).
    async fn built(&self, id: &str, digest: &str) -> BuildId {
        use ferry_core::event::{BuildCompleted, BuildOutcome, BuildRequested};
        let build_id = BuildId::new(id).unwrap();
        let requested = Event::new(Payload::BuildRequested(BuildRequested {
            build_id: Some(build_id.clone()),
            app: AppName::new("shop").unwrap(),
            component: ComponentName::new("web").unwrap(),
            source_ref: format!("refs/tags/{id}"),
            requested_by: "test".into(),
        }));
        ferry_core::dispatch(&self.ports, &requested).await.unwrap();
        let completed = Event::new(Payload::BuildCompleted(BuildCompleted {
            build_id: build_id.clone(),
            status: BuildOutcome::Succeeded,
            digest: Some(Digest::new(digest).unwrap()),
            repository: Some(Repository::new("shop/web").unwrap()),
            media_type: None,
            error: None,
            revision: None,
        }));
        ferry_core::dispatch(&self.ports, &completed).await.unwrap();
        build_id
    }
}

fn ferry(config_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_CONFIG_DIR", config_dir)
        .env_remove("FERRY_CONTEXT")
        .env_remove("FERRY_STATE_DIR")
        .env_remove("RUST_LOG")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", ferry_testkit::REGION)
        .env_remove("AWS_PROFILE");
    c
}

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Every install's state in `ferry release show ID --json`, by install id.
fn states(show: &serde_json::Value) -> Vec<(String, String)> {
    show["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["install"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_on_a_deployed_stack_through_the_cli() {
    let moto = ferry_testkit::Moto::start_within(Duration::from_secs(15)).await;
    let endpoint = moto.endpoint();
    let config = ferry_aws::config::loader()
        .endpoint_url(&endpoint)
        .region(ferry_aws::config::Region::new(ferry_testkit::REGION))
        .test_credentials()
        .load()
        .await;
    // ---- what `sam deploy` creates.
    let table = "ferry-jobs";
    let store = ferry_aws::DynamoStore::new(&config, table);
    store.create_table().await.unwrap();
    let sqs = ferry_aws::SqsQueue::new(&config);
    let sr = QueueName::new("ferry-sync-requested").unwrap();
    let rel = QueueName::new("ferry-release").unwrap();
    let rep = QueueName::new("ferry-sync-reported").unwrap();
    sqs.create_queue_with_dlq(&sr, 5, 30).await.unwrap();
    let release_url = sqs
        .create_queue_with_dlq(&rel, 5, 30)
        .await
        .unwrap()
        .queue_url;
    let report_url = sqs
        .create_queue_with_dlq(&rep, 5, 30)
        .await
        .unwrap()
        .queue_url;
    let bus = ferry_aws::EventBridgeBus::new(&config, "ferry");
    bus.client()
        .create_event_bus()
        .name("ferry")
        .send()
        .await
        .unwrap();
    bus.client()
        .put_rule()
        .name("ferry-sync-requested")
        .event_bus_name("ferry")
        .event_pattern(r#"{"source":["ferry"],"detail-type":["sync.requested"]}"#)
        .send()
        .await
        .unwrap();
    bus.client()
        .put_targets()
        .rule("ferry-sync-requested")
        .event_bus_name("ferry")
        .targets(
            ferry_aws::manage::Target::builder()
                .id("sr")
                .arn(sqs.arn(&sr).await.unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    ferry_testkit::aws_json(
        &endpoint,
        "codebuild",
        "CodeBuild_20161006.CreateProject",
        serde_json::json!({
            "name": "ferry-build",
            "source": {"type": "S3", "location": "ferry-sources/source.zip"},
            "artifacts": {"type": "NO_ARTIFACTS"},
            "environment": {"type": "ARM_CONTAINER", "computeType": "BUILD_GENERAL1_SMALL",
                "image": "aws/codebuild/amazonlinux2-aarch64-standard:3.0"},
            "serviceRole": "arn:aws:iam::123456789012:role/ferry-codebuild",
        }),
    )
    .await;
    let pull_role = ferry_testkit::create_role(&endpoint, "ferry-pull").await;
    let vendor_key = ferry_core::trust::VendorKey::generate().unwrap();
    ferry_testkit::create_secret(
        &endpoint,
        "ferry-vendor-key",
        &vendor_key.to_secret_string(),
    )
    .await;
    let vendor_registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    let store_for_minter = store.clone();
    let stack = Stack {
        ports: Ports {
            store: store.clone(),
            // The functions know the release queue by FERRY_RELEASE_QUEUE_URL.
            queue: ferry_aws::SqsQueue::new(&config).with_url(rel.clone(), release_url.clone()),
            bus,
            builder: ferry_aws::CodeBuildBuilder::new(&config, "ferry-build"),
            minter: ferry_aws::EcrGrantMinter::new(
                &config,
                ferry_aws::EcrGrantSettings {
                    pull_role_arn: pull_role.clone(),
                    registry_account_id: "123456789012".into(),
                    region: ferry_testkit::REGION.into(),
                    registry_host: Some(vendor_registry.into()),
                },
                store_for_minter,
            ),
            clock: ferry_local::clock::SystemClock,
            config: ferry_core::Config {
                fan_out_on_build: false,
                ..ferry_core::Config::default()
            },
            vendor_key: std::sync::Arc::new(
                ferry_core::trust::VendorKey::from_secret_string(&vendor_key.to_secret_string())
                    .unwrap(),
            ),
            release_queue: rel.clone(),
        },
        sync_requested: sr.clone(),
        release: rel.clone(),
    };

    // ---- the vendor's CLI: context, app, component, four installs.
    let config_dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = ferry(config_dir.path())
            .args(args)
            .output()
            .expect("run ferry");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let ok = |args: &[&str]| {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(0), "ferry {args:?}:\n{stdout}\n{stderr}");
        stdout
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let out = ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ferry {args:?}: {e}: {out}"))
    };
    ok(&[
        "context",
        "add",
        "prod",
        "--aws",
        "--stack",
        "ferry",
        "--endpoint-url",
        &endpoint,
        "--region",
        ferry_testkit::REGION,
        "--table",
        table,
        "--bus",
        "ferry",
        "--queue-prefix",
        "ferry-install-",
        "--report-queue-url",
        &report_url,
        "--vendor-registry",
        vendor_registry,
        "--vendor-public-key",
        &vendor_key.public_key_string(),
    ]);
    ok(&[
        "app",
        "add",
        "shop",
        "--source",
        "https://git.example/shop.git",
    ]);
    ok(&[
        "component",
        "add",
        "shop",
        "web",
        "--kind",
        "opentofu-module",
        "--dir",
        "module",
    ]);
    for (n, id) in INSTALLS.iter().enumerate() {
        let key = ferry_core::testing::test_agent_key(&InstallId::new(*id).unwrap());
        ok(&[
            "install",
            "register",
            id,
            "--app",
            "shop",
            "--public-key",
            &key.public_key_string(),
            "--report-key",
            &key.report_key().public_key_string(),
            "--agent-role-arn",
            &format!("arn:aws:iam::2109876543{n:02}:role/ferry-agent-{id}"),
            "--registry",
            &format!("{id}.registry.test/ferry"),
        ]);
    }

    // ---- a release in steps of 2, paused after its first step, resumed.
    let b1 = stack.built("b-rel-1", D1).await;
    assert_eq!(stack.settle().await, 0, "no implicit release of a build");
    let created = json(&[
        "release",
        "create",
        "shop",
        "--build",
        b1.as_str(),
        "--all",
        "--per-step",
        "2",
        "--json",
    ]);
    let r1 = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "running", "{created}");
    assert_eq!(created["steps"], 2, "{created}");
    // The first step's timer is on the release queue; the release function takes it.
    assert_eq!(stack.drain(&rel).await, 1, "one step timer");
    let paused = json(&["release", "pause", &r1, "--json"]);
    assert_eq!(paused["status"], "paused", "{paused}");
    assert_eq!(
        stack.settle().await,
        2,
        "the step in flight finishes: 2 installs"
    );
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "paused", "{show}");
    assert_eq!(
        states(&show),
        [
            ("a0", "succeeded"),
            ("a1", "succeeded"),
            ("a2", "pending"),
            ("a3", "pending")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{show}"
    );
    let table_out = ok(&["release", "show", &r1]);
    assert!(
        table_out.contains("paused") && table_out.contains("a2"),
        "{table_out}"
    );
    let resumed = json(&["release", "resume", &r1, "--json"]);
    assert_eq!(resumed["status"], "running", "{resumed}");
    assert_eq!(stack.settle().await, 2, "the second step: 2 installs");
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "completed", "{show}");
    assert!(
        states(&show).iter().all(|(_, s)| s == "succeeded"),
        "{show}"
    );

    // ---- desired vs current on the install.
    let a0 = json(&["install", "show", "a0", "--json"]);
    let v = &a0["versions"][0];
    assert_eq!(v["component"], "web", "{a0}");
    assert_eq!(v["desired"]["build_id"], b1.as_str(), "{a0}");
    assert_eq!(v["desired"]["release_id"], r1.as_str(), "{a0}");
    assert_eq!(v["current"]["digest"], D1, "{a0}");
    assert_eq!(v["in_sync"], true, "{a0}");

    // ---- the same build to the same installs again: nothing is synced.
    let again = json(&[
        "release",
        "create",
        "shop",
        "--build",
        b1.as_str(),
        "--all",
        "--per-step",
        "2",
        "--json",
    ]);
    let r2 = again["id"].as_str().unwrap().to_owned();
    assert_ne!(r2, r1);
    assert_eq!(stack.settle().await, 0, "a re-release syncs nothing");
    let show = json(&["release", "show", &r2, "--json"]);
    assert_eq!(show["release"]["status"], "completed", "{show}");
    assert!(states(&show).iter().all(|(_, s)| s == "current"), "{show}");

    // ---- a new build, an hour between steps, aborted while the second step waits.
    let b2 = stack.built("b-rel-2", D2).await;
    let r3 = json(&[
        "release",
        "create",
        "shop",
        "--build",
        b2.as_str(),
        "--all",
        "--per-step",
        "2",
        "--delay",
        "1h",
        "--max-failures",
        "50%",
        "--json",
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(stack.settle().await, 2, "the first step runs at once");
    let show = json(&["release", "show", &r3, "--json"]);
    assert_eq!(show["release"]["status"], "running", "{show}");
    assert_eq!(show["release"]["step"], 1, "{show}");
    let aborted = json(&["release", "abort", &r3, "--json"]);
    assert_eq!(aborted["status"], "aborted", "{aborted}");
    assert_eq!(stack.settle().await, 0, "nothing new starts");
    let (code, _, stderr) = run(&["release", "resume", &r3]);
    assert_eq!(code, Some(1), "an aborted release cannot resume");
    assert!(stderr.contains("aborted"), "{stderr}");
    let a3 = json(&["install", "show", "a3", "--json"]);
    let v = &a3["versions"][0];
    assert_eq!(v["desired"]["build_id"], b2.as_str(), "{a3}");
    assert_eq!(v["desired"]["state"], "pending", "{a3}");
    assert_eq!(v["current"]["digest"], D1, "{a3}");
    assert_eq!(v["in_sync"], false, "{a3}");
    let shown = ok(&["install", "show", "a3"]);
    assert!(
        shown.contains("COMPONENT") && shown.contains("b-rel-2") && shown.contains("no"),
        "{shown}"
    );

    // ---- list: newest first.
    let listed = json(&["release", "list", "shop", "--json"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{listed}");
    assert_eq!(ids[0], r3, "{listed}");
    let (code, _, stderr) = run(&["release", "show", "r-nope"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("does not exist"), "{stderr}");
}
