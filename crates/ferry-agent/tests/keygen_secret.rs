//! `ferry-agent keygen --secret-arn` on moto: the private key goes straight into the install
//! stack's key secret (never printed), the printed public keys are that key's, and a second
//! run refuses to replace it unless `--rotate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "aws")]

use ferry_core::seal::{AgentKeypair, SECRET_KEY_PREFIX};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn keygen(endpoint: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .arg("keygen")
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", ferry_testkit::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "trace")
        .env_remove("AWS_PROFILE")
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn printed(run: &Run, label: &str) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in {}", run.stdout))
        .trim()
        .to_owned()
}

async fn stored(config: &ferry_aws::SdkConfig, secret: &str) -> AgentKeypair {
    let text = ferry_aws::agent::read_secret_string(config, secret)
        .await
        .unwrap();
    AgentKeypair::from_secret_string(text.trim()).unwrap()
}

#[tokio::test]
async fn keygen_writes_the_key_into_the_stack_secret_and_prints_only_public_keys() {
    let moto = ferry_testkit::Moto::start_within(std::time::Duration::from_secs(15)).await;
    let endpoint = moto.endpoint();
    let config = ferry_aws::config::loader()
        .endpoint_url(&endpoint)
        .region(ferry_aws::config::Region::new(ferry_testkit::REGION))
        .test_credentials()
        .load()
        .await;
    // What the install stack creates: the secret with a random placeholder.
    let secret = "ferry/agent/acme/key";
    ferry_testkit::create_secret(&endpoint, secret, "Zx8placeholder0placeholder0place").await;

    let first = keygen(&endpoint, &["--secret-arn", secret]).await;
    assert!(first.ok, "{}\n{}", first.stdout, first.stderr);
    let key = stored(&config, secret).await;
    assert_eq!(printed(&first, "public key:"), key.public_key_string());
    assert_eq!(
        printed(&first, "report key:"),
        key.report_key().public_key_string()
    );
    let private = key.to_secret_string();
    for text in [&first.stdout, &first.stderr] {
        assert!(
            !text.contains(SECRET_KEY_PREFIX) && !text.contains(private.as_str()),
            "the private key leaked: {text}"
        );
    }

    // Again: refused, the secret keeps the key a running agent uses.
    let again = keygen(&endpoint, &["--secret-arn", secret]).await;
    assert!(!again.ok, "{}", again.stdout);
    assert!(again.stderr.contains("--rotate"), "{}", again.stderr);
    assert_eq!(
        stored(&config, secret).await.public_key_string(),
        key.public_key_string()
    );

    // --rotate replaces it.
    let rotated = keygen(&endpoint, &["--secret-arn", secret, "--rotate"]).await;
    assert!(rotated.ok, "{}", rotated.stderr);
    let new_key = stored(&config, secret).await;
    assert_ne!(new_key.public_key_string(), key.public_key_string());
    assert_eq!(
        printed(&rotated, "public key:"),
        new_key.public_key_string()
    );

    // A secret that does not exist is named; nothing is printed as if it worked.
    let missing = keygen(&endpoint, &["--secret-arn", "ferry/agent/nope/key"]).await;
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("ferry/agent/nope/key"),
        "{}",
        missing.stderr
    );
    assert!(
        !missing.stdout.contains("public key:"),
        "{}",
        missing.stdout
    );
}

#[tokio::test]
async fn keygen_needs_a_destination() {
    let run = keygen("http://127.0.0.1:9", &[]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("--out") && run.stderr.contains("--secret-arn"),
        "{}",
        run.stderr
    );
}
