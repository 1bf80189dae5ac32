//! The demo's `shop` chart with the two images it runs: the build bundles chart and images in
//! the chart's repository, the same with Helm's renderer (helm-python-sdk, when installed) and
//! with the conservative scan; a chart whose template writes an image literally is refused by
//! the scan, naming it, with no bundle pushed.
//!
//! The end-to-end check (sync into installs, the agent's values override, Helm rendering only
//! install-registry references) is `crates/ferry-dev/tests/chart_images.rs`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{env, spec};
use ferry_build::{ArtifactBuilder, BuildError, ChartRenderer};
use ferry_oci::chart_bundle::{self, BUNDLE_ARTIFACT_TYPE};
use ferry_oci::media::OCI_INDEX;

fn sidecar_digest() -> String {
    let files = common::sidecar_image_files();
    let index = &files.iter().find(|(p, _)| p == "index.json").unwrap().1;
    let v: serde_json::Value = serde_json::from_slice(index).unwrap();
    v["manifests"][0]["digest"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_shop_chart_is_bundled_with_its_two_images() {
    let env = env().await;
    let app = common::demo();
    let auto = env
        .builder
        .build(&spec(&app, "shop", "b-shop-1"))
        .await
        .unwrap();
    let mut config = env.builder.config().clone();
    config.chart_renderer = ChartRenderer::ScanOnly;
    let scan_only = ArtifactBuilder::new(config).unwrap();
    let scanned = scan_only
        .build(&spec(&app, "shop", "b-shop-2"))
        .await
        .unwrap();
    assert_eq!(auto.digest, scanned.digest, "renderer or scan, one bundle");
    assert_eq!(auto.media_type, OCI_INDEX);
    assert_eq!(auto.repository.as_str(), "vendor/demo/shop");

    let m = env.manifest("vendor/demo/shop", "b-shop-1").await;
    assert_eq!(m.digest, auto.digest);
    let b = chart_bundle::parse_bundle(&m).unwrap().expect("a bundle");
    let json: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(json["artifactType"], BUNDLE_ARTIFACT_TYPE);
    let images: Vec<(&str, String)> = b
        .images
        .iter()
        .map(|(n, d)| (n.as_str(), d.digest.to_string()))
        .collect();
    assert_eq!(
        images,
        [
            ("demo.example/base:v1", common::base_image_digest()),
            ("demo.example/sidecar:v1", sidecar_digest()),
        ]
    );
    // Everything the bundle lists is in the chart's repository; the version tag is the chart's.
    for (_, d) in &images {
        assert_eq!(env.manifest("vendor/demo/shop", d).await.digest.as_str(), d);
    }
    let chart = env.manifest("vendor/demo/shop", "0.1.0").await;
    assert_eq!(chart.digest, b.chart.digest);
    // The template: the component's values, and each image pointed at placeholders by digest.
    let filled = chart_bundle::fill_template(&b.template, "reg:1", "ns/demo/shop");
    assert_eq!(filled["replicas"], 2);
    assert_eq!(filled["app"]["image"]["repository"], "reg:1/ns/demo/shop");
    assert_eq!(
        filled["app"]["image"]["tag"],
        format!("v1@{}", common::base_image_digest())
    );
    assert_eq!(
        filled["sidecar"]["image"],
        format!("reg:1/ns/demo/shop@{}", sidecar_digest())
    );
}

#[tokio::test]
async fn the_scan_refuses_a_literal_image_and_pushes_no_bundle() {
    let root = tempfile::tempdir().unwrap();
    let chart = root.path().join("c");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: c\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "image: demo.example/base:v1\n").unwrap();
    std::fs::write(
        chart.join("templates/pod.yaml"),
        "spec:\n  containers:\n    - image: {{ .Values.image }}\n    - image: quay.io/evil/miner:1\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("base-image")).unwrap();
    for (rel, bytes) in common::base_image_files() {
        let p = root.path().join("base-image").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let env = common::env_with_root(root.path().to_path_buf()).await;
    let mut config = env.builder.config().clone();
    config.chart_renderer = ChartRenderer::ScanOnly;
    let builder = ArtifactBuilder::new(config).unwrap();
    let app = common::demo();
    let mut s = spec(&app, "shop", "b-literal");
    let images = vec![ferry_core::domain::ChartImage::Mirrored {
        name: "demo.example/base:v1".into(),
        source: "oci:base-image:v1".into(),
    }];
    s.component.kind = ferry_core::domain::ComponentKind::HelmChart {
        chart: ferry_core::domain::ChartSource::Dir { path: "c".into() },
        images,
        discover_images: true,
        values: None,
        source: None,
    };
    let e = builder.build(&s).await.unwrap_err();
    assert!(matches!(e, BuildError::ChartImages { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("quay.io/evil/miner:1") && msg.contains("templates/pod.yaml line 4"),
        "{msg}"
    );
    // The build id tag is the chart's (pushed first), never a bundle.
    let m = env.manifest_json("vendor/demo/shop", "b-literal").await;
    assert_ne!(m["artifactType"], BUNDLE_ARTIFACT_TYPE, "{m}");
}
