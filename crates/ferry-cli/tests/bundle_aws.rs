//! Air-gapped installs on a deployed stack (moto) through the `ferry` binary: `ferry bundle
//! export` reads the vendor key from Secrets Manager and pulls with an ECR token, and `ferry
//! receipts import` records an air-gapped install's receipt in DynamoDB by the online report's
//! rule, so the release step waiting on that install completes.
//!
//! What `sam deploy` creates is made by hand (table, bus + the sync-requested rule and queue,
//! the release queue, the vendor key secret, the pull role); the stack's functions run
//! in-process over the AWS adapters (ferry-core's `dispatch` on each received message); the
//! online install's agent is stood in for by a report signed with its registered report key,
//! and the air-gapped one by a receipt signed with its key. ECR's registry endpoint is stood in
//! for by a local docker-registry that accepts only the Basic credential moto's
//! GetAuthorizationToken hands out, so an export that did not log in with the ECR token fails.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deployed;

use std::path::Path;
use std::process::Command;

use deployed::{states, Cli, Deployed};
use ferry_core::bundle::{
    sign_receipt, verify_bundle, BundleManifest, BundleReceipt, BUNDLE_MANIFEST_FILE,
    BUNDLE_SIGNATURE_FILE, RECEIPT_SCHEMA,
};
use ferry_core::domain::{Artifact, Build};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository};
use ferry_core::ports::JobStore as _;
use ferry_testkit::vendor_stack;
use sha2::Digest as _;

const ONLINE: &str = "b0";
const AIR: &str = "b1";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--noproxy", "*"])
        .args([
            "-u",
            &format!(
                "{}:{}",
                ferry_testkit::ECR_USER,
                ferry_testkit::ECR_PASSWORD
            ),
        ])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Pushes a blob with curl (POST, then one PUT with `?digest=`).
fn push_blob(addr: &str, repo: &str, dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let location = curl(&[
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%header{location}",
        &format!("http://{addr}/v2/{repo}/blobs/uploads/"),
    ]);
    let location = location.trim();
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location.to_string()
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let file = dir.join(digest.replace(':', "-"));
    std::fs::write(&file, bytes).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{location}{sep}digest={digest}"),
    ]);
    digest
}

