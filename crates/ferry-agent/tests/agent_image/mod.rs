//! The agent image (docs/design/agent-image.md): `ferry-agent` packed by ferry-build's
//! FROM-scratch packer into a two-platform OCI index. The amd64 entry is this build's real
//! `ferry-agent` binary, run with `--help` from the unpacked root filesystem; the arm64 entry is
//! a small fixture file, so the test stays cheap (the real two-platform static build is
//! `scripts/agent-image.sh`, run once by `.ci/run`, which runs the same check on its output).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ferry_build::scratch::{
    pack_scratch_image, unpack_rootfs, ImageUser, PlatformBinary, ScratchImage,
};
use ferry_oci::media::Platform;
use ferry_oci::OciLayout;
use futures::StreamExt;

fn image(agent: &Path, arm64: &Path, ca: &Path) -> ScratchImage {
    ScratchImage {
        binaries: vec![
            PlatformBinary {
                platform: Platform::parse("linux/amd64").unwrap(),
                path: agent.to_path_buf(),
            },
            PlatformBinary {
                platform: Platform::parse("linux/arm64/v8").unwrap(),
                path: arm64.to_path_buf(),
            },
        ],
        binary_path: "/usr/local/bin/ferry-agent".into(),
        ca_bundle: ca.to_path_buf(),
        user: ImageUser::default(),
        labels: BTreeMap::from([(
            "org.opencontainers.image.title".to_string(),
            "ferry-agent".to_string(),
        )]),
    }
}

async fn blob_json(layout: &Path, digest: &ferry_oci::Digest) -> serde_json::Value {
    let layout = OciLayout::open(layout).await.unwrap();
    let mut body = layout.read_blob(digest).await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    serde_json::from_slice(&bytes).unwrap()
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn agent_image_has_both_platforms_runs_from_its_rootfs_and_packs_reproducibly() {
    let agent = Path::new(env!("CARGO_BIN_EXE_ferry-agent"));
    let dir = tempfile::tempdir().unwrap();
    let arm64 = dir.path().join("arm64-fixture");
    std::fs::write(&arm64, b"\x7fELF arm64 fixture").unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nfixture\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    // Same inputs, same digest: into two fresh layouts, and again into the first. (Small
    // fixtures for both platforms here: gzip of a debug binary, four times, is slow.)
    let amd64_fixture = dir.path().join("amd64-fixture");
    std::fs::write(&amd64_fixture, b"\x7fELF amd64 fixture").unwrap();
    let small = image(&amd64_fixture, &arm64, &ca);
    let (r1, r2) = (dir.path().join("r1"), dir.path().join("r2"));
    let first = pack_scratch_image(&small, &r1, "v1").await.unwrap();
    let second = pack_scratch_image(&small, &r2, "v1").await.unwrap();
    let again = pack_scratch_image(&small, &r1, "v1").await.unwrap();
    assert_eq!(first.index.digest, second.index.digest);
    assert_eq!(first.index.digest, again.index.digest);
    // A different input gives a different digest (so the equality above means something).
    let other_ca = dir.path().join("other.crt");
    std::fs::write(&other_ca, "another bundle\n").unwrap();
    let other = pack_scratch_image(&image(&amd64_fixture, &arm64, &other_ca), &r2, "v2")
        .await
        .unwrap();
    assert_ne!(other.index.digest, first.index.digest);

    // The real agent binary as amd64.
    let a = dir.path().join("a");
    let first = pack_scratch_image(&image(agent, &arm64, &ca), &a, "v1")
        .await
        .unwrap();

    // The index lists both platforms, each an image manifest.
    let refs = first.index.references().unwrap();
    let platforms: Vec<String> = refs
        .manifests
        .iter()
        .map(|d| {
            let p = d.platform.as_ref().unwrap();
            format!("{}/{}", p.os, p.architecture)
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    // The config runs the binary as the non-root user.
    let layout = OciLayout::open(&a).await.unwrap();
    let amd64 = &refs.manifests[0];
    let manifest = layout
        .read_manifest(&amd64.digest, &amd64.media_type)
        .await
        .unwrap();
    let config_digest = manifest.references().unwrap().config.unwrap().digest;
    let config = blob_json(&a, &config_digest).await;
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/ferry-agent"])
    );
    assert!(
        config.get("created").is_none(),
        "no timestamp in the config"
    );

    // The amd64 root filesystem: the user, the CA bundle, the binary; fixed mtimes.
    let root = dir.path().join("rootfs");
    unpack_rootfs(&a, "v1", &Platform::parse("linux/amd64").unwrap(), &root)
        .await
        .unwrap();
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("ferry:x:65532:65532:"), "{passwd}");
    assert!(
        std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let bin = root.join("usr/local/bin/ferry-agent");
    let meta = std::fs::metadata(&bin).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    // mtime 0 in the layer; the tar crate unpacks 0 as 1 (some tools reject 0).
    assert!(meta.mtime() <= 1, "{}", meta.mtime());
    assert_eq!(meta.len(), std::fs::metadata(agent).unwrap().len());
    let tmp_mode = std::fs::metadata(root.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    let out = std::process::Command::new(&bin)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("keygen") && help.contains("run"), "{help}");

    // The arm64 root filesystem holds the arm64 input, not the amd64 one.
    let arm_root = dir.path().join("rootfs-arm64");
    unpack_rootfs(
        &a,
        "v1",
        &Platform::parse("linux/arm64").unwrap(),
        &arm_root,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(arm_root.join("usr/local/bin/ferry-agent")).unwrap(),
        b"\x7fELF arm64 fixture"
    );
    // A platform the index lacks: a clear error naming what it has.
    let e = unpack_rootfs(
        &a,
        "v1",
        &Platform::parse("linux/s390x").unwrap(),
        &dir.path().join("x"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no linux/s390x") && e.contains("linux/amd64"),
        "{e}"
    );
}

#[tokio::test]
async fn packing_refuses_root_and_duplicate_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let mut spec = image(&f, &f, &f);
    spec.user = ImageUser {
        name: "root".into(),
        uid: 0,
        gid: 0,
    };
    let e = pack_scratch_image(&spec, &dir.path().join("l"), "t")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("must not be root"), "{e}");
    let mut spec = image(&f, &f, &f);
    spec.binaries[1].platform = Platform::parse("linux/amd64").unwrap();
    let e = pack_scratch_image(&spec, &dir.path().join("l"), "t")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("given twice"), "{e}");
}
