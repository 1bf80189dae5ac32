//! The HTTP server: distribution-spec 1.1 on axum over [`crate::storage::Storage`].
//!
//! Every handler asks the [`Authorizer`] before it touches storage, and answers with the
//! refusal the authorizer gives. Connections are served by [`crate::listener`] (caps and
//! timeouts) and request bodies pass through `body.rs` (body timeout, bounded drain).
//! It must never echo or log an `Authorization` header, never buffer a blob in memory, never
//! buffer more manifest bytes than [`Limits::manifest_memory_bytes`], never run a graph walk
//! on an async worker, and never stop serving because one request failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;

use crate::authz::{Action, Target};
/// Defined in [`crate::authz`]; re-exported where they were first published.
pub use crate::authz::{AllowAll, Authorizer, Challenge, Denied, GraphLookup, Principal};
use crate::budget::{BudgetExceeded, ManifestBudget};
use crate::errors::{ErrorCode, OciError, StorageError};
use crate::in_use::InUseRecords;
use crate::limits::{Limits, MAX_REFERRERS_PAGE_BYTES};
use crate::storage::{digest_hex, validate_repository, Storage, MAX_MANIFEST_BYTES, OCI_INDEX};

// ---- configuration and lifecycle ------------------------------------------------------------

/// What the registry serves and how.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Storage root; all state lives here.
    pub root: PathBuf,
    /// Repository prefixes whose tags are immutable (added to those persisted under `root`).
    pub immutable_tags: Vec<String>,
    /// Namespaces (e.g. `vendor`, `installs/acme`). When any are configured (here or
    /// persisted), requests for repositories outside them get `NAME_UNKNOWN`.
    pub namespaces: Vec<String>,
    /// Connection, time, session and memory bounds; see [`Limits`].
    pub limits: Limits,
    /// Retention (`POST /v2/<name>/_ferry/retention`) leaves unreferenced blobs and blob
    /// links younger than this alone: uploads waiting for their manifest (default 1 h).
    pub retention_grace: Duration,
}

impl RegistryConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            root: root.into(),
            immutable_tags: Vec::new(),
            namespaces: Vec::new(),
            limits: Limits::default(),
            retention_grace: Duration::from_secs(3600),
        }
    }
}

