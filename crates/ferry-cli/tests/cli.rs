//! Runs the built `ferry` binary as a user would: exit codes, error messages, `--json` lines.
//!
//! The corpus is a hand-written OCI layout (shared with ferry-oci's harness), so nothing here
//! assumes what it tests.

#[path = "../../ferry-oci/tests/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;

use std::process::Command;

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Never read the developer's docker credentials.
    c.env("DOCKER_CONFIG", "/nonexistent-ferry-test")
        .env_remove("RUST_LOG");
    c
}

#[test]
fn bad_reference_exits_1_and_names_the_input() {
    let out = ferry()
        .args([
            "copy",
            "127.0.0.1:5000/UPPER/case:v1",
            "oci:/tmp/ferry-never-written:v1",
        ])
        .output()
        .expect("run ferry");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("127.0.0.1:5000/UPPER/case:v1"), "{stderr}");
    assert!(stderr.contains("source"), "{stderr}");
    assert!(!std::path::Path::new("/tmp/ferry-never-written").exists());
}

#[test]
fn bad_credentials_flag_is_not_echoed() {
    let out = ferry()
        .args([
            "copy",
            "--src-creds",
            "nocolon-hunter2",
            "127.0.0.1:1/a:v1",
            "oci:/tmp/x:v1",
        ])
        .output()
        .expect("run ferry");
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("--src-creds"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn layout_to_layout_with_json_lines() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let mut b = corpus::LayoutBuilder::new(src.path());
    let img = b.add_image(&[11, 12, 13], 32 * 1024, "linux", "amd64");
    b.tag(&img.manifest, Some("v1"));
    b.finish();
    let dst_dir = dst.path().join("out");

    let out = ferry()
        .args([
            "copy",
            "--json",
            &format!("oci:{}:v1", src.path().display()),
            &format!("oci:{}:v1", dst_dir.display()),
        ])
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert_eq!(summary["digest"], img.manifest.digest.as_str());
    assert_eq!(summary["blobs_copied"], 4, "3 layers + config: {summary}");
    let expected: u64 = img.layers.iter().map(|l| l.size).sum::<u64>() + img.config.size;
    assert_eq!(summary["bytes_copied"], expected);
    assert!(events.iter().any(|e| e["event"] == "plan"), "{stdout}");
    assert!(
        stderr.contains(&img.manifest.digest),
        "summary line on stderr: {stderr}"
    );

    // The destination holds every byte, under its digest.
    for blob in img.layers.iter().chain([&img.config, &img.manifest]) {
        let p = dst_dir.join("blobs/sha256").join(&blob.digest[7..]);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(corpus::sha256(&bytes), blob.digest);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst_dir.join("index.json")).expect("index.json"))
            .expect("index json");
    let tagged = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap_or_else(|| panic!("v1 not in {index}"));
    assert_eq!(tagged["digest"], img.manifest.digest.as_str());
}

