//! A chart with the images it runs, end to end on the dev system: the build finds the two
//! images the chart's templates use, copies them with the chart as one bundle, the agents sync
//! that bundle into every install, and each install ends up holding the chart, both images and
//! a values override. Helm itself (helm-python-sdk) then renders the install's chart with the
//! install's override, and every image comes out as an install-registry reference by digest,
//! which the install's nodes can pull. A second chart whose template runs an unlisted image
//! fails its build with a message naming that image.
//!
//! The two images are tiny OCI layouts written by this test: nothing comes from the internet.
//! Rendering needs `pip install helm-python-sdk` (FERRY_HELM_PYTHON names the interpreter,
//! default `python3`); without it the render check says so and is skipped, the rest runs.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::state::JobStatus;
use ferry_dev::{DevOptions, DevSystem};
use ferry_oci::chart_bundle;
use ferry_oci::media::{Descriptor, Manifest, HELM_CHART_LAYER, OCI_MANIFEST};
use ferry_oci::{ClientConfig, Credential, CredentialStore, Digest, OciLayout, RegistryClient};
use ferry_oci::{RepoRef, Secret};
use futures::StreamExt;

const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    }
}

/// A one-layer image (its layer is `content`) in a new OCI layout at `dir`, tagged `tag`.
async fn image_layout(dir: &Path, tag: &str, content: &[u8]) {
    let layout = OciLayout::create(dir).await.unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(content).to_string()]},
    }))
    .unwrap();
    for blob in [content.to_vec(), config.clone()] {
        let d = Digest::of(&blob);
        let n = blob.len() as u64;
        let body: ferry_oci::ByteStream = Box::pin(futures::stream::iter([Ok(Bytes::from(blob))]));
        layout.write_blob(&d, n, body).await.unwrap();
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(CONFIG, &config), "layers": [desc(LAYER, content)],
    }))
    .unwrap();
    let m = Manifest::from_bytes(Bytes::from(manifest), OCI_MANIFEST).unwrap();
    layout.write_manifest(&m).await.unwrap();
    layout.tag(Some(tag), &m.descriptor()).await.unwrap();
}

const GOOD_VALUES: &str = "\
web:
  image:
    repository: demo.example/web
    tag: v1
sidecar:
  image: demo.example/sidecar:v2
replicas: 1
";

const GOOD_TEMPLATE: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: web
          image: "{{ .Values.web.image.repository }}:{{ .Values.web.image.tag | default .Chart.AppVersion }}"
        - name: sidecar
          image: {{ .Values.sidecar.image | quote }}
"#;

const BAD_TEMPLATE: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}
spec:
  containers:
    - name: web
      image: {{ .Values.image | quote }}
    - name: debug
      image: "busybox:1.36"
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The app: `chart` (two images, found and listed) and `bad` (a template runs an unlisted one).
async fn app(root: &Path) {
    image_layout(&root.join("images/web"), "v1", b"web layer").await;
    image_layout(&root.join("images/sidecar"), "v2", b"sidecar layer").await;
    write(
        &root.join("chart/Chart.yaml"),
        "apiVersion: v2\nname: shop\nversion: 0.1.0\nappVersion: \"1.0\"\n",
    );
    write(&root.join("chart/values.yaml"), GOOD_VALUES);
    write(&root.join("chart/templates/deploy.yaml"), GOOD_TEMPLATE);
    write(
        &root.join("bad/Chart.yaml"),
        "apiVersion: v2\nname: bad\nversion: 0.1.0\n",
    );
    write(
        &root.join("bad/values.yaml"),
        "image: demo.example/web:v1\n",
    );
    write(&root.join("bad/templates/pod.yaml"), BAD_TEMPLATE);
    let web = serde_json::json!({"name": "demo.example/web:v1", "source": "oci:images/web:v1"});
    let app = serde_json::json!({"app": "shop", "components": [
        {"name": "chart", "kind": "helm-chart", "chart": {"from": "dir", "path": "chart"},
         "repository": "shop/chart", "discover_images": true, "values": {"replicas": 2},
         "images": [web, {"name": "demo.example/sidecar:v2", "source": "oci:images/sidecar:v2"}]},
        {"name": "bad", "kind": "helm-chart", "chart": {"from": "dir", "path": "bad"},
         "repository": "shop/bad", "discover_images": true, "images": [web]},
    ]});
    write(&root.join("ferry.json"), &app.to_string());
}

