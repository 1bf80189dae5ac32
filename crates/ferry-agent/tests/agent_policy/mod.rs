//! The agent enforces the job's verification policy before it writes anything into the
//! install, and carries signatures and referrers into it. Signatures are made by an
//! independent implementation of cosign's format (`tests/cosign/sign.py`, Python's
//! `cryptography`), against the real embedded registry with real sync grants: a missing
//! signature, a payload edited after signing and a wrong key are each reported
//! `policy_failed` with nothing written; a good signature syncs, and the signature and an SBOM
//! referrer are in the install afterwards.

use base64::Engine as _;
use bytes::Bytes;
use ferry_core::domain::{KeyRequirement, VerifyPolicy};
use ferry_core::seal::AgentKeypair;
use ferry_oci::{Digest, Manifest};

use crate::common::*;

fn cosign_sign(subject: &str, reference: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/cosign/sign.py");
    let out = std::process::Command::new("python3")
        .args([script, subject, reference])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sign.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn put_blob(env: &Env, bytes: Vec<u8>) -> Digest {
    let d = Digest::of(&bytes);
    let size = bytes.len() as u64;
    env.vendor()
        .upload_blob(
            &env.repo(VENDOR_REPO),
            &d,
            size,
            Box::pin(futures::stream::iter([Ok(Bytes::from(bytes))])),
        )
        .await
        .unwrap();
    d
}

async fn put_manifest(env: &Env, reference: &str, bytes: Vec<u8>) -> Digest {
    let m = Manifest::from_bytes(Bytes::from(bytes), OCI_MANIFEST).unwrap();
    env.vendor()
        .put_manifest(&env.repo(VENDOR_REPO), reference, &m)
        .await
        .unwrap();
    m.digest
}

/// Pushes one of sign.py's signature manifests under cosign's tag for the subject.
async fn push_signature(env: &Env, tag: &str, sig: &serde_json::Value) {
    for b in sig["blobs"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b["b64"].as_str().unwrap())
            .unwrap();
        put_blob(env, bytes).await;
    }
    let manifest = sig["manifest"].as_str().unwrap().as_bytes().to_vec();
    put_manifest(env, tag, manifest).await;
}

fn policy(key: &str) -> VerifyPolicy {
    VerifyPolicy {
        keys: vec![key.to_string()],
        require: KeyRequirement::Any,
    }
}

#[tokio::test]
async fn the_agent_verifies_signatures_before_promotion_and_carries_them_into_the_install() {
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(41, 20_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let install = env.install("a", &key_a);
    let signed = cosign_sign(digest.as_str(), &format!("{}/{VENDOR_REPO}", env.host));
    let good_key = signed["public_key"].as_str().unwrap().to_string();
    let other_key = signed["other_public_key"].as_str().unwrap().to_string();
    let sig_tag = ferry_oci::cosign::signature_tag(&digest);
    let installed = env.repo("installs/a/demo/app");
    let agent_client = env.agent_client("a", AGENT_A_SECRET);

    let (stop_agent, handle) = spawn(agent(&env, "a", AGENT_A_SECRET, &key_a));
    let run = |sync: &'static str, key: String| {
        let env = &env;
        let install = &install;
        let digest = &digest;
        async move {
            let mut msg = env.job(install, digest, sync, 1).await;
            msg.verify = Some(policy(&key));
            env.vendor_key.sign_job(&mut msg);
            env.send("install-a", &msg).await;
            env.next_report(30).await
        }
    };

    // 1. No signature at all.
    let report = run("s-unsigned", good_key.clone()).await;
    assert_eq!(report["status"], "policy_failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("has no cosign signature"), "{error}");

    // 2. A payload edited after signing.
    push_signature(&env, &sig_tag, &signed["tampered"]).await;
    let report = run("s-tampered", good_key.clone()).await;
    assert_eq!(report["status"], "policy_failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("does not verify"), "{error}");

    // 3. A good signature, but by a key the policy does not list.
    push_signature(&env, &sig_tag, &signed["good"]).await;
    let report = run("s-wrong-key", other_key).await;
    assert_eq!(report["status"], "policy_failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("no valid signature by a policy key"),
        "{error}"
    );

    // Nothing was written into the install by any refused job.
    assert!(
        agent_client
            .head_manifest(&installed, digest.as_str())
            .await
            .unwrap()
            .is_none(),
        "a refused artifact must not reach the install"
    );
    assert!(agent_client
        .head_manifest(&installed, &sig_tag)
        .await
        .unwrap()
        .is_none());

    // An SBOM attached to the image as an OCI 1.1 referrer, to see it travel.
    let sbom = put_blob(&env, br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec()).await;
    let empty = put_blob(&env, b"{}".to_vec()).await;
    let subject = env
        .vendor()
        .head_manifest(&env.repo(VENDOR_REPO), digest.as_str())
        .await
        .unwrap()
        .unwrap();
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom.as_str(), "size": 26}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest.as_str(), "size": subject.size},
    }))
    .unwrap();
    let referrer_digest = Digest::of(&referrer);
    put_manifest(&env, referrer_digest.as_str(), referrer).await;

    // 4. The good signature by the policy's key: synced, with its signature and SBOM.
    let report = run("s-good", good_key.clone()).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    stop(stop_agent, handle).await;
    assert!(agent_client
        .head_manifest(&installed, digest.as_str())
        .await
        .unwrap()
        .is_some());
    let parsed = ferry_oci::cosign::Policy::from_pems([good_key.as_str()], false).unwrap();
    let verified = ferry_oci::cosign::verify(&agent_client, &installed, &digest, &parsed)
        .await
        .expect("the signature is in the install and verifies there");
    assert_eq!(verified.keys.len(), 1);
    let referrers = agent_client.referrers(&installed, &digest).await.unwrap();
    assert!(
        referrers.iter().any(|d| d.digest == referrer_digest),
        "the SBOM referrer travelled: {referrers:?}"
    );
}
