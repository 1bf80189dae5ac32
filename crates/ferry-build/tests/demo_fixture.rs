//! The demo's checked-in base image is exactly what the generator makes, so its digest is
//! stable. Regenerate with `FERRY_REGENERATE_DEMO=1 cargo test -p ferry-build --test demo_fixture`.

#![allow(clippy::unwrap_used)]

mod common;

#[test]
fn checked_in_base_image_matches_the_generator() {
    check_layout("base-image", common::base_image_files());
}

#[test]
fn checked_in_sidecar_image_matches_the_generator() {
    check_layout("sidecar-image", common::sidecar_image_files());
}

fn check_layout(name: &str, files: Vec<(String, Vec<u8>)>) {
    let dir = common::demo_root().join(name);
    if std::env::var_os("FERRY_REGENERATE_DEMO").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, bytes) in &files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    let mut on_disk = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
                on_disk.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    on_disk.sort();
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&on_disk),
        names(&files),
        "regenerate: FERRY_REGENERATE_DEMO=1"
    );
    assert_eq!(on_disk, files, "regenerate: FERRY_REGENERATE_DEMO=1");
    let layer_total: usize = files
        .iter()
        .filter(|(n, _)| n.starts_with("blobs/"))
        .map(|(_, b)| b.len())
        .sum();
    assert!(
        layer_total < 4096,
        "the demo image stays tiny: {layer_total} bytes"
    );
}

#[test]
fn demo_app_file_lists_one_component_of_each_kind() {
    let app = common::demo();
    let mut kinds: Vec<&str> = app.components.iter().map(|c| c.kind.name()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "docker-build",
            "helm-chart",
            "helm-chart",
            "image",
            "image",
            "opentofu-module"
        ]
    );
    assert_eq!(app.app.as_str(), "demo");
}

/// The demo's signed external image (made once by `tests/cosign/make_demo_signed_image.py`
/// with `tests/cosign/sign.py`, an independent cosign implementation): its signature in the
/// layout verifies with the committed `cosign.pub`, which is the key `ferry.json` pins; and a
/// build imports it with its signature while a wrong key is refused.
#[tokio::test]
async fn the_signed_demo_image_verifies_with_its_committed_key() {
    let dir = common::demo_root().join("signed-image");
    let pem = std::fs::read_to_string(dir.join("cosign.pub")).unwrap();
    let app = common::demo();
    let component = app.component("signed").unwrap();
    let policy = component
        .verify
        .as_ref()
        .expect("the demo's signed image has a policy");
    assert_eq!(policy.keys, vec![pem.clone()], "ferry.json pins cosign.pub");
    let layout = ferry_oci::OciLayout::open(&dir).await.unwrap();
    let subject = layout.resolve(Some("v1")).await.unwrap().digest;
    let policy = ferry_oci::cosign::Policy::from_pems([pem.as_str()], false).unwrap();
    let verified = ferry_oci::cosign::verify_layout(&layout, &subject, &policy)
        .await
        .unwrap();
    assert_eq!(verified.keys.len(), 1);

    let env = common::env().await;
    let built = env
        .builder
        .build(&common::spec(&app, "signed", "b-signed-1"))
        .await
        .unwrap();
    assert_eq!(built.digest.as_str(), subject.as_str());
    // The signature travelled: the vendor repository holds it under cosign's tag, and it
    // verifies there as the agent will check it.
    let repo = env.repo("vendor/demo/signed");
    ferry_oci::cosign::verify(&env.client, &repo, &subject, &policy)
        .await
        .expect("the signature verifies in the vendor repository");

    let mut wrong = common::spec(&app, "signed", "b-signed-2");
    wrong.component.verify = Some(ferry_core::domain::VerifyPolicy {
        keys: vec![OTHER_KEY.to_string()],
        require: Default::default(),
    });
    let err = env.builder.build(&wrong).await.unwrap_err();
    assert!(
        matches!(err, ferry_build::BuildError::PolicyFailed { .. }),
        "{err}"
    );
}

/// A P-256 public key that signed nothing in the demo (generated once with `cryptography`).
const OTHER_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEgNersDr0DsECMbYLQtY8k+qbItGM\nyZO3ybIvHS2B5hwrplAc9uZ0laZ08b430S21i3FdZsx7PSx6TB2YcrFl3Q==\n-----END PUBLIC KEY-----\n";
