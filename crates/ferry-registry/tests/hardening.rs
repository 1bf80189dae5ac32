//! Regression tests for issue 10's registry items: limits one client cannot get around
//! (connections, header time, upload sessions, manifest memory, index depth, referrers pages)
//! and the protocol fixes (404 on unknown references, connections that survive a refusal,
//! checked Content-Range arithmetic, private file modes).
//!
//! Everything runs in process on 127.0.0.1:0; waits are reads with a deadline, never sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_registry::access::{Action, Target};
use ferry_registry::limits::{Limits, MAX_INDEX_DEPTH, MAX_REFERRERS_PAGE_BYTES};
use ferry_registry::server::{
    Authorizer, Challenge, Denied, GraphLookup, Principal, RegistryServerBuilder,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `Authorization: Bearer <name>` authenticates as `<name>`; no header gets a 401.
struct NamedBearer;

impl Authorizer for NamedBearer {
    fn authorize(
        &self,
        authorization: Option<&str>,
        repository: &str,
        _action: Action,
        _target: &Target,
        _graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied> {
        match authorization.and_then(|h| h.strip_prefix("Bearer ")) {
            Some(name) => Ok(Principal {
                subject: name.to_string(),
            }),
            None => Err(Denied::Unauthorized {
                challenge: Challenge::Bearer {
                    realm: "http://127.0.0.1/token".into(),
                    service: "test".into(),
                    scope: format!("repository:{repository}:pull,push"),
                },
                message: "authentication required".into(),
            }),
        }
    }
}

fn with_named_bearer(b: RegistryServerBuilder) -> RegistryServerBuilder {
    b.authorizer(Arc::new(NamedBearer))
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length framed) from `conn`, with a deadline.
async fn read_response(conn: &mut BufReader<TcpStream>, head: bool) -> Raw {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("status line");
        assert!(!line.is_empty(), "connection closed before a response");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).await.expect("header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').expect("header colon");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .unwrap_or(0);
        let mut body = vec![0; if head { 0 } else { len }];
        conn.read_exact(&mut body).await.expect("body");
        Raw {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("response within 10 s")
}

async fn connect(r: &Registry) -> BufReader<TcpStream> {
    BufReader::new(
        TcpStream::connect(r.running().addr())
            .await
            .expect("connect"),
    )
}

async fn send(conn: &mut BufReader<TcpStream>, request: &[u8]) {
    conn.get_mut().write_all(request).await.expect("write");
}

#[tokio::test]
async fn overflowing_content_range_is_416_and_the_session_still_takes_the_right_chunk() {
    let r = Registry::start().await;
    let location = r.start_upload("vendor/app").await;
    let resp = r
        .client
        .patch(r.url(&location))
        .header("content-range", "0-18446744073709551615")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["range"], "0-0", "the session's offset");
    let msg = assert_oci_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
    assert!(msg.contains("resume from"), "{msg}");
    // A reversed range is refused the same way.
    let resp = r
        .client
        .patch(r.url(&location))
        .header("content-range", "5-2")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
    let resp = r
        .client
        .patch(r.url(&location))
        .header("content-range", "0-2")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["range"], "0-2");
    let resp = r
        .client
        .put(r.url(&format!("{location}?digest={}", digest(b"abc"))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        r.get_bytes(&format!("/v2/vendor/app/blobs/{}", digest(b"abc")))
            .await
            .as_ref(),
        b"abc"
    );
}

fn index_of(child: &str, size: usize, media_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": media_type, "digest": child, "size": size}],
    }))
    .unwrap()
}

