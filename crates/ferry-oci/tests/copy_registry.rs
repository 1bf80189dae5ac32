//! Registry-to-registry copies between two real docker-registry instances, judged by skopeo:
//! images, multi-platform indexes, referrers, repeated and incremental copies, fan-out and
//! tags that already hold the digest.

mod support;
// Cosign signature verification against the same real registry.
#[path = "signatures/cosign_verify.rs"]
mod cosign_verify;

use std::collections::BTreeMap;

use ferry_oci::media::Platform;
use ferry_oci::CopyOptions;
use support::corpus::{referrers_tag, sha256};
use support::ferry::{client_with, copy, copy_with};
use support::registry::http_status;
use support::skopeo::inspect_raw;
use support::*;

fn blob_status(reg: &DockerRegistry, repo: &str, digest: &str) -> u16 {
    http_status(reg.addr(), "HEAD", &format!("/v2/{repo}/blobs/{digest}")).unwrap_or(0)
}

#[tokio::test]
async fn multi_layer_image_is_copied_byte_for_byte() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "team/app", "v1", 10);

    let report = copy(
        &format!("{}/team/app:v1", src.addr()),
        &[format!("{}/mirror/app:v1", dst.addr())],
    )
    .await
    .expect("copy");

    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(img.manifest.digest.clone())
    );
    assert_eq!(report.blobs_copied, 6, "5 layers + config: {report:?}");
    let total: u64 = img.layers.iter().chain([&img.config]).map(|b| b.size).sum();
    assert_eq!(report.bytes_copied, total);
    let s = inspect_raw(&format!("{}/team/app:v1", src.addr()));
    let d = inspect_raw(&format!("{}/mirror/app:v1", dst.addr()));
    assert_eq!(s, d, "manifest bytes differ");
    assert_eq!(sha256(&d), img.manifest.digest);
    for b in img.layers.iter().chain([&img.config]) {
        assert_eq!(
            blob_status(&dst, "mirror/app", &b.digest),
            200,
            "{} missing",
            b.digest
        );
    }
}

#[tokio::test]
async fn multi_platform_index_copies_every_platform() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let idx = push_multi_platform(src.addr(), "multi/app", "v1", 20);

    let report = copy(
        &format!("{}/multi/app:v1", src.addr()),
        &[format!("{}/multi/app:v1", dst.addr())],
    )
    .await
    .expect("copy");

    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(idx.index.digest.clone())
    );
    assert_eq!(
        inspect_raw(&format!("{}/multi/app:v1", src.addr())),
        inspect_raw(&format!("{}/multi/app:v1", dst.addr()))
    );
    for child in &idx.children {
        let s = inspect_raw(&format!(
            "{}/multi/app@{}",
            src.addr(),
            child.manifest.digest
        ));
        let d = inspect_raw(&format!(
            "{}/multi/app@{}",
            dst.addr(),
            child.manifest.digest
        ));
        assert_eq!(s, d);
        assert_eq!(d, child.manifest_bytes);
        for b in child.layers.iter().chain([&child.config]) {
            assert_eq!(blob_status(&dst, "multi/app", &b.digest), 200);
        }
    }
}

#[tokio::test]
async fn platform_option_copies_one_child() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let idx = push_multi_platform(src.addr(), "multi/app", "v1", 21);
    let arm = &idx.children[1];
    let amd = &idx.children[0];

    let options = CopyOptions {
        platform: Some(Platform::parse("linux/arm64").expect("platform")),
        ..CopyOptions::default()
    };
    let report = copy_with(
        client_with(Default::default()),
        &format!("{}/multi/app:v1", src.addr()),
        &[format!("{}/one/app:v1", dst.addr())],
        options,
    )
    .await
    .expect("copy");

    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(arm.manifest.digest.clone())
    );
    assert_eq!(
        inspect_raw(&format!("{}/one/app:v1", dst.addr())),
        arm.manifest_bytes
    );
    assert_eq!(
        dst.manifest_status("one/app", &amd.manifest.digest),
        404,
        "amd64 was copied too"
    );
    assert_eq!(
        dst.manifest_status("one/app", &idx.index.digest),
        404,
        "index was copied too"
    );
    assert_eq!(blob_status(&dst, "one/app", &amd.layers[0].digest), 404);
}

