//! A token issuer for docker-registry's token auth (the docker "token" flow).
//!
//! At start it makes a self-signed EC P-256 certificate with the `openssl` CLI; the registry
//! trusts it through `auth.token.rootcertbundle`. `GET /token?service=&scope=` checks Basic
//! credentials and answers an ES256 JWT carrying the cert in its `x5c` header, granting every
//! requested action (or, for a [`User`] with grants, only the actions it was given, as a real
//! token service does). It counts tokens issued and refusals, and records which identity asked
//! for which scopes. It must never log a password or a
//! token, and never listen beyond 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use super::server::BackgroundServer;

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "test-issuer";

/// One identity the issuer accepts. `grants` lists `(repository, actions)`; `None` grants
/// every requested action.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    pub grants: Option<Vec<(String, Vec<String>)>>,
}

impl User {
    pub fn new(name: &str, password: &str, grants: &[(&str, &[&str])]) -> Self {
        User {
            name: name.into(),
            password: password.into(),
            grants: Some(
                grants
                    .iter()
                    .map(|(r, a)| (r.to_string(), a.iter().map(|s| s.to_string()).collect()))
                    .collect(),
            ),
        }
    }

    /// The subset of `actions` on `name` this user may have.
    fn allowed(&self, name: &str, actions: &[String]) -> Vec<String> {
        match &self.grants {
            None => actions.to_vec(),
            Some(grants) => actions
                .iter()
                .filter(|a| {
                    grants
                        .iter()
                        .any(|(r, allowed)| r == name && allowed.iter().any(|x| x == *a))
                })
                .cloned()
                .collect(),
        }
    }
}

struct IssuerState {
    users: Vec<User>,
    key: EcdsaKeyPair,
    cert_der_b64: String,
    issued: AtomicU64,
    refused: AtomicU64,
    /// Scopes of every token issued, in order.
    scopes: Mutex<Vec<String>>,
    /// (user, scopes asked) of every accepted token request, in order.
    asked: Mutex<Vec<(String, String)>>,
}

pub struct TokenIssuer {
    state: Arc<IssuerState>,
    server: BackgroundServer,
    cert_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(args: &[&str], cwd: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TokenIssuer {
    /// An issuer that accepts exactly `username`/`password` and grants whatever it asks.
    pub fn start(username: &str, password: &str) -> Self {
        Self::start_with_users(vec![User {
            name: username.into(),
            password: password.into(),
            grants: None,
        }])
    }

    /// An issuer that accepts each of `users`, granting each only its own grants.
    pub fn start_with_users(users: Vec<User>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=test-issuer",
            ],
            d,
        );
        openssl(
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out",
                "key.p8",
            ],
            d,
        );
        openssl(
            &[
                "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
            ],
            d,
        );
        let pkcs8 = std::fs::read(d.join("key.p8")).expect("read key");
        let cert_der = std::fs::read(d.join("cert.der")).expect("read cert");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .expect("parse EC key");
        let state = Arc::new(IssuerState {
            users,
            key,
            cert_der_b64: STANDARD.encode(cert_der),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            scopes: Mutex::new(Vec::new()),
            asked: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/token", get(token))
            .with_state(state.clone());
        let server = BackgroundServer::start(app);
        TokenIssuer {
            state,
            server,
            cert_path: d.join("cert.pem"),
            _dir: dir,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.addr())
    }
    pub fn service(&self) -> &str {
        SERVICE
    }
    pub fn issuer_name(&self) -> &str {
        ISSUER
    }
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
    pub fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }
    pub fn refusals(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
    /// `(user, scopes asked)` of every accepted token request, in order.
    pub fn requests_by_user(&self) -> Vec<(String, String)> {
        self.state
            .asked
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
    pub fn scopes_issued(&self) -> Vec<String> {
        self.state
            .scopes
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [("content-type", "application/json")],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
    )
        .into_response()
}

async fn token(
    State(st): State<Arc<IssuerState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let creds = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let user = creds
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .and_then(|(u, p)| {
            st.users
                .iter()
                .find(|user| user.name == u && user.password == p)
        });
    let Some(user) = user else {
        st.refused.fetch_add(1, Ordering::SeqCst);
        return unauthorized();
    };
    let mut service = String::new();
    let mut scopes = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "service" => service = v.into_owned(),
            "scope" => scopes.extend(v.split(' ').map(str::to_string)),
            _ => {}
        }
    }
    if let Ok(mut a) = st.asked.lock() {
        a.push((user.name.clone(), scopes.join(" ")));
    }
    // repository:<name>:<actions>; the name itself may not contain ':' here.
    let mut access: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in &scopes {
        let parts: Vec<&str> = s.splitn(3, ':').collect();
        if let [typ, name, actions] = parts.as_slice() {
            let e = access
                .entry((typ.to_string(), name.to_string()))
                .or_default();
            let asked: Vec<String> = actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            e.extend(user.allowed(name, &asked));
        }
    }
    let access: Vec<_> = access
        .into_iter()
        .map(|((typ, name), actions)| json!({"type": typ, "name": name, "actions": actions}))
        .collect();
    let t = now();
    let jti = st.issued.fetch_add(1, Ordering::SeqCst);
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [st.cert_der_b64]});
    let claims = json!({
        "iss": ISSUER,
        "sub": user.name,
        "aud": if service.is_empty() { SERVICE.to_string() } else { service },
        "exp": t + 300,
        "nbf": t - 10,
        "iat": t,
        "jti": format!("jti-{jti}-{t}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = match st.key.sign(&SystemRandom::new(), signing_input.as_bytes()) {
        Ok(s) => s,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    if let Ok(mut s) = st.scopes.lock() {
        s.push(scopes.join(" "));
    }
    axum::Json(json!({"token": jwt, "access_token": jwt, "expires_in": 300})).into_response()
}
