use super::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;

use crate::layout::journal;
use crate::layout::tests::{bytes_stream, write_real_image};
use crate::media::{Descriptor, Manifest, OCI_INDEX, OCI_MANIFEST, ZIP_LAYER};
use crate::progress::BlobOutcome;

#[derive(Default)]
struct Events(Mutex<Vec<ProgressEvent>>);

impl ProgressSink for Events {
    fn event(&self, event: ProgressEvent) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

impl Events {
    fn all(&self) -> Vec<ProgressEvent> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn engine(options: CopyOptions) -> CopyEngine {
    CopyEngine::layouts_only(options)
}

fn oci(dir: &Path, tag: Option<&str>) -> Reference {
    let s = match tag {
        Some(t) => format!("oci:{}:{t}", dir.display()),
        None => format!("oci:{}", dir.display()),
    };
    s.parse().expect("layout reference")
}

async fn put_blob(layout: &OciLayout, data: &[u8]) -> Descriptor {
    let d = Digest::of(data);
    layout
        .write_blob(&d, data.len() as u64, bytes_stream(data.to_vec()))
        .await
        .expect("blob");
    Descriptor {
        media_type: ZIP_LAYER.into(),
        digest: d,
        size: data.len() as u64,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    }
}

/// An image manifest with a config and the given layers, optionally with a subject.
async fn put_image(
    layout: &OciLayout,
    config: &[u8],
    layers: &[&[u8]],
    subject: Option<&Manifest>,
) -> Manifest {
    let c = put_blob(layout, config).await;
    let mut ls = Vec::new();
    for l in layers {
        ls.push(put_blob(layout, l).await);
    }
    let mut v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": c.digest, "size": c.size},
        "layers": ls,
    });
    if let Some(s) = subject {
        v["subject"] = serde_json::to_value(s.descriptor()).expect("json");
        v["artifactType"] = "application/example.signature".into();
    }
    let m = Manifest::from_bytes(Bytes::from(serde_json::to_vec(&v).expect("json")), "")
        .expect("manifest");
    layout.write_manifest(&m).await.expect("write");
    m
}

async fn put_index(layout: &OciLayout, children: &[(&Manifest, &str)]) -> Manifest {
    let list: Vec<_> = children
        .iter()
        .map(|(m, p)| {
            let mut d = m.descriptor();
            d.platform = Some(Platform::parse(p).expect("platform"));
            d
        })
        .collect();
    let v = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list});
    let m = Manifest::from_bytes(Bytes::from(serde_json::to_vec(&v).expect("json")), "")
        .expect("index");
    layout.write_manifest(&m).await.expect("write");
    m
}

fn count(ops: &[String], prefix: &str) -> usize {
    ops.iter().filter(|o| o.starts_with(prefix)).count()
}

#[tokio::test]
async fn copies_a_layout_and_a_second_copy_skips_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let m = put_image(&layout, b"{}", &[b"layer one", b"layer number two"], None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");

    let events = Arc::new(Events::default());
    let report = engine(CopyOptions::default())
        .copy(&oci(&src, Some("v1")), &[oci(&dst, None)], events.clone())
        .await
        .expect("copy");
    assert_eq!(report.digest.as_ref(), Some(&m.digest));
    assert_eq!(report.blobs_copied, 3);
    assert_eq!(report.bytes_copied, 2 + 9 + 16);
    assert_eq!(report.manifests_written, 2, "the manifest, then the tag");
    let out = OciLayout::open(&dst).await.expect("dst");
    // The destination had no tag of its own, so the source's is used.
    assert_eq!(out.resolve(Some("v1")).await.expect("tag").digest, m.digest);
    let evs = events.all();
    assert!(matches!(
        evs.first(),
        Some(ProgressEvent::Plan {
            blobs: 3,
            total_bytes: 27,
            ..
        })
    ));
    let finished = evs
        .iter()
        .filter(|e| {
            matches!(
                e,
                ProgressEvent::BlobFinished {
                    outcome: BlobOutcome::Copied,
                    ..
                }
            )
        })
        .count();
    assert_eq!(finished, 3);

    let again = engine(CopyOptions::default())
        .copy(&oci(&src, Some("v1")), &[oci(&dst, None)], events.clone())
        .await
        .expect("copy again");
    assert_eq!(again.blobs_copied, 0);
    assert_eq!(again.blobs_skipped, 3);
    assert_eq!(again.bytes_skipped, 27);
    assert_eq!(
        again.manifests_written, 0,
        "the tag already holds the digest"
    );
}