#[tokio::test]
async fn referrers_are_copied_when_asked() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let wr = push_with_referrer(src.addr(), "signed/app", "v1", 30);
    let fallback = referrers_tag(&wr.image.manifest.digest);

    // Without the option: the image only.
    copy(
        &format!("{}/signed/app:v1", src.addr()),
        &[format!("{}/plain/app:v1", dst.addr())],
    )
    .await
    .expect("copy without referrers");
    assert_eq!(dst.manifest_status("plain/app", &wr.referrer.digest), 404);

    let options = CopyOptions {
        referrers: true,
        ..CopyOptions::default()
    };
    let report = copy_with(
        client_with(Default::default()),
        &format!("{}/signed/app:v1", src.addr()),
        &[format!("{}/signed/app:v1", dst.addr())],
        options,
    )
    .await
    .expect("copy with referrers");
    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(wr.image.manifest.digest.clone())
    );
    // The referrer itself, byte for byte.
    let d = inspect_raw(&format!("{}/signed/app@{}", dst.addr(), wr.referrer.digest));
    assert_eq!(d, wr.referrer_bytes);
    // And discoverable the way a client without the referrers API looks: the tag-schema index.
    let idx = inspect_raw(&format!("{}/signed/app:{fallback}", dst.addr()));
    let idx: serde_json::Value = serde_json::from_slice(&idx).expect("fallback index is JSON");
    let listed: Vec<&str> = idx["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert!(listed.contains(&wr.referrer.digest.as_str()), "{idx}");
}

#[tokio::test]
async fn repeated_copy_uploads_nothing_and_skips_the_tag_put() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "rep/app", "v1", 40);
    let from = format!("{}/rep/app:v1", src.addr());
    let to = vec![format!("{}/rep/app:v1", dst.addr())];
    copy(&from, &to).await.expect("first copy");

    let mark = dst.mark();
    let report = copy(&from, &to).await.expect("second copy");
    let log = dst.requests_since(mark);
    assert_eq!(report.blobs_copied, 0, "{report:?}");
    assert_eq!(report.bytes_copied, 0);
    assert_eq!(report.blobs_skipped, 6);
    assert!(
        !log.iter().any(|r| r.is_blob_write()),
        "blob writes on a repeated copy: {log:?}"
    );
    // The tag already holds the digest (immutable-tag style): no PUT of the tag.
    assert!(
        !log.iter()
            .any(|r| r.is_manifest_put() && r.path.ends_with("/manifests/v1")),
        "tag re-put: {log:?}"
    );
    assert_eq!(sha256(&inspect_raw(&to[0])), img.manifest.digest);
}

#[tokio::test]
async fn incremental_copy_moves_only_changed_blobs() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let v1 = push_image_with_layers(src.addr(), "inc/app", "v1", &[1, 2, 3, 4, 5]);
    let v2 = push_image_with_layers(src.addr(), "inc/app", "v2", &[1, 2, 3, 4, 99]);
    copy(
        &format!("{}/inc/app:v1", src.addr()),
        &[format!("{}/inc/app:v1", dst.addr())],
    )
    .await
    .expect("v1");

    let mark = dst.mark();
    let report = copy(
        &format!("{}/inc/app:v2", src.addr()),
        &[format!("{}/inc/app:v2", dst.addr())],
    )
    .await
    .expect("v2");

    // The config lists the layers' diff ids, so it changes with the layer: two new blobs.
    let changed = &v2.layers[4];
    assert_ne!(changed.digest, v1.layers[4].digest);
    assert_eq!(report.blobs_copied, 2, "changed layer + config: {report:?}");
    assert_eq!(report.bytes_copied, changed.size + v2.config.size);
    assert_eq!(report.blobs_skipped, 4);
    let puts: Vec<_> = dst
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.is_blob_write() && r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!(
        inspect_raw(&format!("{}/inc/app:v2", dst.addr())),
        v2.manifest_bytes
    );
}

#[tokio::test]
async fn fan_out_reads_each_source_blob_once() {
    let src = DockerRegistry::start();
    let dsts: Vec<DockerRegistry> = (0..3).map(|_| DockerRegistry::start()).collect();
    let img = push_multi_layer(src.addr(), "fan/app", "v1", 50);
    let to: Vec<String> = dsts
        .iter()
        .map(|d| format!("{}/fan/app:v1", d.addr()))
        .collect();

    let mark = src.mark();
    let report = copy(&format!("{}/fan/app:v1", src.addr()), &to)
        .await
        .expect("fan-out copy");

    let mut gets: BTreeMap<String, usize> = BTreeMap::new();
    for r in src.requests_since(mark).iter().filter(|r| r.is_blob_get()) {
        let digest = r.path.rsplit('/').next().unwrap_or_default().to_string();
        *gets.entry(digest).or_default() += 1;
    }
    assert_eq!(gets.len(), 6, "every blob read: {gets:?}");
    assert!(
        gets.values().all(|&n| n == 1),
        "a blob was read more than once: {gets:?}"
    );
    assert_eq!(report.blobs_copied, 6);
    let total: u64 = img.layers.iter().chain([&img.config]).map(|b| b.size).sum();
    assert_eq!(
        report.bytes_copied, total,
        "bytes are counted once, whatever the fan-out"
    );
    for t in &to {
        assert_eq!(inspect_raw(t), img.manifest_bytes, "{t}");
    }
}
