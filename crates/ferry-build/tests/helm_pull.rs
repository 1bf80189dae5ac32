//! Helm itself pulls what the builder pushed: Helm's registry code (v4, through the
//! `helm-python-sdk` PyPI package, which embeds it as a shared library; no Go, no helm binary)
//! runs `helm pull oci://…` against the embedded registry.
//!
//! Needs `pip install helm-python-sdk`; set FERRY_HELM_PYTHON to the interpreter that has it
//! (default `python3`). When it is not importable the test says so and checks nothing more.
#![allow(clippy::expect_used)]

mod common;

use common::{env, spec};

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
