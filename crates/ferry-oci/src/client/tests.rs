//! Tests of the client against tiny logging servers on 127.0.0.1 and a real docker-registry.

use super::token::*;
use super::transport::*;
use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::{StatusCode, Url};

use crate::auth::{self, Credential, CredentialStore, Secret};
use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::media::{self, Manifest};
use crate::reference::RepoRef;
use crate::retry::RetryPolicy;
use crate::ByteStream;
use axum::body::Body;
use axum::http::{HeaderMap as AxHeaders, Method as AxMethod, Response as AxResponse, Uri};
use std::future::Future;
use std::sync::Mutex;

// ---- a tiny logging HTTP server on 127.0.0.1:0 ----------------------------------

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: AxHeaders,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    /// The absolute base of this server, from the Host header.
    fn base(&self) -> String {
        format!("http://{}", self.header("host").unwrap_or_default())
    }
}

struct TestServer {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    fn registry(&self) -> String {
        self.addr.to_string()
    }
    fn repo(&self, name: &str) -> RepoRef {
        RepoRef::new(self.registry(), name)
    }
    fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }
    fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen().iter().filter(|s| pred(s)).count()
    }
}

async fn serve<F, Fut>(handler: F) -> TestServer
where
    F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = AxResponse<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let app = axum::Router::new().fallback(
        move |method: AxMethod, uri: Uri, headers: AxHeaders, body: Bytes| {
            let seen = Seen {
                method: method.to_string(),
                uri: uri.to_string(),
                headers,
                body,
            };
            log2.lock().expect("log").push(seen.clone());
            handler(seen)
        },
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer { addr, log, task }
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> AxResponse<Body> {
    let mut b = AxResponse::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).expect("response")
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_secs(2),
    }
}

fn client_with(credentials: CredentialStore) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials,
        retry: fast_policy(),
        ..ClientConfig::default()
    })
    .expect("client")
}

fn sample_manifest(layer: &[u8]) -> Manifest {
    let raw = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        media::OCI_MANIFEST,
        media::OCI_EMPTY_CONFIG,
        Digest::of(b"{}"),
        Digest::of(layer),
        layer.len()
    );
    Manifest::from_bytes(Bytes::from(raw), media::OCI_MANIFEST).expect("manifest")
}

fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let parts: Vec<Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(parts))
}

