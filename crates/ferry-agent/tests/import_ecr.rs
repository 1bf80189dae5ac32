//! `ferry-agent import --ecr`: an air-gapped install whose registry is its ECR. The binary
//! logs in with ECR GetAuthorizationToken (moto) using the ambient credentials, creates the
//! repository (moto's ECR) before its first push, writes the bundle's image into the registry
//! endpoint (a docker-registry standing in for ECR's, accepting only moto's ECR login), and
//! writes a receipt signed with the agent's report key. A bundle signed by another vendor is
//! refused with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::path::Path;

use ferry_core::bundle::{
    sign_bundle, verify_receipt, BundleArtifact, BundleBlob, BundleManifest, BundleReceipt,
    BUNDLE_MANIFEST_FILE, BUNDLE_SCHEMA, BUNDLE_SIGNATURE_FILE,
};
use ferry_core::id::{AppName, BuildId, ComponentName, InstallId, Repository};
use ferry_core::seal::AgentKeypair;
use ferry_core::trust::VendorKey;
use ferry_oci::bundle::BundleWriter;
use ferry_oci::layout::REF_NAME;
use ferry_oci::{ByteStream, Digest, Manifest};

const INSTALL: &str = "acme";

fn stream(bytes: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::once(async move {
        Ok(bytes::Bytes::from(bytes))
    }))
}

/// A signed one-image bundle for install `acme`: vendor/shop/web, one config, one layer.
async fn write_bundle(path: &Path, key: &VendorKey) -> Digest {
    let layer = b"an air-gapped layer\n".repeat(64);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let (layer_d, config_d) = (Digest::of(&layer), Digest::of(&config));
    let manifest_bytes = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_d.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_d.as_str(), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let manifest = Manifest::from_bytes(
        manifest_bytes.clone().into(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .unwrap();
    let blobs = vec![
        BundleBlob {
            digest: manifest.digest.clone(),
            size: manifest_bytes.len() as u64,
        },
        BundleBlob {
            digest: config_d.clone(),
            size: config.len() as u64,
        },
        BundleBlob {
            digest: layer_d.clone(),
            size: layer.len() as u64,
        },
    ];
    let signed = BundleManifest {
        schema: BUNDLE_SCHEMA,
        bundle_id: "bdl-ecr-1".into(),
        created_at: 1,
        install: Some(InstallId::new(INSTALL).unwrap()),
        since: None,
        artifacts: vec![BundleArtifact {
            build_id: BuildId::new("b-ecr-1").unwrap(),
            app: AppName::new("shop").unwrap(),
            component: ComponentName::new("web").unwrap(),
            repository: Repository::new("vendor/shop/web").unwrap(),
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            size: manifest_bytes.len() as u64,
            referrers: vec![],
            requires: blobs.clone(),
        }],
        blobs,
    };
    let bytes = signed.to_bytes().unwrap();
    let mut w = BundleWriter::create(path).await.unwrap();
    w.add_file(BUNDLE_MANIFEST_FILE, &bytes).await.unwrap();
    w.add_file(BUNDLE_SIGNATURE_FILE, sign_bundle(key, &bytes).as_bytes())
        .await
        .unwrap();
    w.add_manifest(&manifest).await.unwrap();
    w.add_blob(&config_d, config.len() as u64, stream(config))
        .await
        .unwrap();
    w.add_blob(&layer_d, layer.len() as u64, stream(layer))
        .await
        .unwrap();
    let mut root = manifest.descriptor();
    root.annotations = BTreeMap::from([(REF_NAME.to_string(), "b-ecr-1".to_string())]);
    w.finish(&[root]).await.unwrap();
    manifest.digest
}

fn import(endpoint: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .arg("import")
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", ferry_testkit::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The manifest bytes under `reference` in the stand-in, read with moto's ECR login.
fn get_manifest(addr: &str, repo: &str, reference: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--noproxy", "*"])
        .args([
            "-u",
            &format!(
                "{}:{}",
                ferry_testkit::ECR_USER,
                ferry_testkit::ECR_PASSWORD
            ),
        ])
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_into_the_install_ecr_with_the_agent_roles_login() {
    let moto = ferry_testkit::Moto::start_within(std::time::Duration::from_secs(15)).await;
    let endpoint = moto.endpoint();
    let ecr = ferry_testkit::EcrStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vendor = VendorKey::generate().unwrap();
    let bundle = dir.path().join("acme.tar");
    let digest = write_bundle(&bundle, &vendor).await;
    let agent = AgentKeypair::generate().unwrap();
    let key_file = dir.path().join("agent.key");
    std::fs::write(&key_file, agent.to_secret_string().as_str()).unwrap();
    let receipts = dir.path().join("receipts.jsonl");
    let work = dir.path().join("work");
    let repo = format!("installs/{INSTALL}/shop/web");
    let tag = digest.as_str().replacen(':', "-", 1);
    let args = |bundle: &Path, vendor_key: &str| {
        vec![
            bundle.to_str().unwrap().to_owned(),
            "--ecr".into(),
            "--receipts".into(),
            receipts.to_str().unwrap().to_owned(),
            "--install".into(),
            INSTALL.into(),
            "--install-registry".into(),
            ecr.addr.clone(),
            "--key-file".into(),
            key_file.to_str().unwrap().to_owned(),
            "--vendor-public-key".into(),
            vendor_key.to_owned(),
            "--vendor-prefix".into(),
            "vendor".into(),
            "--work-dir".into(),
            work.to_str().unwrap().to_owned(),
        ]
    };

    // Signed by another vendor: refused, nothing created or written.
    let other = VendorKey::generate().unwrap().public_key_string();
    let a = args(&bundle, &other);
    let out = import(&endpoint, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing was tagged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(get_manifest(&ecr.addr, &repo, &tag).is_none());
    assert!(!receipts.exists());

    // The real one.
    let a = args(&bundle, &vendor.public_key_string());
    let out = import(&endpoint, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The repository was created in the install's ECR (moto) before the push.
    let repos = ferry_testkit::aws_json(
        &endpoint,
        "ecr",
        "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories",
        serde_json::json!({}),
    )
    .await;
    assert!(
        repos["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["repositoryName"] == repo.as_str()),
        "{repos}"
    );
    // Tagged as a sync tags it, byte-identical by digest.
    let pulled = get_manifest(&ecr.addr, &repo, &tag).expect("tagged in the install registry");
    assert_eq!(Digest::of(&pulled), digest);
    // One receipt, signed with the agent's report key.
    let text = std::fs::read_to_string(&receipts).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let receipt: BundleReceipt = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(receipt.digest, digest);
    assert_eq!(receipt.install_id.as_str(), INSTALL);
    verify_receipt(&agent.report_key().public_key_string(), &receipt).unwrap();
}
