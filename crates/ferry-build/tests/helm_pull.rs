//! Helm itself pulls what the builder pushed: Helm's registry code (v4, through the
//! `helm-python-sdk` PyPI package, which embeds it as a shared library; no Go, no helm binary)
//! runs `helm pull oci://…` against the embedded registry.
//!
//! Needs `pip install helm-python-sdk`; set FERRY_HELM_PYTHON to the interpreter that has it
//! (default `python3`). When it is not importable the test says so and checks nothing more.
//!
//! Charts from a chart repository: Helm itself packages and indexes a classic repository
//! (`helm package`, `helm repo index`), served over loopback HTTP; the builder takes the chart
//! from it (checked against the index) and from an `oci://` reference.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{env, spec};
use ferry_core::domain::{ChartSource, ComponentKind};
use ferry_core::id::{BuildId, Repository};
use ferry_core::ports::BuildSpec;
use ferry_oci::media::HELM_CONFIG;

const PULL: &str = r#"
import json, sys
from helm_python import registry
out = registry.pull(sys.argv[1], version=sys.argv[2] or None, destination=sys.argv[3],
                    untar=True, untar_dir=sys.argv[3], plain_http=True)
print(json.dumps(out))
"#;

fn python() -> String {
    std::env::var("FERRY_HELM_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn helm_sdk_available() -> bool {
    std::process::Command::new(python())
        .args(["-c", "import helm_python.registry"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn helm_pulls_the_pushed_chart() {
    if !helm_sdk_available() {
        assert!(
            std::env::var_os("FERRY_HELM_PYTHON").is_none(),
            "FERRY_HELM_PYTHON is set but cannot import helm_python"
        );
        eprintln!("helm-python-sdk not installed: skipping the helm pull interop test");
        return;
    }
    let env = env().await;
    let app = common::demo();
    let a = env
        .builder
        .build(&spec(&app, "chart", "b-helm-1"))
        .await
        .unwrap();
    let base = format!("oci://{}/vendor/demo/chart", env.registry.host());
    // By the chart version tag (helm pull --version), and by the digest a sync carries.
    for (reference, version) in [
        (base.clone(), "0.1.0"),
        (format!("{base}@{}", a.digest), ""),
    ] {
        let dest = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new(python())
            .args(["-c", PULL, &reference, version])
            .arg(dest.path())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "helm pull {reference} --version {version:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let chart = std::fs::read_to_string(dest.path().join("demo-chart/Chart.yaml")).unwrap();
        assert!(chart.contains("name: demo-chart"), "{chart}");
        assert!(dest
            .path()
            .join("demo-chart/templates/configmap.yaml")
            .is_file());
    }
}

// ---- charts from a chart repository ------------------------------------------------------------

/// `helm package` + `helm repo index` (Helm's own code) into `out`; returns the archive path.
const MAKE_REPO: &str = r#"
import sys
from helm_python import chart, registry
print(chart.package(sys.argv[1], destination=sys.argv[2]))
registry.repo_index_generate(sys.argv[2])
"#;

/// A classic chart repository made by Helm from the demo chart, served over loopback HTTP.
struct ChartRepo {
    dir: tempfile::TempDir,
    archive: std::path::PathBuf,
    served: ferry_testkit::Served,
}

async fn chart_repo() -> ChartRepo {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(python())
        .args(["-c", MAKE_REPO])
        .arg(common::demo_root().join("chart"))
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "helm package / repo index: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let root = dir.path().to_path_buf();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let path = root.join(uri.path().trim_start_matches('/'));
        async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => (axum::http::StatusCode::OK, bytes),
                Err(_) => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
            }
        }
    });
    let served = ferry_testkit::Served::start(app).await;
    ChartRepo {
        dir,
        archive,
        served,
    }
}

fn repo_component(url: &str, chart: &str, version: Option<&str>, repository: &str) -> BuildSpec {
    let app = common::demo();
    let mut component = app.component("chart").unwrap().clone();
    component.kind = ComponentKind::helm_chart(ChartSource::Repo {
        url: url.into(),
        chart: chart.into(),
        version: version.map(str::to_string),
    });
    component.repository = Repository::new(repository).unwrap();
    BuildSpec {
        build_id: BuildId::new("b-chart-repo-1").unwrap(),
        component,
        source_ref: "main".into(),
    }
}

