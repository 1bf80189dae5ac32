//! Shared test harness: an embedded ferry-registry with a `vendor` namespace on 127.0.0.1:0,
//! a builder pushing into it, the demo app, and the deterministic generator of the demo's
//! checked-in base image.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use ferry_build::{AppFile, ArtifactBuilder, BuildConfig};
use ferry_core::id::BuildId;
use ferry_core::ports::BuildSpec;
use ferry_oci::media::Manifest;
use ferry_oci::{ClientConfig, Digest as OciDigest, RegistryClient, RepoRef};
use ferry_registry::server::{RegistryServer, RunningRegistry};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

pub const PREFIX: &str = "vendor";

pub fn demo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

pub fn demo() -> AppFile {
    AppFile::load(&demo_root().join("ferry.json")).expect("examples/demo/ferry.json loads")
}

pub struct Env {
    pub registry: RunningRegistry,
    pub builder: ArtifactBuilder,
    pub client: RegistryClient,
    pub dir: tempfile::TempDir,
}

pub async fn env() -> Env {
    env_with_root(demo_root()).await
}

pub async fn env_with_root(app_root: PathBuf) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryServer::builder(dir.path().join("registry"))
        .namespace(PREFIX)
        .build()
        .unwrap()
        .spawn()
        .await
        .unwrap();
    let mut config = BuildConfig::new(registry.host(), app_root).with_prefix(PREFIX);
    config.work_dir = Some(dir.path().join("work"));
    let builder = ArtifactBuilder::new(config).unwrap();
    let client = RegistryClient::new(ClientConfig::default()).unwrap();
    Env {
        registry,
        builder,
        client,
        dir,
    }
}

impl Env {
    pub fn repo(&self, repository: &str) -> RepoRef {
        RepoRef::new(self.registry.host(), repository)
    }

    pub async fn manifest(&self, repository: &str, reference: &str) -> Manifest {
        self.client
            .get_manifest(&self.repo(repository), reference)
            .await
            .unwrap()
    }

    pub async fn manifest_json(&self, repository: &str, reference: &str) -> serde_json::Value {
        let m = self.manifest(repository, reference).await;
        serde_json::from_slice(&m.bytes).unwrap()
    }

    /// A whole blob, for small test blobs only.
    pub async fn blob(&self, repository: &str, digest: &str) -> Vec<u8> {
        let d: OciDigest = digest.parse().unwrap();
        let mut s = self
            .client
            .get_blob(&self.repo(repository), &d, None)
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }
}

pub fn spec(app: &AppFile, component: &str, build_id: &str) -> BuildSpec {
    BuildSpec {
        build_id: BuildId::new(build_id).unwrap(),
        component: app.component(component).expect("demo component").clone(),
        source_ref: "main".into(),
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `skopeo inspect --raw` of a reference in the test registry.
pub async fn skopeo_raw(reference: &str) -> Vec<u8> {
    let out = tokio::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .await
        .expect("skopeo is installed (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---- the demo base image ---------------------------------------------------------------------

const LAYER_FILE: &[u8] = b"hello from the ferry demo base image\n";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

/// Every file of `examples/demo/base-image` (path relative to it, contents): an OCI layout
/// whose tag `v1` is an index of two platforms sharing one tiny layer. Byte-for-byte stable.
pub fn base_image_files() -> Vec<(String, Vec<u8>)> {
    image_layout_files("hello.txt", LAYER_FILE)
}

/// Every file of `examples/demo/sidecar-image`: the second image the demo's `shop` chart runs,
/// built like the base image (tag `v1`, two platforms) from another file.
pub fn sidecar_image_files() -> Vec<(String, Vec<u8>)> {
    image_layout_files("sidecar.txt", b"hello from the ferry demo sidecar image\n")
}

/// An OCI layout whose tag `v1` is an index of two platforms sharing one layer holding `file`.
fn image_layout_files(file: &str, content: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar_bytes = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut tar_bytes);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, file, content).unwrap();
        tar.finish().unwrap();
    }
    let mut gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar_bytes).unwrap();
    let layer = gz.finish().unwrap();

    let mut blobs: Vec<Vec<u8>> = vec![layer.clone()];
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar_bytes)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(CONFIG, &config),
            "layers": [desc(LAYER, &layer)],
        }))
        .unwrap();
        let mut d = desc(MANIFEST, &manifest);
        d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        manifests.push(d);
        blobs.push(config);
        blobs.push(manifest);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    let mut top = desc(INDEX, &index);
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    blobs.push(index);
    let layout_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [top],
    }))
    .unwrap();

    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), layout_index),
    ];
    for b in blobs {
        let hex = sha256(&b)[7..].to_string();
        files.push((format!("blobs/sha256/{hex}"), b));
    }
    files.sort();
    files
}

/// The digest of the demo base image's index (tag `v1`).
pub fn base_image_digest() -> String {
    let files = base_image_files();
    let index = &files.iter().find(|(p, _)| p == "index.json").unwrap().1;
    let v: serde_json::Value = serde_json::from_slice(index).unwrap();
    v["manifests"][0]["digest"].as_str().unwrap().to_string()
}

pub fn bytes(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}
