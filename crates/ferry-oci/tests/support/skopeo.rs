//! Thin wrappers over the `skopeo` CLI, the independent client the tests judge Ferry by.
//!
//! It must never reach beyond loopback, and never read the user's auth files (an empty
//! authfile is passed when no credentials are given).

use std::process::Command;

pub const SKOPEO: &str = "/usr/bin/skopeo";

/// Runs skopeo; panics with its stderr on failure. Returns stdout.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    match try_skopeo(args) {
        Ok(out) => out,
        Err(e) => panic!("skopeo {args:?} failed: {e}"),
    }
}

/// An empty auth file, one per test process, so skopeo never sees the user's credentials.
fn empty_authfile() -> &'static std::path::Path {
    static FILE: std::sync::OnceLock<tempfile::TempPath> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().expect("authfile");
        std::io::Write::write_all(&mut f, br#"{"auths":{}}"#).expect("write authfile");
        f.into_temp_path()
    })
}

/// Runs skopeo; `Err(stderr)` on failure.
pub fn try_skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new(SKOPEO)
        .arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", empty_authfile())
        .output()
        .map_err(|e| format!("spawn skopeo: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Pushes `oci:<layout>:<tag>` (everything, digests preserved) to `docker://<dest>`.
pub fn push_layout(layout: &std::path::Path, tag: &str, dest: &str) {
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = format!("docker://{dest}");
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ]);
}

/// Like [`push_layout`] with `--dest-creds user:pass`.
pub fn push_layout_with_creds(
    layout: &std::path::Path,
    tag: &str,
    dest: &str,
    creds: &str,
) -> Result<Vec<u8>, String> {
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = format!("docker://{dest}");
    try_skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        &src,
        &dst,
    ])
}

/// `skopeo inspect --raw` of a registry reference (`addr/repo:tag` or `addr/repo@digest`).
pub fn inspect_raw(reference: &str) -> Vec<u8> {
    skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
}

/// `skopeo inspect --raw` of a layout reference (`oci:dir:tag`).
pub fn inspect_raw_layout(reference: &str) -> Vec<u8> {
    skopeo(&["inspect", "--raw", reference])
}
