//! ferry-oci's client and copy engine against the embedded registry, over real HTTP: blob
//! upload (POST + one PUT), HEAD, GET, ranged reads and resume, cross-repository mounts and
//! their 202 fallback, the referrers API, full copies to a second ferry-registry and to a real
//! `docker-registry`, and the token flow with the real `AccessControl`.
//!
//! Sources are pushed with plain reqwest (the harness in `common`), never with the code under
//! test, so a bug in ferry-oci cannot hide itself. Everything listens on 127.0.0.1 only.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{bytes, digest, DockerRegistry, Registry, EMPTY_JSON, OCI_CONFIG, OCI_INDEX};
use common::{OCI_LAYER, OCI_MANIFEST};
use ferry_oci::client::MountOutcome;
use ferry_oci::progress::NoProgress;
use ferry_oci::{
    ClientConfig, CopyEngine, CopyOptions, Credential, CredentialStore, Digest, Error, Reference,
    RegistryClient, RepoRef, Secret,
};
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::RegistryServer;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig::default()).expect("client")
}

fn dg(s: &str) -> Digest {
    s.parse().expect("digest")
}

fn reference(s: &str) -> Reference {
    s.parse().expect("reference")
}

/// A byte stream of `data` in `chunk`-sized pieces, as the engine would hand one over.
fn stream_of(data: &[u8], chunk: usize) -> ferry_oci::ByteStream {
    let chunks: Vec<ferry_oci::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// Drains a blob stream, returning (sha256 digest, length) without keeping the bytes.
async fn drain(mut s: ferry_oci::ByteStream) -> (String, usize) {
    use sha2::Digest as _;
    let mut h = Sha256::new();
    let mut n = 0;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("chunk");
        n += chunk.len();
        h.update(&chunk);
    }
    (format!("sha256:{}", hex::encode(h.finalize())), n)
}

async fn copy(
    engine: &CopyEngine,
    src: &str,
    dsts: &[String],
) -> ferry_oci::Result<ferry_oci::CopyReport> {
    let dsts: Vec<Reference> = dsts.iter().map(|d| reference(d)).collect();
    engine
        .copy(&reference(src), &dsts, Arc::new(NoProgress))
        .await
}

/// A two-platform index whose images share a base layer, pushed with plain reqwest.
/// Returns (index digest, every manifest digest, every blob digest).
async fn push_index(reg: &Registry, repo: &str, tag: &str) -> (String, Vec<String>, Vec<String>) {
    let base = bytes(1, 3 * 1024 * 1024 + 17);
    let base_d = reg.push_blob(repo, &base).await;
    let mut manifests = Vec::new();
    let mut blobs = vec![base_d.clone()];
    let mut descs = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = format!(r#"{{"architecture":"{arch}","os":"linux"}}"#).into_bytes();
        let config_d = reg.push_blob(repo, &config).await;
        let top = bytes(10 + i as u64, 200_000 + i);
        let top_d = reg.push_blob(repo, &top).await;
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_d, "size": config.len()},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": base_d, "size": base.len()},
                {"mediaType": OCI_LAYER, "digest": top_d, "size": top.len()},
            ],
        }))
        .expect("json");
        let md = digest(&m);
        let resp = reg.put_manifest(repo, &md, OCI_MANIFEST, &m).await;
        assert_eq!(resp.status(), 201);
        descs.push(
            json!({"mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
            "platform": {"architecture": arch, "os": "linux"}}),
        );
        manifests.push(md);
        blobs.extend([config_d, top_d]);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs,
    }))
    .expect("json");
    let resp = reg.put_manifest(repo, tag, OCI_INDEX, &index).await;
    assert_eq!(resp.status(), 201);
    let index_d = digest(&index);
    manifests.push(index_d.clone());
    (index_d, manifests, blobs)
}

/// GET a manifest's raw bytes (and the digest header) by any reference.
async fn raw_manifest(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    r: &str,
) -> (Vec<u8>, String) {
    let resp = http
        .get(format!("{base}/v2/{repo}/manifests/{r}"))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "GET manifest {repo}:{r}");
    let header = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (resp.bytes().await.expect("body").to_vec(), header)
}

/// Asserts `dst` holds every manifest byte-for-byte as `src` does, and every blob.
async fn assert_same_graph(
    src: (&str, &str),
    dst: (&str, &str),
    tag: &str,
    manifests: &[String],
    blobs: &[String],
) {
    let http = reqwest::Client::new();
    for m in manifests {
        let (a, _) = raw_manifest(&http, src.0, src.1, m).await;
        let (b, header) = raw_manifest(&http, dst.0, dst.1, m).await;
        assert_eq!(a, b, "manifest {m} bytes differ");
        assert_eq!(digest(&b), *m);
        assert_eq!(header, *m);
    }
    let (tagged, header) = raw_manifest(&http, dst.0, dst.1, tag).await;
    assert_eq!(digest(&tagged), *manifests.last().expect("root"));
    assert_eq!(header, *manifests.last().expect("root"));
    for b in blobs {
        let resp = http
            .get(format!("{}/v2/{}/blobs/{b}", dst.0, dst.1))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200, "blob {b}");
        assert_eq!(digest(&resp.bytes().await.expect("body")), *b);
    }
}

