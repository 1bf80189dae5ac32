//! The copy engine on long links (issue 16): parallel ranged reads of large blobs against a
//! stub registry that misbehaves on purpose (ranges out of order, short ranges, 200 instead
//! of 206, a range that fails once, a corrupted range, a redirect to another origin), upload
//! once and mount the rest against docker-registry, and the client-wide adaptive host limit
//! under injected 429s.
//!
//! Servers bind 127.0.0.1:0 and stop when their handle drops; nothing waits on a sleep.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::Notify;

use ferry_oci::client::{HostLimits, RangedReads};
use ferry_oci::media::OCI_MANIFEST;
use ferry_oci::{
    ClientConfig, CopyOptions, Credential, CredentialStore, Digest, RegistryClient, RepoRef, Secret,
};
use support::ferry::{client_with, copy_with, fast_retry};
use support::registry::http_status;
use support::*;

const BLOB_LEN: usize = 100 * 1024 + 123;
const PART: u64 = 16 * 1024;

fn blob_bytes(seed: u8) -> Vec<u8> {
    (0..BLOB_LEN)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn ranged_config(max_parallel: usize) -> RangedReads {
    RangedReads {
        threshold: 64 * 1024,
        part_size: PART,
        max_parallel,
        part_buffer: 4 * 1024,
    }
}

fn ranged_client(max_parallel: usize, credentials: CredentialStore) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials,
        retry: fast_retry(),
        ranged: ranged_config(max_parallel),
        // Loopback is a short link; these tests want ranged reads all the same.
        per_host: HostLimits {
            long_link: Duration::ZERO,
            ..HostLimits::default()
        },
        ..ClientConfig::default()
    })
    .expect("client")
}

/// How the stub misbehaves.
#[derive(Default, Clone)]
struct Behaviour {
    /// The body of the range starting at 0 is held back until this many other range
    /// requests have arrived, so later ranges complete first.
    hold_first_until: usize,
    /// The first answer for each part (a range starting at a multiple of `PART`) carries
    /// only half of it; the request for the rest is answered in full.
    short_once: bool,
    /// Every blob GET is answered 200 with the whole blob.
    ignore_range: bool,
    /// The first request for the range starting here is answered 503.
    fail_once_at: Option<u64>,
    /// The range starting here has one byte flipped (every time).
    corrupt_at: Option<u64>,
    /// Blob GETs are redirected to this origin (`http://host:port`), which serves them.
    redirect_to: Option<String>,
}

#[derive(Default)]
struct Log {
    /// (range start or None, status, whether Authorization was present) per blob GET.
    gets: Vec<(Option<u64>, u16, bool)>,
    failed_once: bool,
    shorted: Vec<u64>,
}

struct Stub {
    blobs: HashMap<String, Vec<u8>>,
    manifest: Option<(String, Vec<u8>)>,
    behaviour: Behaviour,
    log: Mutex<Log>,
    others_requested: AtomicUsize,
    others_arrived: Notify,
}

struct Server {
    addr: String,
    stub: Arc<Stub>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    fn gets(&self) -> Vec<(Option<u64>, u16, bool)> {
        self.stub.log.lock().expect("log").gets.clone()
    }
}

fn parse_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers
        .get("range")?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (a, b) = v.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()))
}

