//! The authorization hook contract: every request is checked before storage is touched,
//! refusals become 401 (with a Bearer challenge) / 403 / 429 OCI errors that never echo the
//! credential, grants can use `GraphLookup`, and a mount asks for Pull on `from`.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ferry_registry::access::{Action, Target};
use ferry_registry::server::{Authorizer, Challenge, Denied, GraphLookup, Principal};

const ADMIN: &str = "Bearer s3cr3t-admin";
const WRITER: &str = "Bearer s3cr3t-writer";
const READER: &str = "Bearer s3cr3t-reader";
const GRANT_PREFIX: &str = "Bearer s3cr3t-grant-";
const THROTTLED: &str = "Bearer s3cr3t-throttled";

#[derive(Default)]
struct Rules {
    calls: Mutex<Vec<(String, Action, Target)>>,
}

fn challenge(repository: &str, action: Action) -> Denied {
    let verb = match action {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    Denied::Unauthorized {
        challenge: Challenge::Bearer {
            realm: "http://127.0.0.1/token".into(),
            service: "ferry-registry".into(),
            scope: format!("repository:{repository}:{verb}"),
        },
        message: "authentication required; get a token from the realm".into(),
    }
}

impl Authorizer for Rules {
    fn authorize(
        &self,
        authorization: Option<&str>,
        repository: &str,
        action: Action,
        target: &Target,
        graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied> {
        self.calls
            .lock()
            .unwrap()
            .push((repository.to_string(), action, target.clone()));
        let forbidden = |m: &str| Denied::Forbidden {
            message: m.to_string(),
        };
        let ok = |s: &str| {
            Ok(Principal {
                subject: s.to_string(),
            })
        };
        match authorization {
            None => Err(challenge(repository, action)),
            Some(ADMIN) => ok("admin"),
            Some(WRITER) if repository.starts_with("secret/") => {
                Err(forbidden("writer may not touch secret/"))
            }
            Some(WRITER) => ok("writer"),
            Some(READER) if action == Action::Pull => ok("reader"),
            Some(READER) => Err(forbidden("read-only token")),
            Some(THROTTLED) => Err(Denied::TooManyRequests {
                retry_after_secs: 7,
                message: "slow down".into(),
            }),
            Some(other) if other.starts_with(GRANT_PREFIX) => {
                let digest = &other[GRANT_PREFIX.len()..];
                let allowed = action == Action::Pull
                    && repository == "installs/a/app"
                    && match target {
                        Target::Manifest(r) => r == digest,
                        Target::Blob(b) => graph
                            .manifest_references(repository, digest)
                            .is_some_and(|refs| refs.contains(b)),
                        _ => false,
                    };
                if allowed {
                    ok("grant")
                } else {
                    Err(forbidden("outside the grant"))
                }
            }
            Some(_) => Err(challenge(repository, action)),
        }
    }

    fn authorize_base(&self, authorization: Option<&str>) -> Result<Principal, Denied> {
        match authorization {
            None => Err(challenge("", Action::Pull)),
            Some(_) => Ok(Principal::anonymous()),
        }
    }
}

async fn with_auth(rules: Arc<Rules>) -> Registry {
    Registry::start_with(move |b| b.authorizer(rules)).await
}

async fn push(r: &Registry, auth: &str, repo: &str, data: &[u8]) -> reqwest::Response {
    r.client
        .post(r.url(&format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            digest(data)
        )))
        .header("authorization", auth)
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

async fn assert_no_secret(
    resp: reqwest::Response,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    assert_eq!(resp.status().as_u16(), status);
    let headers = resp.headers().clone();
    for v in headers.values() {
        assert!(!v.to_str().unwrap_or_default().contains("s3cr3t"));
    }
    let text = resp.text().await.unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["errors"][0]["code"], code);
    headers
}

#[tokio::test]
async fn refusals_are_oci_errors_with_challenge_and_no_secret() {
    let rules = Arc::new(Rules::default());
    let r = with_auth(rules.clone()).await;
    let resp = r.get("/v2/").await;
    let h = assert_no_secret(resp, 401, "UNAUTHORIZED").await;
    assert_eq!(h["www-authenticate"], "Bearer realm=\"http://127.0.0.1/token\",service=\"ferry-registry\",scope=\"repository::pull\"");
    let ok = r
        .client
        .get(r.url("/v2/"))
        .header("authorization", READER)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let h = assert_no_secret(
        r.get("/v2/vendor/app/manifests/v1").await,
        401,
        "UNAUTHORIZED",
    )
    .await;
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("scope=\"repository:vendor/app:pull\""));

    // Refused push: 403, and storage untouched.
    assert_no_secret(push(&r, READER, "vendor/app", b"data").await, 403, "DENIED").await;
    let blobs = std::fs::read_dir(r.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
    assert!(!r.root().join("repositories/vendor").exists());

    let h = assert_no_secret(
        push(&r, THROTTLED, "vendor/app", b"data").await,
        429,
        "TOOMANYREQUESTS",
    )
    .await;
    assert_eq!(h["retry-after"], "7");

    assert_eq!(push(&r, WRITER, "vendor/app", b"data").await.status(), 201);
    let calls = rules.calls.lock().unwrap().clone();
    assert!(calls.contains(&("vendor/app".to_string(), Action::Push, Target::Repository)));
    assert!(calls.contains(&(
        "vendor/app".to_string(),
        Action::Pull,
        Target::Manifest("v1".into())
    )));
    let catalog = r
        .client
        .get(r.url("/v2/_catalog"))
        .header("authorization", READER)
        .send()
        .await
        .unwrap();
    assert_eq!(catalog.status(), 200);
    assert!(rules
        .calls
        .lock()
        .unwrap()
        .contains(&(String::new(), Action::Pull, Target::Catalog)));
}

#[tokio::test]
async fn grant_reaches_only_its_manifest_graph() {
    let rules = Arc::new(Rules::default());
    let r = with_auth(rules).await;
    let repo = "installs/a/app";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    for data in [&config[..], b"granted layer", b"other layer"] {
        assert_eq!(push(&r, WRITER, repo, data).await.status(), 201);
    }
    let m1 = image_manifest(&digest(config), config.len(), &digest(b"granted layer"), 13);
    let m2 = image_manifest(&digest(config), config.len(), &digest(b"other layer"), 11);
    for (tag, m) in [("one", &m1), ("two", &m2)] {
        let resp = r
            .client
            .put(r.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("authorization", WRITER)
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let grant = format!("{GRANT_PREFIX}{}", digest(&m1));
    let get = |path: String| {
        let req = r
            .client
            .get(r.url(&path))
            .header("authorization", grant.clone());
        async move { req.send().await.unwrap() }
    };
    assert_eq!(
        get(format!("/v2/{repo}/manifests/{}", digest(&m1)))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(format!("/v2/{repo}/blobs/{}", digest(b"granted layer")))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(format!("/v2/{repo}/blobs/{}", digest(config)))
            .await
            .status(),
        200
    );
    assert_no_secret(
        get(format!("/v2/{repo}/blobs/{}", digest(b"other layer"))).await,
        403,
        "DENIED",
    )
    .await;
    assert_no_secret(
        get(format!("/v2/{repo}/manifests/{}", digest(&m2))).await,
        403,
        "DENIED",
    )
    .await;
    assert_no_secret(get(format!("/v2/{repo}/tags/list")).await, 403, "DENIED").await;
}

#[tokio::test]
async fn mount_needs_pull_on_source_or_falls_back_to_upload() {
    let rules = Arc::new(Rules::default());
    let r = with_auth(rules.clone()).await;
    assert_eq!(push(&r, ADMIN, "secret/app", b"hidden").await.status(), 201);
    assert_eq!(push(&r, ADMIN, "vendor/src", b"public").await.status(), 201);
    let mount = |d: String, from: &str| {
        r.client
            .post(r.url(&format!(
                "/v2/vendor/app/blobs/uploads/?mount={d}&from={from}"
            )))
            .header("authorization", WRITER)
            .send()
    };
    let resp = mount(digest(b"hidden"), "secret/app").await.unwrap();
    assert_eq!(
        resp.status(),
        202,
        "no pull on the source: a plain upload session"
    );
    assert!(rules.calls.lock().unwrap().contains(&(
        "secret/app".to_string(),
        Action::Pull,
        Target::Blob(digest(b"hidden"))
    )));
    let head = r
        .client
        .head(r.url(&format!("/v2/vendor/app/blobs/{}", digest(b"hidden"))))
        .header("authorization", WRITER)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);

    let resp = mount(digest(b"public"), "vendor/src").await.unwrap();
    assert_eq!(resp.status(), 201);
}
