//! Each packaged or copied kind, built from the demo app into an embedded ferry-registry:
//! media types, determinism, interop with skopeo, and clear errors for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;

use common::{env, sha256, skopeo_raw, spec};
use ferry_build::BuildError;
use ferry_oci::media::{
    HELM_CHART_LAYER, HELM_CONFIG, OCI_EMPTY_CONFIG, OCI_INDEX, OCI_MANIFEST,
    OPENTOFU_MODULE_ARTIFACT, ZIP_LAYER,
};

const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

#[tokio::test]
async fn helm_chart_is_packaged_as_helm_does() {
    let env = env().await;
    let app = common::demo();
    let a = env
        .builder
        .build(&spec(&app, "chart", "b-chart-1"))
        .await
        .unwrap();
    assert_eq!(a.repository.as_str(), "vendor/demo/chart");
    assert_eq!(a.media_type, OCI_MANIFEST);
    assert_eq!(a.tags, ["b-chart-1", "0.1.0"]);

    let m = env.manifest_json("vendor/demo/chart", "b-chart-1").await;
    assert_eq!(m["schemaVersion"], 2);
    assert!(
        m.get("artifactType").is_none(),
        "Helm's layout has no artifactType: {m}"
    );
    assert_eq!(m["config"]["mediaType"], HELM_CONFIG);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], HELM_CHART_LAYER);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.title"],
        "demo-chart"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.version"],
        "0.1.0"
    );

    // The chart version tag points at the same manifest.
    let by_version = env.manifest("vendor/demo/chart", "0.1.0").await;
    assert_eq!(by_version.digest.as_str(), a.digest.as_str());

    // Config: the Chart.yaml metadata, in Helm's field order.
    let config = env
        .blob("vendor/demo/chart", m["config"]["digest"].as_str().unwrap())
        .await;
    assert_eq!(
        String::from_utf8(config).unwrap(),
        r#"{"name":"demo-chart","version":"0.1.0","description":"The Ferry demo app's chart","apiVersion":"v2","appVersion":"1.0.0","type":"application"}"#
    );

    // Layer: gzip (no timestamp) of a tar with every entry under demo-chart/, sorted, mtime 0.
    let tgz = env
        .blob("vendor/demo/chart", layers[0]["digest"].as_str().unwrap())
        .await;
    assert_eq!(&tgz[..2], &[0x1f, 0x8b]);
    assert_eq!(&tgz[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "demo-chart/Chart.yaml" {
            let mut s = String::new();
            entry.read_to_string(&mut s).unwrap();
            assert!(s.contains("name: demo-chart"));
        }
        names.push(name);
    }
    assert_eq!(
        names,
        [
            "demo-chart/.helmignore",
            "demo-chart/Chart.yaml",
            "demo-chart/templates/configmap.yaml",
            "demo-chart/values.yaml"
        ]
    );
}

#[tokio::test]
async fn opentofu_module_is_one_zip_layer_with_empty_config() {
    let env = env().await;
    let app = common::demo();
    let a = env
        .builder
        .build(&spec(&app, "module", "b-mod-1"))
        .await
        .unwrap();
    assert_eq!(a.repository.as_str(), "vendor/demo/module");
    let m = env.manifest_json("vendor/demo/module", "b-mod-1").await;
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(m["artifactType"], OPENTOFU_MODULE_ARTIFACT);
    assert_eq!(m["config"]["mediaType"], OCI_EMPTY_CONFIG);
    assert_eq!(m["config"]["digest"], EMPTY_DIGEST);
    assert_eq!(m["config"]["size"], 2);
    assert_eq!(env.blob("vendor/demo/module", EMPTY_DIGEST).await, b"{}");
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "exactly one layer: {m}");
    assert_eq!(layers[0]["mediaType"], ZIP_LAYER);

    let zip_bytes = env
        .blob("vendor/demo/module", layers[0]["digest"].as_str().unwrap())
        .await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    assert_eq!(names, ["main.tf", "variables.tf"]);
    let mut main = String::new();
    zip.by_name("main.tf")
        .unwrap()
        .read_to_string(&mut main)
        .unwrap();
    assert!(main.contains("terraform_data"));
}

