//! The vendor console: a web UI for the fleet, releases, builds and lineage, served from the
//! `ferry` binary (`ferry console`). It reads through a [`ConsoleSource`] (the CLI's adapter
//! over the management port), so it shows the local backend or a deployed AWS stack with the
//! operator's own credentials; nothing is deployed for it.
//!
//! - Pages are rendered on the server (semantic HTML that reads without JavaScript); a small
//!   embedded script adds live updates (server-sent events say when a view changed, the page
//!   fetches its `<main>` again: no full reloads), a live filter and confirmations.
//! - The JSON API (`/api/...`) returns the views with an `ETag`; `If-None-Match` gives 304.
//! - Security: loopback by default, and then only with a loopback `Host` (no DNS rebinding).
//!   Any other address needs a token (printed once at start, or from a file): a bearer header
//!   or the cookie `/login?token=` sets. Every state change is a POST carrying the per-process
//!   CSRF token, from the console's own origin. Views hold no secrets or grants by
//!   construction. Live-update streams, request bodies and stream lifetimes are bounded.
//!
//! This crate must never mutate anything except through [`ConsoleSource::act`], and never
//! render a value unescaped.

pub mod html;
pub mod pages;
pub mod source;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

pub use source::{ConsoleSource, SourceError};
use view::Action;

/// The assets, embedded: no CDN, no build step at run time.
const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");
const ICON: &str = include_str!("../assets/favicon.svg");

/// How the console serves.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Where it listens. Loopback needs no token; anything else does.
    pub addr: SocketAddr,
    /// The access token; required unless `addr` is loopback.
    pub token: Option<String>,
    /// How often a live view re-reads the source.
    pub poll: Duration,
    /// Live-update streams open at once; more are refused with 503.
    pub max_watchers: usize,
    /// How long one live-update stream lives; browsers reconnect on their own.
    pub watch_lifetime: Duration,
    /// Who the operator is, recorded with each action (`console:<user>`).
    pub operator: String,
}

impl ConsoleConfig {
    /// Defaults: 127.0.0.1:8080, no token, poll 2 s, 32 watchers, streams of 10 min.
    pub fn new(addr: SocketAddr) -> ConsoleConfig {
        ConsoleConfig {
            addr,
            token: None,
            poll: Duration::from_secs(2),
            max_watchers: 32,
            watch_lifetime: Duration::from_secs(600),
            operator: "console".into(),
        }
    }

    /// Refuses a non-loopback address without a token, and a token too short to be secret.
    pub fn validate(&self) -> Result<(), ConsoleError> {
        if let Some(t) = &self.token {
            if t.len() < 32 {
                return Err(ConsoleError::Config(
                    "the console token must be at least 32 characters; leave it out and ferry \
                     console prints a generated one"
                        .into(),
                ));
            }
        } else if !self.addr.ip().is_loopback() {
            return Err(ConsoleError::Config(format!(
                "{} is not a loopback address: pass --token-file (or let ferry console print a \
                 token) so that only you can use the console",
                self.addr
            )));
        }
        Ok(())
    }
}

/// A fresh random token (64 hex characters).
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console configuration: {0}")]
    Config(String),
    #[error("console listener: {0}")]
    Io(#[from] std::io::Error),
}

struct Shared<S> {
    source: S,
    token: Option<String>,
    csrf: String,
    /// The `Host` values accepted when bound to loopback.
    loopback_hosts: Option<Vec<String>>,
    poll: Duration,
    watchers: Arc<Semaphore>,
    watch_lifetime: Duration,
    operator: String,
}