#[tokio::test]
async fn an_index_nested_deeper_than_a_grant_can_walk_is_refused_at_put() {
    let r = Registry::start().await;
    let repo = "vendor/deep";
    let (image, image_body, layer) = r.push_image(repo, "img", b"deep layer").await;
    let (mut child, mut child_size, mut child_type) =
        (image.clone(), image_body.len(), OCI_MANIFEST);
    let mut deepest_accepted = None;
    for depth in 1..=20 {
        let index = index_of(&child, child_size, child_type);
        let resp = r
            .put_manifest(repo, &format!("d{depth}"), OCI_INDEX, &index)
            .await;
        if depth <= MAX_INDEX_DEPTH {
            assert_eq!(resp.status(), 201, "depth {depth} is within the limit");
            deepest_accepted = Some(digest(&index));
        } else {
            let msg = assert_oci_error(resp, 400, "MANIFEST_INVALID").await;
            assert!(
                msg.contains(&format!("more than {MAX_INDEX_DEPTH} levels"))
                    && msg.contains("flatten"),
                "{msg}"
            );
            assert_eq!(
                r.get(&format!("/v2/{repo}/manifests/d{depth}"))
                    .await
                    .status(),
                404,
                "nothing stored for a refused index"
            );
            // A deeper chain cannot be built on a refused link either.
            break;
        }
        (child, child_size, child_type) = (digest(&index), index.len(), OCI_INDEX);
    }
    // Everything accepted is walked to the bottom: the grant closure of the deepest index
    // reaches the image's layer.
    let deepest = deepest_accepted.expect("some depth accepted");
    let closure = r
        .running()
        .storage()
        .manifest_references(repo, &deepest)
        .expect("manifest is in the repository");
    assert!(closure.contains(&image), "the image manifest is reached");
    assert!(
        closure.contains(&layer),
        "the layer at the bottom is reached"
    );
}

#[tokio::test]
async fn invalid_references_on_manifest_reads_are_404_manifest_unknown() {
    let r = Registry::start().await;
    r.push_image("vendor/app", "v1", b"x").await;
    let sha512 = format!("sha512:{}", "a".repeat(128));
    let long_tag = "t".repeat(129);
    for reference in [
        "-bad",
        ".hidden",
        long_tag.as_str(),
        "sha256:xyz",
        sha512.as_str(),
        "md5:00",
    ] {
        let path = format!("/v2/vendor/app/manifests/{reference}");
        assert_oci_error(r.get(&path).await, 404, "MANIFEST_UNKNOWN").await;
        assert_eq!(r.head(&path).await.status(), 404, "HEAD {reference}");
    }
    // Writes keep their 400: the client sent something it can fix.
    let m = image_manifest(&digest(b"c"), 1, &digest(b"l"), 1);
    assert_oci_error(
        r.put_manifest("vendor/app", "-bad", OCI_MANIFEST, &m).await,
        400,
        "TAG_INVALID",
    )
    .await;
}

#[tokio::test]
async fn a_connection_stays_usable_after_requests_refused_before_their_body() {
    let r = Registry::start_with(with_named_bearer).await;
    let mut conn = connect(&r).await;
    let body = vec![7u8; 64 * 1024];
    let request =
        |method: &str, path: &str, auth: bool, extra: &str, body: &[u8]| {
            let mut req =
                format!(
            "{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Length: {}\r\n{}{extra}\r\n",
            body.len(),
            if auth { "Authorization: Bearer a\r\n" } else { "" }
        )
                .into_bytes();
            req.extend_from_slice(body);
            req
        };
    let version_check = request("GET", "/v2/", true, "", b"");

    // 401 on a PATCH without a token.
    send(
        &mut conn,
        &request(
            "PATCH",
            "/v2/vendor/app/blobs/uploads/00000000-0000-4000-8000-000000000000",
            false,
            "",
            &body,
        ),
    )
    .await;
    let resp = read_response(&mut conn, false).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("connection"), None, "{resp:?}");
    send(&mut conn, &version_check).await;
    assert_eq!(read_response(&mut conn, false).await.status, 200);

    // 404 on an unknown upload id (token this time), then a PUT 401.
    send(
        &mut conn,
        &request(
            "PATCH",
            "/v2/vendor/app/blobs/uploads/00000000-0000-4000-8000-000000000000",
            true,
            "",
            &body,
        ),
    )
    .await;
    assert_eq!(read_response(&mut conn, false).await.status, 404);
    send(
        &mut conn,
        &request("PUT", "/v2/vendor/app/manifests/v1", false, "", &body),
    )
    .await;
    assert_eq!(read_response(&mut conn, false).await.status, 401);

    // 416 on an out-of-order PATCH of a real session.
    send(
        &mut conn,
        &request("POST", "/v2/vendor/app/blobs/uploads/", true, "", b""),
    )
    .await;
    let started = read_response(&mut conn, false).await;
    assert_eq!(started.status, 202);
    let location = started.header("location").expect("location").to_string();
    send(
        &mut conn,
        &request(
            "PATCH",
            &location,
            true,
            &format!("Content-Range: 100-{}\r\n", 100 + body.len() - 1),
            &body,
        ),
    )
    .await;
    assert_eq!(read_response(&mut conn, false).await.status, 416);
    // The same connection carries the next request, and the session is intact.
    send(&mut conn, &request("GET", &location, true, "", b"")).await;
    let status = read_response(&mut conn, false).await;
    assert_eq!(status.status, 204);
    assert_eq!(status.header("range"), Some("0-0"));

    // A body too large to drain is not read: the response says so, and the server closes.
    let huge = vec![1u8; 2 * 1024 * 1024];
    send(
        &mut conn,
        &request("PUT", "/v2/vendor/app/manifests/v1", false, "", &huge),
    )
    .await;
    let resp = read_response(&mut conn, false).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("connection"), Some("close"));
}