#[tokio::test]
async fn blob_upload_is_one_post_and_one_put_then_head_and_get_agree() {
    let reg = Registry::start().await;
    let c = client();
    let repo = RepoRef::new(reg.host(), "vendor/blobs");
    let data = bytes(7, 2 * 1024 * 1024 + 3);
    let d = dg(&digest(&data));

    assert_eq!(c.blob_exists(&repo, &d).await.expect("head"), None);
    let before = c.request_count();
    c.upload_blob(&repo, &d, data.len() as u64, stream_of(&data, 64 * 1024))
        .await
        .expect("upload");
    assert_eq!(c.request_count() - before, 2, "POST then one PUT, no PATCH");

    assert_eq!(
        c.blob_exists(&repo, &d).await.expect("head"),
        Some(data.len() as u64)
    );
    let got = c
        .get_blob(&repo, &d, Some(data.len() as u64))
        .await
        .expect("get");
    assert_eq!(drain(got).await, (d.to_string(), data.len()));
    assert_eq!(
        reg.running()
            .storage()
            .blob_size("vendor/blobs", d.as_str())
            .expect("size"),
        Some(data.len() as u64)
    );
}

#[tokio::test]
async fn upload_with_a_wrong_digest_is_refused_and_leaves_nothing() {
    let reg = Registry::start().await;
    let c = client();
    let repo = RepoRef::new(reg.host(), "vendor/blobs");
    let data = bytes(8, 100_000);
    let claimed = dg(&digest(b"something else"));
    let err = c
        .upload_blob(&repo, &claimed, data.len() as u64, stream_of(&data, 8192))
        .await
        .expect_err("a body that does not hash to the digest must be refused");
    assert!(err.to_string().contains(claimed.as_str()), "{err}");
    assert_eq!(c.blob_exists(&repo, &claimed).await.expect("head"), None);
}

#[tokio::test]
async fn ranged_get_answers_206_with_the_right_slice() {
    let reg = Registry::start().await;
    let data = bytes(9, 300_000);
    let d = reg.push_blob("vendor/range", &data).await;
    let resp = reg
        .client
        .get(reg.url(&format!("/v2/vendor/range/blobs/{d}")))
        .header("range", "bytes=1000-")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 206);
    let cr = resp.headers()["content-range"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(cr, format!("bytes 1000-{}/{}", data.len() - 1, data.len()));
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &data[1000..]);
}

/// A TCP relay that cuts the first connection after `cut_after` response bytes and relays
/// every later one whole; counts connections.
async fn cutting_relay(
    upstream: std::net::SocketAddr,
    cut_after: usize,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if n > 0 {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut sent = 0;
                    let mut buf = vec![0u8; 16 * 1024];
                    while sent < cut_after {
                        let want = buf.len().min(cut_after - sent);
                        let Ok(k) = sr.read(&mut buf[..want]).await else {
                            break;
                        };
                        if k == 0 || cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        sent += k;
                    }
                };
                // Whichever ends first, the connection is dropped: a cut mid-body.
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (addr.to_string(), conns)
}

#[tokio::test]
async fn get_blob_resumes_with_range_after_a_cut_connection() {
    let reg = Registry::start().await;
    let data = bytes(11, 1024 * 1024);
    let d = reg.push_blob("vendor/resume", &data).await;
    let (relay, conns) = cutting_relay(reg.running().addr(), 200 * 1024).await;
    let c = client();
    let repo = RepoRef::new(relay, "vendor/resume");
    let got = c
        .get_blob(&repo, &dg(&d), Some(data.len() as u64))
        .await
        .expect("get");
    assert_eq!(drain(got).await, (d.clone(), data.len()));
    assert!(
        conns.load(Ordering::SeqCst) >= 2,
        "the stream should have been resumed on a second connection"
    );
}

