//! Robustness: concurrent overlapping uploads, clients that vanish mid-upload, restarts on the
//! same root, and bad input that must get clean 4xx OCI errors while the server keeps serving.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn blob_files(r: &Registry) -> Vec<String> {
    std::fs::read_dir(r.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn dir_is_empty(path: &std::path::Path) -> bool {
    std::fs::read_dir(path).unwrap().next().is_none()
}

/// Polls `cond` until true or a 10 s deadline.
async fn eventually(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_overlapping_uploads_store_each_blob_once_intact() {
    let r = Registry::start().await;
    let contents: Vec<Vec<u8>> = (0..10)
        .map(|i| bytes(100 + i, 64 * 1024 + i as usize))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let data = contents[i % 10].clone();
        let client = r.client.clone();
        let base = r.running().url();
        let repo = format!("vendor/app{}", i % 3);
        tasks.push(tokio::spawn(async move {
            let d = digest(&data);
            if i % 2 == 0 {
                let resp = client
                    .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                    .body(data)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            } else {
                // Session: two PATCH chunks, then PUT.
                let resp = client
                    .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202);
                let loc = resp.headers()["location"].to_str().unwrap().to_string();
                let mid = data.len() / 2;
                for (start, chunk) in [(0, &data[..mid]), (mid, &data[mid..])] {
                    let resp = client
                        .patch(format!("{base}{loc}"))
                        .header(
                            "content-range",
                            format!("{}-{}", start, start + chunk.len() - 1),
                        )
                        .body(chunk.to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202);
                }
                let resp = client
                    .put(format!("{base}{loc}?digest={d}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            }
            (repo, d)
        }));
    }
    let mut linked = HashSet::new();
    for t in tasks {
        linked.insert(t.await.unwrap());
    }
    let files = blob_files(&r);
    assert_eq!(files.len(), 10, "each distinct content stored exactly once");
    for file in files {
        let data = std::fs::read(r.root().join("blobs/sha256").join(&file)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            file,
            "blob on disk is intact"
        );
    }
    for (repo, d) in linked {
        let got = r
            .get(&format!("/v2/{repo}/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(digest(&got), d);
    }
    assert!(dir_is_empty(&r.root().join("uploads")));
    assert!(dir_is_empty(&r.root().join("tmp")));
}

#[tokio::test]
async fn client_disconnecting_mid_upload_leaves_nothing_visible() {
    let r = Registry::start().await;
    let data = bytes(5, 100_000);
    let d = digest(&data);

    // Monolithic POST that promises 100000 bytes, sends 30000, and hangs up.
    let mut sock = tokio::net::TcpStream::connect(r.running().addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v2/vendor/app/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        data.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&data[..30_000]).await.unwrap();
    sock.flush().await.unwrap();
    drop(sock);

    // A session whose second chunk is cut off rolls back to the end of the first chunk.
    let loc = r.start_upload("vendor/app").await;
    let resp = r
        .client
        .patch(r.url(&loc))
        .header("content-range", "0-999")
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let mut sock = tokio::net::TcpStream::connect(r.running().addr())
        .await
        .unwrap();
    let head = format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Range: 1000-99999\r\nContent-Length: 99000\r\n\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&data[1000..20_000]).await.unwrap();
    sock.flush().await.unwrap();
    drop(sock);

    let uploads = r.root().join("uploads");
    // Only the still-open session's file may remain once the aborted POST is cleaned up.
    eventually(
        || std::fs::read_dir(&uploads).unwrap().count() == 1,
        "aborted upload file removed",
    )
    .await;
    let mut offset = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = r.get(&loc).await;
        assert_eq!(status.status(), 204);
        offset = status.headers()["range"].to_str().unwrap().to_string();
        if offset == "0-999" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(offset, "0-999", "cut-off chunk rolled back");

    assert_eq!(
        r.head(&format!("/v2/vendor/app/blobs/{d}")).await.status(),
        404
    );
    assert!(blob_files(&r).is_empty(), "no blob committed");

    // The session resumes and completes correctly from where it really is.
    let resp = r
        .client
        .patch(r.url(&loc))
        .header("content-range", format!("1000-{}", data.len() - 1))
        .body(data[1000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = r
        .client
        .put(r.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{d}"))
            .await
            .as_ref(),
        data.as_slice()
    );
}

#[tokio::test]
async fn restart_on_same_root_serves_everything_committed() {
    let mut r = Registry::start_with(|b| b.immutable_tags("vendor")).await;
    let (d1, m1, layer) = r.push_image("vendor/app", "v1", b"layer one").await;
    let (_, m2, _) = r.push_image("installs/acme/app", "v2", b"layer two").await;
    // An upload in progress when the server dies is simply gone.
    let loc = r.start_upload("vendor/app").await;

    // Kill (drop, no graceful drain) and start again on the same root.
    drop(r.running.take());
    r.restart().await;
    let got = r.get("/v2/vendor/app/manifests/v1").await;
    assert_eq!(got.headers()["docker-content-digest"], d1.as_str());
    assert_eq!(got.bytes().await.unwrap().as_ref(), m1.as_slice());
    assert_eq!(
        r.get_bytes("/v2/installs/acme/app/manifests/v2")
            .await
            .as_ref(),
        m2.as_slice()
    );
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{layer}"))
            .await
            .as_ref(),
        b"layer one"
    );
    let tags: serde_json::Value = r
        .get("/v2/vendor/app/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["v1"]));
    assert_oci_error(r.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    // Settings survive too: the tag is still immutable.
    let (_, m3, _) = r.push_image("vendor/app", "v3", b"layer three").await;
    assert_oci_error(
        r.put_manifest("vendor/app", "v1", OCI_MANIFEST, &m3).await,
        409,
        "TAG_INVALID",
    )
    .await;
    // Graceful restart as well.
    r.restart().await;
    assert_eq!(r.get("/v2/vendor/app/manifests/v1").await.status(), 200);
}

/// Sends a raw request (path bytes exactly as given) and returns (status, body).
async fn raw(r: &Registry, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut sock = tokio::net::TcpStream::connect(r.running().addr())
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body_start = text.find("\r\n\r\n").unwrap() + 4;
    let body_text = &text[body_start..];
    // Bodies may be chunked; take the JSON object.
    let json = body_text
        .find('{')
        .and_then(|s| body_text.rfind('}').map(|e| &body_text[s..=e]))
        .unwrap_or("null");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn bad_input_gets_clean_oci_errors_and_server_keeps_serving() {
    let r = Registry::start().await;
    let repo = "vendor/app";
    let config = r.push_blob(repo, b"{}").await;

    // Malformed JSON.
    let msg = assert_oci_error(
        r.put_manifest(repo, "v1", OCI_MANIFEST, b"{not json").await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert!(msg.contains("JSON"), "{msg}");
    // Schema 1 and an empty document.
    assert_oci_error(
        r.put_manifest(repo, "v1", OCI_MANIFEST, br#"{"schemaVersion":1}"#)
            .await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    assert_oci_error(
        r.put_manifest(repo, "v1", OCI_MANIFEST, br#"{"schemaVersion":2}"#)
            .await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    // A manifest referencing a blob the repository does not have.
    let missing = digest(b"missing layer");
    let m = image_manifest(&config, 2, &missing, 13);
    let msg = assert_oci_error(
        r.put_manifest(repo, "v1", OCI_MANIFEST, &m).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    assert!(msg.contains(&missing), "{msg}");
    assert_oci_error(
        r.get(&format!("/v2/{repo}/manifests/v1")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // A digest reference that does not match the body.
    let layer = r.push_blob(repo, b"layer").await;
    let m = image_manifest(&config, 2, &layer, 5);
    assert_oci_error(
        r.put_manifest(repo, &digest(b"other"), OCI_MANIFEST, &m)
            .await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    // Bad digests and tags.
    assert_oci_error(
        r.get(&format!("/v2/{repo}/blobs/sha256:xyz")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_oci_error(
        r.get(&format!("/v2/{repo}/blobs/md5:00")).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_oci_error(
        r.put_manifest(repo, "-bad", OCI_MANIFEST, &m).await,
        400,
        "TAG_INVALID",
    )
    .await;
    // Oversized manifest.
    let mut big = br#"{"schemaVersion":2,"annotations":{"x":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 4 * 1024 * 1024 + 10));
    big.extend(br#""}}"#);
    let resp = r.put_manifest(repo, "big", OCI_MANIFEST, &big).await;
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID");
    // Unknown upload session, unknown endpoint, unsupported method.
    assert_oci_error(
        r.get(&format!(
            "/v2/{repo}/blobs/uploads/00000000-0000-4000-8000-000000000000"
        ))
        .await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_oci_error(r.get("/v2/nothing-here").await, 404, "UNSUPPORTED").await;
    let resp = r
        .client
        .post(r.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 405, "UNSUPPORTED").await;
    // Upload finish without a digest.
    let resp = r
        .client
        .post(r.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    assert_oci_error(
        r.client.put(r.url(&loc)).send().await.unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;

    // Odd repository names, sent byte-exact.
    let long = format!("/v2/{}/tags/list", "a".repeat(300));
    for path in [
        "/v2/../etc/tags/list",
        "/v2/vendor/../../etc/tags/list",
        "/v2/Vendor/App/tags/list",
        "/v2/vendor//app/tags/list",
        "/v2//vendor/tags/list",
        "/v2/vendor/app%2F..%2F..%2Fetc/tags/list",
        long.as_str(),
    ] {
        let (status, body) = raw(&r, "GET", path, b"").await;
        assert!((400..500).contains(&status), "{path}: {status}");
        let code = body["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            ["NAME_INVALID", "UNSUPPORTED", "NAME_UNKNOWN"].contains(&code.as_str()),
            "{path}: {body}"
        );
    }
    let (status, body) = raw(&r, "PUT", "/v2/UPPER/manifests/v1", b"{}").await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    // Nothing escaped the root.
    assert!(!r.root().join("etc").exists());
    assert!(!r.root().parent().unwrap().join("etc").exists());

    r.assert_alive().await;
    // And still works normally.
    assert_eq!(
        r.put_manifest(repo, "v1", OCI_MANIFEST, &m).await.status(),
        201
    );
}