#[tokio::test]
async fn chart_from_an_http_repository_keeps_the_archive_its_provenance_and_helm_pulls_it() {
    if !helm_sdk_available() {
        eprintln!("helm-python-sdk not installed: skipping the chart repository test");
        return;
    }
    let env = env().await;
    let repo = chart_repo().await;
    let archive = std::fs::read(&repo.archive).unwrap();
    std::fs::write(
        repo.archive.with_extension("tgz.prov"),
        b"-----BEGIN PGP SIGNED MESSAGE-----\nprovenance\n",
    )
    .unwrap();

    let url = repo.served.endpoint();
    let pinned = env
        .builder
        .build(&repo_component(
            &url,
            "demo-chart",
            Some("0.1.0"),
            "demo/chart-repo",
        ))
        .await
        .unwrap();
    let m = env
        .manifest_json("vendor/demo/chart-repo", pinned.digest.as_str())
        .await;
    assert_eq!(m["config"]["mediaType"], HELM_CONFIG);
    // The layer is the repository's archive byte for byte, and the .prov travels with it.
    assert_eq!(m["layers"][0]["digest"], common::sha256(&archive));
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.cncf.helm.chart.provenance.v1.prov"
    );
    let prov = env
        .blob(
            "vendor/demo/chart-repo",
            m["layers"][1]["digest"].as_str().unwrap(),
        )
        .await;
    assert!(prov.starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----"));

    // Unpinned and by requirement: the same (only) stable version, the same artifact.
    for version in [None, Some("^0.1")] {
        let again = env
            .builder
            .build(&repo_component(
                &url,
                "demo-chart",
                version,
                "demo/chart-repo",
            ))
            .await
            .unwrap();
        assert_eq!(again.digest, pinned.digest, "version {version:?}");
    }

    // Helm pulls the copy from the vendor registry and gets the repository's archive back.
    let dest = tempfile::tempdir().unwrap();
    let reference = format!("oci://{}/vendor/demo/chart-repo", env.registry.host());
    let out = tokio::process::Command::new(python())
        .args(["-c", PULL, &reference, "0.1.0"])
        .arg(dest.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.path().join("demo-chart/Chart.yaml").is_file());

    // An oci:// chart reference: checked to be a chart, then copied byte for byte.
    let oci = format!("oci://{}/vendor/demo", env.registry.host());
    let copied = env
        .builder
        .build(&repo_component(
            &oci,
            "chart-repo",
            Some("0.1.0"),
            "demo/chart-oci",
        ))
        .await
        .unwrap();
    assert_eq!(copied.digest, pinned.digest);
    let a = env
        .builder
        .build(&spec(&common::demo(), "base", "b-base-1"))
        .await
        .unwrap();
    assert!(a.tags.contains(&"b-base-1".to_string()));
    let err = env
        .builder
        .build(&repo_component(
            &oci,
            "base",
            Some("b-base-1"),
            "demo/chart-oci",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a Helm chart"), "{err}");
    drop(repo.dir);
}

#[tokio::test]
async fn a_changed_archive_or_a_missing_version_is_refused_and_nothing_is_pushed() {
    if !helm_sdk_available() {
        eprintln!("helm-python-sdk not installed: skipping the chart repository refusals test");
        return;
    }
    let env = env().await;
    let repo = chart_repo().await;
    let url = repo.served.endpoint();

    let err = env
        .builder
        .build(&repo_component(
            &url,
            "demo-chart",
            Some("9.9.9"),
            "demo/refused",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("available: 0.1.0"), "{err}");
    let err = env
        .builder
        .build(&repo_component(&url, "no-such-chart", None, "demo/refused"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no chart named \"no-such-chart\""), "{err}");

    // The archive changes after the index was written: the digest check refuses it.
    let mut bytes = std::fs::read(&repo.archive).unwrap();
    bytes.push(0);
    std::fs::write(&repo.archive, bytes).unwrap();
    let err = env
        .builder
        .build(&repo_component(
            &url,
            "demo-chart",
            Some("0.1.0"),
            "demo/refused",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("but the index lists sha256:"), "{err}");
    let tags = env
        .client
        .list_tags(&env.repo("vendor/demo/refused"))
        .await
        .map(|t| t.len())
        .unwrap_or(0);
    assert_eq!(tags, 0, "nothing may be pushed for a refused chart");
}