#[tokio::test]
async fn mount_across_repositories_is_201_and_falls_back_to_202() {
    let reg = Registry::start().await;
    let c = client();
    let data = bytes(12, 50_000);
    let d = reg.push_blob("vendor/one", &data).await;
    let two = RepoRef::new(reg.host(), "vendor/two");
    assert_eq!(
        c.mount_blob(&two, "vendor/one", &dg(&d))
            .await
            .expect("mount"),
        MountOutcome::Mounted
    );
    assert_eq!(
        c.blob_exists(&two, &dg(&d)).await.expect("head"),
        Some(data.len() as u64)
    );

    // The source repository lacks the blob: the registry opens an upload instead (202).
    let other = bytes(13, 40_000);
    let od = dg(&digest(&other));
    let three = RepoRef::new(reg.host(), "vendor/three");
    assert_eq!(
        c.mount_blob(&three, "vendor/one", &od)
            .await
            .expect("mount"),
        MountOutcome::NotMounted
    );
    assert_eq!(c.blob_exists(&three, &od).await.expect("head"), None);
    c.upload_blob(&three, &od, other.len() as u64, stream_of(&other, 4096))
        .await
        .expect("upload after a refused mount");
    assert_eq!(
        c.blob_exists(&three, &od).await.expect("head"),
        Some(other.len() as u64)
    );
}

#[tokio::test]
async fn copy_within_one_registry_mounts_every_blob() {
    let reg = Registry::start().await;
    let (_, manifests, blobs) = push_index(&reg, "vendor/app", "v1").await;
    let engine = CopyEngine::new(client(), CopyOptions::default());
    let host = reg.host();
    let report = copy(
        &engine,
        &format!("{host}/vendor/app:v1"),
        &[format!("{host}/vendor/mirror:v1")],
    )
    .await
    .expect("copy");
    assert_eq!(report.blobs_mounted, blobs.len());
    assert_eq!(report.blobs_copied, 0);
    let base = reg.running().url();
    assert_same_graph(
        (&base, "vendor/app"),
        (&base, "vendor/mirror"),
        "v1",
        &manifests,
        &blobs,
    )
    .await;
}

#[tokio::test]
async fn full_copy_to_another_ferry_registry_and_to_docker_registry_keeps_bytes() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let docker = DockerRegistry::start().await;
    let (index_d, manifests, blobs) = push_index(&src, "vendor/app", "v1").await;

    let engine = CopyEngine::new(client(), CopyOptions::default());
    let report = copy(
        &engine,
        &format!("{}/vendor/app:v1", src.host()),
        &[
            format!("{}/vendor/app:v1", dst.host()),
            format!("{}/mirror/app:v1", docker.host()),
        ],
    )
    .await
    .expect("copy");
    assert_eq!(report.digest.as_ref().map(|d| d.to_string()), Some(index_d));
    assert_eq!(
        report.blobs_copied,
        blobs.len(),
        "each source blob read once"
    );
    let src_base = src.running().url();
    assert_same_graph(
        (&src_base, "vendor/app"),
        (&dst.running().url(), "vendor/app"),
        "v1",
        &manifests,
        &blobs,
    )
    .await;
    assert_same_graph(
        (&src_base, "vendor/app"),
        (&format!("http://{}", docker.host()), "mirror/app"),
        "v1",
        &manifests,
        &blobs,
    )
    .await;

    // A second copy finds everything in place and writes nothing.
    let again = copy(
        &engine,
        &format!("{}/vendor/app:v1", src.host()),
        &[format!("{}/vendor/app:v1", dst.host())],
    )
    .await
    .expect("re-copy");
    assert_eq!((again.blobs_copied, again.manifests_written), (0, 0));
}

#[tokio::test]
async fn referrers_are_copied_and_listed_by_the_destination_referrers_api() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let (image_d, image, _) = src.push_image("vendor/app", "v1", &bytes(20, 10_000)).await;
    let empty = b"{}";
    let empty_d = src.push_blob("vendor/app", empty).await;
    let sbom = br#"{"spdxVersion":"SPDX-2.3"}"#;
    let sbom_d = src.push_blob("vendor/app", sbom).await;
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": EMPTY_JSON, "digest": empty_d, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom_d, "size": sbom.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image_d, "size": image.len()},
    }))
    .expect("json");
    let artifact_d = digest(&artifact);
    let resp = src
        .put_manifest("vendor/app", &artifact_d, OCI_MANIFEST, &artifact)
        .await;
    assert_eq!(resp.status(), 201);

    let engine = CopyEngine::new(
        client(),
        CopyOptions {
            referrers: true,
            ..CopyOptions::default()
        },
    );
    let report = copy(
        &engine,
        &format!("{}/vendor/app:v1", src.host()),
        &[format!("{}/vendor/app:v1", dst.host())],
    )
    .await
    .expect("copy");
    assert_eq!(report.manifests_written, 3, "image, referrer, tag");

    let listed: Value = dst
        .get(&format!("/v2/vendor/app/referrers/{image_d}"))
        .await
        .json()
        .await
        .expect("index");
    let entries = listed["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["digest"], artifact_d.as_str());
    assert_eq!(entries[0]["artifactType"], "application/spdx+json");
    let (bytes_at_dst, _) =
        raw_manifest(&dst.client, &dst.running().url(), "vendor/app", &artifact_d).await;
    assert_eq!(bytes_at_dst, artifact);

    // The registry has the API, so no tag-schema index may be invented.
    let tags: Value = dst
        .get("/v2/vendor/app/tags/list")
        .await
        .json()
        .await
        .expect("tags");
    assert_eq!(tags["tags"], json!(["v1"]), "{tags}");
}