/// The console's routes, for a listener bound to `local` (its real port).
pub fn router<S: ConsoleSource>(
    source: S,
    config: &ConsoleConfig,
    local: SocketAddr,
) -> Result<Router, ConsoleError> {
    config.validate()?;
    let loopback_hosts = local.ip().is_loopback().then(|| {
        let p = local.port();
        vec![
            format!("127.0.0.1:{p}"),
            format!("localhost:{p}"),
            format!("[::1]:{p}"),
        ]
    });
    let shared = Arc::new(Shared {
        source,
        token: config.token.clone(),
        csrf: generate_token(),
        loopback_hosts,
        poll: config.poll,
        watchers: Arc::new(Semaphore::new(config.max_watchers)),
        watch_lifetime: config.watch_lifetime,
        operator: config.operator.clone(),
    });
    Ok(Router::new()
        .route("/", get(fleet_page::<S>))
        .route("/releases", get(releases_page::<S>))
        .route("/releases/{id}", get(release_page::<S>))
        .route(
            "/releases/{id}/{action}",
            get(confirm_page::<S>).post(act_form::<S>),
        )
        .route("/builds/{id}", get(build_page::<S>))
        .route("/lineage", get(lineage_page::<S>))
        .route("/api/fleet", get(api_get::<S>))
        .route("/api/releases", get(api_get::<S>))
        .route("/api/releases/{id}", get(api_get::<S>))
        .route(
            "/api/releases/{id}/{action}",
            axum::routing::post(act_api::<S>),
        )
        .route("/api/builds/{id}", get(api_get::<S>))
        .route("/api/lineage/{digest}", get(api_get::<S>))
        .route("/api/watch", get(watch::<S>))
        .route(
            "/assets/console.css",
            get(|| async { asset(CSS, "text/css") }),
        )
        .route(
            "/assets/console.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
        .route(
            "/assets/favicon.svg",
            get(|| async { asset(ICON, "image/svg+xml") }),
        )
        .route("/login", get(login::<S>))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(middleware::from_fn_with_state(shared.clone(), guard::<S>))
        .with_state(shared))
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve<S: ConsoleSource>(
    listener: tokio::net::TcpListener,
    source: S,
    config: &ConsoleConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let local = listener.local_addr()?;
    let app = router(source, config, local)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

// ---- the guard: host, token, security headers ---------------------------------------------

const COOKIE: &str = "ferry_console";

async fn guard<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(hosts) = &sh.loopback_hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !hosts.iter().any(|h| h == host) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "the console answers only to its loopback address (open the URL ferry console printed)",
            );
        }
    }
    if let Some(token) = &sh.token {
        let path = req.uri().path();
        let presented = bearer(req.headers()).or_else(|| cookie(req.headers(), COOKIE));
        let ok = presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes()));
        if !ok && path != "/login" && !path.starts_with("/assets/") {
            return plain(
                StatusCode::UNAUTHORIZED,
                "this console needs its token: open the URL ferry console printed at start \
                 (/login?token=...), or send Authorization: Bearer <token>",
            );
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// Trades the token in the URL for an HttpOnly, SameSite=Strict cookie, then goes home (so
/// the token leaves the address bar).
async fn login<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let Some(token) = &sh.token else {
        return Redirect::to("/").into_response();
    };
    match q.token {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => {
            let mut resp = Redirect::to("/").into_response();
            if let Ok(v) =
                HeaderValue::from_str(&format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"))
            {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        _ => plain(
            StatusCode::UNAUTHORIZED,
            "wrong or missing token: use the URL ferry console printed at start",
        ),
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Constant-time comparison (of equal-length strings; a length mismatch is a plain no).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A state change must carry the CSRF token and, when the browser says where it comes from,
/// come from this console.
fn csrf_ok<S>(sh: &Shared<S>, headers: &HeaderMap, presented: Option<&str>) -> bool {
    let token_ok = presented.is_some_and(|p| same(p.as_bytes(), sh.csrf.as_bytes()));
    let origin_ok = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
    };
    token_ok && origin_ok
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

fn asset(body: &'static str, mime: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

// ---- pages ----------------------------------------------------------------------------------

/// A page, or only its `<main>` when the live-update script asks (`X-Ferry-Fragment: 1`).
fn html<S>(
    sh: &Shared<S>,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    active: &str,
    watch: Option<&str>,
    main: String,
) -> Response {
    let body = if headers.contains_key("x-ferry-fragment") {
        main
    } else {
        html::page(title, active, watch, &sh.csrf, &main)
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn source_status(e: &SourceError) -> StatusCode {
    match e {
        SourceError::NotFound(_) => StatusCode::NOT_FOUND,
        SourceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SourceError::Backend(_) => StatusCode::BAD_GATEWAY,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct FleetQuery {
    #[serde(default)]
    q: String,
}

async fn fleet_page<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> Response {
    match sh.source.fleet().await {
        Ok(f) => html(
            &sh,
            &headers,
            StatusCode::OK,
            "Fleet",
            "/",
            Some("/api/fleet"),
            pages::fleet(&f, &q.q),
        ),
        Err(e) => err_page(&sh, &headers, "Fleet", "/", &e),
    }
}

async fn releases_page<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
) -> Response {
    match sh.source.releases().await {
        Ok(list) => html(
            &sh,
            &headers,
            StatusCode::OK,
            "Releases",
            "/releases",
            Some("/api/releases"),
            pages::releases(&list, now_ms()),
        ),
        Err(e) => err_page(&sh, &headers, "Releases", "/releases", &e),
    }
}

async fn release_page<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match sh.source.release(&id).await {
        Ok(r) => {
            let watch = format!("/api/releases/{}", html::seg(&id));
            html(
                &sh,
                &headers,
                StatusCode::OK,
                &format!("Release {id}"),
                "/releases",
                Some(&watch),
                pages::release(&r, now_ms()),
            )
        }
        Err(e) => err_page(&sh, &headers, "Release", "/releases", &e),
    }
}

async fn confirm_page<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return unknown_action(&sh, &headers, &action);
    };
    html(
        &sh,
        &headers,
        StatusCode::OK,
        "Confirm",
        "/releases",
        None,
        pages::confirm(&id, action, &sh.csrf),
    )
}

#[derive(Deserialize)]
struct ActForm {
    csrf: Option<String>,
}

async fn act_form<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActForm>,
) -> Response {
    if !csrf_ok(&sh, &headers, form.csrf.as_deref()) {
        return plain(
            StatusCode::FORBIDDEN,
            "this action did not come from the console's own page (missing or wrong CSRF \
             token): reload the release page and use its button",
        );
    }
    let Some(action) = Action::parse(&action) else {
        return unknown_action(&sh, &headers, &action);
    };
    match sh.source.act(&id, action, &sh.operator).await {
        Ok(_) => Redirect::to(&format!("/releases/{}", html::seg(&id))).into_response(),
        Err(e) => err_page(&sh, &headers, "Release", "/releases", &e),
    }
}

async fn act_api<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let presented = headers.get("x-ferry-csrf").and_then(|v| v.to_str().ok());
    if !csrf_ok(&sh, &headers, presented) {
        return json_error(
            StatusCode::FORBIDDEN,
            "missing or wrong X-Ferry-CSRF header: read it from the page's ferry-csrf meta tag",
        );
    }
    let Some(action) = Action::parse(&action) else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("unknown action {action:?}: use pause, resume or abort"),
        );
    };
    match sh.source.act(&id, action, &sh.operator).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(e) => json_error(source_status(&e), &e.to_string()),
    }
}

async fn build_page<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match sh.source.build(&id).await {
        Ok(b) => {
            let watch = format!("/api/builds/{}", html::seg(&id));
            html(
                &sh,
                &headers,
                StatusCode::OK,
                &format!("Build {id}"),
                "",
                Some(&watch),
                pages::build(&b, now_ms()),
            )
        }
        Err(e) => err_page(&sh, &headers, "Build", "", &e),
    }
}

