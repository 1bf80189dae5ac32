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