#[tokio::test]
async fn upload_sessions_are_capped_per_identity_and_hold_no_open_file() {
    let r = Registry::start_with(with_named_bearer).await;
    let cap = Limits::default().upload_sessions_per_identity;
    let open_fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let fds_before = open_fds();
    let post = |who: &'static str| {
        r.client
            .post(r.url("/v2/vendor/app/blobs/uploads/"))
            .bearer_auth(who)
            .send()
    };
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..2000 {
        let resp = post("a").await.unwrap();
        match resp.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(retry >= 1);
                if refused == 0 {
                    let msg = assert_oci_error(resp, 429, "TOOMANYREQUESTS").await;
                    assert!(
                        msg.contains(&format!("{cap} open upload sessions")),
                        "{msg}"
                    );
                }
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((accepted, refused), (cap, 2000 - cap));
    assert_eq!(r.running().storage().upload_sessions_of("a"), cap);
    // No file is held open per session (sockets of the pooled client come and go).
    assert!(
        open_fds() < fds_before + 16,
        "{} fds open after {cap} sessions, {fds_before} before",
        open_fds()
    );
    // Another identity is not affected: a whole chunked upload goes through.
    let resp = post("b").await.unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = r
        .client
        .patch(r.url(&location))
        .bearer_auth("b")
        .body(b"tenant b".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = r
        .client
        .put(r.url(&format!("{location}?digest={}", digest(b"tenant b"))))
        .bearer_auth("b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Monolithic uploads hold no session and are not counted.
    let resp = r
        .client
        .post(r.url(&format!(
            "/v2/vendor/app/blobs/uploads/?digest={}",
            digest(b"mono")
        )))
        .bearer_auth("a")
        .body(b"mono".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Idle sessions expire (here: everything idle for >= 0 s) and free the identity's slots.
    assert_eq!(r.running().storage().expire_uploads(Duration::ZERO), cap);
    assert_eq!(post("a").await.unwrap().status(), 202);
}

#[tokio::test]
async fn stalled_manifest_bodies_cannot_take_more_than_the_budget() {
    let r = Registry::start_with(|b| {
        b.limits(Limits {
            manifest_memory_bytes: 8 * 1024 * 1024,
            ..Limits::default()
        })
    })
    .await;
    let four_mib = 4 * 1024 * 1024;
    let mut stalled = Vec::new();
    for i in 0..2 {
        let mut conn = connect(&r).await;
        let head = format!(
            "PUT /v2/vendor/app/manifests/stall{i} HTTP/1.1\r\nHost: r\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {four_mib}\r\n\r\n"
        );
        send(&mut conn, head.as_bytes()).await;
        send(&mut conn, &vec![b' '; 1024]).await;
        stalled.push(conn);
    }
    // The two stalled PUTs hold the whole budget: the next manifest gets 429 at once.
    let mut tries = 0;
    let resp = loop {
        let m = image_manifest(&digest(b"c"), 1, &digest(b"l"), 1);
        let resp = r.put_manifest("vendor/app", "v1", OCI_MANIFEST, &m).await;
        // The stalled requests reserve when their handler runs; ask until both have.
        if resp.status() == 429 {
            break resp;
        }
        tries += 1;
        assert!(tries < 10_000, "never refused: {}", resp.status());
        tokio::task::yield_now().await;
    };
    assert!(resp.headers().contains_key("retry-after"));
    assert_oci_error(resp, 429, "TOOMANYREQUESTS").await;
    // Other clients are served meanwhile: blobs do not touch the manifest budget.
    r.assert_alive().await;
    let config = r.push_blob("vendor/app", b"{}").await;
    let layer = r.push_blob("vendor/app", b"after").await;
    // Once the stalled clients go, their bytes return to the budget.
    drop(stalled);
    let m = image_manifest(&config, 2, &layer, 5);
    let mut tries = 0;
    let status = loop {
        let status = r
            .put_manifest("vendor/app", "after", OCI_MANIFEST, &m)
            .await
            .status();
        if status != 429 {
            break status;
        }
        tries += 1;
        assert!(tries < 10_000, "the budget never came back");
        tokio::task::yield_now().await;
    };
    assert_eq!(status, 201);
}

#[tokio::test]
async fn one_identity_stalling_manifests_cannot_take_the_budget_from_another() {
    let r = Registry::start_with(|b| {
        with_named_bearer(b).limits(Limits {
            manifest_memory_bytes: 16 * 1024 * 1024,
            ..Limits::default()
        })
    })
    .await;
    let put = |who: &'static str, tag: &'static str, body: Vec<u8>| {
        r.client
            .put(r.url(&format!("/v2/vendor/app/manifests/{tag}")))
            .bearer_auth(who)
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
    };
    let blob = |who: &'static str, data: &'static [u8]| {
        r.client
            .post(r.url(&format!(
                "/v2/vendor/app/blobs/uploads/?digest={}",
                digest(data)
            )))
            .bearer_auth(who)
            .body(data.to_vec())
            .send()
    };
    assert_eq!(blob("b", b"{}").await.unwrap().status(), 201);
    assert_eq!(blob("b", b"layer").await.unwrap().status(), 201);
    let m = image_manifest(&digest(b"{}"), 2, &digest(b"layer"), 5);
    // "a" stalls a 4 MiB manifest: a quarter of the budget, its whole share.
    let mut stalled = connect(&r).await;
    let head = format!(
        "PUT /v2/vendor/app/manifests/stall HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer a\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
        4 * 1024 * 1024
    );
    send(&mut stalled, head.as_bytes()).await;
    send(&mut stalled, b"{").await;
    // Until the server has read the stalled head (a deadline, not a try count: on a loaded
    // machine the accept of the stalled connection can trail many quick PUTs).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = put("a", "a1", m.clone()).await.unwrap().status();
        if status == 429 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a was never held to its share: {status}"
        );
        tokio::task::yield_now().await;
    }
    // "b" is not affected.
    assert_eq!(put("b", "b1", m.clone()).await.unwrap().status(), 201);
    drop(stalled);
}

#[tokio::test]
async fn a_body_that_stalls_past_the_body_timeout_fails_and_the_session_survives() {
    let r = Registry::start_with(|b| {
        b.limits(Limits {
            body_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
    })
    .await;
    let location = r.start_upload("vendor/app").await;
    let mut conn = connect(&r).await;
    let head = format!("PATCH {location} HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n");
    send(&mut conn, head.as_bytes()).await;
    send(&mut conn, b"only ten b").await;
    // The server answers on its own once the body stalls.
    let resp = read_response(&mut conn, false).await;
    assert_eq!(resp.status, 400);
    assert!(
        String::from_utf8_lossy(&resp.body).contains("no request body byte arrived"),
        "{resp:?}"
    );
    let status = r.get(&location).await;
    assert_eq!(status.status(), 204);
    assert_eq!(
        status.headers()["range"],
        "0-0",
        "the stalled chunk was rolled back"
    );
}

#[tokio::test]
async fn half_sent_requests_are_evicted_for_real_clients_and_time_out() {
    let r = Registry::start_with(|b| {
        b.limits(Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(500),
            ..Limits::default()
        })
    })
    .await;
    let mut attackers = Vec::new();
    for _ in 0..64 {
        let mut conn = connect(&r).await;
        send(&mut conn, b"GET /v2/ HTTP/1.1\r\nHost: r\r\n").await;
        attackers.push(conn);
    }
    // Eight slots, all held by half-sent requests: a real client still gets through.
    let started = std::time::Instant::now();
    r.assert_alive().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // A half-sent request (the newest connection, so not the one evicted next) is closed by
    // the header timeout.
    let mut late = connect(&r).await;
    let sent = std::time::Instant::now();
    send(&mut late, b"GET /v2/ HTTP/1.1\r\nHost: r\r\n").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), late.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "closed within the header timeout");
    assert!(
        sent.elapsed() >= Duration::from_millis(400),
        "closed by the timeout, not at once: {:?}",
        sent.elapsed()
    );
    drop(attackers);
}

