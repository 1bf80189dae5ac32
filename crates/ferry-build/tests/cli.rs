//! The `ferry-build` binary: configured from the environment, prints build.completed as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::env;
use ferry_core::event::{BuildOutcome, Payload};

async fn run(vars: &[(&str, String)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-build"));
    for k in [
        "FERRY_BUILD_ID",
        "FERRY_COMPONENT",
        "FERRY_SOURCE_REF",
        "FERRY_VENDOR_REGISTRY",
        "FERRY_REPOSITORY_PREFIX",
        "FERRY_APP_ROOT",
        "FERRY_REGISTRY_USERNAME",
        "FERRY_REGISTRY_PASSWORD",
        "FERRY_EVENT_BUS",
        "AWS_PROFILE",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("DOCKER_CONFIG", "/nonexistent-ferry-test");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

#[tokio::test]
async fn builds_from_env_and_prints_build_completed() {
    let env = env().await;
    let app = common::demo();
    let component = serde_json::to_string(app.component("module").unwrap()).unwrap();
    let base = vec![
        ("FERRY_BUILD_ID", "cli-1".to_string()),
        ("FERRY_COMPONENT", component),
        ("FERRY_SOURCE_REF", "main".to_string()),
        ("FERRY_VENDOR_REGISTRY", env.registry.host()),
        ("FERRY_REPOSITORY_PREFIX", "vendor".to_string()),
        ("FERRY_APP_ROOT", common::demo_root().display().to_string()),
        ("FERRY_REGISTRY_USERNAME", "vendor-user".to_string()),
        ("FERRY_REGISTRY_PASSWORD", "s3cret-password".to_string()),
    ];
    let out = run(&base).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
    let ev = ferry_core::parse_event(stdout.trim().as_bytes()).unwrap();
    let Payload::BuildCompleted(c) = ev.payload else {
        panic!("{stdout}")
    };
    assert_eq!(c.status, BuildOutcome::Succeeded);
    assert_eq!(c.repository.unwrap().as_str(), "vendor/demo/module");
    let pushed = env.manifest("vendor/demo/module", "cli-1").await;
    assert_eq!(pushed.digest.as_str(), c.digest.unwrap().as_str());

    // A failed build: exit 1, a failed event on stdout, the reason on stderr.
    let mut bad = base.clone();
    bad[1].1 = r#"{"app":"demo","name":"module","kind":"opentofu-module","dir":"nope","repository":"demo/module"}"#.into();
    let out = run(&bad).await;
    assert_eq!(out.status.code(), Some(1));
    let ev = ferry_core::parse_event(&out.stdout).unwrap();
    let Payload::BuildCompleted(c) = ev.payload else {
        panic!()
    };
    assert_eq!(c.status, BuildOutcome::Failed);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\""));

    // Bad input: exit 2 with a message naming the variable.
    let mut bad = base.clone();
    bad[1].1 = "{not json".into();
    let out = run(&bad).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FERRY_COMPONENT"));
    assert!(out.stdout.is_empty());
}

/// On AWS, ferry-build posts its build.completed to the Ferry bus (FERRY_EVENT_BUS) under
/// source ferry.build: the event a rule for that source delivers is exactly the one printed.
/// When it cannot post, it exits 3 (CodeBuild then reports the build FAILED).
#[tokio::test]
async fn posts_its_completion_to_the_ferry_bus() {
    use ferry_aws::builder::BUILD_SOURCE;
    use ferry_core::id::QueueName;
    use ferry_core::ports::{Queue as _, ReceiveOptions};
    use ferry_testkit::vendor_stack::{self, VendorStack};

    let env = env().await;
    let moto = ferry_testkit::Moto::start_within(std::time::Duration::from_secs(15)).await;
    let endpoint = moto.endpoint();
    let config = ferry_aws::config::loader()
        .endpoint_url(&endpoint)
        .region(ferry_aws::config::Region::new(ferry_testkit::REGION))
        .test_credentials()
        .load()
        .await;
    // What the vendor stack holds: the Ferry bus, BuildCompletedRule -> build-completed queue.
    VendorStack::builder()
        .route(
            vendor_stack::BUILD_COMPLETED,
            BUILD_SOURCE,
            "build.completed",
        )
        .create(&endpoint)
        .await;
    let sqs = ferry_aws::SqsQueue::new(&config);
    let queue = QueueName::new(vendor_stack::BUILD_COMPLETED).unwrap();

    let app = common::demo();
    let component = serde_json::to_string(app.component("module").unwrap()).unwrap();
    let base = vec![
        ("FERRY_BUILD_ID", "posted-1".to_string()),
        ("FERRY_COMPONENT", component),
        ("FERRY_SOURCE_REF", "main".to_string()),
        ("FERRY_VENDOR_REGISTRY", env.registry.host()),
        ("FERRY_REPOSITORY_PREFIX", "vendor".to_string()),
        ("FERRY_APP_ROOT", common::demo_root().display().to_string()),
        ("FERRY_EVENT_BUS", "ferry".to_string()),
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", ferry_testkit::REGION.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let out = run(&base).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("posted to ferry"), "{stderr}");
    let printed = ferry_core::parse_event(&out.stdout).unwrap();

    let opts = ReceiveOptions::new(10, 1, 60).unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(sqs.receive(&queue, &opts).await.unwrap());
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(
        got.len(),
        1,
        "one completion reached the build-completed queue"
    );
    let envelope: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(envelope["source"], BUILD_SOURCE);
    let posted = ferry_core::parse_event(got[0].body.as_bytes()).unwrap();
    assert_eq!(
        posted.payload, printed.payload,
        "the posted event is the printed one"
    );
    let Payload::BuildCompleted(c) = posted.payload else {
        panic!("{}", got[0].body)
    };
    assert_eq!(c.status, BuildOutcome::Succeeded);
    let pushed = env.manifest("vendor/demo/module", "posted-1").await;
    assert_eq!(
        Some(pushed.digest.as_str()),
        c.digest.as_ref().map(|d| d.as_str())
    );

    // A bus that does not exist: the build is done, the post is not, exit 3.
    let mut no_bus = base.clone();
    no_bus[0].1 = "posted-2".into();
    no_bus[6].1 = "no-such-bus".into();
    let out = run(&no_bus).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no-such-bus"), "{stderr}");
}