#[tokio::test]
async fn image_copy_keeps_every_platform_and_the_digest() {
    let env = env().await;
    let app = common::demo();
    let a = env
        .builder
        .build(&spec(&app, "base", "b-img-1"))
        .await
        .unwrap();
    assert_eq!(a.digest.as_str(), common::base_image_digest());
    assert_eq!(a.media_type, OCI_INDEX);
    let index = env.manifest_json("vendor/demo/base", "b-img-1").await;
    let platforms: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    for d in index["manifests"].as_array().unwrap() {
        let child = env
            .manifest("vendor/demo/base", d["digest"].as_str().unwrap())
            .await;
        assert_eq!(child.digest.as_str(), d["digest"].as_str().unwrap());
    }
}

#[tokio::test]
async fn image_from_a_registry_uses_the_source_ref_as_tag() {
    let env = env().await;
    let app = common::demo();
    // Seed an upstream repository in the same registry from the demo layout.
    env.builder
        .build(&spec(&app, "base", "seed"))
        .await
        .unwrap();
    let mut s = spec(&app, "base", "b-img-2");
    s.component.kind = ferry_core::domain::ComponentKind::Image {
        source: format!("{}/vendor/demo/base", env.registry.host()),
    };
    s.component.repository = ferry_core::id::Repository::new("demo/copied").unwrap();
    s.source_ref = "seed".into();
    let a = env.builder.build(&s).await.unwrap();
    assert_eq!(a.digest.as_str(), common::base_image_digest());
    assert_eq!(a.repository.as_str(), "vendor/demo/copied");

    // A missing tag is an error that names the reference.
    s.source_ref = "no-such-tag".into();
    let e = env.builder.build(&s).await.unwrap_err().to_string();
    assert!(e.contains("no-such-tag"), "{e}");
}

#[tokio::test]
async fn same_source_twice_gives_the_same_digest() {
    let env = env().await;
    let app = common::demo();
    for component in ["chart", "module"] {
        let a = env
            .builder
            .build(&spec(&app, component, &format!("{component}-x")))
            .await
            .unwrap();
        let b = env
            .builder
            .build(&spec(&app, component, &format!("{component}-y")))
            .await
            .unwrap();
        assert_eq!(a.digest, b.digest, "{component} is not deterministic");
    }
    // And a copy of the tree elsewhere (new inodes, new mtimes) packages the same.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(
        &common::demo_root().join("chart"),
        &copy.path().join("chart"),
    );
    let env2 = common::env_with_root(copy.path().to_path_buf()).await;
    let a = env.builder.build(&spec(&app, "chart", "c1")).await.unwrap();
    let b = env2
        .builder
        .build(&spec(&app, "chart", "c1"))
        .await
        .unwrap();
    assert_eq!(a.digest, b.digest);
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[tokio::test]
async fn skopeo_sees_exactly_what_was_pushed() {
    let env = env().await;
    let app = common::demo();
    for (component, repo) in [
        ("chart", "vendor/demo/chart"),
        ("module", "vendor/demo/module"),
        ("base", "vendor/demo/base"),
    ] {
        let a = env
            .builder
            .build(&spec(&app, component, "b-skopeo"))
            .await
            .unwrap();
        let raw = skopeo_raw(&format!("{}/{repo}:b-skopeo", env.registry.host())).await;
        assert_eq!(sha256(&raw), a.digest.as_str(), "{component}");
        let pushed = env.manifest(repo, a.digest.as_str()).await;
        assert_eq!(raw, pushed.bytes.to_vec(), "{component}");
    }
}

