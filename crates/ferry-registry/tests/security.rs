//! Security contract of the embedded registry, over real HTTP: the real server with
//! [`AccessControl`] as its authorizer and `/token` mounted, driven by reqwest and skopeo.
//!
//! Every refusal must be a 401 or 403 with an OCI error body that does not echo the token, and
//! must leave the registry root byte-for-byte unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::{RegistryServer, RunningRegistry};
use ferry_registry::token::{unix_now, AccessEntry, TokenClaims, TokenSigner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const SERVICE: &str = "ferry-test-registry";
const VENDOR: &str = "vendor-secret-0123456789";
const AGENT_A: &str = "agent-a-secret-0123456789";
const NODE_A: &str = "node-a-secret-0123456789abcdef";
const AGENT_B: &str = "agent-b-secret-0123456789";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    base: String,
    host: String,
    ac: Arc<AccessControl>,
    http: reqwest::Client,
    _running: RunningRegistry,
}

async fn start() -> Env {
    start_with_retention_grace(Duration::from_secs(3600)).await
}

async fn start_with_retention_grace(grace: Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let mut policy = AccessPolicy::new();
    policy
        .add_identity(Identity::Vendor, VENDOR)
        .add_identity(Identity::Agent("a".into()), AGENT_A)
        .add_identity(Identity::Agent("b".into()), AGENT_B)
        .add_identity(Identity::Node("a".into()), NODE_A);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = AuthConfig::new(SERVICE, root.join("auth"));
    cfg.realm = format!("http://{addr}/token");
    let ac = Arc::new(AccessControl::open(cfg, policy).unwrap());
    let server = RegistryServer::builder(&root)
        .authorizer(ac.clone())
        .extra_routes(token_router(ac.clone()))
        .retention_grace(grace)
        .build()
        .unwrap();
    let running = server.spawn_on(listener).unwrap();
    Env {
        dir,
        root,
        base: format!("http://{addr}"),
        host: addr.to_string(),
        ac,
        http: reqwest::Client::new(),
        _running: running,
    }
}

/// Retention and in-use marks, run by the agent through the registry's endpoint.
#[path = "security/retention.rs"]
mod retention;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Env {
    async fn token(&self, user: &str, secret: &str, scopes: &[&str]) -> String {
        let mut q: Vec<(&str, &str)> = vec![("service", SERVICE)];
        q.extend(scopes.iter().map(|s| ("scope", *s)));
        let resp = self
            .http
            .get(format!("{}/token", self.base))
            .basic_auth(user, Some(secret))
            .query(&q)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let r = self.http.request(method, url);
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Uploads a blob (POST then one PUT); returns the final status.
    async fn push_blob(&self, token: Option<&str>, repo: &str, data: &[u8]) -> reqwest::Response {
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), token)
            .send()
            .await
            .unwrap();
        if resp.status() != StatusCode::ACCEPTED {
            return resp;
        }
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        self.req(
            Method::PUT,
            &format!("{loc}{sep}digest={}", digest(data)),
            token,
        )
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
    }

    async fn put_manifest(
        &self,
        token: Option<&str>,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            token,
        )
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
    }

    /// The signing key as a restarted server would load it: lets a test forge tokens that
    /// are validly signed but say something the policy or clock must refuse.
    fn signer(&self) -> TokenSigner {
        TokenSigner::load(&self.root.join("auth/signing.key")).unwrap()
    }
}

/// An image: config + layers + manifest, all bytes kept for checking.
struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(seed: &str) -> Image {
        let layer = format!("layer of {seed}").into_bytes();
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        })
        .to_string()
        .into_bytes();
        let manifest = manifest_json(&config, std::slice::from_ref(&layer));
        Image {
            config,
            layers: vec![layer],
            manifest,
        }
    }

    fn digest(&self) -> String {
        digest(&self.manifest)
    }

    async fn push(&self, env: &Env, token: &str, repo: &str, tag: &str) {
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            let r = env.push_blob(Some(token), repo, blob).await;
            assert_eq!(
                r.status(),
                StatusCode::CREATED,
                "{}",
                r.text().await.unwrap()
            );
        }
        let r = env
            .put_manifest(Some(token), repo, tag, OCI_MANIFEST, &self.manifest)
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }
}

