//! Distribution-spec behaviour of the embedded registry, over HTTP with reqwest: ranges,
//! mounts, referrers, pagination, chunked uploads, immutable tags, namespaces.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn version_check_answers_json() {
    let r = Registry::start().await;
    let resp = r.get("/v2/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(resp.text().await.unwrap(), "{}");
}

#[tokio::test]
async fn manifest_round_trip_by_tag_and_digest_with_headers() {
    let r = Registry::start().await;
    let (digest, manifest, layer) = r
        .push_image("installs/acme/app/web", "v1", b"layer-bytes")
        .await;
    for reference in ["v1", digest.as_str()] {
        let resp = r
            .get(&format!("/v2/installs/acme/app/web/manifests/{reference}"))
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), manifest.as_slice());
        let head = r
            .head(&format!("/v2/installs/acme/app/web/manifests/{reference}"))
            .await;
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"],
            manifest.len().to_string().as_str()
        );
        assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    }
    let blob = r
        .head(&format!("/v2/installs/acme/app/web/blobs/{layer}"))
        .await;
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.headers()["content-length"], "11");
    // A blob known globally but not linked into another repository is unknown there.
    let other = r.get(&format!("/v2/vendor/other/blobs/{layer}")).await;
    assert_oci_error(other, 404, "BLOB_UNKNOWN").await;
    // Delete by tag removes the tag only; delete by digest removes the manifest.
    let del = r
        .client
        .delete(r.url("/v2/installs/acme/app/web/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    assert_oci_error(
        r.get("/v2/installs/acme/app/web/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        r.get(&format!("/v2/installs/acme/app/web/manifests/{digest}"))
            .await
            .status(),
        200
    );
    let del = r
        .client
        .delete(r.url(&format!("/v2/installs/acme/app/web/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    assert_oci_error(
        r.get(&format!("/v2/installs/acme/app/web/manifests/{digest}"))
            .await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn range_get_returns_206_with_exact_bytes() {
    let r = Registry::start().await;
    let data = bytes(7, 10_000);
    let d = r.push_blob("vendor/app", &data).await;
    let path = format!("/v2/vendor/app/blobs/{d}");
    let cases: [(&str, usize, usize); 3] = [
        ("bytes=100-199", 100, 199),
        ("bytes=9990-", 9990, 9999),
        ("bytes=-10", 9990, 9999),
    ];
    for (range, a, b) in cases {
        let resp = r
            .client
            .get(r.url(&path))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes {a}-{b}/10000").as_str()
        );
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[a..=b]);
    }
    let full = r.get(&path).await;
    assert_eq!(full.status(), 200);
    assert_eq!(full.bytes().await.unwrap().as_ref(), data.as_slice());
    let bad = r
        .client
        .get(r.url(&path))
        .header("range", "bytes=20000-")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(bad.headers()["content-range"], "bytes */10000");
}

#[tokio::test]
async fn mount_links_existing_blob_and_falls_back_to_session() {
    let r = Registry::start().await;
    let d = r.push_blob("vendor/app", b"shared layer").await;
    let resp = r
        .client
        .post(r.url(&format!(
            "/v2/installs/acme/app/blobs/uploads/?mount={d}&from=vendor/app"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["docker-content-digest"], d.as_str());
    assert_eq!(
        resp.headers()["location"],
        format!("/v2/installs/acme/app/blobs/{d}").as_str()
    );
    let got = r.get(&format!("/v2/installs/acme/app/blobs/{d}")).await;
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"shared layer");

    // Unknown in the source repository: a normal upload session instead.
    let missing = digest(b"not there");
    let resp = r
        .client
        .post(r.url(&format!(
            "/v2/installs/acme/app/blobs/uploads/?mount={missing}&from=vendor/app"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/v2/installs/acme/app/blobs/uploads/"),
        "{location}"
    );
    assert_eq!(resp.headers()["range"], "0-0");
    assert!(resp.headers().contains_key("docker-upload-uuid"));
    assert_oci_error(
        r.get(&format!("/v2/installs/acme/app/blobs/{missing}"))
            .await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn referrers_list_subjects_with_filter_and_oci_subject_header() {
    let r = Registry::start().await;
    let repo = "vendor/app";
    let (subject, manifest, _) = r.push_image(repo, "v1", b"layer").await;
    let empty = r.push_blob(repo, b"{}").await;
    let mut referrer_digests = Vec::new();
    for (artifact_type, payload) in [
        ("application/vnd.example.sbom", "sbom"),
        ("application/vnd.example.sig", "sig"),
    ] {
        let layer = r.push_blob(repo, payload.as_bytes()).await;
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": manifest.len()},
            "annotations": {"org.example.kind": payload},
        }))
        .unwrap();
        let d = digest(&body);
        let resp = r.put_manifest(repo, &d, OCI_MANIFEST, &body).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["oci-subject"], subject.as_str());
        referrer_digests.push(d);
    }
    let resp = r.get(&format!("/v2/{repo}/referrers/{subject}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], OCI_INDEX);
    assert!(!resp.headers().contains_key("oci-filters-applied"));
    let index: Value = resp.json().await.unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    for d in &referrer_digests {
        assert!(listed.contains(&d.as_str()));
    }

    let resp = r
        .get(&format!(
            "/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.sig"
        ))
        .await;
    assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
    let index: Value = resp.json().await.unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], referrer_digests[1].as_str());
    assert_eq!(manifests[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(manifests[0]["annotations"]["org.example.kind"], "sig");

    // Deleting a referrer removes it from the list.
    let del = r
        .client
        .delete(r.url(&format!("/v2/{repo}/manifests/{}", referrer_digests[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let index: Value = r
        .get(&format!("/v2/{repo}/referrers/{subject}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);

    // A subject with no referrers: an empty index.
    let other = digest(b"nothing");
    let index: Value = r
        .get(&format!("/v2/{repo}/referrers/{other}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let r = Registry::start().await;
    let (digest, manifest, _) = r.push_image("vendor/app", "t0", b"x").await;
    for t in ["t1", "t2", "t3", "t4"] {
        assert_eq!(
            r.put_manifest("vendor/app", t, OCI_MANIFEST, &manifest)
                .await
                .status(),
            201
        );
    }
    assert!(!digest.is_empty());
    let mut seen = Vec::new();
    let mut next = Some("/v2/vendor/app/tags/list?n=2".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let resp = r.get(&path).await;
        assert_eq!(resp.status(), 200);
        next = resp.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_string()
        });
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["name"], "vendor/app");
        let tags = body["tags"].as_array().unwrap();
        assert!(tags.len() <= 2);
        seen.extend(tags.iter().map(|t| t.as_str().unwrap().to_string()));
        pages += 1;
        assert!(pages < 10);
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(pages, 3);

    for repo in ["vendor/b", "installs/x/c", "installs/x/d"] {
        r.push_blob(repo, b"blob").await;
    }
    let resp = r.get("/v2/_catalog?n=2").await;
    let link = resp.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/_catalog?n=2&last=installs/x/d>; rel=\"next\"");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["repositories"],
        json!(["installs/x/c", "installs/x/d"])
    );
    let body: Value = r
        .get("/v2/_catalog?n=2&last=installs/x/d")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["repositories"], json!(["vendor/app", "vendor/b"]));
    let body: Value = r.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(body["repositories"].as_array().unwrap().len(), 4);

    assert_oci_error(
        r.get("/v2/vendor/none/tags/list").await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn chunked_upload_in_order_and_out_of_order_refused() {
    let r = Registry::start().await;
    let data = bytes(3, 3000);
    let d = digest(&data);
    let resp = r
        .client
        .post(r.url("/v2/vendor/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let mut location = resp.headers()["location"].to_str().unwrap().to_string();
    for (i, chunk) in data.chunks(1000).enumerate() {
        let start = i * 1000;
        let resp = r
            .client
            .patch(r.url(&location))
            .header(
                "content-range",
                format!("{}-{}", start, start + chunk.len() - 1),
            )
            .header("content-type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(
            resp.headers()["range"],
            format!("0-{}", start + chunk.len() - 1).as_str()
        );
        location = resp.headers()["location"].to_str().unwrap().to_string();
        // A chunk sent again at an old offset is refused with 416 and the current range.
        if i == 1 {
            let resp = r
                .client
                .patch(r.url(&location))
                .header("content-range", "0-999")
                .body(data[..1000].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.headers()["range"], "0-1999");
            assert_oci_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
        }
    }
    let status = r.get(&location).await;
    assert_eq!(status.status(), 204);
    assert_eq!(status.headers()["range"], "0-2999");
    // Not visible before the final PUT.
    assert_eq!(
        r.head(&format!("/v2/vendor/app/blobs/{d}")).await.status(),
        404
    );
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = r
        .client
        .put(r.url(&format!("{location}{sep}digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["docker-content-digest"], d.as_str());
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{d}"))
            .await
            .as_ref(),
        data.as_slice()
    );
    // The session is gone.
    assert_oci_error(r.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn session_put_with_final_chunk_and_wrong_digest() {
    let r = Registry::start().await;
    let location = r.start_upload("vendor/app").await;
    r.patch_chunk(&location, b"hello ".to_vec()).await;
    let d = digest(b"hello world");
    let resp = r
        .client
        .put(r.url(&format!("{location}?digest={d}")))
        .body(b"world".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{d}"))
            .await
            .as_ref(),
        b"hello world"
    );

    // Wrong digest: refused, nothing visible under either digest.
    let location = r.start_upload("vendor/app").await;
    let claimed = digest(b"something else");
    let resp = r
        .client
        .put(r.url(&format!("{location}?digest={claimed}")))
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 400, "DIGEST_INVALID").await;
    assert_eq!(
        r.head(&format!("/v2/vendor/app/blobs/{claimed}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        r.head(&format!("/v2/vendor/app/blobs/{}", digest(b"actual")))
            .await
            .status(),
        404
    );

    // Monolithic with a wrong digest.
    let resp = r
        .client
        .post(r.url(&format!("/v2/vendor/app/blobs/uploads/?digest={claimed}")))
        .body(b"actual".to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 400, "DIGEST_INVALID").await;
    assert!(!r
        .root()
        .join("blobs/sha256")
        .join(&digest(b"actual")[7..])
        .exists());
    r.assert_alive().await;
}

#[tokio::test]
async fn immutable_tags_refuse_moves_but_accept_same_digest() {
    let r = Registry::start_with(|b| b.immutable_tags("installs")).await;
    let repo = "installs/acme/app";
    let (d1, m1, _) = r.push_image(repo, "v1", b"one").await;
    // Same digest again: fine.
    let resp = r.put_manifest(repo, "v1", OCI_MANIFEST, &m1).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["docker-content-digest"], d1.as_str());
    // A different manifest under the same tag: refused, tag unchanged.
    let (_, m2, _) = r.push_image(repo, "v2", b"two").await;
    let msg = assert_oci_error(
        r.put_manifest(repo, "v1", OCI_MANIFEST, &m2).await,
        409,
        "TAG_INVALID",
    )
    .await;
    assert!(msg.contains("immutable"), "{msg}");
    let got = r.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(got.headers()["docker-content-digest"], d1.as_str());
    // Other prefixes stay mutable.
    let (_, _, _) = r.push_image("vendor/app", "v1", b"one").await;
    let (_, m3, _) = r.push_image("vendor/app", "v2", b"two").await;
    assert_eq!(
        r.put_manifest("vendor/app", "v1", OCI_MANIFEST, &m3)
            .await
            .status(),
        201
    );
    // Runtime setting through the library.
    r.running().storage().set_immutable("vendor/app").unwrap();
    assert_oci_error(
        r.put_manifest("vendor/app", "v2", OCI_MANIFEST, &m1).await,
        409,
        "TAG_INVALID",
    )
    .await;
}

#[tokio::test]
async fn namespaces_limit_which_repositories_exist() {
    let r = Registry::start_with(|b| b.namespace("vendor").namespace("installs/acme")).await;
    r.push_blob("vendor/app", b"a").await;
    r.push_blob("installs/acme/app", b"a").await;
    let resp = r
        .client
        .post(r.url("/v2/installs/other/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 404, "NAME_UNKNOWN").await;
    let resp = r
        .client
        .post(r.url("/v2/vendorx/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 404, "NAME_UNKNOWN").await;
    r.running()
        .storage()
        .add_namespace("installs/other")
        .unwrap();
    r.push_blob("installs/other/app", b"a").await;
    let body: Value = r.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        body["repositories"],
        json!(["installs/acme/app", "installs/other/app", "vendor/app"])
    );
}

#[tokio::test]
async fn index_requires_children_present() {
    let r = Registry::start().await;
    let repo = "vendor/multi";
    let (child, child_bytes, _) = r.push_image(repo, "amd64", b"layer").await;
    let missing = digest(b"not a manifest");
    let index = |children: &[(&str, usize)]| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children.iter().map(|(d, s)| json!({"mediaType": OCI_MANIFEST, "digest": d, "size": s})).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let bad = index(&[(&child, child_bytes.len()), (&missing, 10)]);
    let resp = r.put_manifest(repo, "latest", OCI_INDEX, &bad).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], missing.as_str());
    let good = index(&[(&child, child_bytes.len())]);
    let resp = r.put_manifest(repo, "latest", OCI_INDEX, &good).await;
    assert_eq!(resp.status(), 201);
    let got = r.get(&format!("/v2/{repo}/manifests/latest")).await;
    assert_eq!(got.headers()["content-type"], OCI_INDEX);
}

#[tokio::test]
async fn chunk_length_must_match_content_range() {
    let r = Registry::start().await;
    let loc = r.start_upload("vendor/app").await;
    let resp = r
        .client
        .patch(r.url(&loc))
        .header("content-range", "0-99")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    let msg = assert_oci_error(resp, 400, "BLOB_UPLOAD_INVALID").await;
    assert!(msg.contains("100 bytes"), "{msg}");
    let resp = r
        .client
        .patch(r.url(&loc))
        .header("content-range", "5-2")
        .body(vec![1u8; 4])
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
    // Rolled back: still at 0, and a correct chunk is accepted.
    assert_eq!(r.get(&loc).await.headers()["range"], "0-0");
    let resp = r
        .client
        .patch(r.url(&loc))
        .header("content-range", "0-9")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["range"], "0-9");
}
