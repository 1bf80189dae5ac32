//! The OCI distribution client: one HTTP request per method, written on reqwest.
//!
//! It speaks distribution-spec 1.1 and the ECR quirks (see ARCHITECTURE.md): every manifest
//! media type in `Accept`; blob GETs that follow redirects and drop `Authorization` when the
//! host changes; uploads as one POST then one streaming PUT, never PATCH chunks; mount with
//! the 202 fallback; paginated tags; referrers with the tag-schema fallback.
//! It knows nothing of manifest graphs; that is the copy engine's job.
//! It must never buffer a blob, and never put a credential into an error or a log line.
//!
//! This file holds the type and its public surface. One transport
//! ([`transport`]: dispatch, retries, auth attachment, the same-origin rule) carries every
//! endpoint file: [`manifest`], [`blob`], [`tags`], [`referrers`]; [`token`] is the bearer
//! token flow and its cache.

mod blob;
mod limiter;
mod manifest;
mod ranged;
mod referrers;
mod retention;
mod tags;
#[cfg(test)]
mod tests;
mod token;
mod transport;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::auth::{AuthState, CredentialStore};
use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::reference::RepoRef;
use crate::retry::RetryPolicy;

use transport::header_str;

pub use limiter::{
    HostLimits, HostPermit, DEFAULT_DECREASE_COOLDOWN, DEFAULT_INITIAL_PER_HOST, DEFAULT_LONG_LINK,
    DEFAULT_MAX_PER_HOST, DEFAULT_MIN_PER_HOST,
};
pub use ranged::{
    RangedReads, DEFAULT_RANGED_MAX_PARALLEL, DEFAULT_RANGED_PART_BUFFER, DEFAULT_RANGED_PART_SIZE,
    DEFAULT_RANGED_THRESHOLD,
};
pub use retention::{RetentionSummary, MAX_ANSWER_BYTES as MAX_RETENTION_ANSWER_BYTES};

/// Manifests are buffered (their digest is over the exact bytes); anything bigger than this
/// is refused rather than held in memory.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Tag lists and referrer pages are JSON that is buffered too.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;
/// How much of an error body is read to find the OCI error code.
const MAX_ERROR_BYTES: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 5;
const MAX_PAGES: usize = 10_000;
/// The default of [`ClientConfig::max_listing_bytes`].
pub const DEFAULT_MAX_LISTING_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Allow plain HTTP (and invalid TLS) for every registry, not only loopback ones.
    pub insecure: bool,
    pub credentials: CredentialStore,
    pub retry: RetryPolicy,
    pub user_agent: String,
    /// Connect timeout; there is no whole-request timeout, since blobs can be large.
    pub connect_timeout: Duration,
    /// A read that stalls this long is a failure (then retried or resumed).
    pub read_timeout: Duration,
    /// What one paginated listing (tags, catalog, referrers: all its pages together) may bring
    /// in before the client stops with an error: callers keep what the pages list, so the
    /// total, not only each page, is bounded.
    pub max_listing_bytes: usize,
    /// Concurrency per registry host, shared by everything this client does, adapted to
    /// the link (see [`HostLimits`]).
    pub per_host: HostLimits,
    /// When and how large blobs are read as parallel `Range` requests (see [`RangedReads`]).
    pub ranged: RangedReads,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure: false,
            credentials: CredentialStore::default(),
            retry: RetryPolicy::default(),
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_listing_bytes: DEFAULT_MAX_LISTING_BYTES,
            per_host: HostLimits::default(),
            ranged: RangedReads::default(),
        }
    }
}

/// The result of a cross-repository mount attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    /// 201: the blob is now in the target repository.
    Mounted,
    /// 202: the registry did not mount; the blob must be uploaded. The session it opened is
    /// abandoned (it expires on its own).
    NotMounted,
}