fn python() -> String {
    std::env::var("FERRY_HELM_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn helm_sdk_available() -> bool {
    std::process::Command::new(python())
        .args(["-c", "import helm_python.chart"])
        .output()
        .is_ok_and(|o| o.status.success())
}

const RENDER: &str = r#"
import json, sys
from helm_python import chart
with open(sys.argv[2]) as f:
    values = json.load(f)
print(json.dumps(chart.Chart.load(sys.argv[1]).render(values, name="shop")))
"#;

async fn read_blob(client: &RegistryClient, repo: &RepoRef, d: &Descriptor) -> Vec<u8> {
    let mut s = client
        .get_blob(repo, &d.digest, Some(d.size))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chart_and_its_images_sync_as_one_unit_with_a_values_override() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("app");
    app(&root).await;
    let system = DevSystem::start(DevOptions {
        state_dir: dir.path().join("state"),
        app_dir: root,
        installs: 2,
        registry_addr: "127.0.0.1:0".parse().unwrap(),
        manual_releases: false,
    })
    .await
    .unwrap();
    let requested = system.request_builds("test").await.unwrap();
    let snap = system
        .wait_until_done(&requested, Duration::from_secs(120))
        .await
        .unwrap();

    // The chart whose template runs an unlisted image fails, naming it.
    let bad = snap
        .builds
        .iter()
        .find(|b| b.component.as_str() == "bad")
        .unwrap();
    assert_eq!(bad.status(), JobStatus::Failed);
    let why = format!("{:?}", bad.state.error);
    assert!(why.contains("busybox:1.36"), "{why}");
    assert!(snap.syncs_of(&bad.id).is_empty(), "nothing of it is synced");

    let good = snap
        .builds
        .iter()
        .find(|b| b.component.as_str() == "chart")
        .unwrap();
    assert_eq!(
        good.status(),
        JobStatus::Succeeded,
        "{:?}",
        good.state.error
    );
    let bundle = good.artifact.clone().unwrap();
    let syncs = snap.syncs_of(&good.id);
    assert_eq!(syncs.len(), 2, "one sync of the whole bundle per install");
    assert!(syncs.iter().all(|s| s.status() == JobStatus::Succeeded));

    let registry = system.registry_host().to_string();
    let render = helm_sdk_available();
    if !render {
        assert!(
            std::env::var_os("FERRY_HELM_PYTHON").is_none(),
            "FERRY_HELM_PYTHON is set but cannot import helm_python"
        );
        eprintln!("helm-python-sdk not installed: the render check is skipped");
    }
    for install in ["dev-1", "dev-2"] {
        // Read as the install's nodes do, with their pull-only identity.
        let secret = std::fs::read_to_string(
            system
                .state()
                .node_secret_path(&ferry_core::id::InstallId::new(install).unwrap()),
        )
        .unwrap();
        let mut creds = CredentialStore::new();
        creds.insert(
            &registry,
            None,
            Credential::Basic {
                username: format!("node:{install}"),
                password: Secret::new(secret.trim()),
            },
        );
        let client = RegistryClient::new(ClientConfig {
            credentials: creds,
            ..ClientConfig::default()
        })
        .unwrap();
        let repo = RepoRef::new(registry.clone(), format!("installs/{install}/shop/chart"));

        // The bundle, the chart and both images are in the install.
        let b = client
            .get_manifest(&repo, bundle.digest.as_str())
            .await
            .unwrap();
        let parsed = chart_bundle::parse_bundle(&b).unwrap().expect("a bundle");
        assert_eq!(parsed.images.len(), 2);
        for (_, d) in parsed
            .images
            .iter()
            .chain([(String::new(), parsed.chart.clone())].iter())
        {
            let held = client
                .head_manifest(&repo, d.digest.as_str())
                .await
                .unwrap();
            assert_eq!(held.map(|h| h.digest), Some(d.digest.clone()), "{install}");
        }
        // The override, next to the bundle, refers to the chart.
        let values_m = client
            .get_manifest(&repo, &chart_bundle::values_tag(&bundle.digest))
            .await
            .unwrap();
        let refs = values_m.references().unwrap();
        assert_eq!(
            refs.subject.map(|s| s.digest),
            Some(parsed.chart.digest.clone())
        );
        let values = read_blob(&client, &repo, &refs.layers[0]).await;
        let values: serde_json::Value = serde_json::from_slice(&values).unwrap();
        assert_eq!(values["replicas"], 2, "the component's values travel too");
        let chart_m = client
            .get_manifest(&repo, &chart_bundle::chart_tag(&bundle.digest))
            .await
            .unwrap();
        assert_eq!(chart_m.digest, parsed.chart.digest);
        if !render {
            continue;
        }
        // Helm renders the install's chart with the install's override.
        let layer = chart_m
            .references()
            .unwrap()
            .layers
            .into_iter()
            .find(|l| l.media_type == HELM_CHART_LAYER)
            .unwrap();
        let tgz = dir.path().join(format!("{install}.tgz"));
        std::fs::write(&tgz, read_blob(&client, &repo, &layer).await).unwrap();
        let vfile = dir.path().join(format!("{install}-values.json"));
        std::fs::write(&vfile, values.to_string()).unwrap();
        let out = std::process::Command::new(python())
            .args(["-c", RENDER])
            .arg(&tgz)
            .arg(&vfile)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
        let text = rendered.values().cloned().collect::<Vec<_>>().join("\n");
        assert!(text.contains("replicas: 2"), "{text}");
        let images: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("image:"))
            .map(|v| v.trim().trim_matches('"').to_string())
            .collect();
        assert_eq!(images.len(), 2, "{text}");
        let prefix = format!("{registry}/installs/{install}/shop/chart");
        let mut digests = Vec::new();
        for image in &images {
            assert!(
                image.starts_with(&prefix),
                "{image} is not in the install registry"
            );
            let (_, d) = image.rsplit_once('@').expect("by digest");
            // The node can pull exactly that.
            let held = client.head_manifest(&repo, d).await.unwrap();
            assert_eq!(held.map(|h| h.digest.to_string()), Some(d.to_string()));
            digests.push(d.to_string());
        }
        let mut want: Vec<String> = parsed
            .images
            .iter()
            .map(|(_, d)| d.digest.to_string())
            .collect();
        want.sort();
        digests.sort();
        assert_eq!(digests, want, "both images, each by its digest");
    }
    system.shutdown().await;
}