#[tokio::test]
async fn bad_input_gets_errors_that_name_it() {
    let env = env().await;
    let app = common::demo();
    let chart = spec(&app, "chart", "bad-1");

    // A directory without Chart.yaml.
    let mut s = chart.clone();
    s.component.kind =
        ferry_core::domain::ComponentKind::helm_chart(ferry_core::domain::ChartSource::Dir {
            path: "module".into(),
        });
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(matches!(e, BuildError::NotAChart { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("no Chart.yaml") && msg.contains("module"),
        "{msg}"
    );

    // A missing directory.
    let mut s = spec(&app, "module", "bad-2");
    s.component.kind = ferry_core::domain::ComponentKind::OpentofuModule {
        dir: "no/such/dir".into(),
        source: None,
    };
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(matches!(e, BuildError::SourceMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("no/such/dir"), "{e}");

    // A path escaping the app root.
    s.component.kind = ferry_core::domain::ComponentKind::OpentofuModule {
        dir: "../../crates".into(),
        source: None,
    };
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(matches!(e, BuildError::InvalidPath { .. }), "{e:?}");
    assert!(e.to_string().contains(".."), "{e}");

    // A bad image reference.
    let mut s = spec(&app, "base", "bad-3");
    s.component.kind = ferry_core::domain::ComponentKind::Image {
        source: "Not A/Valid:ref!".into(),
    };
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(matches!(e, BuildError::InvalidReference { .. }), "{e:?}");
    assert!(e.to_string().contains("Not A/Valid:ref!"), "{e}");

    // A layout directory that is not there.
    s.component.kind = ferry_core::domain::ComponentKind::Image {
        source: "oci:missing-layout:v1".into(),
    };
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(e.to_string().contains("missing-layout"), "{e}");

    // An invalid Chart.yaml.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    std::fs::write(dir.path().join("c/Chart.yaml"), "apiVersion: v2\nname: c\n").unwrap();
    let env2 = common::env_with_root(dir.path().to_path_buf()).await;
    let mut s = chart.clone();
    s.component.kind =
        ferry_core::domain::ComponentKind::helm_chart(ferry_core::domain::ChartSource::Dir {
            path: "c".into(),
        });
    let e = env2.builder.build(&s).await.unwrap_err();
    assert!(e.to_string().contains("version is required"), "{e}");

    // Nothing was pushed for any of these.
    let tags = env
        .client
        .list_tags(&env.repo("vendor/demo/chart"))
        .await
        .unwrap_or_default();
    assert!(tags.is_empty(), "{tags:?}");
}

// ---- what travels with an imported image -------------------------------------------------------

/// An image component importing `source` into `repository`.
fn image_spec(source: &str, repository: &str, build_id: &str) -> ferry_core::ports::BuildSpec {
    let app = common::demo();
    let mut component = app.component("base").unwrap().clone();
    component.kind = ferry_core::domain::ComponentKind::Image {
        source: source.into(),
    };
    component.repository = ferry_core::id::Repository::new(repository).unwrap();
    ferry_core::ports::BuildSpec {
        build_id: ferry_core::id::BuildId::new(build_id).unwrap(),
        component,
        source_ref: String::new(),
    }
}

async fn put_manifest(
    env: &common::Env,
    repo: &str,
    reference: &str,
    bytes: Vec<u8>,
    media_type: &str,
) {
    let m = ferry_oci::Manifest::from_bytes(bytes::Bytes::from(bytes), media_type).unwrap();
    env.client
        .put_manifest(&env.repo(repo), reference, &m)
        .await
        .unwrap();
}

async fn put_blob(env: &common::Env, repo: &str, bytes: Vec<u8>) -> ferry_oci::Digest {
    let d = ferry_oci::Digest::of(&bytes);
    let size = bytes.len() as u64;
    let body: ferry_oci::ByteStream =
        Box::pin(futures::stream::iter([Ok(bytes::Bytes::from(bytes))]));
    env.client
        .upload_blob(&env.repo(repo), &d, size, body)
        .await
        .unwrap();
    d
}

#[tokio::test]
async fn an_imported_image_brings_its_cosign_signature_and_its_referrers() {
    use base64::Engine as _;
    let env = env().await;
    // The "external" image: the demo base image, in another repository of the registry.
    let app = common::demo();
    let base = env
        .builder
        .build(&spec(&app, "base", "b-up-1"))
        .await
        .unwrap();
    let upstream = "vendor/demo/base";
    let subject: ferry_oci::Digest = base.digest.as_str().parse().unwrap();

    // A cosign signature made by an independent signer, under cosign's tag.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/cosign/sign.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            subject.as_str(),
            &format!("{}/{upstream}", env.registry.host()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for b in signed["good"]["blobs"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b["b64"].as_str().unwrap())
            .unwrap();
        put_blob(&env, upstream, bytes).await;
    }
    let sig_tag = ferry_oci::cosign::signature_tag(&subject);
    let sig_manifest = signed["good"]["manifest"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    put_manifest(&env, upstream, &sig_tag, sig_manifest.clone(), OCI_MANIFEST).await;

    // An SBOM as an OCI 1.1 referrer.
    let sbom = put_blob(&env, upstream, br#"{"spdxVersion":"SPDX-2.3"}"#.to_vec()).await;
    let empty = put_blob(&env, upstream, b"{}".to_vec()).await;
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": OCI_EMPTY_CONFIG, "digest": empty.as_str(), "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom.as_str(), "size": 26}],
        "subject": {"mediaType": base.media_type, "digest": subject.as_str(), "size": base.size},
    }))
    .unwrap();
    let referrer_digest = ferry_oci::Digest::of(&referrer);
    put_manifest(
        &env,
        upstream,
        referrer_digest.as_str(),
        referrer,
        OCI_MANIFEST,
    )
    .await;

    let source = format!("{}/{upstream}@{subject}", env.registry.host());
    let imported = env
        .builder
        .build(&image_spec(&source, "demo/imported", "b-imp-1"))
        .await
        .unwrap();
    assert_eq!(imported.digest.as_str(), subject.as_str());
    let dest = env.repo("vendor/demo/imported");
    // The signature manifest is byte for byte the signer's, under the same tag…
    let copied = env.client.get_manifest(&dest, &sig_tag).await.unwrap();
    assert_eq!(copied.bytes.as_ref(), sig_manifest.as_slice());
    // …and still verifies with the signer's key at the destination.
    let key =
        ferry_oci::cosign::PublicKey::from_pem(signed["public_key"].as_str().unwrap()).unwrap();
    let policy = ferry_oci::cosign::Policy {
        keys: vec![key],
        require: ferry_oci::cosign::Requirement::AnyKey,
    };
    ferry_oci::cosign::verify(&env.client, &dest, &subject, &policy)
        .await
        .expect("the travelled signature verifies");
    // The SBOM referrer came along.
    let referrers = env.client.referrers(&dest, &subject).await.unwrap();
    assert!(
        referrers.iter().any(|d| d.digest == referrer_digest),
        "the SBOM referrer must travel: {referrers:?}"
    );
}

