//! The `docker-build` kind: a Dockerfile built with buildah (vfs storage, chroot isolation, so
//! it runs unprivileged and without a daemon), pushed to a private OCI layout, then copied to
//! the vendor registry by the ferry-oci engine.
//!
//! Every build gets its own `--root`/`--runroot` in a temporary directory, so builds never
//! share state and leave nothing behind. `--timestamp 0` makes the image reproducible. The
//! Dockerfile path is relative to the build context. This module must never pass a credential
//! on a command line, and never build from a context outside the app root.

use std::path::Path;
use std::process::Stdio;

use ferry_core::ports::BuildSpec;

use crate::error::BuildError;
use crate::package::LAYOUT_TAG;
use crate::{ArtifactBuilder, BuiltArtifact};

const BUILDAH: &str = "buildah";
/// Kept from a failing tool's output: enough to see the error, bounded for events and logs.
const MAX_TOOL_OUTPUT: usize = 2000;
/// The image name inside the build's private storage.
const LOCAL_NAME: &str = "localhost/ferry-build:build";

pub(crate) async fn build(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    context: &str,
    dockerfile: &str,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let component = &spec.component;
    let ctx = b.resolve_dir(component, "build context", context)?;
    let dockerfile = if dockerfile.trim().is_empty() {
        "Dockerfile"
    } else {
        dockerfile
    };
    let df = b.resolve(component, &format!("{context}/{dockerfile}"))?;
    if !df.is_file() {
        return Err(BuildError::SourceMissing {
            component: component.name.to_string(),
            what: "Dockerfile",
            path: dockerfile.to_string(),
            resolved: df,
        });
    }
    let tmp = b.temp_dir("ferry-docker-")?;
    let root = tmp.path().join("root");
    let runroot = tmp.path().join("runroot");
    let layout_dir = tmp.path().join("layout");
    let storage = |args: &mut Vec<String>| {
        args.extend([
            "--root".to_string(),
            root.display().to_string(),
            "--runroot".to_string(),
            runroot.display().to_string(),
            "--storage-driver".to_string(),
            "vfs".to_string(),
        ]);
    };

    let mut bud = Vec::new();
    storage(&mut bud);
    bud.extend(
        [
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "oci",
            "--layers=false",
            "--timestamp",
            "0",
            "-f",
        ]
        .map(String::from),
    );
    bud.push(df.display().to_string());
    for (key, value) in b.source_annotations() {
        bud.extend(["--annotation".to_string(), format!("{key}={value}")]);
    }
    bud.extend(["-t".to_string(), LOCAL_NAME.to_string()]);
    bud.push(ctx.display().to_string());
    run(component.name.as_str(), &bud, tmp.path()).await?;

    let mut push = Vec::new();
    storage(&mut push);
    push.extend(["push".to_string(), LOCAL_NAME.to_string()]);
    push.push(format!("oci:{}:{LAYOUT_TAG}", layout_dir.display()));
    run(component.name.as_str(), &push, tmp.path()).await?;

    b.push_layout(
        component,
        layout_dir,
        repository,
        vec![spec.build_id.to_string()],
        tmp,
    )
    .await
}

async fn run(component: &str, args: &[String], cwd: &Path) -> Result<(), BuildError> {
    let command = format!("{BUILDAH} {}", args.join(" "));
    tracing::debug!(%command, "running");
    let out = tokio::process::Command::new(BUILDAH)
        .args(args)
        .current_dir(cwd)
        .env("BUILDAH_ISOLATION", "chroot")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BuildError::ToolMissing {
                    component: component.to_string(),
                    tool: BUILDAH,
                    package: "buildah",
                }
            } else {
                BuildError::ToolFailed {
                    component: component.to_string(),
                    command: command.clone(),
                    status: "could not start".into(),
                    stderr: e.to_string(),
                }
            }
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(BuildError::ToolFailed {
        component: component.to_string(),
        command,
        status: out.status.to_string(),
        stderr: tail(&text, MAX_TOOL_OUTPUT),
    })
}

/// The last `max` bytes of `s`, on a character boundary: errors come at the end.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}