/// Failure to start or run the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("registry storage could not be opened: {0}")]
    Storage(#[from] StorageError),
    #[error("registry listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds a [`RegistryServer`].
pub struct RegistryServerBuilder {
    config: RegistryConfig,
    authorizer: Arc<dyn Authorizer>,
    extra_routes: Option<Router>,
}

impl RegistryServerBuilder {
    /// The authorization hook (default [`AllowAll`]).
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Routes merged into the registry's router, e.g. the token endpoint `GET /token`.
    /// They must not use `/v2/...` paths.
    pub fn extra_routes(mut self, routes: Router) -> Self {
        self.extra_routes = Some(match self.extra_routes.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// Makes tags immutable under this repository prefix.
    pub fn immutable_tags(mut self, prefix: impl Into<String>) -> Self {
        self.config.immutable_tags.push(prefix.into());
        self
    }

    /// Declares a namespace; see [`RegistryConfig::namespaces`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespaces.push(namespace.into());
        self
    }

    /// Connection, time, session and memory bounds (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// How young an unreferenced blob must be for retention to leave it (default 1 h).
    pub fn retention_grace(mut self, grace: Duration) -> Self {
        self.config.retention_grace = grace;
        self
    }

    /// Opens storage (deriving all state from disk) and builds the router.
    pub fn build(self) -> Result<RegistryServer, ServeError> {
        let limits = Arc::new(self.config.limits.clone().sanitized());
        let storage = Storage::open_with(&self.config.root, &limits)?;
        for prefix in &self.config.immutable_tags {
            storage.set_immutable(prefix)?;
        }
        for namespace in &self.config.namespaces {
            storage.add_namespace(namespace)?;
        }
        let state = AppState {
            storage: storage.clone(),
            authorizer: self.authorizer,
            manifest_budget: Arc::new(ManifestBudget::new(limits.manifest_memory_bytes)),
            in_use: InUseRecords::new(&self.config.root),
            retention_lock: Arc::new(tokio::sync::Mutex::new(())),
            retention_grace: self.config.retention_grace,
        };
        let mut router = Router::new()
            .route("/v2", any(base))
            .route("/v2/", any(base))
            .route("/v2/{*rest}", any(dispatch))
            .with_state(state);
        if let Some(extra) = self.extra_routes {
            router = router.merge(extra);
        }
        let router = router
            .fallback(unknown_endpoint)
            .layer(axum::middleware::map_response(api_version_header))
            .layer(axum::middleware::from_fn_with_state(
                limits.clone(),
                crate::body::guard_request_body,
            ))
            .layer(DefaultBodyLimit::disable());
        Ok(RegistryServer {
            storage,
            router,
            limits,
        })
    }
}

/// The registry: storage plus router. Serve it on a listener, or [`RegistryServer::spawn`]
/// it in-process.
pub struct RegistryServer {
    storage: Storage,
    router: Router,
    limits: Arc<Limits>,
}

impl RegistryServer {
    pub fn builder(root: impl Into<PathBuf>) -> RegistryServerBuilder {
        Self::from_config(RegistryConfig::new(root))
    }

    pub fn from_config(config: RegistryConfig) -> RegistryServerBuilder {
        RegistryServerBuilder {
            config,
            authorizer: Arc::new(AllowAll),
            extra_routes: None,
        }
    }

    /// Storage, for library calls (GC, retention, immutability, namespaces).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The limits this server enforces (zeros already replaced by defaults).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The axum router, to embed in another server. It enforces the body timeout, the drain
    /// and the manifest budget itself; connection caps and header/idle timeouts belong to the
    /// embedding server.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves until the listener fails.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves until `signal` completes, then drains connections.
    pub async fn serve_with_shutdown<F>(
        self,
        listener: TcpListener,
        signal: F,
    ) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Sessions of clients that vanished would otherwise count against their identity's
        // cap and keep their files until restart.
        let storage = self.storage.clone();
        let sweep = self.limits.upload_sweep_interval();
        let janitor = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            loop {
                tick.tick().await;
                storage.expire_idle_uploads();
            }
        });
        let result = crate::listener::serve(listener, self.router, self.limits, signal).await;
        janitor.abort();
        result
    }

    /// Binds `127.0.0.1:0` and serves in a background task.
    pub async fn spawn(self) -> std::io::Result<RunningRegistry> {
        let listener = crate::listener::bind(([127, 0, 0, 1], 0).into()).await?;
        self.spawn_on(listener)
    }

    /// Serves on `listener` in a background task.
    pub fn spawn_on(self, listener: TcpListener) -> std::io::Result<RunningRegistry> {
        let addr = listener.local_addr()?;
        let storage = self.storage.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve_with_shutdown(listener, async {
            let _ = rx.await;
        }));
        Ok(RunningRegistry {
            addr,
            storage,
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

/// Opens `config.root` and serves on `listener` until it fails: the standalone entry point
/// (`ferry registry serve`).
pub async fn serve(config: RegistryConfig, listener: TcpListener) -> Result<(), ServeError> {
    let server = RegistryServer::from_config(config).build()?;
    server.serve(listener).await?;
    Ok(())
}

/// A registry serving in a background task. Dropping it stops the server.
pub struct RunningRegistry {
    addr: SocketAddr,
    storage: Storage,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningRegistry {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>`, as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Stops accepting, lets in-flight requests finish (up to 5 s), then stops.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for RunningRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RunningRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRegistry")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

// ---- request handling -----------------------------------------------------------------------

#[derive(Clone)]
struct AppState {
    storage: Storage,
    authorizer: Arc<dyn Authorizer>,
    /// Bytes of manifest bodies buffered ([`Limits::manifest_memory_bytes`]).
    manifest_budget: Arc<ManifestBudget>,
    /// Deployers' in-use marks, kept by retention.
    in_use: InUseRecords,
    /// Held by retention and by marking, so a mark is never missed by a retention in progress.
    retention_lock: Arc<tokio::sync::Mutex<()>>,
    retention_grace: Duration,
}

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";
const OCI_SUBJECT: &str = "oci-subject";
const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";

async fn api_version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

async fn unknown_endpoint(uri: Uri) -> Response {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        format!(
            "no registry endpoint at {}; see the OCI distribution-spec for the API",
            truncate_path(uri.path())
        ),
    )
    .into_response()
}

fn truncate_path(path: &str) -> String {
    let mut end = path.len().min(200);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
}

fn denied_response(denied: Denied) -> Response {
    match denied {
        Denied::Unauthorized { challenge, message } => {
            OciError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
                .with_header(WWW_AUTHENTICATE, challenge.header_value())
                .into_response()
        }
        Denied::Forbidden { message } => {
            OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message).into_response()
        }
        Denied::TooManyRequests {
            retry_after_secs,
            message,
        } => OciError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            message,
        )
        .with_header(RETRY_AFTER, retry_after_secs.to_string())
        .into_response(),
    }
}

async fn base(State(app): State<AppState>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return unsupported_method(&method);
    }
    match app.authorizer.authorize_base(authorization(&headers)) {
        Ok(_) => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], "{}").into_response(),
        Err(denied) => denied_response(denied),
    }
}

fn unsupported_method(method: &Method) -> Response {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("method {method} is not supported on this endpoint"),
    )
    .into_response()
}

/// A parsed `/v2/...` path. Names may have many components, so paths are parsed from the
/// right.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Catalog,
    Tags(String),
    Manifest(String, String),
    UploadStart(String),
    Upload(String, String),
    Blob(String, String),
    Referrers(String, String),
    /// `<name>/_ferry/in-use/<digest>`: mark (PUT) or unmark (DELETE), agent only.
    InUse(String, String),
    /// `<name>/_ferry/in-use`: list the marks (GET).
    InUseList(String),
    /// `<name>/_ferry/retention?keep_last=N`: apply retention (POST), agent only.
    Retention(String),
}

fn parse_route(rest: &str) -> Option<Route> {
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    let name = |k: usize| parts[..n - k].join("/");
    if n >= 3 && parts[n - 2] == "tags" && parts[n - 1] == "list" {
        return Some(Route::Tags(name(2)));
    }
    if n >= 3 && parts[n - 2] == "blobs" && parts[n - 1] == "uploads" {
        return Some(Route::UploadStart(name(2)));
    }
    if n >= 4 && parts[n - 3] == "blobs" && parts[n - 2] == "uploads" {
        return Some(if parts[n - 1].is_empty() {
            Route::UploadStart(name(3))
        } else {
            Route::Upload(name(3), parts[n - 1].to_string())
        });
    }
    // `_ferry` is not a valid repository component, so these never shadow a repository.
    if n >= 3 && parts[n - 2] == "_ferry" {
        match parts[n - 1] {
            "retention" => return Some(Route::Retention(name(2))),
            "in-use" => return Some(Route::InUseList(name(2))),
            _ => {}
        }
    }
    if n >= 4 && parts[n - 3] == "_ferry" && parts[n - 2] == "in-use" && !parts[n - 1].is_empty() {
        return Some(Route::InUse(name(3), parts[n - 1].to_string()));
    }
    if n >= 3 && !parts[n - 1].is_empty() {
        let last = parts[n - 1].to_string();
        match parts[n - 2] {
            "manifests" => return Some(Route::Manifest(name(2), last)),
            "blobs" => return Some(Route::Blob(name(2), last)),
            "referrers" => return Some(Route::Referrers(name(2), last)),
            _ => {}
        }
    }
    None
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Per-request context after routing and validation.
struct Ctx {
    app: AppState,
    headers: HeaderMap,
    query: HashMap<String, String>,
}

impl Ctx {
    /// The authorizer's verdict. It runs on a blocking thread: for a grant it may walk the
    /// manifest graph on disk (cached per grant, but the first request walks).
    async fn verdict(
        &self,
        repository: &str,
        action: Action,
        target: &Target,
    ) -> Result<Principal, Denied> {
        let authorizer = self.app.authorizer.clone();
        let storage = self.app.storage.clone();
        let header = authorization(&self.headers).map(str::to_string);
        let (repository, target) = (repository.to_string(), target.clone());
        tokio::task::spawn_blocking(move || {
            authorizer.authorize(header.as_deref(), &repository, action, &target, &storage)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Denied::Forbidden {
                message: "internal error while checking access; retry".to_string(),
            })
        })
    }

    /// Authorizes, then checks the namespace. Returns the refusal response on failure.
    async fn authorize(
        &self,
        repository: &str,
        action: Action,
        target: Target,
    ) -> Result<Principal, Reject> {
        let principal = self
            .verdict(repository, action, &target)
            .await
            .map_err(denied_response)?;
        if target != Target::Catalog {
            self.authorize_namespace(repository)?;
        }
        Ok(principal)
    }

    /// After authorization: a repository outside every namespace is `NAME_UNKNOWN`.
    fn authorize_namespace(&self, repository: &str) -> Result<(), Reject> {
        if !self.app.storage.in_namespace(repository) {
            return Err(OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                format!(
                    "repository {repository} is outside every namespace this registry serves; use vendor/... or installs/<install>/..."
                ),
            )
            .into_response().into());
        }
        Ok(())
    }
}

async fn dispatch(
    State(app): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(route) = parse_route(&rest) else {
        return OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!(
                "no registry endpoint at /v2/{}; expected /v2/<name>/(manifests|blobs|tags|referrers|_ferry)/...",
                truncate_path(&rest)
            ),
        )
        .into_response();
    };
    let name = match &route {
        Route::Catalog => None,
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Blob(n, _)
        | Route::Referrers(n, _)
        | Route::InUse(n, _)
        | Route::InUseList(n)
        | Route::Retention(n) => Some(n.as_str()),
    };
    if let Some(name) = name {
        if let Err(e) = validate_repository(name) {
            return OciError::from(e).into_response();
        }
    }
    let ctx = Ctx {
        app,
        headers,
        query: query_params(query.as_deref()),
    };
    tracing::debug!(%method, path = %truncate_path(&rest), "registry request");
    let result = match (route, &method) {
        (Route::Catalog, &Method::GET) => catalog(&ctx).await,
        (Route::Tags(name), &Method::GET) => tags(&ctx, &name).await,
        (Route::Manifest(name, reference), m) if m == Method::GET || m == Method::HEAD => {
            get_manifest(&ctx, &name, &reference, m == Method::HEAD).await
        }
        (Route::Manifest(name, reference), &Method::PUT) => {
            put_manifest(&ctx, &name, &reference, body).await
        }
        (Route::Manifest(name, reference), &Method::DELETE) => {
            delete_manifest(&ctx, &name, &reference).await
        }
        (Route::Blob(name, digest), m) if m == Method::GET || m == Method::HEAD => {
            get_blob(&ctx, &name, &digest, m == Method::HEAD).await
        }
        (Route::Blob(name, digest), &Method::DELETE) => delete_blob(&ctx, &name, &digest).await,
        (Route::UploadStart(name), &Method::POST) => start_upload(&ctx, &name, body).await,
        (Route::Upload(name, id), &Method::PATCH) => patch_upload(&ctx, &name, &id, body).await,
        (Route::Upload(name, id), &Method::PUT) => put_upload(&ctx, &name, &id, body).await,
        (Route::Upload(name, id), &Method::GET) => upload_status(&ctx, &name, &id).await,
        (Route::Upload(name, id), &Method::DELETE) => cancel_upload(&ctx, &name, &id).await,
        (Route::Referrers(name, digest), &Method::GET) => referrers(&ctx, &name, &digest).await,
        (Route::InUse(name, digest), &Method::PUT) => {
            retention::mark(&ctx, &name, &digest, true).await
        }
        (Route::InUse(name, digest), &Method::DELETE) => {
            retention::mark(&ctx, &name, &digest, false).await
        }
        (Route::InUseList(name), &Method::GET) => retention::list(&ctx, &name).await,
        (Route::Retention(name), &Method::POST) => retention::apply(&ctx, &name).await,
        _ => Ok(unsupported_method(&method)),
    };
    result.unwrap_or_else(|reject| *reject.0)
}

/// A refusal on its way out; boxed because a `Response` is large.
struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(response: Response) -> Self {
        Reject(Box::new(response))
    }
}

type Handled = Result<Response, Reject>;

fn oci(err: StorageError) -> Response {
    OciError::from(err).into_response()
}

/// Runs blocking storage work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, Reject>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| oci(e).into()),
        Err(_) => Err(OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unsupported,
            "internal error while handling the request; retry",
        )
        .into_response()
        .into()),
    }
}

fn header(name: &'static str, value: impl AsRef<str>) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value.as_ref()).unwrap_or_else(|_| HeaderValue::from_static("")),
    )
}

fn response_with(
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Parses `n` and `last` for paginated listings.
fn page(ctx: &Ctx) -> Result<(Option<usize>, Option<String>), Reject> {
    let n = match ctx.query.get("n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("n={v:?} is not a non-negative integer"),
            )
            .into_response()
        })?),
    };
    Ok((n, ctx.query.get("last").cloned()))
}

/// Applies `last`/`n` to a sorted list; returns the page and whether more remain.
fn paginate(items: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let start: Vec<String> = match last {
        Some(last) => items.into_iter().filter(|i| i.as_str() > last).collect(),
        None => items,
    };
    match n {
        Some(n) if start.len() > n => (start.into_iter().take(n).collect(), n > 0),
        _ => (start, false),
    }
}

async fn catalog(ctx: &Ctx) -> Handled {
    ctx.authorize("", Action::Pull, Target::Catalog).await?;
    let (n, last) = page(ctx)?;
    let storage = ctx.app.storage.clone();
    let all = blocking(move || storage.list_repositories()).await?;
    let all: Vec<String> = all
        .into_iter()
        .filter(|r| ctx.app.storage.in_namespace(r))
        .collect();
    let (items, more) = paginate(all, n, last.as_deref());
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if more {
        if let (Some(n), Some(last)) = (n, items.last()) {
            headers.push(header(
                "link",
                format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""),
            ));
        }
    }
    let body = serde_json::json!({ "repositories": items }).to_string();
    Ok(response_with(StatusCode::OK, headers, Body::from(body)))
}

async fn tags(ctx: &Ctx, name: &str) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Repository)
        .await?;
    let (n, last) = page(ctx)?;
    let storage = ctx.app.storage.clone();
    let repo = name.to_string();
    let all = blocking(move || storage.list_tags(&repo)).await?;
    let (items, more) = paginate(all, n, last.as_deref());
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if more {
        if let (Some(n), Some(last)) = (n, items.last()) {
            headers.push(header(
                "link",
                format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
            ));
        }
    }
    let body = serde_json::json!({ "name": name, "tags": items }).to_string();
    Ok(response_with(StatusCode::OK, headers, Body::from(body)))
}

async fn get_manifest(ctx: &Ctx, name: &str, reference: &str, head: bool) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Manifest(reference.to_string()))
        .await?;
    let storage = ctx.app.storage.clone();
    let (repo, r) = (name.to_string(), reference.to_string());
    let manifest = blocking(move || storage.get_manifest(&repo, &r)).await?;
    let headers = vec![
        header("content-type", &manifest.media_type),
        header(DOCKER_CONTENT_DIGEST, &manifest.digest),
        header("etag", format!("\"{}\"", manifest.digest)),
        header("content-length", manifest.body.len().to_string()),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.body)
    };
    Ok(response_with(StatusCode::OK, headers, body))
}

async fn put_manifest(ctx: &Ctx, name: &str, reference: &str, body: Body) -> Handled {
    let principal = ctx
        .authorize(name, Action::Push, Target::Manifest(reference.to_string()))
        .await?;
    let too_large = |size: usize| {
        oci(StorageError::ManifestTooLarge {
            size,
            limit: MAX_MANIFEST_BYTES,
        })
    };
    let declared = ctx
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared {
        if len > MAX_MANIFEST_BYTES {
            return Err(too_large(len).into());
        }
    }
    // Every byte buffered is first reserved from the manifest budget: the declared length up
    // front (so a stalled body cannot grow past it), else chunk by chunk.
    let mut reserved = ctx
        .app
        .manifest_budget
        .reserve(&principal.subject, declared.unwrap_or(0))
        .map_err(budget_exceeded)?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            oci(StorageError::ManifestInvalid(format!(
                "the request body failed mid-transfer: {e}"
            )))
        })?;
        let total = buf.len().saturating_add(chunk.len());
        if total > MAX_MANIFEST_BYTES {
            return Err(too_large(total).into());
        }
        if declared.is_none() {
            reserved.grow(chunk.len()).map_err(budget_exceeded)?;
        }
        buf.extend_from_slice(&chunk);
    }
    let content_type = ctx
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let storage = ctx.app.storage.clone();
    let (repo, r) = (name.to_string(), reference.to_string());
    let body = buf.freeze();
    let put =
        blocking(move || storage.put_manifest(&repo, &r, content_type.as_deref(), &body)).await?;
    // The body is stored (or refused); its bytes go back to the budget.
    drop(reserved);
    let mut headers = vec![
        header("location", format!("/v2/{name}/manifests/{}", put.digest)),
        header(DOCKER_CONTENT_DIGEST, &put.digest),
        header("content-length", "0"),
    ];
    if let Some(subject) = &put.subject {
        headers.push(header(OCI_SUBJECT, subject));
    }
    Ok(response_with(StatusCode::CREATED, headers, Body::empty()))
}

/// A manifest that does not fit the budget is refused at once with 429: waiting would let
/// stalled bodies queue up behind each other.
fn budget_exceeded(e: BudgetExceeded) -> Reject {
    OciError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyRequests,
        e.to_string(),
    )
    .with_header(RETRY_AFTER, "1")
    .into_response()
    .into()
}

async fn delete_manifest(ctx: &Ctx, name: &str, reference: &str) -> Handled {
    ctx.authorize(
        name,
        Action::Delete,
        Target::Manifest(reference.to_string()),
    )
    .await?;
    let storage = ctx.app.storage.clone();
    let (repo, r) = (name.to_string(), reference.to_string());
    blocking(move || storage.delete_manifest(&repo, &r)).await?;
    Ok(response_with(
        StatusCode::ACCEPTED,
        vec![header("content-length", "0")],
        Body::empty(),
    ))
}

/// A parsed `Range: bytes=...` request against a blob of `size` bytes.
enum ByteRange {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, size: u64) -> ByteRange {
    let Some(value) = value else {
        return ByteRange::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    // Multiple ranges are not supported; serve the whole blob as RFC 9110 allows.
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        // Suffix: the last `b` bytes.
        match b.parse::<u64>() {
            Ok(0) | Err(_) => return ByteRange::Unsatisfiable,
            Ok(suffix) => (size.saturating_sub(suffix), size.saturating_sub(1)),
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return ByteRange::Full;
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(end) => end.min(size.saturating_sub(1)),
                Err(_) => return ByteRange::Full,
            }
        };
        (start, end)
    };
    if size == 0 || parsed.0 >= size || parsed.0 > parsed.1 {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Partial(parsed.0, parsed.1)
}

async fn get_blob(ctx: &Ctx, name: &str, digest: &str, head: bool) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Blob(digest.to_string()))
        .await?;
    let (mut file, size) = ctx.app.storage.open_blob(name, digest).await.map_err(oci)?;
    let range = parse_range(ctx.headers.get(RANGE).and_then(|v| v.to_str().ok()), size);
    let mut headers = vec![
        header("content-type", "application/octet-stream"),
        header(DOCKER_CONTENT_DIGEST, digest),
        header("etag", format!("\"{digest}\"")),
        header("accept-ranges", "bytes"),
    ];
    let (status, start, len) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size),
        ByteRange::Partial(a, b) => {
            headers.push(header("content-range", format!("bytes {a}-{b}/{size}")));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        ByteRange::Unsatisfiable => {
            return Err(OciError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUnknown,
                format!("requested range is outside the blob's {size} bytes"),
            )
            .with_header(CONTENT_RANGE, format!("bytes */{size}"))
            .into_response()
            .into())
        }
    };
    headers.push(header("content-length", len.to_string()));
    if head {
        return Ok(response_with(status, headers, Body::empty()));
    }
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| {
                oci(StorageError::Io {
                    context: "seeking in a blob",
                    path: PathBuf::from(digest),
                    source: e,
                })
            })?;
    }
    let stream = ReaderStream::new(file.take(len));
    Ok(response_with(status, headers, Body::from_stream(stream)))
}

async fn delete_blob(ctx: &Ctx, name: &str, digest: &str) -> Handled {
    ctx.authorize(name, Action::Delete, Target::Blob(digest.to_string()))
        .await?;
    let storage = ctx.app.storage.clone();
    let (repo, d) = (name.to_string(), digest.to_string());
    blocking(move || storage.delete_blob(&repo, &d)).await?;
    Ok(response_with(
        StatusCode::ACCEPTED,
        vec![header("content-length", "0")],
        Body::empty(),
    ))
}

fn upload_range(offset: u64) -> String {
    if offset == 0 {
        "0-0".to_string()
    } else {
        format!("0-{}", offset - 1)
    }
}

fn session_response(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    response_with(
        status,
        vec![
            header("location", format!("/v2/{name}/blobs/uploads/{id}")),
            header("range", upload_range(offset)),
            header(DOCKER_UPLOAD_UUID, id),
            header("content-length", "0"),
        ],
        Body::empty(),
    )
}

fn created_blob(name: &str, digest: &str) -> Response {
    response_with(
        StatusCode::CREATED,
        vec![
            header("location", format!("/v2/{name}/blobs/{digest}")),
            header(DOCKER_CONTENT_DIGEST, digest),
            header("content-length", "0"),
        ],
        Body::empty(),
    )
}

async fn start_upload(ctx: &Ctx, name: &str, body: Body) -> Handled {
    let mount = match (ctx.query.get("mount"), ctx.query.get("from")) {
        (Some(digest), Some(from)) if validate_repository(from).is_ok() => Some((digest, from)),
        _ => None,
    };
    let principal = match ctx.verdict(name, Action::Push, &Target::Repository).await {
        Ok(principal) => principal,
        Err(Denied::Unauthorized {
            mut challenge,
            message,
        }) => {
            // Ask for pull on `from` in the same challenge (as the CNCF registry does), so a
            // client that follows it holds a token that can actually mount.
            if let Some((digest, from)) = mount {
                if let Err(Denied::Unauthorized { challenge: c, .. }) = ctx
                    .verdict(from, Action::Pull, &Target::Blob(digest.clone()))
                    .await
                {
                    challenge.merge_scope(&c);
                }
            }
            return Err(denied_response(Denied::Unauthorized { challenge, message }).into());
        }
        Err(denied) => return Err(denied_response(denied).into()),
    };
    // The namespace check, as every other handler gets it from `Ctx::authorize`.
    ctx.authorize_namespace(name)?;
    let storage = &ctx.app.storage;
    if let Some((digest, from)) = mount {
        digest_hex(digest).map_err(oci)?;
        // Mount only when the caller may pull the blob from `from`; otherwise fall back to a
        // normal upload session, as the spec allows.
        let may_pull = ctx
            .authorize(from, Action::Pull, Target::Blob(digest.clone()))
            .await
            .is_ok();
        if may_pull {
            let (s, repo, d, f) = (
                storage.clone(),
                name.to_string(),
                digest.clone(),
                from.clone(),
            );
            if blocking(move || s.mount_blob(&repo, &d, &f)).await? {
                return Ok(created_blob(name, digest));
            }
        }
    }
    if let Some(digest) = ctx.query.get("digest") {
        digest_hex(digest).map_err(oci)?;
        storage
            .put_blob(name, digest, body.into_data_stream())
            .await
            .map_err(oci)?;
        return Ok(created_blob(name, digest));
    }
    let id = storage
        .start_upload(name, &principal.subject)
        .await
        .map_err(oci)?;
    Ok(session_response(StatusCode::ACCEPTED, name, &id, 0))
}

/// The inclusive (start, end) from `Content-Range: <start>-<end>` (also accepts
/// `bytes <start>-<end>/*`). Only the syntax is checked here; whether the range fits the
/// session (start = offset, a length that does not overflow) is checked by storage
/// ([`crate::storage::range_len`]), which answers 416 with the session's current `Range`.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, Reject> {
    let Some(value) = headers.get(CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || -> Reject {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            "Content-Range must be <start>-<end> in bytes, with end >= start",
        )
        .into_response()
        .into()
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let text = text.split('/').next().unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start = start.trim().parse::<u64>().map_err(|_| invalid())?;
    let end = end.trim().parse::<u64>().map_err(|_| invalid())?;
    Ok(Some((start, end)))
}

async fn patch_upload(ctx: &Ctx, name: &str, id: &str, body: Body) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    let range = content_range(&ctx.headers)?;
    let status = ctx
        .app
        .storage
        .append_upload(name, id, range, body.into_data_stream())
        .await
        .map_err(oci)?;
    Ok(session_response(
        StatusCode::ACCEPTED,
        name,
        id,
        status.offset,
    ))
}

async fn put_upload(ctx: &Ctx, name: &str, id: &str, body: Body) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    let Some(digest) = ctx.query.get("digest") else {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to finish an upload: PUT ...?digest=sha256:<hex>",
        )
        .into_response().into());
    };
    ctx.app
        .storage
        .finish_upload(name, id, digest, body.into_data_stream())
        .await
        .map_err(oci)?;
    Ok(created_blob(name, digest))
}

async fn upload_status(ctx: &Ctx, name: &str, id: &str) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    let status = ctx.app.storage.upload_status(name, id).await.map_err(oci)?;
    Ok(session_response(
        StatusCode::NO_CONTENT,
        name,
        id,
        status.offset,
    ))
}

async fn cancel_upload(ctx: &Ctx, name: &str, id: &str) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    ctx.app.storage.cancel_upload(name, id).await.map_err(oci)?;
    Ok(response_with(
        StatusCode::NO_CONTENT,
        vec![header("content-length", "0")],
        Body::empty(),
    ))
}

async fn referrers(ctx: &Ctx, name: &str, digest: &str) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Referrers(digest.to_string()))
        .await?;
    let artifact_type = ctx.query.get("artifactType").cloned();
    let last = ctx.query.get("last").cloned();
    let storage = ctx.app.storage.clone();
    let (repo, d, filter) = (name.to_string(), digest.to_string(), artifact_type.clone());
    let (manifests, more) = blocking(move || {
        storage.referrers_page(
            &repo,
            &d,
            filter.as_deref(),
            last.as_deref(),
            MAX_REFERRERS_PAGE_BYTES,
        )
    })
    .await?;
    let next = manifests
        .last()
        .and_then(|m| m.get("digest"))
        .and_then(serde_json::Value::as_str)
        .filter(|_| more)
        .map(|last| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("last", last);
            if let Some(at) = &artifact_type {
                query.append_pair("artifactType", at);
            }
            format!(
                "</v2/{name}/referrers/{digest}?{}>; rel=\"next\"",
                query.finish()
            )
        });
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    })
    .to_string();
    let mut headers = vec![header("content-type", OCI_INDEX)];
    if artifact_type.is_some() {
        headers.push(header(OCI_FILTERS_APPLIED, "artifactType"));
    }
    if let Some(next) = next {
        headers.push(header("link", next));
    }
    Ok(response_with(StatusCode::OK, headers, Body::from(body)))
}

mod retention;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_from_the_right() {
        assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
        assert_eq!(
            parse_route("installs/acme/app/web/manifests/v1"),
            Some(Route::Manifest("installs/acme/app/web".into(), "v1".into()))
        );
        assert_eq!(
            parse_route("a/manifests/b/manifests/latest"),
            Some(Route::Manifest("a/manifests/b".into(), "latest".into()))
        );
        assert_eq!(
            parse_route("a/b/blobs/uploads/"),
            Some(Route::UploadStart("a/b".into()))
        );
        assert_eq!(
            parse_route("a/b/blobs/uploads"),
            Some(Route::UploadStart("a/b".into()))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/xyz"),
            Some(Route::Upload("a".into(), "xyz".into()))
        );
        assert_eq!(
            parse_route("a/blobs/sha256:00"),
            Some(Route::Blob("a".into(), "sha256:00".into()))
        );
        assert_eq!(parse_route("a/tags/list"), Some(Route::Tags("a".into())));
        assert_eq!(
            parse_route("a/referrers/sha256:00"),
            Some(Route::Referrers("a".into(), "sha256:00".into()))
        );
        assert_eq!(parse_route("manifests/x"), None);
        assert_eq!(parse_route("a/b/c"), None);
    }

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range(Some("bytes=2-5"), 10),
            ByteRange::Partial(2, 5)
        ));
        assert!(matches!(
            parse_range(Some("bytes=7-"), 10),
            ByteRange::Partial(7, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=-3"), 10),
            ByteRange::Partial(7, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=2-50"), 10),
            ByteRange::Partial(2, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=10-"), 10),
            ByteRange::Unsatisfiable
        ));
        assert!(matches!(parse_range(None, 10), ByteRange::Full));
    }

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            paginate(items.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(items.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(items.clone(), Some(0), None), (vec![], false));
        assert_eq!(paginate(items, None, Some("c")), (vec!["d".into()], false));
    }
}
