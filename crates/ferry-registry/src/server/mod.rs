//! The HTTP server: distribution-spec 1.1 on axum over [`crate::storage::Storage`].
//!
//! Every handler asks the [`Authorizer`] before it touches storage, and answers with the
//! refusal the authorizer gives. Connections are served by [`crate::listener`] (caps and
//! timeouts) and request bodies pass through `body.rs` (body timeout, bounded drain).
//! It must never echo or log an `Authorization` header, never buffer a blob in memory, never
//! buffer more manifest bytes than [`Limits::manifest_memory_bytes`], never run a graph walk
//! on an async worker, and never stop serving because one request failed.
//!
//! This file holds the configuration and the lifecycle (build, serve, spawn). The request
//! side: [`routes`] (parse and dispatch), [`request`] (state, context, refusals, responses),
//! and one file per endpoint family: [`manifests`], [`blobs`], [`uploads`], [`listings`]
//! (catalog, tags, referrers) and [`retention`] (Ferry's in-use marks and retention).

mod blobs;
mod listings;
mod manifests;
mod request;
mod retention;
mod routes;
#[cfg(test)]
mod tests;
mod uploads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;

/// Defined in [`crate::authz`]; re-exported where they were first published.
pub use crate::authz::{AllowAll, Authorizer, Challenge, Denied, GraphLookup, Principal};
use crate::budget::ManifestBudget;
use crate::errors::StorageError;
use crate::in_use::InUseRecords;
use crate::limits::Limits;
use crate::storage::Storage;

use request::AppState;
use routes::{api_version_header, base, dispatch, unknown_endpoint};

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
