//! Cosign signatures made by an independent implementation (`tests/cosign/sign.py`, Python's
//! `cryptography` following cosign's published format), laid out as cosign does (the
//! `sha256-<hex>.sig` tag) in a real docker-registry, verified by `ferry_oci::cosign`: a good
//! signature passes; a wrong key, a payload edited after signing, a missing signature and an
//! unmet all-keys policy are each refused in words.
//!
//! This file is a module of the `copy_registry` test binary (one binary, one link).

use base64::Engine as _;
use ferry_oci::cosign::{self, Policy, PublicKey, Requirement, VerifyError};
use ferry_oci::{ClientConfig, Digest, RegistryClient, RepoRef};

use crate::support::registry::{curl_put_blob, curl_put_manifest};
use crate::support::*;

fn sign(subject: &str, reference: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/cosign/sign.py");
    let out = std::process::Command::new("python3")
        .args([script, subject, reference])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "sign.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sign.py prints JSON")
}

fn push_signature(addr: &str, repo: &str, tag: &str, sig: &serde_json::Value) {
    for b in sig["blobs"].as_array().expect("blobs") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b["b64"].as_str().expect("b64"))
            .expect("base64");
        curl_put_blob(addr, repo, b["digest"].as_str().expect("digest"), &bytes);
    }
    curl_put_manifest(
        addr,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        sig["manifest"].as_str().expect("manifest").as_bytes(),
    );
}

fn policy(keys: &[&str], require: Requirement) -> Policy {
    Policy {
        keys: keys
            .iter()
            .map(|k| PublicKey::from_pem(k).expect("PEM key"))
            .collect(),
        require,
    }
}

#[tokio::test]
async fn cosign_signatures_are_verified_and_every_bad_case_is_refused() {
    let reg = DockerRegistry::start();
    let img = push_multi_layer(reg.addr(), "vendor/web", "v1", 71);
    let unsigned = push_multi_layer(reg.addr(), "vendor/web", "v2", 72);
    let subject: Digest = img.manifest.digest.parse().expect("digest");
    let reference = format!("{}/vendor/web", reg.addr());
    let s = sign(subject.as_str(), &reference);
    let key = s["public_key"].as_str().expect("key");
    let other = s["other_public_key"].as_str().expect("key");
    let tag = cosign::signature_tag(&subject);
    push_signature(reg.addr(), "vendor/web", &tag, &s["good"]);

    let client = RegistryClient::new(ClientConfig {
        insecure: true,
        ..ClientConfig::default()
    })
    .expect("client");
    let repo = RepoRef::new(reg.addr(), "vendor/web");

    let ok = cosign::verify(
        &client,
        &repo,
        &subject,
        &policy(&[key], Requirement::AnyKey),
    )
    .await
    .expect("a good signature verifies");
    assert_eq!(ok.keys.len(), 1);
    assert_eq!(ok.signatures.len(), 1);
    // Any of two keys: the signer's is enough.
    cosign::verify(
        &client,
        &repo,
        &subject,
        &policy(&[other, key], Requirement::AnyKey),
    )
    .await
    .expect("one of the keys signed");

    // A wrong key.
    let e = cosign::verify(
        &client,
        &repo,
        &subject,
        &policy(&[other], Requirement::AnyKey),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, VerifyError::NotSatisfied { .. }), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
    // Both keys required: only one signed.
    let e = cosign::verify(
        &client,
        &repo,
        &subject,
        &policy(&[key, other], Requirement::AllKeys),
    )
    .await
    .unwrap_err();
    let other_id = PublicKey::from_pem(other).expect("key").id().to_string();
    assert!(e.to_string().contains(&other_id), "{e}");
    // No signature at all.
    let bare: Digest = unsigned.manifest.digest.parse().expect("digest");
    let e = cosign::verify(&client, &repo, &bare, &policy(&[key], Requirement::AnyKey))
        .await
        .unwrap_err();
    assert!(matches!(e, VerifyError::Unsigned { .. }), "{e}");
    // A signature copied onto another image names the wrong digest.
    push_signature(
        reg.addr(),
        "vendor/web",
        &cosign::signature_tag(&bare),
        &s["good"],
    );
    let e = cosign::verify(&client, &repo, &bare, &policy(&[key], Requirement::AnyKey))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the payload signs"), "{e}");
    // The payload edited after signing (the signature kept): refused.
    push_signature(reg.addr(), "vendor/web", &tag, &s["tampered"]);
    let e = cosign::verify(
        &client,
        &repo,
        &subject,
        &policy(&[key], Requirement::AnyKey),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, VerifyError::NotSatisfied { .. }), "{e}");
}