#[tokio::test]
async fn a_corrupt_source_blob_fails_and_commits_no_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let m = put_image(&layout, b"{}", &[b"good layer", b"this will rot"], None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
    let rotten = Digest::of(b"this will rot");
    std::fs::write(
        src.join("blobs/sha256").join(rotten.hex()),
        b"this has rot!",
    )
    .expect("rot");

    let err = engine(CopyOptions::default())
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&dst, Some("v1"))],
            Arc::new(Events::default()),
        )
        .await
        .expect_err("must fail");
    assert!(
        matches!(&err, Error::DigestMismatch { expected, .. } if expected == &rotten),
        "{err}"
    );
    assert!(err.to_string().contains(rotten.as_str()), "{err}");
    let out = OciLayout::open(&dst).await.expect("dst");
    assert_eq!(out.has_blob(&rotten).await.expect("has"), None);
    assert_eq!(
        out.has_blob(&m.digest).await.expect("has"),
        None,
        "no manifest"
    );
    assert!(
        out.resolve(Some("v1")).await.is_err(),
        "no index.json entry"
    );
    let index = std::fs::read_to_string(dst.join("index.json")).expect("index");
    assert!(!index.contains(m.digest.hex()), "{index}");
}

#[tokio::test]
async fn a_failing_destination_fails_the_copy_and_no_destination_is_tagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, good, bad) = (
        dir.path().join("src"),
        dir.path().join("good"),
        dir.path().join("bad"),
    );
    let layout = OciLayout::create(&src).await.expect("src");
    let m = put_image(&layout, b"{}", &[b"a layer"], None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
    // A non-empty directory where the layer must go: the final rename fails.
    let blocked = Digest::of(b"a layer");
    std::fs::create_dir_all(bad.join("blobs/sha256").join(blocked.hex()).join("x"))
        .expect("blocker");

    let err = engine(CopyOptions::default())
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&good, None), oci(&bad, None)],
            Arc::new(Events::default()),
        )
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains(blocked.hex()), "{err}");
    for d in [&good, &bad] {
        let out = OciLayout::open(d).await.expect("layout");
        assert_eq!(
            out.has_blob(&m.digest).await.expect("has"),
            None,
            "no manifest"
        );
        assert!(out.resolve(Some("v1")).await.is_err(), "untagged");
    }
}

#[tokio::test]
async fn fan_out_reads_each_source_blob_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let layout = OciLayout::create(&src).await.expect("src");
    // Large enough for many chunks, so the bounded tee has to apply backpressure.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let m = put_image(&layout, b"{}", &[&big, b"small"], None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
    let dsts: Vec<_> = (0..3).map(|i| dir.path().join(format!("dst{i}"))).collect();
    let refs: Vec<_> = dsts.iter().map(|d| oci(d, Some("copied"))).collect();

    let report = engine(CopyOptions::default())
        .copy(&oci(&src, Some("v1")), &refs, Arc::new(Events::default()))
        .await
        .expect("copy");
    assert_eq!(report.blobs_copied, 3);
    assert_eq!(
        report.bytes_copied,
        big.len() as u64 + 5 + 2,
        "counted once, not per destination"
    );
    let ops = journal::ops(&src);
    for blob in [Digest::of(&big), Digest::of(b"small"), Digest::of(b"{}")] {
        assert_eq!(
            count(&ops, &format!("read_blob {blob}")),
            1,
            "{blob}: {ops:?}"
        );
    }
    for d in &dsts {
        let out = OciLayout::open(d).await.expect("dst");
        assert_eq!(
            out.resolve(Some("copied")).await.expect("tag").digest,
            m.digest
        );
        assert_eq!(
            out.has_blob(&Digest::of(&big)).await.expect("has"),
            Some(big.len() as u64)
        );
    }
}

