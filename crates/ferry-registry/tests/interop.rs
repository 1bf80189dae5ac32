//! Interop with real peers: skopeo pushes to and pulls from the embedded registry, and copies
//! between it and a real CNCF `docker-registry` in both directions, digests unchanged.

mod common;

use common::*;

async fn inspect_raw(reference: &str) -> String {
    let (ok, out, err) = skopeo(&["inspect", "--raw", "--tls-verify=false", reference]).await;
    assert!(ok, "skopeo inspect {reference}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_and_pull_keep_digests() {
    let r = Registry::start().await;
    let layer = bytes(11, 200_000);
    let layout = make_layout("v1", &layer);
    let src = format!("oci:{}:v1", layout.dir.path().display());
    let dest = format!("docker://{}/vendor/app:v1", r.host());
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dest,
    ])
    .await;
    assert!(ok, "skopeo push: {err}");

    // The manifest bytes are served unchanged, by tag and by digest.
    let raw = inspect_raw(&dest).await;
    assert_eq!(raw.as_bytes(), layout.manifest.as_slice());
    let by_digest = format!(
        "docker://{}/vendor/app@{}",
        r.host(),
        layout.manifest_digest
    );
    assert_eq!(
        inspect_raw(&by_digest).await.as_bytes(),
        layout.manifest.as_slice()
    );

    // Every blob landed intact and shared storage holds it once.
    for (d, data) in &layout.blobs {
        let on_disk = std::fs::read(r.root().join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(&on_disk, data);
    }

    // Copy within the registry to another namespace (skopeo may mount); digests unchanged.
    let install = format!("docker://{}/installs/acme/app:v1", r.host());
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dest,
        &install,
    ])
    .await;
    assert!(ok, "skopeo copy within registry: {err}");
    assert_eq!(
        inspect_raw(&install).await.as_bytes(),
        layout.manifest.as_slice()
    );

    // Pull back into a second layout.
    let out = tempfile::tempdir().unwrap();
    let back = format!("oci:{}:v1", out.path().display());
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest,
        &back,
    ])
    .await;
    assert!(ok, "skopeo pull: {err}");
    let pulled = std::fs::read(
        out.path()
            .join("blobs/sha256")
            .join(&layout.manifest_digest[7..]),
    )
    .unwrap();
    assert_eq!(pulled, layout.manifest);
    for (d, data) in &layout.blobs {
        assert_eq!(
            &std::fs::read(out.path().join("blobs/sha256").join(&d[7..])).unwrap(),
            data
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_between_ferry_and_docker_registry_both_ways() {
    let r = Registry::start().await;
    let upstream = DockerRegistry::start().await;
    let layout = make_layout("v1", &bytes(12, 50_000));
    let src = format!("oci:{}:v1", layout.dir.path().display());

    // layout -> docker-registry -> ferry -> docker-registry (another repo) -> check.
    let dr1 = format!("docker://{}/vendor/app:v1", upstream.host());
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dr1,
    ])
    .await;
    assert!(ok, "push to docker-registry: {err}");

    let ferry = format!("docker://{}/installs/acme/app:v1", r.host());
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dr1,
        &ferry,
    ])
    .await;
    assert!(ok, "docker-registry -> ferry: {err}");
    assert_eq!(
        inspect_raw(&ferry).await.as_bytes(),
        layout.manifest.as_slice()
    );

    let dr2 = format!("docker://{}/mirror/app:v1", upstream.host());
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &ferry,
        &dr2,
    ])
    .await;
    assert!(ok, "ferry -> docker-registry: {err}");
    assert_eq!(
        inspect_raw(&dr2).await.as_bytes(),
        layout.manifest.as_slice()
    );

    let by_digest = format!(
        "docker://{}/mirror/app@{}",
        upstream.host(),
        layout.manifest_digest
    );
    assert_eq!(
        inspect_raw(&by_digest).await.as_bytes(),
        layout.manifest.as_slice()
    );
}
