//! The docker-build kind with the real buildah (vfs storage, chroot isolation, FROM scratch, so
//! it works offline). Without buildah the build must fail with ToolMissing naming the package.
#![allow(clippy::expect_used)]

mod common;

use common::{env, sha256, skopeo_raw, spec};
use ferry_build::BuildError;

fn buildah_installed() -> bool {
    std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn dockerfile_builds_with_buildah_and_is_pushed() {
    let env = env().await;
    let app = common::demo();
    let result = env.builder.build(&spec(&app, "web", "b-web-1")).await;
    if !buildah_installed() {
        let e = result.unwrap_err();
        assert!(
            matches!(
                e,
                BuildError::ToolMissing {
                    tool: "buildah",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("apt-get install -y buildah"), "{e}");
        return;
    }
    let a = result.unwrap();
    assert_eq!(a.repository.as_str(), "vendor/demo/web");
    let m = env.manifest_json("vendor/demo/web", "b-web-1").await;
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "FROM scratch + one COPY: {m}");
    let raw = skopeo_raw(&format!("{}/vendor/demo/web:b-web-1", env.registry.host())).await;
    assert_eq!(sha256(&raw), a.digest.as_str());

    // --timestamp 0: the same Dockerfile and context build the same image.
    let b = env
        .builder
        .build(&spec(&app, "web", "b-web-2"))
        .await
        .unwrap();
    assert_eq!(a.digest, b.digest);
}

#[tokio::test]
async fn a_failing_dockerfile_reports_buildah_stderr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ctx")).unwrap();
    std::fs::write(
        dir.path().join("ctx/Dockerfile"),
        "FROM scratch\nCOPY missing.txt /\n",
    )
    .unwrap();
    let env = common::env_with_root(dir.path().to_path_buf()).await;
    let app = common::demo();
    let mut s = spec(&app, "web", "b-web-bad");
    s.component.kind = ferry_core::domain::ComponentKind::DockerBuild {
        context: "ctx".into(),
        dockerfile: "Dockerfile".into(),
        source: None,
    };
    let e = env.builder.build(&s).await.unwrap_err();
    if !buildah_installed() {
        assert!(matches!(e, BuildError::ToolMissing { .. }), "{e:?}");
        return;
    }
    assert!(matches!(e, BuildError::ToolFailed { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("buildah") && msg.contains("missing.txt"),
        "{msg}"
    );

    // And a context without the named Dockerfile fails before buildah runs.
    s.component.kind = ferry_core::domain::ComponentKind::DockerBuild {
        context: "ctx".into(),
        dockerfile: "Containerfile".into(),
        source: None,
    };
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(
        matches!(
            e,
            BuildError::SourceMissing {
                what: "Dockerfile",
                ..
            }
        ),
        "{e:?}"
    );
}