#[derive(Deserialize)]
struct LineageQuery {
    #[serde(default)]
    digest: String,
}

async fn lineage_page<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    Query(q): Query<LineageQuery>,
) -> Response {
    let asked = q.digest.trim().to_string();
    if asked.is_empty() {
        let main = pages::lineage(None, "", now_ms());
        return html(
            &sh,
            &headers,
            StatusCode::OK,
            "Lineage",
            "/lineage",
            None,
            main,
        );
    }
    match sh.source.lineage(&asked).await {
        Ok(l) => {
            let watch = format!("/api/lineage/{}", html::seg(&asked));
            let main = pages::lineage(Some(&l), &asked, now_ms());
            html(
                &sh,
                &headers,
                StatusCode::OK,
                "Lineage",
                "/lineage",
                Some(&watch),
                main,
            )
        }
        Err(e) => {
            let main = format!(
                "{}{}",
                pages::lineage(None, &asked, now_ms()),
                pages::problem("Not found", &e.to_string())
            );
            html(
                &sh,
                &headers,
                source_status(&e),
                "Lineage",
                "/lineage",
                None,
                main,
            )
        }
    }
}

fn err_page<S>(
    sh: &Shared<S>,
    headers: &HeaderMap,
    title: &str,
    active: &str,
    e: &SourceError,
) -> Response {
    let what = match e {
        SourceError::NotFound(_) => "Not found",
        SourceError::Invalid(_) => "Not possible",
        SourceError::Backend(_) => "The backend did not answer",
    };
    tracing::warn!(error = %e, "console: {title}");
    html(
        sh,
        headers,
        source_status(e),
        title,
        active,
        None,
        pages::problem(what, &e.to_string()),
    )
}