async fn handle(
    State(stub): State<Arc<Stub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if let Some(reference) = path.strip_prefix("/v2/app/manifests/") {
        return match &stub.manifest {
            Some((d, raw)) if reference == d || reference == "v1" => {
                let body = if method == Method::HEAD {
                    Body::empty()
                } else {
                    Body::from(raw.clone())
                };
                (
                    StatusCode::OK,
                    [
                        ("content-type", OCI_MANIFEST.to_string()),
                        ("docker-content-digest", d.clone()),
                        ("content-length", raw.len().to_string()),
                    ],
                    body,
                )
                    .into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let digest = path
        .strip_prefix("/v2/app/blobs/")
        .or_else(|| path.strip_prefix("/storage/"));
    let Some(digest) = digest else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(data) = stub.blobs.get(digest) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if path.starts_with("/v2/") {
        if let Some(to) = &stub.behaviour.redirect_to {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", format!("{to}/storage/{digest}"))],
            )
                .into_response();
        }
    }
    if method == Method::HEAD {
        return (StatusCode::OK, [("content-length", data.len().to_string())]).into_response();
    }
    let authorized = headers.contains_key("authorization");
    let range = parse_range(&headers).filter(|_| !stub.behaviour.ignore_range);
    let Some((start, last)) = range else {
        stub.log
            .lock()
            .expect("log")
            .gets
            .push((None, 200, authorized));
        return (StatusCode::OK, data.clone()).into_response();
    };
    let b = &stub.behaviour;
    {
        let mut log = stub.log.lock().expect("log");
        if b.fail_once_at == Some(start) && !log.failed_once {
            log.failed_once = true;
            log.gets.push((Some(start), 503, authorized));
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        log.gets.push((Some(start), 206, authorized));
    }
    let end = last.map_or(data.len(), |l| (l as usize + 1).min(data.len()));
    let mut part = data[start as usize..end].to_vec();
    if b.corrupt_at == Some(start) {
        part[0] ^= 0xff;
    }
    if b.short_once {
        let mut log = stub.log.lock().expect("log");
        if start % PART == 0 && !log.shorted.contains(&start) && part.len() > 1 {
            log.shorted.push(start);
            part.truncate(part.len() / 2);
        }
    }
    let content_range = format!(
        "bytes {start}-{}/{}",
        start as usize + part.len() - 1,
        data.len()
    );
    let body = if start == 0 && b.hold_first_until > 0 {
        // Headers now, bytes only once the later ranges have been asked for.
        let stub = stub.clone();
        let stream = futures::stream::once(async move {
            while stub.others_requested.load(Ordering::SeqCst) < stub.behaviour.hold_first_until {
                stub.others_arrived.notified().await;
            }
            Ok::<_, std::io::Error>(part)
        });
        Body::from_stream(stream)
    } else {
        if start > 0 {
            stub.others_requested.fetch_add(1, Ordering::SeqCst);
            stub.others_arrived.notify_waiters();
        }
        Body::from(part)
    };
    (
        StatusCode::PARTIAL_CONTENT,
        [("content-range", content_range)],
        body,
    )
        .into_response()
}

async fn serve(stub: Stub) -> Server {
    let stub = Arc::new(stub);
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { addr, stub, task }
}

fn stub(blobs: &[&[u8]], manifest: Option<Vec<u8>>, behaviour: Behaviour) -> Stub {
    Stub {
        blobs: blobs
            .iter()
            .map(|b| (Digest::of(b).to_string(), b.to_vec()))
            .collect(),
        manifest: manifest.map(|m| (Digest::of(&m).to_string(), m)),
        behaviour,
        log: Mutex::new(Log::default()),
        others_requested: AtomicUsize::new(0),
        others_arrived: Notify::new(),
    }
}

async fn read_all(client: &RegistryClient, addr: &str, data: &[u8]) -> ferry_oci::Result<Vec<u8>> {
    let repo = RepoRef::new(addr.to_string(), "app");
    let mut s = client
        .get_blob(&repo, &Digest::of(data), Some(data.len() as u64))
        .await?;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn parts() -> u64 {
    (BLOB_LEN as u64).div_ceil(PART)
}

#[tokio::test]
async fn ranges_completed_out_of_order_are_handed_out_in_order() {
    let data = blob_bytes(1);
    let server = serve(stub(
        &[&data],
        None,
        Behaviour {
            // Parts 1..=3 are in flight with part 0 (4 at once): part 0 waits for them.
            hold_first_until: 3,
            ..Behaviour::default()
        },
    ))
    .await;
    let client = ranged_client(4, CredentialStore::new());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        read_all(&client, &server.addr, &data),
    )
    .await
    .expect("no deadlock")
    .expect("read");
    assert_eq!(out, data);
    let gets = server.gets();
    assert_eq!(gets.len() as u64, parts(), "one request per part: {gets:?}");
    assert!(gets.iter().all(|(s, st, _)| s.is_some() && *st == 206));
    // Every byte of every part was asked for exactly once.
    let mut starts: Vec<u64> = gets.iter().filter_map(|g| g.0).collect();
    starts.sort_unstable();
    assert_eq!(starts, (0..parts()).map(|i| i * PART).collect::<Vec<_>>());
}

#[tokio::test]
async fn short_ranges_are_completed_by_asking_for_the_rest() {
    let data = blob_bytes(2);
    let server = serve(stub(
        &[&data],
        None,
        Behaviour {
            short_once: true,
            ..Behaviour::default()
        },
    ))
    .await;
    let client = ranged_client(4, CredentialStore::new());
    let out = read_all(&client, &server.addr, &data).await.expect("read");
    assert_eq!(out, data);
    // Each part was cut short once, then its rest was asked for once.
    let gets = server.gets();
    assert_eq!(gets.len() as u64, 2 * parts(), "{gets:?}");
    assert!(gets.iter().all(|g| g.1 == 206));
}

#[tokio::test]
async fn a_source_that_ignores_range_is_read_as_one_stream() {
    let data = blob_bytes(3);
    let server = serve(stub(
        &[&data],
        None,
        Behaviour {
            ignore_range: true,
            ..Behaviour::default()
        },
    ))
    .await;
    let client = ranged_client(4, CredentialStore::new());
    let out = read_all(&client, &server.addr, &data).await.expect("read");
    assert_eq!(out, data);
    assert_eq!(server.gets(), vec![(None, 200, false)], "one whole GET");
}

#[tokio::test]
async fn a_range_that_fails_once_is_retried_alone() {
    let data = blob_bytes(4);
    let server = serve(stub(
        &[&data],
        None,
        Behaviour {
            fail_once_at: Some(2 * PART),
            ..Behaviour::default()
        },
    ))
    .await;
    let client = ranged_client(4, CredentialStore::new());
    let out = read_all(&client, &server.addr, &data).await.expect("read");
    assert_eq!(out, data);
    let gets = server.gets();
    assert_eq!(gets.len() as u64, parts() + 1, "{gets:?}");
    for i in 0..parts() {
        let asked = gets.iter().filter(|g| g.0 == Some(i * PART)).count();
        assert_eq!(asked, if i == 2 { 2 } else { 1 }, "part {i}: {gets:?}");
    }
}

#[tokio::test]
async fn ranges_follow_the_redirect_and_credentials_stay_home() {
    let data = blob_bytes(5);
    let storage = serve(stub(&[&data], None, Behaviour::default())).await;
    let registry = serve(stub(
        &[&data],
        None,
        Behaviour {
            redirect_to: Some(format!("http://{}", storage.addr)),
            ..Behaviour::default()
        },
    ))
    .await;
    let mut creds = CredentialStore::new();
    creds.insert(
        &registry.addr,
        None,
        Credential::Bearer(Secret::new("grant-token-xyz")),
    );
    let client = ranged_client(4, creds);
    let out = read_all(&client, &registry.addr, &data)
        .await
        .expect("read");
    assert_eq!(out, data);
    let gets = storage.gets();
    assert_eq!(gets.len() as u64, parts(), "one redirected GET per part");
    assert!(
        gets.iter().all(|g| !g.2),
        "Authorization reached another origin: {gets:?}"
    );
}

/// A manifest for one config and one layer, as the stub serves it.
fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        Digest::of(config),
        config.len(),
        Digest::of(layer),
        layer.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_corrupted_range_commits_nothing_at_the_destination() {
    let data = blob_bytes(6);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let manifest = manifest_for(&config, &data);
    let server = serve(stub(
        &[&data, &config],
        Some(manifest),
        Behaviour {
            corrupt_at: Some(3 * PART),
            ..Behaviour::default()
        },
    ))
    .await;
    let dst = DockerRegistry::start();
    let err = copy_with(
        ranged_client(4, CredentialStore::new()),
        &format!("{}/app:v1", server.addr),
        &[format!("{}/mirror/app:v1", dst.addr())],
        CopyOptions::default(),
    )
    .await
    .expect_err("a corrupted range must fail the copy");
    assert!(
        err.to_string().contains(Digest::of(&data).as_str()),
        "the error names the blob: {err}"
    );
    let d = Digest::of(&data);
    assert_eq!(
        http_status(dst.addr(), "HEAD", &format!("/v2/mirror/app/blobs/{d}")),
        Some(404),
        "the corrupted blob was committed"
    );
    assert_eq!(dst.manifest_status("mirror/app", "v1"), 404);
    assert!(
        !dst.requests().iter().any(|r| r.is_manifest_put()),
        "no manifest after a digest mismatch"
    );
}

#[tokio::test]
async fn a_ranged_copy_is_byte_for_byte() {
    let data = blob_bytes(7);
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let manifest = manifest_for(&config, &data);
    let server = serve(stub(
        &[&data, &config],
        Some(manifest.clone()),
        Behaviour {
            // The config's transfer may hold a host permit too: wait for one other part.
            hold_first_until: 1,
            ..Behaviour::default()
        },
    ))
    .await;
    let dst = DockerRegistry::start();
    let report = copy_with(
        ranged_client(4, CredentialStore::new()),
        &format!("{}/app:v1", server.addr),
        &[format!("{}/mirror/app:v1", dst.addr())],
        CopyOptions::default(),
    )
    .await
    .expect("copy");
    assert_eq!(report.blobs_copied, 2);
    let raw = support::skopeo::inspect_raw(&format!("{}/mirror/app:v1", dst.addr()));
    assert_eq!(raw, manifest);
    // One POST and one PUT per blob at the destination: never PATCH.
    let writes: Vec<_> = dst
        .requests()
        .into_iter()
        .filter(|r| r.is_blob_write())
        .collect();
    assert_eq!(
        writes.iter().filter(|r| r.method == "PUT").count(),
        2,
        "{writes:?}"
    );
    assert!(!writes.iter().any(|r| r.method == "PATCH"), "{writes:?}");
}

#[tokio::test]
async fn fan_out_to_repositories_of_one_registry_uploads_each_blob_once() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "fan/app", "v1", 70);
    let repos = ["one", "two", "three", "four"];
    let to: Vec<String> = repos
        .iter()
        .map(|r| format!("{}/{r}/app:v1", dst.addr()))
        .collect();
    let mark = dst.mark();
    copy_with(
        client_with(CredentialStore::new()),
        &format!("{}/fan/app:v1", src.addr()),
        &to,
        CopyOptions::default(),
    )
    .await
    .expect("fan-out copy");
    let log = dst.requests_since(mark);
    let blobs: Vec<&str> = img
        .layers
        .iter()
        .chain([&img.config])
        .map(|b| b.digest.as_str())
        .collect();
    let puts = log
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads"))
        .count();
    assert_eq!(puts, blobs.len(), "each blob uploaded once: {log:?}");
    let mounts = log
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201)
        .count();
    assert_eq!(mounts, blobs.len() * (repos.len() - 1), "{log:?}");
    for r in repos {
        assert_eq!(dst.manifest_status(&format!("{r}/app"), "v1"), 200, "{r}");
        for d in &blobs {
            assert_eq!(
                http_status(dst.addr(), "HEAD", &format!("/v2/{r}/app/blobs/{d}")),
                Some(200),
                "{r} lacks {d}"
            );
        }
    }
}

