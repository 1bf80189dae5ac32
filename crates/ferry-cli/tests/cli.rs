//! Runs the built `ferry` binary as a user would: exit codes, error messages, `--json` lines.
//!
//! The corpus is a hand-written OCI layout (shared with ferry-oci's harness), so nothing here
//! assumes what it tests.

#[path = "../../ferry-oci/tests/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[cfg(feature = "aws")]
mod deployed;

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

/// Onboarding on moto through the `ferry` and `ferry-agent` binaries only, after creating what
/// the vendor stack (SAM) would: a context for the stack, an app and a component, two
/// customers (`ferry-agent keygen`) registered (twice: the second time changes nothing), each
/// install queue's policy admitting exactly its agent role, two `ferry-agent run` processes on
/// their queues; `ferry build request` → the functions (ferry-core's handlers in-process, as
/// the Lambda runtime would run them) and CodeBuild's part (ferry-build pushing to an embedded
/// registry) → both agents sync → `ferry syncs` and `ferry lineage` show both; `ferry install
/// remove` one → a second build reaches only the other.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_on_moto_through_the_cli() {
    use ferry_aws::manage::AGENT_QUEUE_ACTIONS;
    use ferry_core::id::QueueName;
    use ferry_testkit::vendor_stack;

    // ---- what `sam deploy` creates: table, bus + build-requested, build-completed (ferry-build's
    // own completion, source ferry.build) and sync-requested rules/queues, the release queue
    // (no release runs here, but `ferry release list` on the context finds the stack's
    // releases: none), the report queue, the CodeBuild project, the pull role, the vendor key
    // secret.
    let aws = deployed::Deployed::start(
        deployed::base_stack()
            .route(vendor_stack::BUILD_REQUESTED, "ferry", "build.requested")
            .route(
                vendor_stack::BUILD_COMPLETED,
                ferry_aws::builder::BUILD_SOURCE,
                "build.completed",
            )
            .codebuild_project(),
    )
    .await;
    let (endpoint, config, vendor_key) = (aws.endpoint.clone(), &aws.config, &aws.vendor_key);
    let table = vendor_stack::TABLE;
    let sqs = ferry_aws::SqsQueue::new(config);
    let br = QueueName::new(vendor_stack::BUILD_REQUESTED).unwrap();
    let sr = QueueName::new(vendor_stack::SYNC_REQUESTED).unwrap();
    let rep = QueueName::new(vendor_stack::SYNC_REPORTED).unwrap();
    let report_url = aws.stack.queue_url(vendor_stack::SYNC_REPORTED).to_owned();
    let pull_role = aws.stack.pull_role_arn().to_owned();
    // moto has no registry API: the vendor registry and each install's are embedded Ferry
    // registries on loopback.
    let registries = tempfile::tempdir().unwrap();
    let vendor_registry = registry(&registries.path().join("vendor")).await;
    let vhost = vendor_registry.host();

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

    // ---- the vendor stack's outputs, as `sam deploy` leaves them: a small stack in moto's
    // CloudFormation with the output names template.yaml declares (checked here).
    let template_yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml"))
            .unwrap();
    let declared = template_outputs(&template_yaml);
    for name in ferry_aws::stack::CONTEXT_OUTPUTS {
        assert!(
            declared.contains(&name.to_owned()),
            "template.yaml has no output {name}"
        );
    }
    let values = [
        (ferry_aws::stack::OUTPUT_TABLE, table.to_owned()),
        (ferry_aws::stack::OUTPUT_BUS, "ferry".to_owned()),
        (
            ferry_aws::stack::OUTPUT_INSTALL_QUEUE_PREFIX,
            "ferry-install-".to_owned(),
        ),
        (
            ferry_aws::stack::OUTPUT_REPORT_QUEUE_URL,
            report_url.clone(),
        ),
        (ferry_aws::stack::OUTPUT_VENDOR_REGISTRY, vhost.clone()),
        (ferry_aws::stack::OUTPUT_PULL_ROLE_ARN, pull_role.clone()),
        (
            ferry_aws::stack::OUTPUT_VENDOR_KEY_SECRET_ARN,
            "ferry-vendor-key".to_owned(),
        ),
    ];
    let outputs: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!({"Value": v})))
        .collect();
    let stack_template = serde_json::json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"Marker": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "ferry-stack-marker"}}},
        "Outputs": outputs,
    });
    ferry_testkit::create_stack(&endpoint, "ferry", &stack_template.to_string()).await;

    // ---- the vendor: context (outputs read from the stack), app, component.
    let (code, _, stderr) = run(&[
        "context",
        "add",
        "nope",
        "--aws",
        "--stack",
        "no-such-stack",
        "--endpoint-url",
        &endpoint,
        "--region",
        ferry_testkit::REGION,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no-such-stack"), "{stderr}");
    // Flags override outputs.
    ok(&[
        "context",
        "add",
        "other",
        "--aws",
        "--stack",
        "ferry",
        "--endpoint-url",
        &endpoint,
        "--region",
        ferry_testkit::REGION,
        "--table",
        "other-jobs",
    ]);
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
    ]);
    let listed = json(&["context", "list", "--json"]);
    assert_eq!(listed["current"], "prod", "{listed:#}");
    let prod = &listed["contexts"]["prod"];
    for (field, want) in [
        ("table", table),
        ("bus", "ferry"),
        ("install_queue_prefix", "ferry-install-"),
        ("report_queue_url", report_url.as_str()),
        ("vendor_registry", vhost.as_str()),
        ("pull_role_arn", pull_role.as_str()),
    ] {
        assert_eq!(prod[field], want, "{field}: {listed:#}");
    }
    assert_eq!(listed["contexts"]["other"]["table"], "other-jobs");
    assert_eq!(listed["contexts"]["other"]["bus"], "ferry");
    ok(&["context", "remove", "other"]);
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
    deployed::add_shop_web(&ok);
    let comps = json(&["component", "list", "--json"]);
    assert_eq!(comps.as_array().unwrap().len(), 1, "{comps}");

    // A signed external image and a component with its own git repository (another app, so
    // the flow below is unchanged): both stored in DynamoDB and read back.
    let key_file = config_dir.path().join("cosign.pub");
    let key_pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEgRwD5kGfdfOaBkxHauk5/vxGIdS4\nV0ToabWm41GDBmOExdHDMJdHutZP/Q0Fp4YAG8Q4oYCD1qHliDCFjDcnLg==\n-----END PUBLIC KEY-----\n";
    std::fs::write(&key_file, key_pem).unwrap();
    let key_path = key_file.to_str().unwrap();
    ok(&["app", "add", "signed"]);
    ok(&[
        "component",
        "add",
        "signed",
        "proxy",
        "--kind",
        "image",
        "--source",
        "registry.example/acme/proxy:1.4",
        "--verify-key",
        key_path,
        "--verify-require",
        "all",
    ]);
    ok(&[
        "component",
        "add",
        "signed",
        "api",
        "--kind",
        "docker-build",
        "--build-context",
        "api",
        "--git",
        "https://github.com/acme/api.git",
        "--git-ref",
        "main",
        "--git-path",
        "services",
    ]);
    let signed = json(&["component", "list", "signed", "--json"]);
    let by_name = |n: &str| {
        signed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} in {signed}"))
    };
    let proxy = by_name("proxy");
    assert_eq!(proxy["verify"]["keys"][0], key_pem, "{proxy}");
    assert_eq!(proxy["verify"]["require"], "all", "{proxy}");
    let api = by_name("api");
    assert_eq!(
        api["source"]["git"], "https://github.com/acme/api.git",
        "{api}"
    );
    assert_eq!(api["source"]["ref"], "main", "{api}");
    assert_eq!(api["source"]["path"], "services", "{api}");
    // Refused, with nothing stored: a policy on a kind Ferry builds, a file that is not a key.
    let (code, _, stderr) = run(&[
        "component",
        "add",
        "signed",
        "module",
        "--kind",
        "opentofu-module",
        "--dir",
        "m",
        "--verify-key",
        key_path,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("image components only"), "{stderr}");
    let not_a_key = config_dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello").unwrap();
    let (code, _, stderr) = run(&[
        "component",
        "add",
        "signed",
        "other",
        "--kind",
        "image",
        "--source",
        "registry.example/acme/other:1",
        "--verify-key",
        not_a_key.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("BEGIN PUBLIC KEY"), "{stderr}");
    assert_eq!(
        json(&["component", "list", "signed", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // ---- two customers: keys (ferry-agent keygen's two public halves), register twice.
    let agent_bin =
        ferry_testkit::workspace_bin("ferry-agent", "ferry-agent", env!("CARGO_BIN_EXE_ferry"));
    let customers = tempfile::tempdir().unwrap();
    let mut roles = Vec::new();
    let mut install_registries = Vec::new();
    let mut agents = Vec::new();
    for id in ["acme", "globex"] {
        // The customer: the stack's key secret (a placeholder until keygen), `ferry-agent
        // keygen --secret-arn` (the private key goes straight into it), an install registry.
        let key_secret = format!("ferry/agent/{id}/key");
        ferry_testkit::create_secret(&endpoint, &key_secret, "placeholder0placeholder0placehol")
            .await;
        let out = std::process::Command::new(&agent_bin)
            .args(["keygen", "--secret-arn", &key_secret])
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", ferry_testkit::REGION)
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        let half = |label: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(label))
                .unwrap_or_else(|| panic!("no {label} in {printed}"))
                .trim()
                .to_owned()
        };
        let (public, report) = (half("public key:"), half("report key:"));
        let install_registry = registry(&registries.path().join(id)).await;
        let install_target = format!("{}/ferry", install_registry.host());
        let role = format!(
            "arn:aws:iam::2109876543{}:role/ferry-agent-{id}",
            roles.len() + 10
        );
        let mut args = deployed::register_args(id, &public, &report, &role, &install_target);
        args.push("--json");
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
        // The customer starts the agent with the settings registration printed.
        agents.push(spawn_agent(
            &agent_bin,
            &first["agent_settings"],
            &key_secret,
            &endpoint,
            &customers.path().join(format!("{id}.log")),
        ));
        install_registries.push(install_registry);
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

    // ---- a build request reaches the bus; the functions and CodeBuild (stood in for
    // in-process) build it; both agents sync it.
    let functions = Functions::connect(&aws, &vhost);
    let app_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(app_root.path().join("module")).unwrap();
    std::fs::write(
        app_root.path().join("module/main.tf"),
        "variable \"name\" { default = \"v1\" }\n",
    )
    .unwrap();
    let requested = json(&[
        "build", "request", "shop", "web", "--ref", "v1.0.0", "--json",
    ]);
    let build_id = requested["build_id"].as_str().unwrap().to_owned();
    let handled = functions.run(&br, 1).await;
    assert!(
        handled
            .iter()
            .any(|e| e.to_json().unwrap().contains(&build_id)),
        "build.requested for {build_id} came from the bus: {handled:?}"
    );
    let digest = functions.codebuild(&build_id, app_root.path()).await;
    assert_eq!(
        functions.run(&sr, 2).await.len(),
        2,
        "one sync.requested per install"
    );
    let syncs = synced(&functions, &rep, &json, customers.path(), &build_id, 2).await;
    let mut by_install: Vec<String> = syncs
        .iter()
        .map(|s| s["install_id"].as_str().unwrap().to_owned())
        .collect();
    by_install.sort();
    assert_eq!(by_install, ["acme", "globex"], "{syncs:?}");
    let lineage = json(&["lineage", &digest, "--json"]);
    let mut holders: Vec<&str> = lineage
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["install_id"].as_str().unwrap())
        .collect();
    holders.sort();
    assert_eq!(holders, ["acme", "globex"], "{lineage:#}");
    for id in ["acme", "globex"] {
        assert!(
            holds(&registries.path().join(id), &digest[7..]),
            "install registry {id} holds {digest}"
        );
    }
    let (code, _, stderr) = run(&["build", "request", "shop", "nope"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown component shop/nope"), "{stderr}");

    // ---- remove one: its queue goes, the other stays.
    let removed = json(&["install", "remove", "globex", "--json"]);
    assert_eq!(removed["lineage_kept"], true);
    let gone = QueueName::new("ferry-install-globex").unwrap();
    assert!(
        ferry_aws::SqsQueue::new(config).url(&gone).await.is_err(),
        "the removed install's queue is deleted"
    );
    let installs = json(&["install", "list", "--json"]);
    assert_eq!(installs[0]["id"], "acme");
    assert_eq!(installs.as_array().unwrap().len(), 1);
    let (code, _, stderr) = run(&["install", "remove", "globex"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown install globex"), "{stderr}");
    // ---- a second build reaches only the remaining install.
    std::fs::write(
        app_root.path().join("module/main.tf"),
        "variable \"name\" { default = \"v2\" }\n",
    )
    .unwrap();
    let second = json(&[
        "build", "request", "shop", "web", "--ref", "v1.1.0", "--json",
    ]);
    let second_id = second["build_id"].as_str().unwrap().to_owned();
    assert_eq!(functions.run(&br, 1).await.len(), 1);
    let second_digest = functions.codebuild(&second_id, app_root.path()).await;
    assert_ne!(second_digest, digest);
    assert_eq!(functions.run(&sr, 1).await.len(), 1, "one install left");
    let syncs = synced(&functions, &rep, &json, customers.path(), &second_id, 1).await;
    assert_eq!(syncs[0]["install_id"], "acme", "{syncs:?}");
    let held = json(&["lineage", &second_digest, "--json"]);
    assert_eq!(held.as_array().unwrap().len(), 1, "{held:#}");
    assert_eq!(held[0]["install_id"], "acme");
    assert!(
        holds(&registries.path().join("acme"), &second_digest[7..])
            && !holds(&registries.path().join("globex"), &second_digest[7..]),
        "the removed install got no job"
    );
    drop(agents);

    let dlqs = json(&["dlq", "list", "--json"]);
    assert!(
        dlqs.as_array().unwrap().iter().any(|q| q == "install-acme"),
        "{dlqs}"
    );
    assert!(json(&["dlq", "list", "install-acme", "--json"])
        .as_array()
        .unwrap()
        .is_empty());

    // ---- releases on the AWS context: none yet (tests/release_aws.rs runs them).
    let releases = json(&["release", "list", "shop", "--json"]);
    assert_eq!(releases, serde_json::json!([]), "{releases}");
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

/// The output names of a CloudFormation template's `Outputs:` section (two-space keys).
#[cfg(feature = "aws")]
fn template_outputs(yaml: &str) -> Vec<String> {
    let Some(start) = yaml.find("\nOutputs:\n") else {
        return Vec::new();
    };
    yaml[start + 10..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.strip_suffix(':'))
        .map(str::to_owned)
        .collect()
}

#[cfg(feature = "aws")]
fn aws_sdk_sqs_attr(name: &str) -> ferry_aws::manage::QueueAttributeName {
    ferry_aws::manage::QueueAttributeName::from(name)
}

/// An embedded Ferry registry on loopback with no access control (moto has no registry API).
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(feature = "aws")]
async fn registry(root: &std::path::Path) -> ferry_registry::server::RunningRegistry {
    ferry_registry::server::RegistryServer::builder(root)
        .build()
        .unwrap()
        .spawn()
        .await
        .unwrap()
}

/// Whether a file under `dir` is named by `hex` (a stored blob or manifest).
#[cfg(feature = "aws")]
fn holds(dir: &std::path::Path, hex: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(hex))
                || (p.is_dir() && holds(&p, hex))
        })
}

/// `ferry-agent run` in AWS mode with the settings `ferry install register` printed, against
/// moto; killed when dropped. Its JSON log goes to `log`.
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(feature = "aws")]
fn spawn_agent(
    bin: &std::path::Path,
    settings: &serde_json::Value,
    key_secret: &str,
    endpoint: &str,
    log: &std::path::Path,
) -> tokio::process::Child {
    let s = |k: &str| {
        settings[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {settings}"))
            .to_owned()
    };
    tokio::process::Command::new(bin)
        .arg("run")
        .args(["--install", &s("install"), "--queue", &s("queue")])
        .args(["--report-queue", &s("report-queue")])
        .args(["--vendor-registry", &s("vendor-registry")])
        .args(["--vendor-public-key", &s("vendor-public-key")])
        .args(["--install-registry", &s("install-registry")])
        .args(["--install-namespace", &s("install-namespace")])
        // The vendor repositories here have no prefix (shop/web).
        .arg("--vendor-prefix=")
        .args(["--wait-seconds", "1", "--grace-seconds", "1"])
        .args(["--key-secret-arn", key_secret])
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", ferry_testkit::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("FERRY_KEEP_LAST")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The vendor stack's functions on moto, as the Lambda runtime would run them (ferry-core's
/// handlers over the AWS adapters), plus CodeBuild's part (ferry-build pushes to the vendor
/// registry and posts its completion to the Ferry bus, which the build-completed rule routes).
#[cfg(feature = "aws")]
struct Functions {
    ports: ferry_core::Ports<deployed::MotoAws>,
    vendor_registry: String,
    ecr: ferry_aws::EcrRepositories,
    /// The build role's view of AWS (ferry-build posts with it).
    config: ferry_aws::SdkConfig,
    build_completed: ferry_core::id::QueueName,
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(feature = "aws")]
impl Functions {
    /// The stack's functions on `aws` (the default config: a build fans out), minting grants
    /// for `vendor_registry`. No release runs in this test (tests/release_aws.rs runs them).
    fn connect(aws: &deployed::Deployed, vendor_registry: &str) -> Functions {
        Functions {
            ports: aws.ports(vendor_registry, ferry_core::Config::default()),
            vendor_registry: vendor_registry.to_owned(),
            ecr: ferry_aws::EcrRepositories::new(&aws.config),
            config: aws.config.clone(),
            build_completed: ferry_core::id::QueueName::new(
                ferry_testkit::vendor_stack::BUILD_COMPLETED,
            )
            .unwrap(),
        }
    }

    /// The event source mapping of one function's queue: receive, handle, delete; until a
    /// receive comes back empty after at least `want` events (30 s at most). Long-polls (1 s)
    /// until `want` (at least one) came, then checks once more without waiting.
    async fn run(&self, queue: &ferry_core::id::QueueName, want: usize) -> Vec<ferry_core::Event> {
        use ferry_core::ports::{Queue as _, ReceiveOptions};
        let long = ReceiveOptions::new(10, 1, 30).unwrap();
        let short = ReceiveOptions::new(10, 0, 30).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut handled = Vec::new();
        loop {
            let opts = if handled.len() < want.max(1) {
                &long
            } else {
                &short
            };
            let msgs = self.ports.queue.receive(queue, opts).await.unwrap();
            if msgs.is_empty() && handled.len() >= want {
                return handled;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue}: {} of {want} events came",
                handled.len()
            );
            for m in &msgs {
                handled.push(deployed::handle(&self.ports, queue, m).await);
            }
        }
    }

    /// CodeBuild's part of build `build_id` (started by build-requested): ferry-build builds
    /// the module in `app_root`, pushes it and posts its completion to the Ferry bus exactly as
    /// the `ferry-build` binary does (`ferry_build::completion`); the build-completed function
    /// then takes it from its queue. Returns the artifact's digest.
    async fn codebuild(&self, build_id: &str, app_root: &std::path::Path) -> String {
        use ferry_core::ports::JobStore as _;
        let id = ferry_core::id::BuildId::new(build_id).unwrap();
        let build = self
            .ports
            .store
            .get_build(&id)
            .await
            .unwrap()
            .expect("build recorded");
        assert!(build.external_id.is_some(), "the CodeBuild build id");
        let component = self
            .ports
            .store
            .get_component(&build.app, &build.component)
            .await
            .unwrap()
            .expect("component recorded");
        // The build's push creates the vendor repository in ECR (grants are scoped to it).
        self.ecr
            .ensure_repository(&component.repository)
            .await
            .unwrap();
        let builder = ferry_build::ArtifactBuilder::new(ferry_build::BuildConfig::new(
            self.vendor_registry.clone(),
            app_root,
        ))
        .unwrap();
        let result = builder
            .build(&ferry_core::ports::BuildSpec {
                build_id: id.clone(),
                component: component.clone(),
                source_ref: build.source_ref.clone(),
            })
            .await;
        let digest = result.as_ref().unwrap().digest.to_string();
        let event = ferry_build::completion::completion_event(&id, &result);
        ferry_build::completion::post(&self.config, "ferry", &event)
            .await
            .unwrap();
        let handled = self.run(&self.build_completed, 1).await;
        assert_eq!(
            handled.len(),
            1,
            "one completion for {build_id}: {handled:?}"
        );
        digest
    }
}

/// Runs the sync-reported function until `ferry syncs --build BUILD --json` shows `want`
/// syncs, all succeeded (30 s at most); returns them. On timeout it shows the agents' logs
/// (`*.log` in `agent_logs`).
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(feature = "aws")]
async fn synced(
    functions: &Functions,
    reports: &ferry_core::id::QueueName,
    json: &dyn Fn(&[&str]) -> serde_json::Value,
    agent_logs: &std::path::Path,
    build: &str,
    want: usize,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        functions.run(reports, 0).await;
        let syncs = json(&["syncs", "--build", build, "--json"]);
        let rows = syncs.as_array().unwrap().clone();
        let done = rows
            .iter()
            .filter(|s| s.to_string().contains("\"succeeded\""))
            .count();
        if rows.len() == want && done == want {
            return rows;
        }
        if std::time::Instant::now() >= deadline {
            let logs: String = std::fs::read_dir(agent_logs)
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    format!("{}:\n{}\n", e.path().display(), tail.join("\n"))
                })
                .collect();
            panic!("{want} syncs of {build} did not succeed: {syncs:#}\nagents:\n{logs}");
        }
    }
}