fn manifest_json(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

/// Every file under `root` with the sha256 of its content.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), String::new());
                walk(&p, root, out);
            } else {
                out.insert(rel, digest(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts an OCI refusal: `status`, the error `code`, no token text in headers or body.
async fn assert_refused(
    case: &str,
    resp: reqwest::Response,
    status: StatusCode,
    secrets: &[&str],
) -> (reqwest::header::HeaderMap, String) {
    let got = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "{case}: {body}");
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{case}: not JSON: {body}"));
    let code = v["errors"][0]["code"].as_str().unwrap_or_default();
    let want = if status == StatusCode::UNAUTHORIZED {
        "UNAUTHORIZED"
    } else {
        "DENIED"
    };
    assert_eq!(code, want, "{case}: {body}");
    assert!(!v["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .is_empty());
    for s in secrets {
        // A token's signature part is the piece no legitimate message would ever contain.
        let probe = s.rsplit('.').next().unwrap_or(s);
        assert!(!body.contains(probe), "{case}: body echoes a secret");
        for (_, value) in headers.iter() {
            assert!(
                !value.to_str().unwrap_or_default().contains(probe),
                "{case}: header echoes a secret"
            );
        }
    }
    (headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_401_or_403_and_changes_nothing_on_disk() {
    let env = start().await;
    let vendor = env
        .token("vendor", VENDOR, &["repository:vendor/app:pull,push"])
        .await;
    let agent_a = env
        .token("agent:a", AGENT_A, &["repository:installs/a/app:pull,push"])
        .await;
    let img_a = Image::new("a");
    let img_b = Image::new("b");
    img_a.push(&env, &vendor, "vendor/app", "v1").await;
    img_b.push(&env, &vendor, "vendor/app", "v2").await;
    Image::new("installed")
        .push(&env, &agent_a, "installs/a/app", "v1")
        .await;

    let replayed = env
        .ac
        .mint_grant(
            "a",
            "vendor/app",
            &img_a.digest(),
            "job-done",
            Duration::from_secs(600),
        )
        .unwrap()
        .token;
    // Works until its sync is reported done...
    let ok = env
        .req(
            Method::GET,
            &format!("/v2/vendor/app/manifests/{}", img_a.digest()),
            Some(&replayed),
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    env.ac.revoke_grant("job-done").unwrap();
    let grant = env
        .ac
        .mint_grant(
            "a",
            "vendor/app",
            &img_a.digest(),
            "job-live",
            Duration::from_secs(600),
        )
        .unwrap()
        .token;
    let pull_only = env
        .token("vendor", VENDOR, &["repository:vendor/app:pull"])
        .await;
    // The vendor asks for push into an install: the scope is left out of the token.
    let vendor_into_install = env
        .token("vendor", VENDOR, &["repository:installs/a/app:pull,push"])
        .await;
    let claims: TokenClaims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(vendor_into_install.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims.access.is_empty(), "{:?}", claims.access);
    // Validly signed, claims push into install a for the vendor: the policy still says no.
    let now = unix_now();
    let signer = env.signer();
    let forged_vendor = signer
        .sign(&TokenClaims {
            iss: SERVICE.into(),
            sub: "vendor".into(),
            aud: SERVICE.into(),
            exp: now + 300,
            iat: now,
            jti: "forged-1".into(),
            access: vec![AccessEntry::repository("installs/a/app", &["pull", "push"])],
            grant: None,
        })
        .unwrap();
    let expired = signer
        .sign(&TokenClaims {
            iss: SERVICE.into(),
            sub: "vendor".into(),
            aud: SERVICE.into(),
            exp: now - 120,
            iat: now - 420,
            jti: "expired-1".into(),
            access: vec![AccessEntry::repository("vendor/app", &["pull", "push"])],
            grant: None,
        })
        .unwrap();
    let mut tampered = vendor.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let secrets = [
        vendor.as_str(),
        agent_a.as_str(),
        replayed.as_str(),
        grant.as_str(),
        pull_only.as_str(),
        vendor_into_install.as_str(),
        forged_vendor.as_str(),
        expired.as_str(),
        tampered.as_str(),
    ];
    let before = snapshot(&env.root);
    let new_blob = b"a blob that must never land".to_vec();
    let new_manifest = manifest_json(&img_a.config, &[img_a.layers[0].clone()]);
    let a_digest = img_a.digest();
    let b_digest = img_b.digest();
    let un = StatusCode::UNAUTHORIZED;
    let forbidden = StatusCode::FORBIDDEN;

    // No token at all: the challenge names this server's token endpoint and the scope.
    let (h, _) = assert_refused(
        "no token, pull",
        env.req(Method::GET, "/v2/vendor/app/manifests/v1", None)
            .send()
            .await
            .unwrap(),
        un,
        &secrets,
    )
    .await;
    assert_eq!(
        h["www-authenticate"],
        format!(
            "Bearer realm=\"{}/token\",service=\"{SERVICE}\",scope=\"repository:vendor/app:pull\"",
            env.base
        )
        .as_str()
    );
    let (h, _) = assert_refused(
        "no token, push",
        env.push_blob(None, "vendor/app", &new_blob).await,
        un,
        &secrets,
    )
    .await;
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("scope=\"repository:vendor/app:pull,push\""));
    assert_refused(
        "no token, version check",
        env.req(Method::GET, "/v2/", None).send().await.unwrap(),
        un,
        &secrets,
    )
    .await;
    assert_refused(
        "basic credentials on a registry route",
        env.req(Method::GET, "/v2/vendor/app/tags/list", None)
            .basic_auth("vendor", Some(VENDOR))
            .send()
            .await
            .unwrap(),
        un,
        &secrets,
    )
    .await;

    // Expired and tampered tokens.
    assert_refused(
        "expired token",
        env.push_blob(Some(&expired), "vendor/app", &new_blob).await,
        un,
        &secrets,
    )
    .await;
    assert_refused(
        "tampered token",
        env.push_blob(Some(&tampered), "vendor/app", &new_blob)
            .await,
        un,
        &secrets,
    )
    .await;
    assert_refused(
        "tampered token, pull",
        env.req(Method::GET, "/v2/vendor/app/manifests/v1", Some(&tampered))
            .send()
            .await
            .unwrap(),
        un,
        &secrets,
    )
    .await;

    // A token for the wrong repository.
    assert_refused(
        "token for another repository, pull",
        env.req(Method::GET, "/v2/vendor/other/tags/list", Some(&vendor))
            .send()
            .await
            .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "token for another repository, push",
        env.push_blob(Some(&vendor), "vendor/other", &new_blob)
            .await,
        forbidden,
        &secrets,
    )
    .await;

    // Push with a pull-only token.
    let (_, body) = assert_refused(
        "pull-only token, blob push",
        env.push_blob(Some(&pull_only), "vendor/app", &new_blob)
            .await,
        forbidden,
        &secrets,
    )
    .await;
    assert!(body.contains("repository:vendor/app:pull,push"), "{body}");
    assert_refused(
        "pull-only token, manifest push",
        env.put_manifest(
            Some(&pull_only),
            "vendor/app",
            "v9",
            OCI_MANIFEST,
            &new_manifest,
        )
        .await,
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "pull-only token, delete",
        env.req(
            Method::DELETE,
            &format!("/v2/vendor/app/manifests/{a_digest}"),
            Some(&pull_only),
        )
        .send()
        .await
        .unwrap(),
        forbidden,
        &secrets,
    )
    .await;

    // Install A's agent on install B.
    assert_refused(
        "agent a pushes into install b",
        env.push_blob(Some(&agent_a), "installs/b/app", &new_blob)
            .await,
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "agent a reads install b",
        env.req(Method::GET, "/v2/installs/b/app/tags/list", Some(&agent_a))
            .send()
            .await
            .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "agent a pushes into the vendor namespace",
        env.put_manifest(
            Some(&agent_a),
            "vendor/app",
            "v9",
            OCI_MANIFEST,
            &new_manifest,
        )
        .await,
        forbidden,
        &secrets,
    )
    .await;

    // The vendor pushing into an install namespace, with the token /token gave and with a
    // validly signed token that claims the push.
    assert_refused(
        "vendor pushes into an install (issued token)",
        env.push_blob(Some(&vendor_into_install), "installs/a/app", &new_blob)
            .await,
        forbidden,
        &secrets,
    )
    .await;
    let (_, body) = assert_refused(
        "vendor pushes into an install (signed token claiming push)",
        env.push_blob(Some(&forged_vendor), "installs/a/app", &new_blob)
            .await,
        forbidden,
        &secrets,
    )
    .await;
    assert!(body.contains("only agent:a"), "{body}");
    assert_refused(
        "vendor puts a manifest into an install (signed token claiming push)",
        env.put_manifest(
            Some(&forged_vendor),
            "installs/a/app",
            "v1",
            OCI_MANIFEST,
            &new_manifest,
        )
        .await,
        forbidden,
        &secrets,
    )
    .await;

    // A grant replayed after its sync was reported done.
    assert_refused(
        "revoked grant replayed",
        env.req(
            Method::GET,
            &format!("/v2/vendor/app/manifests/{a_digest}"),
            Some(&replayed),
        )
        .send()
        .await
        .unwrap(),
        un,
        &secrets,
    )
    .await;
    assert_refused(
        "revoked grant replayed on a blob",
        env.req(
            Method::GET,
            &format!("/v2/vendor/app/blobs/{}", digest(&img_a.layers[0])),
            Some(&replayed),
        )
        .send()
        .await
        .unwrap(),
        un,
        &secrets,
    )
    .await;

    // A live grant used for another digest, by tag, for push, on an install namespace.
    assert_refused(
        "grant for another manifest",
        env.req(
            Method::GET,
            &format!("/v2/vendor/app/manifests/{b_digest}"),
            Some(&grant),
        )
        .send()
        .await
        .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "grant for another artifact's blob",
        env.req(
            Method::GET,
            &format!("/v2/vendor/app/blobs/{}", digest(&img_b.layers[0])),
            Some(&grant),
        )
        .send()
        .await
        .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "grant by tag",
        env.req(Method::GET, "/v2/vendor/app/manifests/v1", Some(&grant))
            .send()
            .await
            .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "grant lists tags",
        env.req(Method::GET, "/v2/vendor/app/tags/list", Some(&grant))
            .send()
            .await
            .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "grant used to push",
        env.push_blob(Some(&grant), "vendor/app", &new_blob).await,
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "grant used on an install namespace",
        env.req(Method::GET, "/v2/installs/a/app/manifests/v1", Some(&grant))
            .send()
            .await
            .unwrap(),
        forbidden,
        &secrets,
    )
    .await;
    assert_refused(
        "grant pushes into an install",
        env.push_blob(Some(&grant), "installs/a/app", &new_blob)
            .await,
        forbidden,
        &secrets,
    )
    .await;

    // Bad credentials at the token endpoint.
    let resp = env
        .http
        .get(format!("{}/token", env.base))
        .basic_auth("vendor", Some("wrong"))
        .query(&[
            ("service", SERVICE),
            ("scope", "repository:vendor/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_refused("bad credentials at /token", resp, un, &secrets).await;
    let resp = env
        .http
        .get(format!("{}/token", env.base))
        .query(&[
            ("service", SERVICE),
            ("scope", "repository:vendor/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    let (h, _) = assert_refused("no credentials at /token", resp, un, &secrets).await;
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));

    let after = snapshot(&env.root);
    assert_eq!(
        before, after,
        "a refused request changed the registry on disk"
    );
    assert!(before.keys().any(|k| k.contains("revocations.json")));
    drop(env.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pushes_its_namespace_and_grant_pulls_exactly_its_graph() {
    let env = start().await;
    let vendor = env
        .token("vendor", VENDOR, &["repository:vendor/app:pull,push"])
        .await;
    // A two-platform index: the grant names the index, its children and their blobs follow.
    let amd = Image::new("amd64");
    let arm = Image::new("arm64");
    let other = Image::new("unrelated");
    amd.push(&env, &vendor, "vendor/app", "amd").await;
    arm.push(&env, &vendor, "vendor/app", "arm").await;
    other.push(&env, &vendor, "vendor/app", "other").await;
    let children: Vec<Value> = [&amd.manifest, &arm.manifest]
        .iter()
        .map(|m| json!({"mediaType": OCI_MANIFEST, "digest": digest(m), "size": m.len()}))
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
        .to_string()
        .into_bytes();
    let r = env
        .put_manifest(Some(&vendor), "vendor/app", "v1", OCI_INDEX, &index)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let index_digest = digest(&index);

    let grant = env
        .ac
        .mint_grant(
            "a",
            "vendor/app",
            &index_digest,
            "job-1",
            Duration::from_secs(300),
        )
        .unwrap()
        .token;
    let get = |path: String| {
        env.req(Method::GET, &path, Some(&grant))
            .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
            .send()
    };
    let r = get(format!("/v2/vendor/app/manifests/{index_digest}"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), index.as_slice());
    for img in [&amd, &arm] {
        let r = get(format!("/v2/vendor/app/manifests/{}", img.digest()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().as_ref(), img.manifest.as_slice());
        for blob in std::iter::once(&img.config).chain(&img.layers) {
            let r = get(format!("/v2/vendor/app/blobs/{}", digest(blob)))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
        }
    }
    let r = get(format!("/v2/vendor/app/manifests/{}", other.digest()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = get(format!("/v2/vendor/app/blobs/{}", digest(&other.layers[0])))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The agent copies what it pulled into its own namespace, and reads it back.
    let agent = env
        .token("agent:a", AGENT_A, &["repository:installs/a/app:pull,push"])
        .await;
    amd.push(&env, &agent, "installs/a/app", "amd").await;
    let r = env
        .req(
            Method::GET,
            "/v2/installs/a/app/manifests/amd",
            Some(&agent),
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), amd.manifest.as_slice());
    let r = env
        .req(Method::GET, "/v2/", Some(&agent))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Reported done: the same grant is refused from now on, also after a restart.
    env.ac.revoke_grant("job-1").unwrap();
    let r = get(format!("/v2/vendor/app/manifests/{index_digest}"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let restarted = AccessControl::open(
        AuthConfig::new(SERVICE, env.root.join("auth")),
        AccessPolicy::new(),
    )
    .unwrap();
    let probe = format!("Bearer {grant}");
    let refused = ferry_registry::server::Authorizer::authorize_base(&restarted, Some(&probe));
    assert!(refused.is_err());
}

#[tokio::test]
async fn a_client_following_the_mount_challenge_gets_201() {
    let env = start().await;
    let push = env
        .token("vendor", VENDOR, &["repository:vendor/src:pull,push"])
        .await;
    let blob = b"shared layer";
    assert_eq!(
        env.push_blob(Some(&push), "vendor/src", blob)
            .await
            .status(),
        StatusCode::CREATED
    );
    let mount = format!(
        "/v2/vendor/app/blobs/uploads/?mount={}&from=vendor/src",
        digest(blob)
    );
    // A plain client: no token yet, so it reads the challenge.
    let resp = env.req(Method::POST, &mount, None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let scope = challenge
        .split("scope=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the challenge names a scope")
        .to_string();
    let scopes: Vec<&str> = scope.split(' ').collect();
    assert!(
        scopes.contains(&"repository:vendor/app:pull,push")
            && scopes.contains(&"repository:vendor/src:pull"),
        "{challenge}"
    );
    // It asks for exactly what the challenge names, and retries.
    let token = env.token("vendor", VENDOR, &[scope.as_str()]).await;
    let resp = env
        .req(Method::POST, &mount, Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "mounted, not a new upload"
    );
    assert_eq!(
        env.req(
            Method::HEAD,
            &format!("/v2/vendor/app/blobs/{}", digest(blob)),
            Some(&token)
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_follows_the_distribution_token_spec() {
    let env = start().await;
    let resp = env
        .http
        .get(format!("{}/token", env.base))
        .basic_auth("agent:a", Some(AGENT_A))
        .query(&[
            ("service", SERVICE),
            (
                "scope",
                "repository:installs/a/app:pull,push repository:installs/b/app:pull",
            ),
            ("scope", "repository:vendor/app:pull"),
            ("scope", "nonsense"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["access_token"].as_str().unwrap(), token);
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in > 0 && expires_in <= 900, "{expires_in}");
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let claims = env.ac.verifier().verify(token, unix_now()).unwrap();
    assert_eq!(claims.sub, "agent:a");
    assert_eq!(
        claims.access,
        vec![AccessEntry::repository("installs/a/app", &["pull", "push"])]
    );

    let resp = env
        .http
        .get(format!("{}/token", env.base))
        .basic_auth("agent:a", Some(AGENT_A))
        .query(&[("service", "someone-else")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = env
        .http
        .get(format!("{}/token", env.base))
        .basic_auth("agent:zz", Some(AGENT_A))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// A one-image OCI layout on disk, tagged `v1`.
fn write_layout(dir: &Path, img: &Image) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for blob in std::iter::once(&img.config)
        .chain(&img.layers)
        .chain(std::iter::once(&img.manifest))
    {
        let d = digest(blob);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": img.digest(), "size": img.manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// skopeo failed, and because of authentication or authorization, not something else.
fn assert_auth_failure(out: &std::process::Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    eprintln!("{why}: {stderr}");
    assert!(!out.status.success(), "{why}");
    assert!(
        [
            "unauthorized",
            "denied",
            "authentication required",
            "401",
            "403"
        ]
        .iter()
        .any(|w| stderr.contains(w)),
        "{why}: {stderr}"
    );
}

async fn skopeo(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("skopeo")
            .arg("--insecure-policy")
            .args(&args[..1])
            // Keep the manifest byte-for-byte so its digest can be checked.
            .args(if args.first() == Some(&"copy") {
                &["--preserve-digests"][..]
            } else {
                &[]
            })
            .args(&args[1..])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("skopeo timed out")
    .expect("skopeo is installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_authenticates_through_the_token_endpoint() {
    let env = start().await;
    // An empty tar (two zero blocks) is a valid layer.
    let mut img = Image::new("skopeo");
    img.layers = vec![vec![0u8; 1024]];
    img.config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(&img.layers[0])]}})
    .to_string()
    .into_bytes();
    img.manifest = manifest_json(&img.config, &img.layers);
    let layout = env.dir.path().join("layout");
    write_layout(&layout, &img);
    let src = format!("oci:{}:v1", layout.display());
    let dest = format!("docker://{}/vendor/app:v1", env.host);
    let vendor_creds = format!("vendor:{VENDOR}");

    let out = skopeo(&[
        "copy",
        "--dest-creds",
        "vendor:wrong",
        "--dest-tls-verify=false",
        &src,
        &dest,
    ])
    .await;
    assert_auth_failure(&out, "wrong secret must fail");
    let agent_creds = format!("agent:a:{AGENT_A}");
    let out = skopeo(&[
        "copy",
        "--dest-creds",
        &agent_creds,
        "--dest-tls-verify=false",
        &src,
        &dest,
    ])
    .await;
    assert_auth_failure(&out, "an agent must not push into the vendor namespace");
    let out = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]).await;
    assert_auth_failure(&out, "anonymous push must fail");

    let out = skopeo(&[
        "copy",
        "--dest-creds",
        &vendor_creds,
        "--dest-tls-verify=false",
        &src,
        &dest,
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = skopeo(&[
        "inspect",
        "--creds",
        &vendor_creds,
        "--tls-verify=false",
        &dest,
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"].as_str().unwrap(), img.digest());

    let out = skopeo(&["inspect", "--tls-verify=false", &dest]).await;
    assert!(!out.status.success(), "anonymous inspect must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(VENDOR));
}

#[tokio::test]
async fn node_identity_pulls_its_install_only_and_never_writes() {
    let env = start().await;
    let agent = env
        .token("agent:a", AGENT_A, &["repository:installs/a/app:pull,push"])
        .await;
    let img = Image::new("amd64");
    img.push(&env, &agent, "installs/a/app", "v1").await;
    let agent_b = env
        .token("agent:b", AGENT_B, &["repository:installs/b/app:pull,push"])
        .await;
    Image::new("arm64")
        .push(&env, &agent_b, "installs/b/app", "v1")
        .await;

    // Through the token endpoint with Basic `node:a:<secret>` (the name holds a colon), asking
    // for everything: the token carries pull on its own install only.
    let node = env
        .token(
            "node:a",
            NODE_A,
            &[
                "repository:installs/a/app:pull,push,delete",
                "repository:installs/b/app:pull",
                "repository:vendor/app:pull",
            ],
        )
        .await;
    let r = env
        .req(
            Method::GET,
            &format!("/v2/installs/a/app/manifests/{}", img.digest()),
            Some(&node),
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the node pulls its install");
    assert_eq!(r.bytes().await.unwrap().as_ref(), img.manifest.as_slice());

    // Never push, delete, read another install or the vendor namespace.
    let r = env
        .push_blob(Some(&node), "installs/a/app", b"node-push")
        .await;
    assert!(
        r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::UNAUTHORIZED,
        "{}",
        r.status()
    );
    let r = env
        .req(
            Method::DELETE,
            &format!("/v2/installs/a/app/manifests/{}", img.digest()),
            Some(&node),
        )
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::UNAUTHORIZED,
        "{}",
        r.status()
    );
    for path in ["/v2/installs/b/app/tags/list", "/v2/vendor/app/tags/list"] {
        let r = env
            .req(Method::GET, path, Some(&node))
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::UNAUTHORIZED,
            "{path}: {}",
            r.status()
        );
    }
    // And the manifest is still there: nothing the node did changed the install.
    let r = env
        .req(
            Method::GET,
            &format!("/v2/installs/a/app/manifests/{}", img.digest()),
            Some(&agent),
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