#[tokio::test]
async fn fan_out_mounts_only_under_one_identity() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    push_multi_layer(src.addr(), "fan/app", "v1", 71);
    // Two identities for the two destination repositories: no mount between them (the
    // registry ignores credentials; what counts is what Ferry asks for).
    let mut creds = CredentialStore::new();
    let basic = |u: &str| Credential::Basic {
        username: u.into(),
        password: Secret::new("pw-1234"),
    };
    creds.insert_repository(dst.addr(), "a/app", basic("alice"));
    creds.insert_repository(dst.addr(), "b/app", basic("bob"));
    let mark = dst.mark();
    copy_with(
        client_with(creds),
        &format!("{}/fan/app:v1", src.addr()),
        &[
            format!("{}/a/app:v1", dst.addr()),
            format!("{}/b/app:v1", dst.addr()),
        ],
        CopyOptions::default(),
    )
    .await
    .expect("copy");
    let log = dst.requests_since(mark);
    assert!(
        !log.iter().any(|r| r.path.contains("mount=")),
        "mounted across identities: {log:?}"
    );
    assert_eq!(dst.manifest_status("b/app", "v1"), 200);
}

/// Counts concurrent requests; answers manifests, every third one with 429 first.
struct Throttling {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    seen: AtomicUsize,
    manifest: Vec<u8>,
}