#[tokio::test]
async fn writes_the_tag_last_and_children_before_parents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let amd = put_image(&layout, b"{}", &[b"amd64 layer"], None).await;
    let arm = put_image(&layout, b"{ }", &[b"arm64 layer"], None).await;
    let index = put_index(&layout, &[(&amd, "linux/amd64"), (&arm, "linux/arm64/v8")]).await;
    layout
        .tag(Some("v1"), &index.descriptor())
        .await
        .expect("tag");

    engine(CopyOptions::default())
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&dst, Some("v2"))],
            Arc::new(Events::default()),
        )
        .await
        .expect("copy");
    let ops = journal::ops(&dst);
    let pos = |op: &str| ops.iter().position(|o| o == op).unwrap_or(usize::MAX);
    let tag = pos(&format!("tag v2 {}", index.digest));
    assert_eq!(
        tag,
        ops.len() - 1,
        "the tag is the very last write: {ops:?}"
    );
    let parent = pos(&format!("write_manifest {}", index.digest));
    for child in [&amd, &arm] {
        assert!(
            pos(&format!("write_manifest {}", child.digest)) < parent,
            "{ops:?}"
        );
    }
    let last_blob = ops.iter().rposition(|o| {
        o.starts_with("write_blob ") && {
            let d = o.trim_start_matches("write_blob ");
            d != amd.digest.as_str() && d != arm.digest.as_str() && d != index.digest.as_str()
        }
    });
    let first_manifest = ops.iter().position(|o| o.starts_with("write_manifest "));
    assert!(
        last_blob < first_manifest,
        "blobs before manifests: {ops:?}"
    );
}

#[tokio::test]
async fn selects_one_platform_or_lists_the_available_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let amd = put_image(&layout, b"{}", &[b"amd64 layer"], None).await;
    let arm = put_image(&layout, b"{ }", &[b"arm64 layer"], None).await;
    let index = put_index(&layout, &[(&amd, "linux/amd64"), (&arm, "linux/arm64/v8")]).await;
    layout
        .tag(Some("v1"), &index.descriptor())
        .await
        .expect("tag");

    let options = CopyOptions {
        platform: Some(Platform::parse("linux/arm64").expect("platform")),
        ..CopyOptions::default()
    };
    let report = engine(options)
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&dst, None)],
            Arc::new(Events::default()),
        )
        .await
        .expect("copy");
    assert_eq!(report.digest.as_ref(), Some(&arm.digest));
    let out = OciLayout::open(&dst).await.expect("dst");
    assert_eq!(
        out.resolve(Some("v1")).await.expect("tag").digest,
        arm.digest
    );
    assert!(out
        .has_blob(&Digest::of(b"arm64 layer"))
        .await
        .expect("has")
        .is_some());
    assert_eq!(
        out.has_blob(&Digest::of(b"amd64 layer"))
            .await
            .expect("has"),
        None
    );
    assert_eq!(out.has_blob(&index.digest).await.expect("has"), None);

    let options = CopyOptions {
        platform: Some(Platform::parse("windows/amd64").expect("platform")),
        ..CopyOptions::default()
    };
    let err = engine(options)
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&dst, Some("w"))],
            Arc::new(Events::default()),
        )
        .await
        .expect_err("no such platform")
        .to_string();
    assert!(err.contains("windows/amd64"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64/v8"),
        "{err}"
    );
}

#[tokio::test]
async fn copies_referrers_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let layout = OciLayout::create(&src).await.expect("src");
    let subject = put_image(&layout, b"{}", &[b"app layer"], None).await;
    layout
        .tag(Some("v1"), &subject.descriptor())
        .await
        .expect("tag");
    let sig = put_image(&layout, b"{}", &[b"signature bytes"], Some(&subject)).await;
    layout.tag(None, &sig.descriptor()).await.expect("list");

    let plain = dir.path().join("plain");
    engine(CopyOptions::default())
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&plain, None)],
            Arc::new(Events::default()),
        )
        .await
        .expect("copy");
    let out = OciLayout::open(&plain).await.expect("plain");
    assert!(out
        .referrers(&subject.digest)
        .await
        .expect("refs")
        .is_empty());
    assert_eq!(
        out.has_blob(&Digest::of(b"signature bytes"))
            .await
            .expect("has"),
        None
    );

    let with = dir.path().join("with");
    let options = CopyOptions {
        referrers: true,
        ..CopyOptions::default()
    };
    let report = engine(options)
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&with, None)],
            Arc::new(Events::default()),
        )
        .await
        .expect("copy");
    assert_eq!(report.digest.as_ref(), Some(&subject.digest));
    let out = OciLayout::open(&with).await.expect("with");
    let refs = out.referrers(&subject.digest).await.expect("refs");
    assert_eq!(
        refs.iter().map(|d| &d.digest).collect::<Vec<_>>(),
        vec![&sig.digest]
    );
    assert!(out
        .has_blob(&Digest::of(b"signature bytes"))
        .await
        .expect("has")
        .is_some());
    assert_eq!(
        out.resolve(Some("v1")).await.expect("tag").digest,
        subject.digest
    );
    // The referrer is written after its subject, and the tag after both.
    let ops = journal::ops(&with);
    let pos = |op: String| ops.iter().position(|o| *o == op).unwrap_or(usize::MAX);
    assert!(
        pos(format!("write_manifest {}", subject.digest))
            < pos(format!("write_manifest {}", sig.digest))
    );
    assert_eq!(
        pos(format!("tag v1 {}", subject.digest)),
        ops.len() - 1,
        "{ops:?}"
    );
}