/// A cheap-to-clone client shared by every host; tokens are cached inside.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    auth: AuthState,
    token_fetch: tokio::sync::Mutex<()>,
    requests: AtomicU64,
    limiter: limiter::HostLimiter,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("insecure", &self.inner.config.insecure)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

fn pull_scope(repo: &RepoRef) -> Vec<String> {
    vec![format!("repository:{}:pull", repo.repository)]
}

fn push_scope(repo: &RepoRef) -> Vec<String> {
    vec![format!("repository:{}:pull,push", repo.repository)]
}

impl RegistryClient {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .danger_accept_invalid_certs(config.insecure)
            .build()
            .map_err(|e| {
                Error::Config(format!("cannot build the HTTP client: {}", e.without_url()))
            })?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                auth: AuthState::default(),
                token_fetch: tokio::sync::Mutex::new(()),
                requests: AtomicU64::new(0),
                limiter: limiter::HostLimiter::new(&config.per_host),
                config,
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `GET /v2/`: whether the registry answers at all (200 or 401 both count).
    pub async fn ping(&self, registry: &str) -> Result<()> {
        let url = self.registry_url(registry)?;
        self.count();
        let resp = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Self::transport(Step::Ping, registry, e))?;
        if resp.status().is_success() || resp.status() == StatusCode::UNAUTHORIZED {
            Ok(())
        } else {
            Err(self.status_error(Step::Ping, registry, resp, None).await)
        }
    }

    /// The number of HTTP requests sent (token requests and redirect hops included), for
    /// benchmarks and tests.
    pub fn request_count(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Waits for one unit of `registry`'s concurrency (the client-wide, adaptive per-host
    /// limit). Blob requests do not take one themselves: a caller moving a blob holds one
    /// per host for the whole transfer, and the client's own manifest requests share the
    /// same limit. Never hold two permits of one host while waiting for a third, or
    /// transfers can deadlock each other; take permits of several hosts in a fixed order.
    pub async fn host_permit(&self, registry: &str) -> HostPermit {
        self.inner.limiter.acquire(registry).await
    }

    /// A permit of `registry` if one is free right now (for optional extra parallelism).
    pub(crate) fn try_host_permit(&self, registry: &str) -> Option<HostPermit> {
        self.inner.limiter.try_acquire(registry)
    }

    /// `registry`'s current concurrency limit.
    pub fn host_limit(&self, registry: &str) -> usize {
        self.inner.limiter.limit(registry)
    }

    /// The most permits of `registry` ever held at once (for tests and benchmarks).
    pub fn host_peak(&self, registry: &str) -> usize {
        self.inner.limiter.peak(registry)
    }

    /// Whether `registry` is on a long link: its fastest answer so far took at least
    /// [`HostLimits::long_link`]. Large blobs are read as parallel ranges only from such a
    /// host, and the copy engine runs more than `max_per_host` transfers only against one.
    pub fn is_long_link(&self, registry: &str) -> bool {
        self.inner.limiter.long_link(registry)
    }

    /// `registry`'s fastest answer so far (request to answer headers), if it has answered.
    pub fn fastest_answer(&self, registry: &str) -> Option<Duration> {
        self.inner.limiter.fastest(registry)
    }

    /// Starts `registry`'s concurrency as for a link of round trip `rtt`, if its limit is still
    /// in slow start and has not been fitted yet ([`HostLimits::start_for`]). The copy engine
    /// fits a near destination to its far source: each transfer holds a permit of both, and
    /// its time there is mostly spent waiting on the source's link.
    pub fn fit_host_start(&self, registry: &str, rtt: Duration) {
        self.inner.limiter.fit_start(registry, rtt);
    }

    /// The hard upper bound of every host's limit.
    pub fn host_max(&self) -> usize {
        self.inner.limiter.max()
    }
}

fn check_reported_digest(headers: &HeaderMap, expected: &Digest) -> Result<()> {
    if let Some(reported) =
        header_str(headers, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok())
    {
        if &reported != expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual: reported,
            });
        }
    }
    Ok(())
}
