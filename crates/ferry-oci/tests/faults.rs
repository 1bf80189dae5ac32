//! Faults between Ferry and a real registry, injected by the harness proxy: a corrupted blob
//! must abort the copy with nothing committed; throttling and 503s must be retried; a
//! registry that never recovers must fail with an error naming reference, step and status.

mod support;

use ferry_oci::Error;
use support::ferry::copy;
use support::registry::free_port;
use support::skopeo::inspect_raw;
use support::*;

#[tokio::test]
async fn corrupted_blob_is_rejected_and_nothing_is_tagged() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "bad/app", "v1", 60);
    let proxy = FaultProxy::start(src.addr());
    let victim = img.layers[2].digest.clone();
    // Every read of that layer is corrupted, so no retry or resume can heal it.
    proxy.inject(Some("GET"), &victim, None, Fault::CorruptBody);

    let err = copy(
        &format!("{}/bad/app:v1", proxy.addr()),
        &[format!("{}/bad/app:v1", dst.addr())],
    )
    .await
    .expect_err("a corrupted blob must fail the copy");

    match &err {
        Error::DigestMismatch { expected, .. } => assert_eq!(expected.to_string(), victim),
        other => panic!("expected DigestMismatch, got {other:?} ({other})"),
    }
    assert!(err.to_string().contains(&victim), "{err}");
    assert_eq!(
        dst.manifest_status("bad/app", "v1"),
        404,
        "tag written after a mismatch"
    );
    assert_eq!(
        dst.manifest_status("bad/app", &img.manifest.digest),
        404,
        "manifest written after a mismatch"
    );
    assert!(
        !dst.requests().iter().any(|r| r.is_manifest_put()),
        "a manifest PUT was attempted after a mismatch"
    );
}

#[tokio::test]
async fn throttling_and_unavailable_are_retried() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "busy/app", "v1", 61);
    let src_proxy = FaultProxy::start(src.addr());
    let dst_proxy = FaultProxy::start(dst.addr());
    let s429 = |ra| Fault::Status {
        code: 429,
        retry_after: Some(ra),
    };
    let s503 = Fault::Status {
        code: 503,
        retry_after: None,
    };
    src_proxy.inject(Some("GET"), "/manifests/", Some(1), s429(1));
    src_proxy.inject(Some("GET"), "/blobs/", Some(2), s429(0));
    src_proxy.inject(Some("GET"), "/blobs/", Some(1), s503.clone());
    dst_proxy.inject(Some("POST"), "/blobs/uploads/", Some(2), s429(0));
    dst_proxy.inject(Some("PUT"), "/manifests/", Some(1), s503);

    let report = copy(
        &format!("{}/busy/app:v1", src_proxy.addr()),
        &[format!("{}/busy/app:v1", dst_proxy.addr())],
    )
    .await
    .expect("retries must carry the copy through");

    assert_eq!(src_proxy.faults_served(), 4, "source faults not all hit");
    assert_eq!(
        dst_proxy.faults_served(),
        3,
        "destination faults not all hit"
    );
    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(img.manifest.digest.clone())
    );
    assert_eq!(
        inspect_raw(&format!("{}/busy/app:v1", dst.addr())),
        img.manifest_bytes
    );
}

#[tokio::test]
async fn endless_503_fails_naming_reference_step_and_status() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    push_multi_layer(src.addr(), "down/app", "v1", 62);
    let proxy = FaultProxy::start(src.addr());
    proxy.inject(
        None,
        "/manifests/",
        None,
        Fault::Status {
            code: 503,
            retry_after: Some(0),
        },
    );

    let err = copy(
        &format!("{}/down/app:v1", proxy.addr()),
        &[format!("{}/down/app:v1", dst.addr())],
    )
    .await
    .expect_err("a registry that never recovers must fail the copy");
    let msg = err.to_string();
    assert!(msg.contains("503"), "{msg}");
    assert!(msg.contains("manifest"), "step missing: {msg}");
    assert!(
        msg.contains(&proxy.addr()) && msg.contains("down/app"),
        "reference missing: {msg}"
    );
    assert!(
        proxy.faults_served() >= 2,
        "no retry happened: {}",
        proxy.faults_served()
    );
    assert_eq!(dst.manifest_status("down/app", "v1"), 404);
}

#[tokio::test]
async fn unreachable_registry_fails_naming_it() {
    let dst = DockerRegistry::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let err = copy(
        &format!("{dead}/gone/app:v1"),
        &[format!("{}/gone/app:v1", dst.addr())],
    )
    .await
    .expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(msg.contains(&dead), "{msg}");
    assert!(
        msg.contains("manifest") || msg.contains("ping"),
        "step missing: {msg}"
    );
}
