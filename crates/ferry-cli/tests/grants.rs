//! `ferry grants revoke-all` as an operator runs it: against moto's IAM (AWS) and against a
//! `ferry dev` state dir's embedded registry (local).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use ferry_testkit::{create_role, Moto};

fn ferry_aws(moto: &Moto) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("RUST_LOG");
    c
}

#[tokio::test]
async fn revoke_all_on_aws_puts_the_deny_on_the_pull_role_and_names_a_missing_one() {
    let moto = Moto::start().await;
    let arn = create_role(&moto.endpoint(), "ferry-pull-cli").await;
    let out = ferry_aws(&moto)
        .args(["grants", "revoke-all", "--role", &arn])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ferry-pull-cli") && stdout.contains("AWSRevokeOlderSessions"),
        "{stdout}"
    );

    let out = ferry_aws(&moto)
        .args(["grants", "revoke-all", "--role", "no-such-role"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("iam:PutRolePolicy"), "{stderr}");

    // Neither or both places: a usage error that says what to pass.
    let out = ferry_aws(&moto)
        .args(["grants", "revoke-all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role"));
}

#[test]
fn revoke_all_on_a_state_dir_moves_the_registry_moment_forward() {
    let dir = tempfile::tempdir().unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["grants", "revoke-all", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("registry/auth/grants-not-before");
    let at: u64 = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(at >= before, "{at} < {before}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