#[tokio::test]
async fn transfers_are_bounded_per_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let layers: Vec<Vec<u8>> = (0..12u8)
        .map(|i| vec![i; 40_000 + usize::from(i)])
        .collect();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let m = put_image(&layout, b"{}", &refs, None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");

    let events = Arc::new(Events::default());
    let options = CopyOptions {
        max_per_host: 2,
        ..CopyOptions::default()
    };
    engine(options)
        .copy(&oci(&src, Some("v1")), &[oci(&dst, None)], events.clone())
        .await
        .expect("copy");
    let (mut now, mut peak) = (0i32, 0i32);
    let mut sizes = Vec::new();
    for e in events.all() {
        match e {
            ProgressEvent::BlobStarted { size, .. } => {
                now += 1;
                peak = peak.max(now);
                sizes.push(size);
            }
            ProgressEvent::BlobFinished { .. } => now -= 1,
            _ => {}
        }
    }
    assert_eq!(sizes.len(), 13);
    assert!(
        (1..=2).contains(&peak),
        "at most 2 transfers per host, saw {peak}"
    );
    // With one transfer slot free at a time, the start order is largest first.
    assert_eq!(sizes.first(), Some(&40_011), "{sizes:?}");
    assert_eq!(sizes.last(), Some(&2), "{sizes:?}");
}

#[tokio::test]
async fn rejects_a_destination_digest_that_does_not_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let m = write_real_image(&layout, "v1").await;
    let wrong = Digest::of(b"not it");
    let dst_ref: Reference = format!("oci:{}@{wrong}", dst.display())
        .parse()
        .expect("ref");
    let err = engine(CopyOptions::default())
        .copy(
            &oci(&src, Some("v1")),
            &[dst_ref],
            Arc::new(Events::default()),
        )
        .await
        .expect_err("mismatch")
        .to_string();
    assert!(
        err.contains(wrong.as_str()) && err.contains(m.digest.as_str()),
        "{err}"
    );
}

#[tokio::test]
async fn what_the_engine_writes_skopeo_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let layout = OciLayout::create(&src).await.expect("src");
    let m = write_real_image(&layout, "v1").await;
    engine(CopyOptions::default())
        .copy(
            &oci(&src, Some("v1")),
            &[oci(&dst, Some("v9"))],
            Arc::new(Events::default()),
        )
        .await
        .expect("copy");
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{}:v9", dst.display())])
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, m.bytes.to_vec());
}