const SERVICE: &str = "ferry-oci-client-test";
const VENDOR: &str = "vendor-secret-oci-client-0123456789";
const AGENT_A: &str = "agent-a-secret-oci-client-0123456789";

async fn start_auth_registry() -> (
    tempfile::TempDir,
    String,
    ferry_registry::server::RunningRegistry,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut policy = AccessPolicy::new();
    policy
        .add_identity(Identity::Vendor, VENDOR)
        .add_identity(Identity::Agent("a".into()), AGENT_A);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut cfg = AuthConfig::new(SERVICE, dir.path().join("auth"));
    cfg.realm = format!("http://{addr}/token");
    let ac = Arc::new(AccessControl::open(cfg, policy).expect("access control"));
    let running = RegistryServer::builder(dir.path().join("root"))
        .authorizer(ac.clone())
        .extra_routes(token_router(ac))
        .build()
        .expect("build")
        .spawn_on(listener)
        .expect("spawn");
    (dir, addr.to_string(), running)
}

fn basic(user: &str, secret: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: Secret::new(secret),
    }
}

#[tokio::test]
async fn copy_through_the_token_flow_with_vendor_and_agent_identities() {
    let (_dir, host, _running) = start_auth_registry().await;
    let mut creds = CredentialStore::new();
    creds.insert(&host, Some("vendor"), basic("vendor", VENDOR));
    creds.insert(&host, Some("installs/a"), basic("agent:a", AGENT_A));
    let c = RegistryClient::new(ClientConfig {
        credentials: creds,
        ..ClientConfig::default()
    })
    .expect("client");

    // The vendor pushes an image with ferry-oci itself (POST + PUT behind a token).
    let vendor_repo = RepoRef::new(host.clone(), "vendor/app");
    let layer = bytes(30, 500_000);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    for blob in [&layer[..], &config[..]] {
        let d = dg(&digest(blob));
        c.upload_blob(
            &vendor_repo,
            &d,
            blob.len() as u64,
            stream_of(blob, 32 * 1024),
        )
        .await
        .expect("vendor upload");
    }
    let manifest =
        common::image_manifest(&digest(config), config.len(), &digest(&layer), layer.len());
    let m = ferry_oci::Manifest::from_bytes(Bytes::from(manifest.clone()), OCI_MANIFEST)
        .expect("manifest");
    c.put_manifest(&vendor_repo, "v1", &m)
        .await
        .expect("put manifest");

    // The agent copies into its own install. Its token may not pull vendor/, so the mount
    // falls back (202) and the bytes are moved instead.
    let engine = CopyEngine::new(c.clone(), CopyOptions::default());
    let report = copy(
        &engine,
        &format!("{host}/vendor/app:v1"),
        &[format!("{host}/installs/a/app:v1")],
    )
    .await
    .expect("copy through the token flow");
    assert_eq!(report.blobs_mounted, 0);
    assert_eq!(report.blobs_copied, 2);
    let got = c
        .get_manifest(&RepoRef::new(host.clone(), "installs/a/app"), "v1")
        .await
        .expect("manifest at the install");
    assert_eq!(got.digest, m.digest);
    assert_eq!(got.bytes.as_ref(), &manifest[..]);

    // The vendor may not write an install: a clear refusal that never echoes a secret.
    let mut vendor_only = CredentialStore::new();
    vendor_only.insert(&host, None, basic("vendor", VENDOR));
    let vc = RegistryClient::new(ClientConfig {
        credentials: vendor_only,
        ..ClientConfig::default()
    })
    .expect("client");
    let err = copy(
        &CopyEngine::new(vc, CopyOptions::default()),
        &format!("{host}/vendor/app:v1"),
        &[format!("{host}/installs/a/other:v1")],
    )
    .await
    .expect_err("vendor must not write an install");
    let text = format!("{err} {err:?}");
    assert!(text.contains("installs/a/other"), "{text}");
    assert!(
        !text.contains(VENDOR) && !text.contains(AGENT_A),
        "secret leaked: {text}"
    );

    // A wrong secret fails as an auth error, without the secret in it.
    let mut wrong = CredentialStore::new();
    wrong.insert(&host, None, basic("vendor", "not-the-secret-123456"));
    let wc = RegistryClient::new(ClientConfig {
        credentials: wrong,
        ..ClientConfig::default()
    })
    .expect("client");
    let err = wc
        .get_manifest(&vendor_repo, "v1")
        .await
        .expect_err("wrong secret");
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("not-the-secret-123456"));
}
