//! Shared test harness: an in-process registry on 127.0.0.1:0, a reqwest client, push helpers,
//! hand-made OCI layouts and a real `docker-registry` child process.
//!
//! It must never reach beyond loopback, and every server or child it starts stops with the
//! test (Drop).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_registry::server::{RegistryServer, RunningRegistry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub struct Registry {
    pub dir: tempfile::TempDir,
    pub running: Option<RunningRegistry>,
    pub client: reqwest::Client,
}

impl Registry {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = RegistryServer::builder(dir.path())
            .build()
            .expect("build")
            .spawn()
            .await
            .expect("spawn");
        Registry {
            dir,
            running: Some(running),
            client: reqwest::Client::new(),
        }
    }

    pub async fn start_with(
        f: impl FnOnce(
            ferry_registry::server::RegistryServerBuilder,
        ) -> ferry_registry::server::RegistryServerBuilder,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = f(RegistryServer::builder(dir.path()))
            .build()
            .expect("build")
            .spawn()
            .await
            .expect("spawn");
        Registry {
            dir,
            running: Some(running),
            client: reqwest::Client::new(),
        }
    }

    /// Stops the server and starts a new one on the same root.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.running = Some(
            RegistryServer::builder(self.dir.path())
                .build()
                .expect("build")
                .spawn()
                .await
                .expect("spawn"),
        );
        self.client = reqwest::Client::new();
    }

    pub fn running(&self) -> &RunningRegistry {
        self.running.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.running().url(), path)
    }

    pub fn host(&self) -> String {
        self.running().host()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Monolithic upload; asserts 201.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let resp = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(
            resp.status(),
            201,
            "push blob: {}",
            resp.text().await.unwrap_or_default()
        );
        d
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("send")
    }

    /// Pushes a config and one layer, then an image manifest under `tag`; returns
    /// (manifest digest, manifest bytes, layer digest).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layer: &[u8],
    ) -> (String, Vec<u8>, String) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = self.push_blob(repo, config).await;
        let layer_digest = self.push_blob(repo, layer).await;
        let manifest = image_manifest(&config_digest, config.len(), &layer_digest, layer.len());
        let resp = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(
            resp.status(),
            201,
            "push manifest: {}",
            resp.text().await.unwrap_or_default()
        );
        (digest(&manifest), manifest, layer_digest)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("send")
    }

    /// The body of a GET of `path`.
    pub async fn get_bytes(&self, path: &str) -> bytes::Bytes {
        self.get(path).await.bytes().await.unwrap()
    }

    /// Opens an upload session in `repo` (POST); returns its `location`.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        resp.headers()["location"].to_str().unwrap().to_string()
    }

    /// PATCHes `body` to the upload session at `location`, which must answer 202.
    pub async fn patch_chunk(&self, location: &str, body: Vec<u8>) {
        let resp = self
            .client
            .patch(self.url(location))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.client.head(self.url(path)).send().await.expect("send")
    }

    /// Asserts the server still answers the version check.
    pub async fn assert_alive(&self) {
        let resp = self.get("/v2/").await;
        assert_eq!(resp.status(), 200);
    }
}

pub fn image_manifest(config: &str, config_size: usize, layer: &str, layer_size: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": layer_size}],
    }))
    .expect("json")
}

/// Asserts an OCI error body with `code`, returns the message.
pub async fn assert_oci_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: Value = resp.json().await.expect("error body is JSON");
    let error = &body["errors"][0];
    assert_eq!(error["code"], code, "error body: {body}");
    let message = error["message"].as_str().expect("message").to_string();
    assert!(!message.is_empty());
    message
}

/// A hand-made OCI image layout with one image tagged `tag`.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub blobs: Vec<(String, Vec<u8>)>,
}

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let d = digest(data);
    let path = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::write(path, data).expect("write blob");
    d
}

pub fn make_layout(tag: &str, layer: &[u8]) -> Layout {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
    std::fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let config_digest = write_blob(dir.path(), &config);
    let layer_digest = write_blob(dir.path(), layer);
    let manifest = image_manifest(&config_digest, config.len(), &layer_digest, layer.len());
    let manifest_digest = write_blob(dir.path(), &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("write");
    Layout {
        dir,
        manifest,
        manifest_digest,
        blobs: vec![(config_digest, config), (layer_digest, layer.to_vec())],
    }
}

/// Deterministic pseudo-random bytes (no RNG state shared between tests).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs skopeo with a timeout; returns (success, stdout, stderr).
pub async fn skopeo(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("skopeo")
            .args(["--insecure-policy"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("skopeo timed out")
    .expect("skopeo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real CNCF distribution registry child process, killed on drop.
pub struct DockerRegistry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        let config_path: PathBuf = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = DockerRegistry {
            child,
            port,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = client
                .get(format!("http://127.0.0.1:{port}/v2/"))
                .send()
                .await
            {
                if resp.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
