//! Self-tests of the real-peer harness: docker-registry starts and logs requests, skopeo
//! pushes the hand-built corpus byte for byte, the token issuer is accepted by a
//! token-auth registry, and the fault proxy injects what it is told.
//!
//! These must pass whatever the state of ferry-oci: they never call it.

mod support;

use support::corpus::{referrers_tag, sha256};
use support::skopeo::{inspect_raw, push_layout_with_creds, try_skopeo};
use support::*;

#[test]
fn registry_starts_and_logs_requests() {
    let reg = DockerRegistry::start();
    let mark = reg.mark();
    assert_eq!(reg.manifest_status("nothing/here", "v1"), 404);
    let reqs = reg.requests_since(mark);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "HEAD");
    assert_eq!(reqs[0].status, 404);
}

#[test]
fn skopeo_pushes_corpus_byte_for_byte() {
    let reg = DockerRegistry::start();
    let img = push_multi_layer(reg.addr(), "corpus/app", "v1", 1);
    let raw = inspect_raw(&format!("{}/corpus/app:v1", reg.addr()));
    assert_eq!(raw, img.manifest_bytes, "manifest bytes changed on push");
    assert_eq!(sha256(&raw), img.manifest.digest);
    assert_eq!(img.layers.len(), 5);
    let puts = reg
        .requests()
        .iter()
        .filter(|r| r.is_blob_write() && r.method == "PUT")
        .count();
    assert_eq!(puts, 6, "5 layers + config uploaded");

    let idx = push_multi_platform(reg.addr(), "corpus/multi", "v1", 2);
    let raw = inspect_raw(&format!("{}/corpus/multi:v1", reg.addr()));
    assert_eq!(raw, idx.index_bytes);
    for child in &idx.children {
        let raw = inspect_raw(&format!(
            "{}/corpus/multi@{}",
            reg.addr(),
            child.manifest.digest
        ));
        assert_eq!(raw, child.manifest_bytes);
    }

    let wr = push_with_referrer(reg.addr(), "corpus/signed", "v1", 3);
    let fallback = referrers_tag(&wr.image.manifest.digest);
    let raw = inspect_raw(&format!("{}/corpus/signed:{fallback}", reg.addr()));
    assert_eq!(raw, wr.referrers_index_bytes);
    let raw = inspect_raw(&format!(
        "{}/corpus/signed@{}",
        reg.addr(),
        wr.referrer.digest
    ));
    assert_eq!(raw, wr.referrer_bytes);
}

#[test]
fn token_auth_registry_accepts_issuer_tokens() {
    let issuer = TokenIssuer::start("alice", "s3cret-pw");
    let reg = DockerRegistry::start_with_token_auth(&issuer);
    assert_eq!(
        reg.manifest_status("x/y", "v1"),
        401,
        "anonymous must be refused"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let img = multi_layer_layout(dir.path(), "v1", 4, 16 * 1024);
    let dest = format!("{}/auth/app:v1", reg.addr());
    push_layout_with_creds(dir.path(), "v1", &dest, "alice:s3cret-pw").expect("push with creds");
    assert!(issuer.tokens_issued() >= 1);
    let raw = try_skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret-pw",
        &format!("docker://{dest}"),
    ])
    .expect("inspect with creds");
    assert_eq!(raw, img.manifest_bytes);
    let err =
        push_layout_with_creds(dir.path(), "v1", &dest, "alice:wrong").expect_err("wrong password");
    assert!(issuer.refusals() >= 1, "issuer saw no refusal: {err}");
}

#[test]
fn proxy_forwards_and_injects_faults() {
    let reg = DockerRegistry::start();
    let img = push_multi_layer(reg.addr(), "p/app", "v1", 5);
    let proxy = FaultProxy::start(reg.addr());
    // Through the proxy, skopeo sees the same bytes.
    let raw = inspect_raw(&format!("{}/p/app:v1", proxy.addr()));
    assert_eq!(raw, img.manifest_bytes);
    // A push through the proxy works (uploads follow Location through the proxy).
    let dir = tempfile::tempdir().expect("tempdir");
    let img2 = multi_layer_layout(dir.path(), "v2", 6, 8 * 1024);
    support::skopeo::push_layout(dir.path(), "v2", &format!("{}/p/app:v2", proxy.addr()));
    assert_eq!(reg.manifest_status("p/app", &img2.manifest.digest), 200);
    assert!(proxy.requests().iter().any(|r| r.is_blob_write()));

    proxy.inject(
        Some("GET"),
        "/manifests/",
        None,
        Fault::Status {
            code: 503,
            retry_after: Some(0),
        },
    );
    let err = try_skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--retry-times",
        "0",
        &format!("docker://{}/p/app:v1", proxy.addr()),
    ])
    .expect_err("503 forever");
    assert!(proxy.faults_served() >= 1, "{err}");
    proxy.clear_faults();

    // A corrupted blob is caught by skopeo's own verification.
    proxy.inject(
        Some("GET"),
        &img.layers[0].digest,
        Some(1),
        Fault::CorruptBody,
    );
    let out = tempfile::tempdir().expect("tempdir");
    let err = try_skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/p/app:v1", proxy.addr()),
        &format!("oci:{}:v1", out.path().display()),
    ])
    .expect_err("corrupt layer must be rejected");
    assert!(err.contains("digest") || err.contains("Digest"), "{err}");
}