/// A minimal registry for one repository, whose blob PUTs fail with 503 a set number of
/// times: the only way to make the one-shot upload fail after the client's own retries.
mod flaky {
    use axum::body::Bytes as Body;
    use axum::extract::State;
    use axum::http::{Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct Store {
        pub blobs: HashMap<String, usize>,
        pub manifests: HashMap<String, (String, Vec<u8>)>,
        pub blob_puts: usize,
        pub manifest_puts: usize,
        pub fail_blob_puts: usize,
        uploads: usize,
    }

    pub struct Server {
        pub addr: String,
        pub store: Arc<Mutex<Store>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn digest_of(b: &[u8]) -> String {
        crate::digest::Digest::of(b).to_string()
    }

    async fn handle(
        State(store): State<Arc<Mutex<Store>>>,
        method: Method,
        uri: Uri,
        body: Body,
    ) -> Response {
        let path = uri.path().to_string();
        let Ok(mut st) = store.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if path == "/v2/" {
            return StatusCode::OK.into_response();
        }
        if let Some(d) = path.strip_prefix("/v2/app/blobs/") {
            if method == Method::POST {
                st.uploads += 1;
                let loc = format!("/v2/app/blobs/uploads/{}", st.uploads);
                return (StatusCode::ACCEPTED, [("location", loc)]).into_response();
            }
            if method == Method::PUT {
                st.blob_puts += 1;
                if st.fail_blob_puts > 0 {
                    st.fail_blob_puts -= 1;
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                let want = uri
                    .query()
                    .and_then(|q| q.strip_prefix("digest="))
                    .unwrap_or_default()
                    .replace("%3A", ":");
                if digest_of(&body) != want {
                    return StatusCode::BAD_REQUEST.into_response();
                }
                st.blobs.insert(want, body.len());
                return StatusCode::CREATED.into_response();
            }
            return match st.blobs.get(d) {
                Some(len) => {
                    (StatusCode::OK, [("content-length", len.to_string())]).into_response()
                }
                None => StatusCode::NOT_FOUND.into_response(),
            };
        }
        if let Some(r) = path.strip_prefix("/v2/app/manifests/") {
            if method == Method::PUT {
                st.manifest_puts += 1;
                let d = digest_of(&body);
                st.manifests
                    .insert(r.to_string(), (d.clone(), body.to_vec()));
                st.manifests.insert(d.clone(), (d.clone(), body.to_vec()));
                return (StatusCode::CREATED, [("docker-content-digest", d)]).into_response();
            }
            return match st.manifests.get(r) {
                Some((d, raw)) => (
                    StatusCode::OK,
                    [
                        ("docker-content-digest", d.clone()),
                        ("content-type", crate::media::OCI_MANIFEST.to_string()),
                        ("content-length", raw.len().to_string()),
                    ],
                )
                    .into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            };
        }
        StatusCode::NOT_FOUND.into_response()
    }

    pub async fn start(fail_blob_puts: usize) -> Server {
        let store = Arc::new(Mutex::new(Store {
            fail_blob_puts,
            ..Store::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, store, task }
    }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

fn registry_engine() -> CopyEngine {
    let client = RegistryClient::new(crate::client::ClientConfig {
        retry: quick_retry(),
        ..Default::default()
    })
    .expect("client");
    CopyEngine::new(client, CopyOptions::default()).with_retry(quick_retry())
}

#[tokio::test]
async fn a_failed_upload_is_retried_by_reopening_the_source() {
    let server = flaky::start(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, side) = (dir.path().join("src"), dir.path().join("side"));
    let layout = OciLayout::create(&src).await.expect("src");
    let m = put_image(&layout, b"{}", &[b"the only layer"], None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
    let dst: Reference = format!("{}/app:v1", server.addr).parse().expect("ref");

    let events = Arc::new(Events::default());
    let report = registry_engine()
        .copy(
            &oci(&src, Some("v1")),
            &[dst, oci(&side, None)],
            events.clone(),
        )
        .await
        .expect("the retry carries the copy through");
    assert_eq!(report.blobs_copied, 2);
    let retried = events
        .all()
        .into_iter()
        .filter(|e| matches!(e, ProgressEvent::Retrying { error, .. } if error.contains("503")))
        .count();
    assert_eq!(retried, 1);
    // The first blob PUT failed, so exactly one blob was read from the source twice.
    let ops = journal::ops(&src);
    let reads: usize = [Digest::of(b"{}"), Digest::of(b"the only layer")]
        .iter()
        .map(|d| count(&ops, &format!("read_blob {d}")))
        .sum();
    assert_eq!(reads, 3, "{ops:?}");
    {
        let st = server.store.lock().expect("store");
        assert_eq!(st.blob_puts, 3);
        assert_eq!(st.blobs.len(), 2);
        assert_eq!(
            st.manifests.get("v1").map(|(d, _)| d.clone()),
            Some(m.digest.to_string())
        );
    }
    let out = OciLayout::open(&side).await.expect("side");
    assert_eq!(out.resolve(Some("v1")).await.expect("tag").digest, m.digest);
}

#[tokio::test]
async fn an_upload_that_keeps_failing_fails_the_copy_and_writes_no_manifest() {
    let server = flaky::start(100).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let layout = OciLayout::create(&src).await.expect("src");
    let m = put_image(&layout, b"{}", &[b"the only layer"], None).await;
    layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
    let dst: Reference = format!("{}/app:v1", server.addr).parse().expect("ref");

    let err = registry_engine()
        .copy(&oci(&src, Some("v1")), &[dst], Arc::new(Events::default()))
        .await
        .expect_err("must give up")
        .to_string();
    assert!(err.contains("503") && err.contains(&server.addr), "{err}");
    let st = server.store.lock().expect("store");
    assert_eq!(st.manifest_puts, 0, "no manifest after a failed blob");
    assert!(st.blob_puts >= 3, "retried: {}", st.blob_puts);
}
