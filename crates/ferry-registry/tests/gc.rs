//! Garbage collection and retention through the library API, observed over HTTP and on disk.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn blob_on_disk(r: &Registry, d: &str) -> bool {
    r.root().join("blobs/sha256").join(&d[7..]).exists()
}

#[tokio::test]
async fn gc_removes_unreferenced_blobs_and_keeps_referenced_ones() {
    let r = Registry::start().await;
    let (m1, _, l1) = r.push_image("vendor/app", "v1", b"layer one").await;
    let orphan = r.push_blob("vendor/app", b"orphan").await;
    let (m2, _, l2) = r.push_image("installs/a/app", "v1", b"layer two").await;
    // Untagged but still linked manifests are roots too.
    let (m3, _, l3) = r.push_image("installs/a/app", "v3", b"layer three").await;
    let del = r
        .client
        .delete(r.url("/v2/installs/a/app/manifests/v3"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    // Unlinked manifest: its blobs become garbage.
    let del = r
        .client
        .delete(r.url(&format!("/v2/installs/a/app/manifests/{m2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let config = digest(br#"{"architecture":"amd64","os":"linux"}"#);

    // Within the grace period nothing goes.
    let report = r
        .running()
        .storage()
        .collect_garbage(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(report.blobs_in_grace, 3);
    assert!(blob_on_disk(&r, &orphan));

    let report = r
        .running()
        .storage()
        .collect_garbage(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.blobs_removed, 3, "{report:?}");
    for gone in [&orphan, &m2, &l2] {
        assert!(!blob_on_disk(&r, gone), "{gone} should be swept");
    }
    for kept in [&m1, &l1, &m3, &l3, &config] {
        assert!(blob_on_disk(&r, kept), "{kept} should be kept");
    }
    assert!(report.links_removed >= 2);
    assert_eq!(
        r.head(&format!("/v2/vendor/app/blobs/{orphan}"))
            .await
            .status(),
        404
    );
    assert_eq!(r.get("/v2/vendor/app/manifests/v1").await.status(), 200);
    assert_eq!(
        r.get(&format!("/v2/installs/a/app/manifests/{m3}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{l1}"))
            .await
            .as_ref(),
        b"layer one"
    );
}

#[tokio::test]
async fn gc_leaves_in_flight_uploads_alone() {
    let r = Registry::start().await;
    let loc = r.start_upload("vendor/app").await;
    r.patch_chunk(&loc, b"half".to_vec()).await;
    r.running()
        .storage()
        .collect_garbage(Duration::ZERO)
        .await
        .unwrap();
    let d = digest(b"half done");
    let resp = r
        .client
        .put(r.url(&format!("{loc}?digest={d}")))
        .body(b" done".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{d}"))
            .await
            .as_ref(),
        b"half done"
    );
}

#[tokio::test]
async fn retention_keeps_last_n_plus_in_use_and_their_references() {
    let r = Registry::start().await;
    let repo = "installs/acme/app";
    let (d1, _, l1) = r.push_image(repo, "v1", b"one").await;
    let (d2, _, l2) = r.push_image(repo, "v2", b"two").await;
    let (d3, m3, l3) = r.push_image(repo, "v3", b"three").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d3, "size": m3.len()}],
    }))
    .unwrap();
    assert_eq!(
        r.put_manifest(repo, "multi", OCI_INDEX, &index)
            .await
            .status(),
        201
    );
    let index_digest = digest(&index);
    let (_, _, l4) = r.push_image(repo, "v4", b"four").await;
    let (d5, m5, _) = r.push_image(repo, "v5", b"five").await;
    // A signature referring to v5 stays with it.
    let empty = r.push_blob(repo, b"{}").await;
    let sig_layer = r.push_blob(repo, b"signature").await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sig_layer, "size": 9}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": d5, "size": m5.len()},
    }))
    .unwrap();
    let sig_digest = digest(&sig);
    assert_eq!(
        r.put_manifest(repo, &sig_digest, OCI_MANIFEST, &sig)
            .await
            .status(),
        201
    );

    let report = r
        .running()
        .storage()
        .apply_retention(
            repo,
            2,
            vec![d1.clone(), index_digest.clone()],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(report.tags_removed, ["v2"]);
    let mut kept = report.tags_kept.clone();
    kept.sort();
    assert_eq!(kept, ["multi", "v1", "v3", "v4", "v5"]);
    assert_eq!(report.manifests_unlinked, vec![d2.clone()]);
    assert_eq!(report.gc.blobs_removed, 2, "{report:?}");

    assert!(!blob_on_disk(&r, &l2));
    assert!(!blob_on_disk(&r, &d2));
    for kept in [&l1, &l3, &l4, &sig_layer, &sig_digest, &index_digest] {
        assert!(blob_on_disk(&r, kept), "{kept}");
    }
    assert_oci_error(
        r.get(&format!("/v2/{repo}/manifests/v2")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        r.get(&format!("/v2/{repo}/manifests/{d1}")).await.status(),
        200
    );
    let referrers: Value = r
        .get(&format!("/v2/{repo}/referrers/{d5}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(referrers["manifests"][0]["digest"], sig_digest.as_str());
    let tags: Value = r
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["multi", "v1", "v3", "v4", "v5"]));
}

#[tokio::test]
async fn abandoned_upload_sessions_expire() {
    let r = Registry::start().await;
    let loc = r.start_upload("vendor/app").await;
    r.patch_chunk(&loc, b"partial".to_vec()).await;
    let storage = r.running().storage();
    assert_eq!(storage.expire_uploads(Duration::from_secs(3600)), 0);
    assert_eq!(r.get(&loc).await.status(), 204);
    assert_eq!(storage.expire_uploads(Duration::ZERO), 1);
    assert_oci_error(r.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(
        std::fs::read_dir(r.root().join("uploads")).unwrap().count(),
        0
    );
}