/// Onboarding on moto through the `ferry` binary only, after creating what the vendor stack
/// (SAM) would: a context for the stack, an app and a component, two installs registered
/// (twice: the second time changes nothing), each install queue's policy admitting exactly
/// its agent role, a build request reaching the bus, and a removed install's queue gone.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_on_moto_through_the_cli() {
    use ferry_aws::manage::AGENT_QUEUE_ACTIONS;
    use ferry_core::id::QueueName;
    use ferry_core::ports::{Queue as _, ReceiveOptions};

    let moto = ferry_testkit::Moto::start_within(std::time::Duration::from_secs(15)).await;
    let endpoint = moto.endpoint();
    let config = ferry_aws::config::loader()
        .endpoint_url(&endpoint)
        .region(ferry_aws::config::Region::new(ferry_testkit::REGION))
        .test_credentials()
        .load()
        .await;
    // ---- what `sam deploy` creates: table, bus + build-requested rule/queue, report queue,
    // the vendor key secret.
    let table = "ferry-jobs";
    ferry_aws::DynamoStore::new(&config, table)
        .create_table()
        .await
        .unwrap();
    let sqs = ferry_aws::SqsQueue::new(&config);
    let br = QueueName::new("ferry-build-requested").unwrap();
    let rep = QueueName::new("ferry-sync-reported").unwrap();
    sqs.create_queue_with_dlq(&br, 5, 30).await.unwrap();
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
        .name("ferry-build-requested")
        .event_bus_name("ferry")
        .event_pattern(r#"{"source":["ferry"],"detail-type":["build.requested"]}"#)
        .send()
        .await
        .unwrap();
    bus.client()
        .put_targets()
        .rule("ferry-build-requested")
        .event_bus_name("ferry")
        .targets(ferry_aws_types_target("br", &sqs.arn(&br).await.unwrap()))
        .send()
        .await
        .unwrap();
    let vendor_key = ferry_core::trust::VendorKey::generate().unwrap();
    ferry_testkit::create_secret(
        &endpoint,
        "ferry-vendor-key",
        &vendor_key.to_secret_string(),
    )
    .await;

    let config_dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = ferry()
            .env("FERRY_CONFIG_DIR", config_dir.path())
            .env_remove("FERRY_CONTEXT")
            .env_remove("FERRY_STATE_DIR")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", ferry_testkit::REGION)
            .env_remove("AWS_PROFILE")
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
        serde_json::from_str(&ok(args)).unwrap_or_else(|e| panic!("ferry {args:?}: {e}"))
    };

    // ---- the vendor: context, app, component.
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
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "--vendor-key-secret-arn",
        "ferry-vendor-key",
    ]);
    let ctx_file = std::fs::read_to_string(config_dir.path().join("contexts.json")).unwrap();
    assert!(
        ctx_file.contains(&vendor_key.public_key_string())
            && !ctx_file.contains(vendor_key.to_secret_string().as_str()),
        "the context keeps the vendor key's public half only"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(config_dir.path().join("contexts.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
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
        "image",
        "--source",
        "docker.io/library/nginx:1.27",
    ]);
    let comps = json(&["component", "list", "--json"]);
    assert_eq!(comps.as_array().unwrap().len(), 1, "{comps}");

    // ---- two customers: keys (ferry-agent keygen's two public halves), register twice.
    let mut roles = Vec::new();
    for id in ["acme", "globex"] {
        let kp = ferry_core::seal::AgentKeypair::generate().unwrap();
        let role = format!(
            "arn:aws:iam::2109876543{}:role/ferry-agent-{id}",
            roles.len() + 10
        );
        let (public, report) = (kp.public_key_string(), kp.report_key().public_key_string());
        let args = [
            "install",
            "register",
            id,
            "--app",
            "shop",
            "--public-key",
            &public,
            "--report-key",
            &report,
            "--agent-role-arn",
            &role,
            "--registry",
            "210987654321.dkr.ecr.eu-west-1.amazonaws.com/ferry",
            "--json",
        ];
        let first = json(&args);
        assert_eq!(first["outcome"], "created", "{first}");
        assert_eq!(
            first["agent_settings"]["vendor-public-key"],
            vendor_key.public_key_string().as_str()
        );
        assert_eq!(first["agent_settings"]["report-queue"], report_url.as_str());
        let again = json(&args);
        assert_eq!(
            again["outcome"], "unchanged",
            "registration twice is a no-op"
        );
        assert_eq!(again["install"], first["install"]);
        roles.push(role);
    }
    // Exactly the registered role may receive, delete and change visibility; nothing else.
    for (id, role) in ["acme", "globex"].iter().zip(&roles) {
        let q = QueueName::new(format!("ferry-install-{id}")).unwrap();
        let url = sqs.url(&q).await.unwrap();
        let attrs = sqs
            .client()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs_attr("Policy"))
            .attribute_names(aws_sdk_sqs_attr("RedrivePolicy"))
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        let policy: serde_json::Value =
            serde_json::from_str(attrs.get(&aws_sdk_sqs_attr("Policy")).unwrap()).unwrap();
        let allows: Vec<&serde_json::Value> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .collect();
        assert_eq!(allows.len(), 1, "{policy}");
        assert_eq!(allows[0]["Principal"]["AWS"], role.as_str(), "{policy}");
        assert_eq!(allows[0]["Action"], serde_json::json!(AGENT_QUEUE_ACTIONS));
        assert!(
            attrs[&aws_sdk_sqs_attr("RedrivePolicy")].contains(&format!("ferry-install-{id}-dlq")),
            "the install queue redrives to its DLQ"
        );
    }
    let installs = json(&["install", "list", "--json"]);
    assert_eq!(installs.as_array().unwrap().len(), 2, "{installs}");

    // ---- a build request reaches the bus (and its rule's queue).
    let requested = json(&[
        "build", "request", "shop", "web", "--ref", "v1.0.0", "--json",
    ]);
    let build_id = requested["build_id"].as_str().unwrap().to_owned();
    let got = sqs
        .receive(&br, &ReceiveOptions::new(10, 5, 30).unwrap())
        .await
        .unwrap();
    assert!(
        got.iter()
            .any(|m| m.body.contains(&build_id) && m.body.contains("build.requested")),
        "build.requested for {build_id} on the bus: {got:?}"
    );
    let (code, _, stderr) = run(&["build", "request", "shop", "nope"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown component shop/nope"), "{stderr}");

    // ---- remove one: its queue goes, the other stays.
    let removed = json(&["install", "remove", "globex", "--json"]);
    assert_eq!(removed["lineage_kept"], true);
    let gone = QueueName::new("ferry-install-globex").unwrap();
    assert!(
        ferry_aws::SqsQueue::new(&config).url(&gone).await.is_err(),
        "the removed install's queue is deleted"
    );
    let installs = json(&["install", "list", "--json"]);
    assert_eq!(installs[0]["id"], "acme");
    assert_eq!(installs.as_array().unwrap().len(), 1);
    let (code, _, stderr) = run(&["install", "remove", "globex"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown install globex"), "{stderr}");
    let dlqs = json(&["dlq", "list", "--json"]);
    assert!(
        dlqs.as_array().unwrap().iter().any(|q| q == "install-acme"),
        "{dlqs}"
    );
    assert!(json(&["dlq", "list", "install-acme", "--json"])
        .as_array()
        .unwrap()
        .is_empty());

    // ---- contexts: an unknown one is named; `use` and `remove` work.
    let (code, _, stderr) = run(&["--context", "nope", "install", "list"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown context nope"), "{stderr}");
    let listed = ok(&["context", "list"]);
    assert!(
        listed.contains("prod") && listed.contains("aws"),
        "{listed}"
    );
    ok(&["context", "remove", "prod"]);
}

#[cfg(feature = "aws")]
fn aws_sdk_sqs_attr(name: &str) -> ferry_aws::manage::QueueAttributeName {
    ferry_aws::manage::QueueAttributeName::from(name)
}

#[cfg(feature = "aws")]
#[allow(clippy::unwrap_used)]
fn ferry_aws_types_target(id: &str, arn: &str) -> ferry_aws::manage::Target {
    ferry_aws::manage::Target::builder()
        .id(id)
        .arn(arn)
        .build()
        .unwrap()
}