fn unknown_action<S>(sh: &Shared<S>, headers: &HeaderMap, action: &str) -> Response {
    html(
        sh,
        headers,
        StatusCode::NOT_FOUND,
        "Unknown action",
        "/releases",
        None,
        pages::problem(
            "Unknown action",
            &format!("{action:?} is not an action: use pause, resume or abort"),
        ),
    )
}

// ---- the JSON API and live updates ----------------------------------------------------------

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// The JSON for an API path, or the error: one function for the API and the live updates.
async fn api_json<S: ConsoleSource>(sh: &Shared<S>, path: &str) -> Result<Vec<u8>, ApiError> {
    let parts: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    match parts.as_slice() {
        ["fleet"] => enc(sh.source.fleet().await),
        ["releases"] => enc(sh.source.releases().await),
        ["releases", id] => enc(sh.source.release(&decode(id)).await),
        ["builds", id] => enc(sh.source.build(&decode(id)).await),
        ["lineage", d] => enc(sh.source.lineage(&decode(d)).await),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no such view {path:?}: use /api/fleet, /api/releases[/ID], /api/builds/ID or /api/lineage/DIGEST"),
        )),
    }
}

/// An API failure: its status and its message in words.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.0, &self.1)
    }
}

fn enc<T: serde::Serialize>(v: Result<T, SourceError>) -> Result<Vec<u8>, ApiError> {
    match v {
        Ok(v) => serde_json::to_vec(&v).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the view: {e}"),
            )
        }),
        Err(e) => Err(ApiError(source_status(&e), e.to_string())),
    }
}

/// Percent-decoding for a path segment (the router already decoded; the watch query did not).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn etag(body: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(body))[..32])
}

async fn api_get<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    headers: HeaderMap,
    req: axum::http::Uri,
) -> Response {
    let body = match api_json(&sh, req.path()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let tag = etag(&body);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(body),
        )
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[derive(Deserialize)]
struct WatchQuery {
    path: String,
}

/// Server-sent events: `change` (data: the view's ETag) whenever the view at `path` changes,
/// starting with its current ETag. Bounded in number and lifetime.
async fn watch<S: ConsoleSource>(
    State(sh): State<Arc<Shared<S>>>,
    Query(q): Query<WatchQuery>,
) -> Response {
    if !q.path.starts_with("/api/") || q.path.starts_with("/api/watch") {
        return json_error(
            StatusCode::BAD_REQUEST,
            "path must be a view: /api/fleet, /api/releases[/ID], /api/builds/ID, /api/lineage/DIGEST",
        );
    }
    if let Err(e) = api_json(&sh, &q.path).await {
        return e.into_response();
    }
    let Ok(permit) = Arc::clone(&sh.watchers).try_acquire_owned() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open; close some tabs (the pages still work without live updates)",
        );
    };
    let deadline = tokio::time::Instant::now() + sh.watch_lifetime;
    // The permit lives in the stream's state: dropping the stream (the client went away, or the
    // lifetime ended) gives the slot back.
    let state = (sh, q.path, None::<String>, permit);
    let stream = futures::stream::unfold(state, move |(sh, path, last, permit)| async move {
        let mut first = last.is_none();
        loop {
            if !first {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(sh.poll).await;
            }
            first = false;
            let tag = match api_json(&sh, &path).await {
                Ok(body) => etag(&body),
                // A failing backend is a change too: the page shows the error when it refetches.
                Err(e) => format!("\"status-{}\"", e.0.as_u16()),
            };
            if last.as_deref() != Some(tag.as_str()) {
                let ev = Event::default().event("change").data(tag.clone());
                return Some((
                    Ok::<_, std::convert::Infallible>(ev),
                    (sh, path, Some(tag), permit),
                ));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