// ---- sources from git ----------------------------------------------------------------------------

fn sh_git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_git_source_is_fetched_at_a_ref_and_names_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    sh_git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("file.txt"), "one\n").unwrap();
    sh_git(&work, &["add", "."]);
    sh_git(&work, &["commit", "-q", "-m", "one"]);
    sh_git(&work, &["tag", "v1"]);
    let first = sh_git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("file.txt"), "two\n").unwrap();
    sh_git(&work, &["commit", "-q", "-am", "two"]);
    let second = sh_git(&work, &["rev-parse", "HEAD"]);
    let bare = tmp.path().join("repo.git");
    sh_git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", bare.display());

    for (reference, commit, content) in [
        ("v1", &first, "one\n"),
        ("main", &second, "two\n"),
        ("", &second, "two\n"),
        (first.as_str(), &first, "one\n"),
    ] {
        let dir = tmp.path().join(format!("co-{}", reference.len()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = ferry_build::git::checkout("web", &url, reference, &dir, None)
            .await
            .unwrap();
        assert_eq!(&c.commit, commit, "ref {reference:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("file.txt")).unwrap(),
            content
        );
    }
    let e = ferry_build::git::checkout("web", &url, "no-such-ref", &tmp.path().join("x"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("git fetch"), "{e}");
    let e = ferry_build::git::checkout(
        "web",
        "ext::sh -c touch% /tmp/pwned",
        "main",
        &tmp.path().join("y"),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("git fetch"), "{e}");
    let e = ferry_build::git::checkout("web", &url, "--upload-pack=x", &tmp.path().join("z"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("starts with '-'"), "{e}");
}

// ---- signature policy ------------------------------------------------------------------------------

/// Signs `subject` with tests/cosign/sign.py (an independent implementation of cosign's format).
fn cosign_sign(subject: &str, reference: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/cosign/sign.py");
    let out = std::process::Command::new("python3")
        .args([script, subject, reference])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Pushes one of sign.py's signature manifests (`good` or `tampered`) under `tag` in `repo`.
async fn push_signature(env: &common::Env, repo: &str, tag: &str, sig: &serde_json::Value) {
    use base64::Engine as _;
    for b in sig["blobs"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b["b64"].as_str().unwrap())
            .unwrap();
        put_blob(env, repo, bytes).await;
    }
    let manifest = sig["manifest"].as_str().unwrap().as_bytes().to_vec();
    put_manifest(env, repo, tag, manifest, OCI_MANIFEST).await;
}

fn with_policy(mut spec: ferry_core::ports::BuildSpec, key: &str) -> ferry_core::ports::BuildSpec {
    spec.component.verify = Some(ferry_core::domain::VerifyPolicy {
        keys: vec![key.to_string()],
        require: ferry_core::domain::KeyRequirement::Any,
    });
    spec
}

#[tokio::test]
async fn a_signature_policy_refuses_missing_wrong_and_tampered_signatures_and_imports_a_good_one() {
    let env = env().await;
    let app = common::demo();
    // The "external" image, in three upstream repositories of the registry.
    let mut digest = None;
    for repo in ["up/unsigned", "up/tampered", "up/good"] {
        let mut s = spec(&app, "base", &format!("b-{}", repo.replace('/', "-")));
        s.component.repository = ferry_core::id::Repository::new(repo).unwrap();
        digest = Some(env.builder.build(&s).await.unwrap().digest);
    }
    let subject: ferry_oci::Digest = digest.unwrap().as_str().parse().unwrap();
    let host = env.registry.host();
    let signed = cosign_sign(subject.as_str(), &format!("{host}/vendor/up/good"));
    let key = signed["public_key"].as_str().unwrap();
    let other = signed["other_public_key"].as_str().unwrap();
    let sig_tag = ferry_oci::cosign::signature_tag(&subject);
    push_signature(&env, "vendor/up/good", &sig_tag, &signed["good"]).await;
    push_signature(&env, "vendor/up/tampered", &sig_tag, &signed["tampered"]).await;

    let refused = [
        ("up/unsigned", key, "has no cosign signature"),
        ("up/good", other, "no valid signature by a policy key"),
        ("up/tampered", key, "does not verify"),
    ];
    for (i, (repo, k, why)) in refused.into_iter().enumerate() {
        let source = format!("{host}/vendor/{repo}:b-{}", repo.replace('/', "-"));
        let build_id = format!("b-refused-{i}");
        let s = with_policy(image_spec(&source, "demo/signed", &build_id), k);
        let result = env.builder.build(&s).await;
        let e = result.as_ref().unwrap_err();
        assert!(
            matches!(e, BuildError::PolicyFailed { .. }),
            "{repo}: {e:?}"
        );
        // The build record says why.
        let completed = ferry_build::BuiltArtifact::completed(&s.build_id, &result);
        let error = completed.error.unwrap();
        assert!(error.contains("signature policy not met"), "{error}");
        assert!(error.contains(why), "{repo}: {error}");
    }
    // Nothing was imported for any of them.
    let tags = env
        .client
        .list_tags(&env.repo("vendor/demo/signed"))
        .await
        .unwrap_or_default();
    assert!(tags.is_empty(), "{tags:?}");

    // A good signature passes; the image and its signature are in the vendor repository.
    let source = format!("{host}/vendor/up/good:b-up-good");
    let built = env
        .builder
        .build(&with_policy(
            image_spec(&source, "demo/signed", "b-good"),
            key,
        ))
        .await
        .unwrap();
    assert_eq!(built.digest.as_str(), subject.as_str());
    let dest = env.repo("vendor/demo/signed");
    let policy = ferry_oci::cosign::Policy::from_pems([key], false).unwrap();
    ferry_oci::cosign::verify(&env.client, &dest, &subject, &policy)
        .await
        .expect("the signature travelled with the image");

    // A policy on a kind Ferry builds itself is refused before anything runs.
    let mut s = spec(&app, "module", "b-mod-policy");
    s.component.verify = Some(ferry_core::domain::VerifyPolicy {
        keys: vec![key.to_string()],
        require: ferry_core::domain::KeyRequirement::Any,
    });
    let e = env.builder.build(&s).await.unwrap_err().to_string();
    assert!(e.contains("image components only"), "{e}");
}

// ---- builds from git ------------------------------------------------------------------------------

#[tokio::test]
async fn a_module_builds_from_its_git_repository_at_two_refs_with_the_commit_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("infra/module")).unwrap();
    sh_git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("infra/module/main.tf"), "# one\n").unwrap();
    sh_git(&work, &["add", "."]);
    sh_git(&work, &["commit", "-q", "-m", "one"]);
    sh_git(&work, &["tag", "v1"]);
    let first = sh_git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("infra/module/main.tf"), "# two\n").unwrap();
    sh_git(&work, &["commit", "-q", "-am", "two"]);
    let second = sh_git(&work, &["rev-parse", "HEAD"]);
    let bare = tmp.path().join("repo.git");
    sh_git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", bare.display());

    // The app root is not the repository: the component names its own.
    let env = env().await;
    let app = common::demo();
    let mut s = spec(&app, "module", "b-git-1");
    s.component.kind = ferry_core::domain::ComponentKind::OpentofuModule {
        dir: "module".into(),
        source: Some(ferry_core::domain::GitSource {
            git: url.clone(),
            reference: Some("v1".into()),
            path: Some("infra".into()),
        }),
    };
    s.source_ref = String::new();
    let at_v1 = env.builder.build(&s).await.unwrap();
    assert_eq!(at_v1.revision.as_deref(), Some(first.as_str()));
    // The request's ref overrides the component's.
    s.build_id = ferry_core::id::BuildId::new("b-git-2").unwrap();
    s.source_ref = "main".into();
    let at_main = env.builder.build(&s).await.unwrap();
    assert_eq!(at_main.revision.as_deref(), Some(second.as_str()));
    assert_ne!(at_v1.digest, at_main.digest, "two commits, two artifacts");

    for (built, commit) in [(&at_v1, &first), (&at_main, &second)] {
        let m = env
            .manifest_json("vendor/demo/module", built.digest.as_str())
            .await;
        let a = &m["annotations"];
        assert_eq!(
            a["org.opencontainers.image.revision"],
            commit.as_str(),
            "{m}"
        );
        assert_eq!(a["org.opencontainers.image.source"], url.as_str(), "{m}");
        // The build record gets the commit through build.completed.
        let completed = ferry_build::BuiltArtifact::completed(&s.build_id, &Ok(built.clone()));
        assert_eq!(completed.revision.as_deref(), Some(commit.as_str()));
    }
    // Building the same commit again gives the same digest.
    s.build_id = ferry_core::id::BuildId::new("b-git-3").unwrap();
    s.source_ref = first.clone();
    assert_eq!(env.builder.build(&s).await.unwrap().digest, at_v1.digest);

    // A source path escaping the checkout is refused.
    if let ferry_core::domain::ComponentKind::OpentofuModule { source, .. } = &mut s.component.kind
    {
        source.as_mut().unwrap().path = Some("../..".into());
    }
    let e = env.builder.build(&s).await.unwrap_err();
    assert!(matches!(e, BuildError::InvalidPath { .. }), "{e:?}");
}