async fn collect(mut s: ByteStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

// ---- pure helpers ----------------------------------------------------------------

#[test]
fn finds_next_links_and_oci_error_messages() {
    assert_eq!(
        next_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
        Some("/v2/a/tags/list?last=b&n=2")
    );
    assert_eq!(
        next_link(r#"<https://x/prev>; rel="prev", <https://x/next?a=1,2>; rel=next"#).as_deref(),
        Some("https://x/next?a=1,2")
    );
    assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
    assert_eq!(next_link("garbage <"), None);
    assert_eq!(
        error_message(
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#
        ),
        "MANIFEST_UNKNOWN: manifest unknown"
    );
    assert_eq!(
        error_message(StatusCode::NOT_FOUND, b"404 page not found\n"),
        "404 page not found"
    );
    assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
    assert!(
        error_message(StatusCode::BAD_GATEWAY, &[b'x'; 5000])
            .chars()
            .count()
            <= 201
    );
}

// ---- auth ------------------------------------------------------------------------

/// A registry that wants `Bearer tok-N` from a token service that wants alice's password.
async fn bearer_registry(token_calls: Arc<AtomicU64>) -> TestServer {
    serve(move |req: Seen| {
        let token_calls = token_calls.clone();
        async move {
            let basic = format!(
                "Basic {}",
                auth::basic_token("alice", &Secret::new("s3cret-pw"))
            );
            if req.uri.starts_with("/token") {
                if req.header("authorization") != Some(basic) {
                    return reply(401, &[], "bad credentials");
                }
                let n = token_calls.fetch_add(1, Ordering::SeqCst) + 1;
                return reply(
                    200,
                    &[("content-type", "application/json")],
                    format!(r#"{{"token":"tok-{n}","expires_in":300}}"#),
                );
            }
            let ok = req
                .header("authorization")
                .is_some_and(|a| a.starts_with("Bearer tok-"));
            if !ok {
                let challenge = format!(
                    r#"Bearer realm="{}/token",service="test-registry""#,
                    req.base()
                );
                return reply(
                    401,
                    &[("www-authenticate", challenge.as_str())],
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
            }
            let m = sample_manifest(b"layer");
            reply(200, &[("content-type", media::OCI_MANIFEST)], m.bytes)
        }
    })
    .await
}

fn alice(registry: &str) -> CredentialStore {
    let mut store = CredentialStore::new();
    store.insert(
        registry,
        None,
        Credential::Basic {
            username: "alice".into(),
            password: Secret::new("s3cret-pw"),
        },
    );
    store
}

#[tokio::test]
async fn bearer_token_is_fetched_once_cached_and_reused() {
    let token_calls = Arc::new(AtomicU64::new(0));
    let server = bearer_registry(token_calls.clone()).await;
    let client = client_with(alice(&server.registry()));
    let repo = server.repo("team/app");
    for _ in 0..3 {
        let m = client.get_manifest(&repo, "v1").await.expect("manifest");
        assert_eq!(m.media_type, media::OCI_MANIFEST);
    }
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "one token for three reads"
    );
    assert_eq!(
        server.count(|s| s.header("authorization").is_none()),
        1,
        "only the first read meets a 401"
    );
    // 401, token, retry, then two reads straight through.
    assert_eq!(client.request_count(), 5);
    let scope = server
        .seen()
        .iter()
        .find(|s| s.uri.starts_with("/token"))
        .map(|s| s.uri.clone())
        .expect("token request");
    assert!(
        scope.contains("service=test-registry")
            && scope.contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{scope}"
    );

    // Another repository: the registry's scheme is known, so no further 401.
    client
        .get_manifest(&server.repo("team/other"), "v1")
        .await
        .expect("other");
    assert_eq!(token_calls.load(Ordering::SeqCst), 2);
    assert_eq!(server.count(|s| s.header("authorization").is_none()), 1);

    // Concurrent first reads of a new repository share a single token fetch.
    let third = server.repo("team/third");
    let reads = (0..5).map(|_| client.get_manifest(&third, "v1"));
    for r in futures::future::join_all(reads).await {
        r.expect("concurrent read");
    }
    assert_eq!(token_calls.load(Ordering::SeqCst), 3);
}

/// docker's `identitytoken`: the refresh token goes only in a POST body to the token
/// service (grant_type=refresh_token with the service and scope), never to the registry or
/// in a URL, and the access token it returns reads the manifest.
#[tokio::test]
async fn an_identity_token_is_exchanged_by_post_for_an_access_token() {
    let server = serve(|req: Seen| async move {
        if req.uri.starts_with("/token") {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
                .into_owned()
                .collect();
            let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
            if req.method == "POST"
                && has("grant_type", "refresh_token")
                && has("refresh_token", "refresh-Hunter2")
                && has("service", "test-registry")
                && has("scope", "repository:team/app:pull")
            {
                return reply(
                    200,
                    &[("content-type", "application/json")],
                    r#"{"access_token":"acc-1","expires_in":300}"#,
                );
            }
            return reply(401, &[], "bad refresh token");
        }
        if req.header("authorization").as_deref() != Some("Bearer acc-1") {
            let challenge = format!(
                r#"Bearer realm="{}/token",service="test-registry""#,
                req.base()
            );
            return reply(401, &[("www-authenticate", challenge.as_str())], "");
        }
        let m = sample_manifest(b"layer");
        reply(200, &[("content-type", media::OCI_MANIFEST)], m.bytes)
    })
    .await;
    let mut store = CredentialStore::new();
    store.insert(
        &server.registry(),
        None,
        Credential::IdentityToken(Secret::new("refresh-Hunter2")),
    );
    let client = client_with(store);
    let m = client
        .get_manifest(&server.repo("team/app"), "v1")
        .await
        .expect("manifest with the exchanged token");
    assert_eq!(m.media_type, media::OCI_MANIFEST);
    for s in server.seen() {
        assert!(
            !s.uri.contains("Hunter2"),
            "the refresh token in a URL: {}",
            s.uri
        );
        if !s.uri.starts_with("/token") {
            assert!(
                !String::from_utf8_lossy(&s.body).contains("Hunter2")
                    && !s
                        .header("authorization")
                        .unwrap_or_default()
                        .contains("Hunter2"),
                "the refresh token went to the registry"
            );
        }
    }
    // A refused refresh token: the error says so and never repeats it.
    let mut bad = CredentialStore::new();
    bad.insert(
        &server.registry(),
        None,
        Credential::IdentityToken(Secret::new("stale-Hunter2")),
    );
    let err = client_with(bad)
        .get_manifest(&server.repo("team/app"), "v1")
        .await
        .expect_err("refused");
    let text = format!("{err} {err:?}");
    assert!(text.contains("identity token"), "{text}");
    assert!(!text.contains("Hunter2"), "{text}");
}

#[tokio::test]
async fn concurrent_first_contact_fetches_one_token() {
    let token_calls = Arc::new(AtomicU64::new(0));
    let server = bearer_registry(token_calls.clone()).await;
    let client = client_with(alice(&server.registry()));
    let repo = server.repo("team/app");
    let reads = (0..6).map(|_| client.get_manifest(&repo, "v1"));
    for r in futures::future::join_all(reads).await {
        r.expect("read");
    }
    assert_eq!(token_calls.load(Ordering::SeqCst), 1, "six 401s, one token");
}

#[tokio::test]
async fn wrong_password_gives_an_actionable_error_without_the_secret() {
    let server = bearer_registry(Arc::new(AtomicU64::new(0))).await;
    let mut store = CredentialStore::new();
    store.insert(
        &server.registry(),
        None,
        Credential::Basic {
            username: "alice".into(),
            password: Secret::new("wrong-password-123"),
        },
    );
    let err = client_with(store)
        .get_manifest(&server.repo("team/app"), "v1")
        .await
        .expect_err("refused");
    let text = format!("{err} | {err:?}");
    assert!(
        matches!(
            err,
            Error::Auth {
                step: Step::GetManifest,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("docker config.json") && text.contains(&server.registry()),
        "{text}"
    );
    assert!(!text.contains("wrong-password-123"), "{text}");
}

#[tokio::test]
async fn basic_challenge_and_preissued_bearer() {
    let server = serve(|req: Seen| async move {
        match req.header("authorization").as_deref() {
            Some(a)
                if a == format!(
                    "Basic {}",
                    auth::basic_token("alice", &Secret::new("s3cret-pw"))
                ) =>
            {
                reply(200, &[("content-length", "7")], "")
            }
            Some("Bearer grant-abc") => reply(200, &[("content-length", "9")], ""),
            _ => reply(401, &[("www-authenticate", r#"Basic realm="reg""#)], ""),
        }
    })
    .await;
    let d = Digest::of(b"x");
    let basic = client_with(alice(&server.registry()));
    assert_eq!(
        basic
            .blob_exists(&server.repo("a"), &d)
            .await
            .expect("basic"),
        Some(7)
    );
    assert_eq!(
        basic
            .blob_exists(&server.repo("b"), &d)
            .await
            .expect("basic again"),
        Some(7)
    );
    assert_eq!(
        basic.request_count(),
        3,
        "Basic is sent up front once learned"
    );

    let mut grant = CredentialStore::new();
    grant.insert(
        &server.registry(),
        Some("team"),
        Credential::Bearer(Secret::new("grant-abc")),
    );
    let bearer = client_with(grant);
    assert_eq!(
        bearer
            .blob_exists(&server.repo("team/app"), &d)
            .await
            .expect("grant"),
        Some(9)
    );
    assert_eq!(
        bearer.request_count(),
        1,
        "a grant is sent directly, never exchanged"
    );
    let err = bearer
        .blob_exists(&server.repo("elsewhere"), &d)
        .await
        .expect_err("anonymous");
    assert!(err.to_string().contains("username and password"), "{err}");
}

// ---- redirects -------------------------------------------------------------------

#[tokio::test]
async fn authorization_is_dropped_on_cross_host_redirect_and_kept_on_same_host() {
    let storage = serve(|_req: Seen| async move { reply(200, &[], "from-storage") }).await;
    let storage_base = format!("http://{}", storage.registry());
    let registry = serve(move |req: Seen| {
        let storage_base = storage_base.clone();
        async move {
            if req.uri.starts_with("/v2/team/cross/blobs/") {
                let to = format!("{storage_base}/bucket/blob?X-Amz-Signature=presigned");
                reply(307, &[("location", to.as_str())], "")
            } else if req.uri.starts_with("/v2/team/same/blobs/") {
                reply(307, &[("location", "/storage/same-blob")], "")
            } else if req.uri == "/storage/same-blob" {
                reply(200, &[], "from-registry")
            } else {
                reply(404, &[], "")
            }
        }
    })
    .await;
    let mut store = CredentialStore::new();
    store.insert(
        &registry.registry(),
        None,
        Credential::Bearer(Secret::new("grant-xyz")),
    );
    let client = client_with(store);
    let d = Digest::of(b"from-storage");

    let body = collect(
        client
            .get_blob(&registry.repo("team/cross"), &d, Some(12))
            .await
            .expect("cross"),
    )
    .await
    .expect("body");
    assert_eq!(body, b"from-storage");
    let at_storage = storage.seen();
    assert_eq!(at_storage.len(), 1);
    assert_eq!(
        at_storage[0].header("authorization"),
        None,
        "S3 must never see the registry's token"
    );
    assert!(registry.seen()[0].header("authorization").is_some());

    let body = collect(
        client
            .get_blob(&registry.repo("team/same"), &d, None)
            .await
            .expect("same"),
    )
    .await
    .expect("body");
    assert_eq!(body, b"from-registry");
    let hop = registry
        .seen()
        .into_iter()
        .find(|s| s.uri == "/storage/same-blob")
        .expect("followed");
    assert_eq!(
        hop.header("authorization").as_deref(),
        Some("Bearer grant-xyz")
    );
}

// ---- mount, tags, referrers -------------------------------------------------------

#[tokio::test]
async fn mount_201_and_202_fallback() {
    let mounted = Digest::of(b"mounted");
    let m2 = mounted.clone();
    let server = serve(move |req: Seen| {
        let mounted = m2.clone();
        async move {
            if req.method == "POST"
                && req
                    .uri
                    .contains(&format!("mount={}", mounted.as_str().replace(':', "%3A")))
            {
                reply(201, &[("location", "/v2/team/app/blobs/x")], "")
            } else if req.method == "POST" {
                reply(
                    202,
                    &[("location", "/v2/team/app/blobs/uploads/sess-1?_state=s")],
                    "",
                )
            } else if req.method == "DELETE" {
                reply(204, &[], "")
            } else {
                reply(405, &[], "")
            }
        }
    })
    .await;
    let client = client_with(CredentialStore::new());
    let repo = server.repo("team/app");
    assert_eq!(
        client
            .mount_blob(&repo, "team/base", &mounted)
            .await
            .expect("mount"),
        MountOutcome::Mounted
    );
    assert_eq!(
        client
            .mount_blob(&repo, "team/base", &Digest::of(b"other"))
            .await
            .expect("fallback"),
        MountOutcome::NotMounted
    );
    let seen = server.seen();
    assert!(
        seen[0].uri.contains("from=team%2Fbase") || seen[0].uri.contains("from=team/base"),
        "{}",
        seen[0].uri
    );
    assert_eq!(
        seen.iter()
            .filter(|s| s.method == "DELETE")
            .map(|s| s.uri.clone())
            .collect::<Vec<_>>(),
        vec!["/v2/team/app/blobs/uploads/sess-1?_state=s"]
    );
}

#[tokio::test]
async fn tags_follow_three_pages_of_links() {
    let server = serve(|req: Seen| async move {
        if !req.uri.starts_with("/v2/team/app/tags/list") {
            return reply(404, &[], r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#);
        }
        if req.uri.contains("last=d") {
            reply(200, &[], r#"{"name":"team/app","tags":["e"]}"#)
        } else if req.uri.contains("last=b") {
            let link = format!(r#"<{}/v2/team/app/tags/list?n=2&last=d>; rel="next""#, req.base());
            reply(200, &[("link", link.as_str())], r#"{"name":"team/app","tags":["c","d"]}"#)
        } else {
            reply(200, &[("link", r#"</v2/team/app/tags/list?n=2&last=b>; rel="next""#)], r#"{"name":"team/app","tags":["a","b"]}"#)
        }
    })
    .await;
    let client = client_with(CredentialStore::new());
    let tags = client
        .list_tags(&server.repo("team/app"))
        .await
        .expect("tags");
    assert_eq!(tags, vec!["a", "b", "c", "d", "e"]);
    assert_eq!(server.seen().len(), 3);
    assert!(client
        .list_tags(&server.repo("team/none"))
        .await
        .expect("empty")
        .is_empty());
}

/// A hostile registry: it wants alice's Basic credentials, and its tag list and
/// referrers pages name the next page on `other` (another origin).
async fn hostile_link_registry(other: String) -> TestServer {
    serve(move |req: Seen| {
        let other = other.clone();
        async move {
            let basic = format!(
                "Basic {}",
                auth::basic_token("alice", &Secret::new("s3cret-pw"))
            );
            if req.header("authorization") != Some(basic) {
                return reply(401, &[("www-authenticate", r#"Basic realm="reg""#)], "");
            }
            let link = if req.uri.contains("/tags/list") {
                format!(r#"<{other}/v2/team/app/tags/list?n=2&last=b>; rel="next""#)
            } else {
                format!(r#"<{other}/v2/team/app/referrers/x?page=2>; rel="next""#)
            };
            let body = if req.uri.contains("/tags/list") {
                r#"{"name":"team/app","tags":["a","b"]}"#.to_string()
            } else {
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
                    media::OCI_INDEX
                )
            };
            reply(
                200,
                &[
                    ("link", link.as_str()),
                    ("content-type", "application/json"),
                ],
                body,
            )
        }
    })
    .await
}

#[tokio::test]
async fn a_link_to_another_origin_is_refused_and_never_sees_a_request() {
    let elsewhere =
        serve(
            |_req: Seen| async move { reply(200, &[], r#"{"name":"team/app","tags":["stolen"]}"#) },
        )
        .await;
    let registry = hostile_link_registry(format!("http://{}", elsewhere.registry())).await;
    let client = client_with(alice(&registry.registry()));

    let err = client
        .list_tags(&registry.repo("team/app"))
        .await
        .expect_err("a next page on another origin must be refused");
    let text = err.to_string();
    assert!(text.contains("another origin"), "{text}");
    assert!(
        text.contains(&format!("http://{}", elsewhere.registry())),
        "the foreign origin is named: {text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");

    let digest = Digest::of(b"subject");
    let err = client
        .referrers(&registry.repo("team/app"), &digest)
        .await
        .expect_err("referrers pagination is held to the same rule");
    assert!(err.to_string().contains("another origin"), "{err}");

    assert!(
        registry.count(|s| s.header("authorization").is_some()) >= 2,
        "the registry itself was sent the credentials, so there was something to leak"
    );
    assert_eq!(
        elsewhere.seen().len(),
        0,
        "the other origin received a request: {:?}",
        elsewhere
            .seen()
            .iter()
            .map(|s| (&s.uri, s.header("authorization")))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_link_to_another_port_of_the_same_host_is_another_origin() {
    // Same host name, other port: still another origin (a second listener on one machine
    // is a different service).
    let elsewhere = serve(|_req: Seen| async move { reply(200, &[], "{}") }).await;
    let registry =
        hostile_link_registry(format!("http://127.0.0.1:{}", elsewhere.addr.port())).await;
    let client = client_with(alice(&registry.registry()));
    let err = client
        .list_tags(&registry.repo("team/app"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("another origin"), "{err}");
    assert_eq!(elsewhere.seen().len(), 0);
}

#[test]
fn token_realm_policy_refuses_downgrades_and_clear_passwords_elsewhere() {
    let u = |s: &str| Url::parse(s).expect("url");
    let https_reg = u("https://registry.example/v2/");
    // https → http: refused, with or without a password.
    for basic in [true, false] {
        let why = realm_refusal(&https_reg, &u("http://auth.example/token"), basic)
            .expect("a downgrade is refused");
        assert!(why.contains("downgrade"), "{why}");
    }
    let why = realm_refusal(&https_reg, &u("http://registry.example/token"), true)
        .expect("even on the same host name");
    assert!(why.contains("downgrade"), "{why}");
    // https realm elsewhere (Docker Hub's shape): allowed.
    assert_eq!(
        realm_refusal(&https_reg, &u("https://auth.example/token"), true),
        None
    );
    // A loopback registry with a loopback realm on another port (ferry dev, the
    // docker-registry harness): allowed.
    assert_eq!(
        realm_refusal(
            &u("http://127.0.0.1:5000/v2/"),
            &u("http://127.0.0.1:5001/token"),
            true
        ),
        None
    );
    // A plain-http registry (--insecure or loopback) naming a non-loopback http realm on
    // another origin: no password goes there in clear; anonymous token requests may.
    let why = realm_refusal(
        &u("http://127.0.0.1:5000/v2/"),
        &u("http://auth.example/token"),
        true,
    )
    .expect("a password in clear to another host is refused");
    assert!(why.contains("another origin"), "{why}");
    assert_eq!(
        realm_refusal(
            &u("http://127.0.0.1:5000/v2/"),
            &u("http://auth.example/token"),
            false
        ),
        None
    );
    assert_eq!(
        realm_refusal(
            &u("http://reg.internal/v2/"),
            &u("http://reg.internal/token"),
            true
        ),
        None,
        "an --insecure registry's own origin"
    );
    assert!(realm_refusal(&https_reg, &u("ftp://auth.example/token"), false).is_some());
}

#[tokio::test]
async fn the_request_path_applies_the_realm_policy_before_sending_a_password() {
    // A loopback registry whose challenge names a plain-http realm on a non-loopback
    // host (TEST-NET-1, unroutable): the client must refuse before connecting, so the
    // error is the policy's, not a connection failure.
    let registry = serve(|req: Seen| async move {
        if req.header("authorization").is_some() {
            return reply(500, &[], "credentials reached the registry unexpectedly");
        }
        reply(
            401,
            &[(
                "www-authenticate",
                r#"Bearer realm="http://192.0.2.1:9/token",service="x""#,
            )],
            "",
        )
    })
    .await;
    let client = RegistryClient::new(ClientConfig {
        credentials: alice(&registry.registry()),
        retry: fast_policy(),
        connect_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    })
    .expect("client");
    let err = client
        .get_manifest(&registry.repo("team/app"), "v1")
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("plain http") && text.contains("192.0.2.1:9"),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[tokio::test]
async fn referrers_api_then_tag_schema_fallback() {
    let subject = Digest::of(b"subject");
    let referrer = sample_manifest(b"sig");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":{},"artifactType":"application/example.sig"}}]}}"#,
        media::OCI_INDEX,
        media::OCI_MANIFEST,
        referrer.digest,
        referrer.bytes.len()
    );
    let tag = format!("sha256-{}", subject.hex());
    let server = serve(move |req: Seen| {
        let (index, tag) = (index.clone(), tag.clone());
        async move {
            if req.uri.starts_with("/v2/api/referrers/") {
                reply(200, &[("content-type", media::OCI_INDEX)], index)
            } else if req.uri.starts_with("/v2/fallback/referrers/") {
                reply(404, &[("content-type", "text/plain")], "404 page not found")
            } else if req.uri == format!("/v2/fallback/manifests/{tag}") {
                reply(200, &[("content-type", media::OCI_INDEX)], index)
            } else {
                reply(
                    404,
                    &[],
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                )
            }
        }
    })
    .await;
    let client = client_with(CredentialStore::new());
    for repo in ["api", "fallback"] {
        let refs = client
            .referrers(&server.repo(repo), &subject)
            .await
            .expect(repo);
        assert_eq!(refs.len(), 1, "{repo}");
        assert_eq!(refs[0].digest, referrer.digest);
        assert_eq!(
            refs[0].artifact_type.as_deref(),
            Some("application/example.sig")
        );
    }
    assert!(client
        .referrers(&server.repo("nothing"), &subject)
        .await
        .expect("none")
        .is_empty());
}

// ---- retries ---------------------------------------------------------------------

#[tokio::test]
async fn retries_429_and_503_honouring_retry_after_then_succeeds() {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let server = serve(move |_req: Seen| {
        let n = h.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 => reply(
                    429,
                    &[("retry-after", "1")],
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
                ),
                1 => reply(503, &[], "unavailable"),
                _ => reply(
                    200,
                    &[("content-type", media::OCI_MANIFEST)],
                    sample_manifest(b"l").bytes,
                ),
            }
        }
    })
    .await;
    let client = client_with(CredentialStore::new());
    let started = std::time::Instant::now();
    let m = client
        .get_manifest(&server.repo("team/app"), "v1")
        .await
        .expect("eventually");
    assert_eq!(m.digest, sample_manifest(b"l").digest);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured"
    );
}

#[tokio::test]
async fn gives_up_after_max_attempts_naming_step_and_status() {
    let server = serve(|_req: Seen| async move {
        reply(
            503,
            &[],
            r#"{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}"#,
        )
    })
    .await;
    let client = client_with(CredentialStore::new());
    let err = client
        .get_manifest(&server.repo("team/app"), "v1")
        .await
        .expect_err("gives up");
    let text = err.to_string();
    assert!(
        text.contains("get manifest")
            && text.contains("503")
            && text.contains("UNAVAILABLE: maintenance"),
        "{text}"
    );
    assert!(err.is_retryable());
    assert_eq!(server.seen().len(), 3, "max_attempts is 3");
}

#[tokio::test]
async fn manifest_by_digest_is_verified_and_size_capped() {
    let real = sample_manifest(b"real");
    let big = vec![b' '; MAX_MANIFEST_BYTES + 10];
    let server = serve(move |req: Seen| {
        let (real, big) = (real.clone(), big.clone());
        async move {
            if req.uri.contains("/big/") {
                reply(200, &[("content-type", media::OCI_MANIFEST)], big)
            } else if req.uri.contains("/missing/") {
                reply(
                    404,
                    &[],
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                )
            } else {
                reply(200, &[("content-type", media::OCI_MANIFEST)], real.bytes)
            }
        }
    })
    .await;
    let client = client_with(CredentialStore::new());
    let wanted = Digest::of(b"not the manifest");
    let err = client
        .get_manifest(&server.repo("team/app"), wanted.as_str())
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == wanted),
        "{err}"
    );
    let err = client
        .get_manifest(&server.repo("team/big"), "v1")
        .await
        .expect_err("too big");
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = client
        .get_manifest(&server.repo("team/missing"), "v1")
        .await
        .expect_err("404");
    assert!(
        matches!(
            err,
            Error::NotFound {
                step: Step::GetManifest,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        client
            .head_manifest(&server.repo("team/missing"), "v1")
            .await
            .expect("head"),
        None
    );
}

// ---- blob download resume -------------------------------------------------------

/// A raw TCP server (hyper will not write half a body and then hang up on cue): the
/// first GET per repository gets half the blob, then the connection is closed; a later
/// Range request gets 206, or for `…/full` the whole blob again with 200. Logs
/// (path, Range header).
/// (path, Range header) of every request.
type RangeLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct FlakyBlobServer {
    addr: std::net::SocketAddr,
    log: RangeLog,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyBlobServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn flaky_blob_server(data: Vec<u8>) -> FlakyBlobServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log: RangeLog = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (data, log) = (data.clone(), log2.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let range = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("range: ")
                            .or_else(|| l.strip_prefix("Range: "))
                    })
                    .map(|r| r.trim().to_string());
                let repo = path.split("/blobs/").next().unwrap_or("").to_string();
                let first = {
                    let mut log = log.lock().expect("log");
                    let first = !log
                        .iter()
                        .any(|(p, _)| p.split("/blobs/").next() == Some(repo.as_str()));
                    log.push((path.clone(), range.clone()));
                    first
                };
                let start: Option<usize> = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|s| s.parse().ok());
                let (status, extra, body): (&str, String, &[u8]) = if first {
                    let half = data.len() / 2;
                    let msg = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", data.len());
                    let _ = sock.write_all(msg.as_bytes()).await;
                    let _ = sock.write_all(&data[..half]).await;
                    let _ = sock.flush().await;
                    return; // dropping the socket mid-body
                } else {
                    match start {
                        Some(s) if !repo.ends_with("/full") => (
                            "206 Partial Content",
                            format!(
                                "content-range: bytes {s}-{}/{}\r\n",
                                data.len() - 1,
                                data.len()
                            ),
                            &data[s..],
                        ),
                        _ => ("200 OK", String::new(), &data[..]),
                    }
                };
                let msg = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(msg.as_bytes()).await;
                let _ = sock.write_all(body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    FlakyBlobServer { addr, log, task }
}

#[tokio::test]
async fn resumes_a_dropped_download_with_range() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(&data);
    let server = flaky_blob_server(data.clone()).await;
    let client = client_with(CredentialStore::new());
    let repo_ref = |name: &str| RepoRef::new(server.addr.to_string(), name);
    for repo in ["team/partial", "team/full"] {
        let stream = client
            .get_blob(&repo_ref(repo), &d, Some(data.len() as u64))
            .await
            .expect("open");
        let body = collect(stream).await.expect("resumed");
        assert_eq!(body.len(), data.len(), "{repo}");
        assert_eq!(
            Digest::of(&body),
            d,
            "{repo}: bytes must be exactly the blob"
        );
        let ranges: Vec<String> = server
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("/v2/{repo}/")))
            .filter_map(|(_, r)| r.clone())
            .collect();
        assert_eq!(ranges.len(), 1, "{repo}: one resume");
        let offset: u64 = ranges[0]
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .expect("offset");
        assert!(
            offset > 0 && offset <= data.len() as u64 / 2,
            "{repo}: {ranges:?}"
        );
    }
    // Without a known size there is nothing to resume against: the failure surfaces.
    let stream = client
        .get_blob(&repo_ref("team/unknown"), &d, None)
        .await
        .expect("open");
    assert!(collect(stream).await.is_err());
}

// ---- upload ----------------------------------------------------------------------

#[tokio::test]
async fn upload_is_one_post_and_one_streaming_put_with_auth_from_the_post() {
    let token_calls = Arc::new(AtomicU64::new(0));
    let tc = token_calls.clone();
    let server = serve(move |req: Seen| {
        let tc = tc.clone();
        async move {
            if req.uri.starts_with("/token") {
                tc.fetch_add(1, Ordering::SeqCst);
                return reply(200, &[], r#"{"access_token":"push-token"}"#);
            }
            if req.header("authorization").as_deref() != Some("Bearer push-token") {
                let c = format!(r#"Bearer realm="{}/token",service="svc""#, req.base());
                return reply(401, &[("www-authenticate", c.as_str())], "");
            }
            match req.method.as_str() {
                "POST" => reply(202, &[("location", "/v2/team/app/blobs/uploads/u-1?_state=opaque")], ""),
                "PUT" => {
                    let d = Digest::of(&req.body);
                    let dcd = d.to_string();
                    if req.uri.contains(&format!("digest={}", d.as_str().replace(':', "%3A"))) {
                        reply(201, &[("docker-content-digest", dcd.as_str())], "")
                    } else {
                        reply(400, &[], r#"{"errors":[{"code":"DIGEST_INVALID","message":"digest did not match"}]}"#)
                    }
                }
                "HEAD" => reply(200, &[("content-length", "5")], ""),
                _ => reply(405, &[], ""),
            }
        }
    })
    .await;
    let client = client_with(CredentialStore::new());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    let d = Digest::of(&data);
    client
        .upload_blob(
            &server.repo("team/app"),
            &d,
            data.len() as u64,
            chunked(data.clone(), 8192),
        )
        .await
        .expect("uploaded");
    let seen: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| !s.uri.starts_with("/token"))
        .collect();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(
        methods,
        vec!["POST", "POST", "PUT"],
        "401 on the POST only, then one PUT; never PATCH"
    );
    assert_eq!(token_calls.load(Ordering::SeqCst), 1);
    let put = &seen[2];
    assert_eq!(put.header("content-length"), Some(data.len().to_string()));
    assert_eq!(put.header("transfer-encoding"), None);
    assert_eq!(
        put.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(
        put.uri
            .starts_with("/v2/team/app/blobs/uploads/u-1?_state=opaque&digest=sha256"),
        "{}",
        put.uri
    );
    assert_eq!(put.body.len(), data.len());
    // The push token also serves reads of the same repository.
    assert_eq!(
        client
            .blob_exists(&server.repo("team/app"), &d)
            .await
            .expect("head"),
        Some(5)
    );
    assert_eq!(token_calls.load(Ordering::SeqCst), 1);

    // A wrong digest comes back as the registry's error, naming the step.
    let err = client
        .upload_blob(
            &server.repo("team/app"),
            &Digest::of(b"nope"),
            3,
            chunked(b"abc".to_vec(), 2),
        )
        .await
        .expect_err("rejected");
    let text = err.to_string();
    assert!(
        text.contains("upload blob") && text.contains("400") && text.contains("DIGEST_INVALID"),
        "{text}"
    );
    assert!(
        !text.contains("_state"),
        "targets never carry the upload URL's query: {text}"
    );
}

// ---- secrets never leak ------------------------------------------------------------

#[tokio::test]
async fn credentials_never_appear_in_errors_even_when_the_server_echoes_them() {
    let password = "Hunter2-Very-Secret-Pw";
    let server = serve(move |req: Seen| async move {
        let Some(auth) = req.header("authorization") else {
            if req.uri.starts_with("/v2/basic/") {
                return reply(401, &[("www-authenticate", r#"Basic realm="r""#)], "");
            }
            let c = format!(r#"Bearer realm="{}/token",service="svc""#, req.base());
            return reply(401, &[("www-authenticate", c.as_str())], "");
        };
        if req.uri.starts_with("/token") {
            return reply(200, &[], r#"{"token":"Issued-Token-Value-42"}"#);
        }
        // A hostile server: echo the Authorization header everywhere it can.
        let body = format!(r#"{{"errors":[{{"code":"DENIED","message":"you sent {auth}"}}]}}"#);
        let status = if req.uri.contains("/plain/") {
            500
        } else {
            403
        };
        if status == 500 {
            return reply(500, &[], format!("oops: {auth} / {auth}"));
        }
        reply(status, &[], body)
    })
    .await;
    let mut store = CredentialStore::new();
    store.insert(
        &server.registry(),
        Some("basic"),
        Credential::Basic {
            username: "alice".into(),
            password: Secret::new(password),
        },
    );
    store.insert(
        &server.registry(),
        Some("grant"),
        Credential::Bearer(Secret::new("Grant-Token-Value-77")),
    );
    store.insert(
        &server.registry(),
        None,
        Credential::Basic {
            username: "bob".into(),
            password: Secret::new(password),
        },
    );
    let client = client_with(store.clone());
    let basic64 = auth::basic_token("alice", &Secret::new(password));
    let forbidden = [
        password,
        basic64.as_str(),
        "Grant-Token-Value-77",
        "Issued-Token-Value-42",
    ];
    let m = sample_manifest(b"x");
    let d = Digest::of(b"x");
    let mut errors = Vec::new();
    for repo in ["basic/app", "grant/app", "token/app", "plain/app"] {
        let r = server.repo(repo);
        errors.push(client.get_manifest(&r, "v1").await.expect_err("denied"));
        errors.push(client.put_manifest(&r, "v1", &m).await.expect_err("denied"));
        errors.push(client.blob_exists(&r, &d).await.expect_err("denied"));
        errors.push(
            client
                .upload_blob(&r, &d, 1, chunked(b"x".to_vec(), 1))
                .await
                .expect_err("denied"),
        );
        errors.push(client.list_tags(&r).await.expect_err("denied"));
    }
    assert!(
        errors.iter().any(|e| e.to_string().contains("<redacted>")),
        "the echo was seen and scrubbed"
    );
    for e in &errors {
        let text = format!("{e} | {e:?}");
        for secret in forbidden {
            assert!(!text.contains(secret), "leaked {secret:?} in {text}");
        }
    }
    let debug = format!("{client:?} {:?} {store:?}", client.config());
    for secret in forbidden {
        assert!(!debug.contains(secret), "leaked {secret:?} in {debug}");
    }
}

// ---- the real peer: CNCF distribution (docker-registry 2.8) ------------------------

/// A `docker-registry` child process on a free loopback port, killed on drop.
struct DockerRegistry {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn docker_registry() -> DockerRegistry {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        dir.path().join("data").display()
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).expect("config");
    let child = std::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry is installed at /usr/bin/docker-registry");
    let registry = DockerRegistry {
        child,
        addr,
        _dir: dir,
    };
    let probe = client_with(CredentialStore::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while probe.ping(&registry.addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "docker-registry did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    registry
}

#[tokio::test]
async fn round_trip_against_docker_registry() {
    let registry = docker_registry().await;
    let client = client_with(CredentialStore::new());
    let repo = RepoRef::new(registry.addr.clone(), "team/app");

    let layer: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let layer_digest = Digest::of(&layer);
    let config = b"{}".to_vec();
    let config_digest = Digest::of(&config);
    assert_eq!(
        client
            .blob_exists(&repo, &layer_digest)
            .await
            .expect("head"),
        None
    );
    client
        .upload_blob(
            &repo,
            &layer_digest,
            layer.len() as u64,
            chunked(layer.clone(), 65536),
        )
        .await
        .expect("upload layer");
    client
        .upload_blob(
            &repo,
            &config_digest,
            config.len() as u64,
            chunked(config.clone(), 1),
        )
        .await
        .expect("upload config");
    assert_eq!(
        client
            .blob_exists(&repo, &layer_digest)
            .await
            .expect("head"),
        Some(layer.len() as u64)
    );
    let back = collect(
        client
            .get_blob(&repo, &layer_digest, Some(layer.len() as u64))
            .await
            .expect("get"),
    )
    .await
    .expect("body");
    assert_eq!(Digest::of(&back), layer_digest);

    let manifest = sample_manifest(&layer);
    assert_eq!(
        client
            .put_manifest(&repo, "v1", &manifest)
            .await
            .expect("put"),
        manifest.digest
    );
    let got = client.get_manifest(&repo, "v1").await.expect("get by tag");
    assert_eq!(got.bytes, manifest.bytes, "byte-identical");
    assert_eq!(got.media_type, media::OCI_MANIFEST);
    let by_digest = client
        .get_manifest(&repo, manifest.digest.as_str())
        .await
        .expect("get by digest");
    assert_eq!(by_digest.bytes, manifest.bytes);
    let head = client
        .head_manifest(&repo, "v1")
        .await
        .expect("head")
        .expect("present");
    assert_eq!(
        (head.digest, head.size),
        (manifest.digest.clone(), manifest.bytes.len() as u64)
    );
    assert_eq!(
        client.head_manifest(&repo, "nope").await.expect("head"),
        None
    );
    assert!(matches!(
        client.get_manifest(&repo, "nope").await,
        Err(Error::NotFound { .. })
    ));
    client
        .put_manifest(&repo, "v2", &manifest)
        .await
        .expect("second tag");
    let mut tags = client.list_tags(&repo).await.expect("tags");
    tags.sort();
    assert_eq!(tags, vec!["v1", "v2"]);
    assert!(client
        .list_tags(&RepoRef::new(registry.addr.clone(), "team/empty"))
        .await
        .expect("none")
        .is_empty());

    // Mount into a sibling repository; an unknown blob falls back with 202.
    let other = RepoRef::new(registry.addr.clone(), "team/copy");
    assert_eq!(
        client
            .mount_blob(&other, "team/app", &layer_digest)
            .await
            .expect("mount"),
        MountOutcome::Mounted
    );
    assert_eq!(
        client
            .blob_exists(&other, &layer_digest)
            .await
            .expect("head"),
        Some(layer.len() as u64)
    );
    assert_eq!(
        client
            .mount_blob(&other, "team/app", &Digest::of(b"absent"))
            .await
            .expect("fallback"),
        MountOutcome::NotMounted
    );

    // Referrers: distribution 2.8 has no API, so the tag schema is read.
    let signature = sample_manifest(b"{}");
    client
        .put_manifest(&repo, signature.digest.as_str(), &signature)
        .await
        .expect("referrer");
    assert!(client
        .referrers(&repo, &manifest.digest)
        .await
        .expect("none yet")
        .is_empty());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        media::OCI_INDEX,
        media::OCI_MANIFEST,
        signature.digest,
        signature.bytes.len()
    );
    let index = Manifest::from_bytes(Bytes::from(index), media::OCI_INDEX).expect("index");
    client
        .put_manifest(&repo, &format!("sha256-{}", manifest.digest.hex()), &index)
        .await
        .expect("tag-schema index");
    let refs = client
        .referrers(&repo, &manifest.digest)
        .await
        .expect("referrers");
    assert_eq!(
        refs.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(),
        vec![signature.digest]
    );

    // A wrong digest is refused by the registry and reported with step and status.
    let err = client
        .upload_blob(
            &repo,
            &Digest::of(b"claimed"),
            5,
            chunked(b"other".to_vec(), 5),
        )
        .await
        .expect_err("digest mismatch");
    let text = err.to_string();
    assert!(
        text.contains("upload blob") && text.contains("400"),
        "{text}"
    );
}

#[tokio::test]
async fn an_endless_listing_is_cut_off_by_the_total_budget_not_held_in_memory() {
    // Every page is ~200 KiB of tags and names a next page on the same origin, forever.
    let page = {
        let tags: Vec<String> = (0..10_000).map(|i| format!("t{i:014}")).collect();
        serde_json::json!({"name": "team/app", "tags": tags}).to_string()
    };
    let budget = 2 * 1024 * 1024;
    assert!(page.len() > budget / 16);
    let server = serve(move |req: Seen| {
        let page = page.clone();
        async move {
            let n: u64 = req
                .uri
                .split("last=")
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let link = format!(r#"</v2/team/app/tags/list?last={}>; rel="next""#, n + 1);
            reply(
                200,
                &[
                    ("link", link.as_str()),
                    ("content-type", "application/json"),
                ],
                page,
            )
        }
    })
    .await;
    let client = RegistryClient::new(ClientConfig {
        max_listing_bytes: budget,
        ..ClientConfig::default()
    })
    .expect("client");
    let err = client
        .list_tags(&server.repo("team/app"))
        .await
        .expect_err("an endless listing must stop");
    assert!(err.to_string().contains("add up to more than"), "{err}");
    let pages = server.seen().len();
    assert!(
        pages <= budget / (budget / 16) + 1,
        "stopped after the budget, not after {pages} pages"
    );
    assert_eq!(
        ClientConfig::default().max_listing_bytes,
        DEFAULT_MAX_LISTING_BYTES
    );
}