/// A one-layer OCI image in `repo`; returns its manifest digest.
fn push_image(addr: &str, repo: &str, dir: &Path) -> (String, Vec<String>) {
    let layer = b"ferry air-gapped layer\n".repeat(100);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer_digest = push_blob(addr, repo, dir, &layer);
    let config_digest = push_blob(addr, repo, dir, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let digest = sha256(manifest.as_bytes());
    let file = dir.join("manifest.json");
    std::fs::write(&file, &manifest).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{addr}/v2/{repo}/manifests/{digest}"),
    ]);
    (digest, vec![layer_digest, config_digest])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_air_gapped_install_on_a_deployed_stack_is_released_by_bundle_and_receipt() {
    // ---- what `sam deploy` creates.
    let aws = Deployed::start(deployed::base_stack()).await;
    let (store, vendor_key) = (&aws.store, &aws.vendor_key);
    // Another vendor's key, in a secret a careless flag could name.
    ferry_testkit::create_secret(
        &aws.endpoint,
        "not-our-vendor-key",
        &ferry_core::trust::VendorKey::generate()
            .unwrap()
            .to_secret_string(),
    )
    .await;
    let rel = QueueName::new(vendor_stack::RELEASE).unwrap();
    // Only the online install's agent reads its queue.
    let stack = aws.functions(vendor_stack::ECR_REGISTRY, &[ONLINE]);

    // ---- the vendor registry (ECR, stood in for) holds the build's image.
    let ecr = ferry_testkit::EcrStandIn::start().await;
    let work = tempfile::tempdir().unwrap();
    let (image, blobs) = push_image(&ecr.addr, "shop/web", work.path());

    // ---- the vendor's CLI: context, app, component, an online and an air-gapped install.
    let cli = Cli::new();
    let run = |args: &[&str]| cli.run(args);
    let json = |args: &[&str]| cli.json(args);
    aws.onboard(&cli, vendor_stack::ECR_REGISTRY, &[ONLINE, AIR]);
    // The build, as build-completed records it.
    let build_id = BuildId::new("b-air-1").unwrap();
    let build = Build::new(
        build_id.clone(),
        AppName::new("shop").unwrap(),
        ComponentName::new("web").unwrap(),
        "refs/tags/v1".into(),
        "test".into(),
        1,
    )
    .start(2, "cb-1".into())
    .unwrap()
    .succeed(
        3,
        Artifact {
            repository: Repository::new("shop/web").unwrap(),
            digest: Digest::new(image.as_str()).unwrap(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        },
    )
    .unwrap();
    store.create_build(&build).await.unwrap();

    // ---- a release to both installs in one step: the air-gapped one never reports.
    let created = json(&[
        "release",
        "create",
        "shop",
        "--build",
        build_id.as_str(),
        "--all",
        "--per-step",
        "2",
        "--json",
    ]);
    let r1 = created["id"].as_str().unwrap().to_owned();
    stack.settle().await;
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "running", "{show}");
    assert_eq!(
        states(&show),
        [(ONLINE, "succeeded"), (AIR, "syncing")].map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{show}"
    );

    // ---- the bundle: the vendor key from Secrets Manager, the image pulled with the ECR
    // token (the stand-in refuses anything else).
    let bundle = work.path().join("air.tar");
    let export = json(&[
        "bundle",
        "export",
        "--build",
        build_id.as_str(),
        "--install",
        AIR,
        "--out",
        bundle.to_str().unwrap(),
        "--registry",
        &ecr.addr,
        "--vendor-key-secret-arn",
        "ferry-vendor-key",
        "--json",
    ]);
    assert_eq!(export["artifacts"], 1, "{export}");
    assert_eq!(export["manifests"], 1, "{export}");
    assert_eq!(export["blobs_included"], blobs.len(), "{export}");
    let reader = ferry_oci::bundle::BundleReader::open(
        &bundle,
        &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE],
    )
    .await
    .unwrap();
    let manifest_bytes = reader
        .read_file(BUNDLE_MANIFEST_FILE, 1 << 24)
        .await
        .unwrap();
    let sig = reader.read_file(BUNDLE_SIGNATURE_FILE, 1024).await.unwrap();
    verify_bundle(
        &vendor_key.public_key_string(),
        &manifest_bytes,
        String::from_utf8_lossy(&sig).trim(),
    )
    .expect("signed with the stack's vendor key");
    let manifest = BundleManifest::parse(&manifest_bytes).unwrap();
    assert_eq!(manifest.artifacts[0].digest.as_str(), image);
    assert_eq!(manifest.install.as_ref().map(|i| i.as_str()), Some(AIR));

    // A secret holding another vendor's key is refused: agents would not trust its bundles.
    let (code, _, stderr) = run(&[
        "bundle",
        "export",
        "--build",
        build_id.as_str(),
        "--out",
        work.path().join("wrong.tar").to_str().unwrap(),
        "--registry",
        &ecr.addr,
        "--vendor-key-secret-arn",
        "not-our-vendor-key",
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("another vendor key"), "{stderr}");
    assert!(!work.path().join("wrong.tar").exists());

    // ---- the air-gapped agent's receipt comes back; the vendor imports it.
    let air = InstallId::new(AIR).unwrap();
    let mut receipt = BundleReceipt {
        schema: RECEIPT_SCHEMA,
        install_id: air.clone(),
        bundle_id: manifest.bundle_id.clone(),
        build_id: build_id.clone(),
        repository: Repository::new("shop/web").unwrap(),
        digest: Digest::new(image.as_str()).unwrap(),
        imported_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        bytes_copied: 2400,
        bytes_skipped: 0,
        duration_ms: 5,
        signature: String::new(),
    };
    sign_receipt(
        &ferry_core::testing::test_agent_key(&air).report_key(),
        &mut receipt,
    );
    let receipts = work.path().join("receipts.jsonl");
    std::fs::write(
        &receipts,
        format!("{}\n", serde_json::to_string(&receipt).unwrap()),
    )
    .unwrap();
    let recorded = json(&[
        "receipts",
        "import",
        receipts.to_str().unwrap(),
        "--vendor-key-secret-arn",
        "ferry-vendor-key",
        "--json",
    ]);
    assert_eq!(recorded[0]["outcome"], "recorded", "{recorded}");
    // The release's own sync was completed; the release hears of it on its queue.
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "running", "{show}");
    assert_eq!(stack.drain(&rel).await, 1, "one release.synced");
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "completed", "{show}");
    assert_eq!(
        states(&show),
        [(ONLINE, "succeeded"), (AIR, "succeeded")].map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{show}"
    );
    let status = json(&["install", "show", AIR, "--json"]);
    assert!(status.to_string().contains(&image), "{status}");

    // A replay changes nothing and tells no release.
    let again = json(&[
        "receipts",
        "import",
        receipts.to_str().unwrap(),
        "--vendor-key-secret-arn",
        "ferry-vendor-key",
        "--json",
    ]);
    assert_eq!(again[0]["outcome"], "replayed", "{again}");
    assert_eq!(stack.drain(&rel).await, 0);
    let syncs = store
        .syncs_by_build(&build_id, &ferry_core::ports::PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(
        syncs.items.len(),
        2,
        "one sync per install: {:?}",
        syncs.items
    );
}