async fn throttling(State(t): State<Arc<Throttling>>, uri: Uri) -> Response {
    let now = t.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    t.peak.fetch_max(now, Ordering::SeqCst);
    // Service time, so requests overlap; no assertion depends on it.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let n = t.seen.fetch_add(1, Ordering::SeqCst);
    t.in_flight.fetch_sub(1, Ordering::SeqCst);
    if uri.path() == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if n % 3 == 0 {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")]).into_response();
    }
    (
        StatusCode::OK,
        [
            ("content-type", OCI_MANIFEST.to_string()),
            ("docker-content-digest", Digest::of(&t.manifest).to_string()),
        ],
        t.manifest.clone(),
    )
        .into_response()
}

#[tokio::test]
async fn the_host_limit_holds_for_the_whole_client_under_429s() {
    let manifest = manifest_for(b"{}", b"layer");
    let state = Arc::new(Throttling {
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        seen: AtomicUsize::new(0),
        manifest,
    });
    let app = axum::Router::new()
        .fallback(throttling)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let limits = HostLimits {
        initial: 4,
        max: 4,
        min: 1,
        decrease_cooldown: Duration::ZERO,
        long_link: Duration::ZERO,
    };
    let repo = RepoRef::new(addr.clone(), "app");
    // The first request is refused with 429: a client that does not retry sees its limit
    // halved.
    let once = RegistryClient::new(ClientConfig {
        retry: ferry_oci::retry::RetryPolicy::none(),
        per_host: limits.clone(),
        ..ClientConfig::default()
    })
    .expect("client");
    let err = once.get_manifest(&repo, "v1").await.expect_err("429");
    assert!(err.to_string().contains("429"), "{err}");
    assert_eq!(once.host_limit(&addr), 2, "halved by one 429");

    let client = RegistryClient::new(ClientConfig {
        retry: ferry_oci::retry::RetryPolicy {
            max_attempts: 20,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        per_host: limits,
        ..ClientConfig::default()
    })
    .expect("client");
    // Many concurrent callers (as concurrent copies would be) over one client.
    let calls = (0..48).map(|_| client.get_manifest(&repo, "v1"));
    let results = futures::future::join_all(calls).await;
    task.abort();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let peak = state.peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "the server saw {peak} concurrent requests");
    assert!(client.host_peak(&addr) <= 4);
    assert!((1..=4).contains(&client.host_limit(&addr)));
}

#[tokio::test]
async fn a_warm_re_copy_by_digest_is_one_request_and_never_touches_the_source() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "warm/app", "v1", 72);
    let from = format!("{}/warm/app@{}", src.addr(), img.manifest.digest);
    for to in [
        format!("{}/warm/app:v1", dst.addr()),
        format!("{}/warm/app@{}", dst.addr(), img.manifest.digest),
    ] {
        copy_with(
            client_with(CredentialStore::new()),
            &from,
            std::slice::from_ref(&to),
            CopyOptions::default(),
        )
        .await
        .expect("cold copy");
        let (s, d) = (src.mark(), dst.mark());
        let report = copy_with(
            client_with(CredentialStore::new()),
            &from,
            std::slice::from_ref(&to),
            CopyOptions::default(),
        )
        .await
        .expect("warm copy");
        assert_eq!(
            report.digest.map(|d| d.to_string()),
            Some(img.manifest.digest.clone())
        );
        assert_eq!(src.requests_since(s), vec![], "{to}: the source was asked");
        let at_dst = dst.requests_since(d);
        assert_eq!(at_dst.len(), 1, "{to}: {at_dst:?}");
        assert_eq!(at_dst[0].method, "HEAD");
    }
}