#[tokio::test]
async fn referrers_are_paged_by_size() {
    let r = Registry::start().await;
    let repo = "vendor/app";
    let (subject, subject_body, _) = r.push_image(repo, "v1", b"subject").await;
    let empty = r.push_blob(repo, b"{}").await;
    let big = "x".repeat(1024 * 1024);
    let count = MAX_REFERRERS_PAGE_BYTES / big.len() + 2;
    let mut expected = Vec::new();
    for i in 0..count {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.test",
            "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
            "layers": [{"mediaType": EMPTY_JSON, "digest": empty, "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
            "annotations": {"n": i.to_string(), "pad": big},
        }))
        .unwrap();
        let d = digest(&m);
        let resp = r.put_manifest(repo, &d, OCI_MANIFEST, &m).await;
        assert_eq!(resp.status(), 201);
        expected.push(d);
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "/v2/{repo}/referrers/{subject}?artifactType=application%2Fvnd.test"
    ));
    let mut pages = 0;
    while let Some(path) = next.take() {
        let resp = r.get(&path).await;
        assert_eq!(resp.status(), 200);
        next = resp
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string())
            .map(|l| {
                l.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string()
            });
        let body = resp.bytes().await.unwrap();
        assert!(
            body.len() <= MAX_REFERRERS_PAGE_BYTES + 1024,
            "page size {}",
            body.len()
        );
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for m in index["manifests"].as_array().unwrap() {
            seen.push(m["digest"].as_str().unwrap().to_string());
        }
        pages += 1;
        assert!(pages <= count, "paging must advance");
    }
    assert!(pages >= 2, "more than one page");
    assert_eq!(seen, expected, "every referrer once, in order");
}

#[cfg(unix)]
#[tokio::test]
async fn storage_files_are_0600_and_directories_0700() {
    use std::os::unix::fs::PermissionsExt;
    let r = Registry::start().await;
    r.push_image("vendor/app", "v1", b"private").await;
    let location = r.start_upload("vendor/app").await;
    r.patch_chunk(&location, b"partial".to_vec()).await;
    fn walk(dir: &std::path::Path, seen: &mut usize) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{}", entry.path().display());
                walk(&entry.path(), seen);
            } else {
                assert_eq!(mode, 0o600, "{}", entry.path().display());
            }
            *seen += 1;
        }
    }
    let root_mode = std::fs::metadata(r.root()).unwrap().permissions().mode() & 0o777;
    assert_eq!(root_mode, 0o700);
    let mut seen = 0;
    walk(r.root(), &mut seen);
    assert!(seen > 10, "walked {seen} entries");
}
