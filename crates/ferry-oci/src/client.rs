//! The OCI distribution client: one HTTP request per method, written on reqwest.
//!
//! It speaks distribution-spec 1.1 and the ECR quirks (see ARCHITECTURE.md): every manifest
//! media type in `Accept`; blob GETs that follow redirects and drop `Authorization` when the
//! host changes; uploads as one POST then one streaming PUT, never PATCH chunks; mount with
//! the 202 fallback; paginated tags; referrers with the tag-schema fallback.
//! It knows nothing of manifest graphs; that is the copy engine's job.
//! It must never buffer a blob, and never put a credential into an error or a log line.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, Response, StatusCode, Url};

use crate::auth::{self, AuthScheme, AuthState, Credential, CredentialStore, Secret};
use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::media::{self, Descriptor, Manifest};
use crate::reference::{is_loopback, RepoRef};
use crate::retry::{parse_retry_after, RetryPolicy};
use crate::ByteStream;

/// Manifests are buffered (their digest is over the exact bytes); anything bigger than this
/// is refused rather than held in memory.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Tag lists and referrer pages are JSON that is buffered too.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;
/// How much of an error body is read to find the OCI error code.
const MAX_ERROR_BYTES: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 5;
const MAX_PAGES: usize = 10_000;

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
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("insecure", &self.inner.config.insecure)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

/// One logical request: everything needed to send it again after a 401, a 429 or a dropped
/// connection. Only re-sendable (buffered) bodies live here.
struct Call<'a> {
    step: Step,
    repo: &'a RepoRef,
    target: String,
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    scopes: Vec<String>,
    follow_redirects: bool,
}

fn pull_scope(repo: &RepoRef) -> Vec<String> {
    vec![format!("repository:{}:pull", repo.repository)]
}

fn push_scope(repo: &RepoRef) -> Vec<String> {
    vec![format!("repository:{}:pull,push", repo.repository)]
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok())
}

/// Whether two URLs share scheme, host and port (their origin, RFC 6454).
///
/// This is the one definition of "same origin" in the client. Registry credentials (Basic,
/// a bearer token, a grant) are attached only to requests whose URL has the registry's own
/// origin ([`RegistryClient::may_authorize`]): redirects (ECR sends blob GETs to S3), upload
/// sessions, mount cancellations and pagination all ask it. Hosts compare as the URL parser
/// normalised them (lower case), so `localhost` and `127.0.0.1` are different origins.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `scheme://host[:port]` of a URL, for errors: never its path or query, which may carry
/// presigned parameters.
fn origin_text(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}://{}:{p}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}

/// Whether a URL's host is loopback (`localhost`, 127.0.0.0/8, `::1`): traffic that never
/// leaves the machine, which is why plain HTTP is allowed there.
fn url_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The policy for a token realm named by a registry's `WWW-Authenticate: Bearer realm=…`:
/// `None` when the token request may be sent, else why not (for the error).
///
/// The realm is chosen by the registry's answer, so a hostile or tampered answer picks where
/// the password goes. Refused:
/// - a scheme other than http/https;
/// - plain http when the registry itself is spoken to over https (a downgrade: the password
///   or the token would cross the network in clear although the user asked for TLS);
/// - Basic credentials over plain http to another origin that is not loopback (possible only
///   when the registry is itself plain http, i.e. `--insecure`): the registry may choose to
///   receive a password in clear, but not to have it sent in clear to some other host.
///
/// An https realm on another origin is allowed with Basic: that is how Docker Hub, GHCR and
/// most token services work. A loopback registry with a loopback realm (the test harness,
/// `ferry dev`) is allowed: that traffic never leaves the machine.
pub(crate) fn realm_refusal(
    registry_origin: &Url,
    realm: &Url,
    sends_basic: bool,
) -> Option<String> {
    let realm_origin = origin_text(realm);
    match realm.scheme() {
        "https" => None,
        "http" if registry_origin.scheme() == "https" => Some(format!(
            "the registry (over https) named a token service over plain http ({realm_origin}); \
             Ferry refuses to downgrade, since credentials and tokens would cross the network \
             in clear. Fix the registry's token realm to use https"
        )),
        "http"
            if sends_basic && !same_origin(registry_origin, realm) && !url_is_loopback(realm) =>
        {
            Some(format!(
                "the registry named a token service on another origin over plain http \
                 ({realm_origin}); Ferry never sends a password in clear to a host other than \
                 the registry. Serve the token service over https or from the registry's origin"
            ))
        }
        "http" => None,
        other => Some(format!(
            "the registry named a token service with the unsupported scheme {other:?}; \
             only http and https are spoken"
        )),
    }
}

/// The `rel="next"` target of a `Link` header, if any.
fn next_link(value: &str) -> Option<String> {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_all = &after[close + 1..];
        let params = params_all.split('<').next().unwrap_or(params_all);
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.split_once('=')
                .map(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                })
                .unwrap_or(false)
        });
        if is_next {
            return Some(target.trim().to_string());
        }
        rest = params_all;
    }
    None
}

/// The message of an error answer: the OCI `errors[0]` as `CODE: message`, else a short
/// single-line snippet of the body, else the status's reason.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct OciErrors {
        errors: Vec<OciError>,
    }
    #[derive(serde::Deserialize)]
    struct OciError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<OciErrors>(body) {
        if let Some(first) = e.errors.first() {
            let mut m = match (first.code.is_empty(), first.message.is_empty()) {
                (false, false) => format!("{}: {}", first.code, first.message),
                (false, true) => first.code.clone(),
                _ => first.message.clone(),
            };
            if e.errors.len() > 1 {
                m.push_str(&format!(" (and {} more)", e.errors.len() - 1));
            }
            return snippet(&m);
        }
    }
    let text = snippet(&String::from_utf8_lossy(body));
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        text
    }
}

/// At most 200 characters on one line, control characters removed.
fn snippet(s: &str) -> String {
    let one_line: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if one_line.chars().count() > 200 {
        let mut cut: String = one_line.chars().take(200).collect();
        cut.push('…');
        cut
    } else {
        one_line
    }
}

/// Reads at most `cap` bytes of a body; `Ok(None)` when it is longer.
async fn read_capped(
    mut resp: Response,
    cap: usize,
) -> std::result::Result<Option<Bytes>, reqwest::Error> {
    if content_length(resp.headers()).is_some_and(|l| l > cap as u64) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

/// The first bytes of a body, for error messages; transport trouble just ends it early.
async fn read_prefix(mut resp: Response, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    buf
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
                config,
                auth: AuthState::default(),
                token_fetch: tokio::sync::Mutex::new(()),
                requests: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self.inner.config.insecure || is_loopback(registry) {
            "http"
        } else {
            "https"
        }
    }

    fn url(&self, repo: &RepoRef, path: &str) -> Result<Url> {
        let raw = format!(
            "{}://{}/v2/{}/{}",
            self.scheme(&repo.registry),
            repo.registry,
            repo.repository,
            path
        );
        Url::parse(&raw).map_err(|e| Error::InvalidReference {
            input: format!("{repo}/{path}"),
            reason: format!("does not make a valid URL: {e}"),
        })
    }

    fn registry_url(&self, registry: &str) -> Result<Url> {
        Url::parse(&format!("{}://{}/v2/", self.scheme(registry), registry)).map_err(|e| {
            Error::InvalidReference {
                input: registry.to_string(),
                reason: format!("does not make a valid URL: {e}"),
            }
        })
    }

    /// Whether credentials for `registry` may be attached to a request to `url`: only when
    /// `url` has the registry's own origin ([`same_origin`]). Every place that attaches an
    /// Authorization header asks this, and nothing else.
    fn may_authorize(&self, registry: &str, url: &Url) -> bool {
        self.registry_url(registry)
            .map(|origin| same_origin(&origin, url))
            .unwrap_or(false)
    }

    fn count(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes every known secret (and the Authorization value just sent) from text that a
    /// server produced, in case it echoes request headers back.
    fn scrub(&self, text: String, sent: Option<&HeaderValue>) -> String {
        let mut secrets = self.inner.config.credentials.secrets();
        secrets.extend(self.inner.auth.secrets());
        if let Some(v) = sent.and_then(|v| v.to_str().ok()) {
            secrets.push(v.to_string());
            if let Some((_, cred)) = v.split_once(' ') {
                secrets.push(cred.trim().to_string());
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text;
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }

    async fn status_error(
        &self,
        step: Step,
        target: &str,
        resp: Response,
        sent: Option<&HeaderValue>,
    ) -> Error {
        let status = resp.status();
        let body = read_prefix(resp, MAX_ERROR_BYTES).await;
        Error::Registry {
            step,
            target: target.to_string(),
            status: status.as_u16(),
            message: self.scrub(error_message(status, &body), sent),
        }
    }

    fn transport(step: Step, target: &str, e: reqwest::Error) -> Error {
        // The URL may carry presigned query parameters (S3 redirects): never show it.
        Error::Transport {
            step,
            target: target.to_string(),
            source: e.without_url(),
        }
    }

    // ---- authentication -------------------------------------------------------------

    /// The Authorization value to send up front: a pre-issued bearer, Basic for a registry
    /// known to want it, or a (cached or freshly fetched) token for a Bearer registry.
    async fn authorization(
        &self,
        repo: &RepoRef,
        scopes: &[String],
        step: Step,
        target: &str,
    ) -> Result<Option<HeaderValue>> {
        let credential = self.credential(repo);
        if let Credential::Bearer(token) = &credential {
            return Ok(Some(sensitive(&format!("Bearer {}", token.expose()))?));
        }
        match self.inner.auth.scheme(&repo.registry) {
            None => Ok(None),
            Some(AuthScheme::Basic) => match &credential {
                Credential::Basic { username, password } => Ok(Some(sensitive(&format!(
                    "Basic {}",
                    auth::basic_token(username, password)
                ))?)),
                _ => Ok(None),
            },
            Some(AuthScheme::Bearer { realm, service }) => {
                let identity = credential.identity_key();
                let token = match self.cached_token(repo, &identity, scopes) {
                    Some(t) => t,
                    None => {
                        // One token fetch at a time: concurrent first requests to a
                        // repository then share one token instead of each fetching one.
                        let _guard = self.inner.token_fetch.lock().await;
                        if let Some(t) = self.cached_token(repo, &identity, scopes) {
                            return Ok(Some(sensitive(&format!("Bearer {}", t.expose()))?));
                        }
                        self.fetch_token(
                            repo,
                            &credential,
                            &realm,
                            service.as_deref(),
                            scopes,
                            step,
                            target,
                        )
                        .await?
                    }
                };
                Ok(Some(sensitive(&format!("Bearer {}", token.expose()))?))
            }
        }
    }

    /// The credential for a repository: the one identity every request to it is made as.
    fn credential(&self, repo: &RepoRef) -> Credential {
        self.inner
            .config
            .credentials
            .lookup(&repo.registry, &repo.repository)
    }

    /// Whether requests to `a` and `b` are made as the same identity. The copy engine mounts
    /// across repositories only then: a mount asks the destination's identity for pull on
    /// the source, which a copy given a separate source identity has no reason to expect.
    pub(crate) fn same_identity(&self, a: &RepoRef, b: &RepoRef) -> bool {
        a.registry == b.registry && self.credential(a) == self.credential(b)
    }

    /// A token cached for this identity and these scopes; a push token also serves a pull
    /// of the same repository (a destination is HEADed before it is written).
    fn cached_token(&self, repo: &RepoRef, identity: &str, scopes: &[String]) -> Option<Secret> {
        let key = scopes.join(" ");
        self.inner
            .auth
            .token(&repo.registry, identity, &key)
            .or_else(|| {
                let wider = key
                    .strip_suffix(":pull")
                    .map(|k| format!("{k}:pull,push"))?;
                (scopes.len() == 1)
                    .then(|| self.inner.auth.token(&repo.registry, identity, &wider))
                    .flatten()
            })
    }

    /// The token flow: GET realm?service=…&scope=… (Basic when we have a password), then
    /// cache the token under (registry, identity, scope) until just before it expires.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_token(
        &self,
        repo: &RepoRef,
        credential: &Credential,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        step: Step,
        target: &str,
    ) -> Result<Secret> {
        let auth_err = |reason: String| Error::Auth {
            step,
            target: target.to_string(),
            reason,
        };
        let mut url = Url::parse(realm)
            .map_err(|_| auth_err(format!("the registry's token realm {realm:?} is not a URL")))?;
        let sends_basic = matches!(credential, Credential::Basic { .. });
        if let Some(reason) = realm_refusal(&self.registry_url(&repo.registry)?, &url, sends_basic)
        {
            return Err(auth_err(reason));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let realm_target = format!("{}{}", url.host_str().unwrap_or(""), url.path());
        let policy = &self.inner.config.retry;
        let mut attempt = 0u32;
        let resp = loop {
            attempt += 1;
            let mut rb = self.inner.http.get(url.clone());
            if let Credential::Basic { username, password } = credential {
                rb = rb.header(
                    AUTHORIZATION,
                    sensitive(&format!("Basic {}", auth::basic_token(username, password)))?,
                );
            }
            self.count();
            match rb.send().await {
                Ok(r)
                    if (r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status().is_server_error())
                        && policy.should_retry(attempt) =>
                {
                    let delay = policy.delay(attempt, retry_after(r.headers()));
                    tracing::debug!(step = %Step::Auth, target = %realm_target, status = r.status().as_u16(), attempt, delay_ms = delay.as_millis() as u64, "retrying token request");
                    tokio::time::sleep(delay).await;
                }
                Ok(r) => break r,
                Err(e) => {
                    let err = Self::transport(Step::Auth, &realm_target, e);
                    if err.is_retryable() && policy.should_retry(attempt) {
                        let delay = policy.delay(attempt, None);
                        tracing::debug!(step = %Step::Auth, target = %realm_target, attempt, delay_ms = delay.as_millis() as u64, "retrying token request after a connection error");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(err);
                }
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let who = match credential {
                Credential::Basic { username, .. } => {
                    format!("the credentials of user {username:?} were refused")
                }
                _ => "anonymous access was refused (the repository may be private or missing)"
                    .to_string(),
            };
            return Err(auth_err(format!(
                "the token service {realm_target} answered HTTP {} for {}: {who}; {}",
                status.as_u16(),
                scopes.join(" "),
                auth::advice(&repo.registry)
            )));
        }
        if !status.is_success() {
            return Err(self
                .status_error(Step::Auth, &realm_target, resp, None)
                .await);
        }
        let body = read_capped(resp, MAX_ERROR_BYTES)
            .await
            .map_err(|e| Self::transport(Step::Auth, &realm_target, e))?
            .unwrap_or_default();
        let (token, ttl) = auth::parse_token_response(&body).ok_or_else(|| {
            auth_err(format!(
                "the token service {realm_target} answered without a token"
            ))
        })?;
        self.inner.auth.store_token(
            &repo.registry,
            &credential.identity_key(),
            &scopes.join(" "),
            token.clone(),
            ttl,
        );
        Ok(token)
    }

    /// Reacts to a 401: learn the registry's scheme from its challenge, so that the next
    /// `authorization` yields something new; an error when there is nothing new to try.
    async fn on_unauthorized(
        &self,
        call: &Call<'_>,
        headers: &HeaderMap,
        sent: Option<&HeaderValue>,
    ) -> Result<()> {
        let repo = call.repo;
        let credential = self.credential(repo);
        let identity = credential.identity_key();
        let fail = |reason: String| Error::Auth {
            step: call.step,
            target: call.target.clone(),
            reason,
        };
        if matches!(credential, Credential::Bearer(_)) {
            return Err(fail(format!(
                "the registry refused the bearer token (expired, already used, or not valid for {}); \
                 request a new grant or {}",
                repo.repository,
                auth::advice(&repo.registry)
            )));
        }
        let challenges: Vec<_> = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_www_authenticate)
            .collect();
        let scheme = AuthScheme::from_challenges(&challenges).ok_or_else(|| {
            fail(format!(
                "the registry answered 401 without a usable WWW-Authenticate challenge; {}",
                auth::advice(&repo.registry)
            ))
        })?;
        let key = call.scopes.join(" ");
        match &scheme {
            AuthScheme::Basic => {
                let Credential::Basic { .. } = credential else {
                    return Err(fail(format!(
                        "the registry requires a username and password; {}",
                        auth::advice(&repo.registry)
                    )));
                };
                if sent.is_some() {
                    return Err(fail(format!(
                        "the registry refused the username and password; {}",
                        auth::advice(&repo.registry)
                    )));
                }
                self.inner.auth.set_scheme(&repo.registry, scheme);
            }
            AuthScheme::Bearer { realm, service } => {
                let _guard = self.inner.token_fetch.lock().await;
                // Concurrent first requests all meet a 401: the first to get here fetches,
                // the rest find its token (newer than what they sent) and reuse it.
                let sent_token = sent
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if let Some(fresh) = self.cached_token(repo, &identity, &call.scopes) {
                    if Some(fresh.expose()) != sent_token {
                        self.inner.auth.set_scheme(&repo.registry, scheme.clone());
                        return Ok(());
                    }
                }
                self.inner
                    .auth
                    .forget_token(&repo.registry, &identity, &key);
                // The challenge may name a scope we did not think of; ask for it too.
                let mut scopes = call.scopes.clone();
                if let Some(extra) = challenges
                    .iter()
                    .find(|c| c.scheme == "bearer")
                    .and_then(|c| c.param("scope"))
                {
                    for s in extra.split(' ').filter(|s| !s.is_empty()) {
                        if !scopes.iter().any(|have| have == s) {
                            scopes.push(s.to_string());
                        }
                    }
                }
                let token = self
                    .fetch_token(
                        repo,
                        &credential,
                        realm,
                        service.as_deref(),
                        &scopes,
                        call.step,
                        &call.target,
                    )
                    .await?;
                if scopes.len() != call.scopes.len() {
                    self.inner.auth.store_token(
                        &repo.registry,
                        &identity,
                        &key,
                        token,
                        Duration::from_secs(60),
                    );
                }
                self.inner.auth.set_scheme(&repo.registry, scheme);
            }
        }
        Ok(())
    }

    // ---- sending ---------------------------------------------------------------------

    /// One HTTP exchange, following redirects by hand so Authorization goes only to the
    /// registry's own origin (ECR sends blob GETs to S3, which must not see it).
    async fn dispatch(&self, call: &Call<'_>, auth: Option<&HeaderValue>) -> Result<Response> {
        let mut url = call.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut rb = self
                .inner
                .http
                .request(call.method.clone(), url.clone())
                .headers(call.headers.clone());
            if let Some(a) = auth {
                if self.may_authorize(&call.repo.registry, &url) {
                    rb = rb.header(AUTHORIZATION, a.clone());
                }
            }
            if let Some(body) = &call.body {
                rb = rb.body(body.clone());
            }
            self.count();
            let resp = rb
                .send()
                .await
                .map_err(|e| Self::transport(call.step, &call.target, e))?;
            if call.follow_redirects && resp.status().is_redirection() {
                if let Some(loc) = header_str(resp.headers(), LOCATION.as_str()) {
                    url = url.join(loc).map_err(|_| Error::Registry {
                        step: call.step,
                        target: call.target.clone(),
                        status: resp.status().as_u16(),
                        message: "the redirect Location is not a valid URL".into(),
                    })?;
                    tracing::debug!(step = %call.step, target = %call.target, to_host = url.host_str().unwrap_or(""), "following redirect");
                    continue;
                }
            }
            return Ok(resp);
        }
        Err(Error::Registry {
            step: call.step,
            target: call.target.clone(),
            status: 310,
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Sends a re-sendable request with auth, retrying 429, 5xx and connection errors per
    /// the policy. Returns any other answer (2xx, 404, …) for the caller to judge; a final
    /// 429/5xx becomes an error naming the step and status.
    async fn send(&self, call: &Call<'_>) -> Result<Response> {
        let policy = &self.inner.config.retry;
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let auth = self
                .authorization(call.repo, &call.scopes, call.step, &call.target)
                .await?;
            match self.dispatch(call, auth.as_ref()).await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    if reauthed {
                        let err = self
                            .status_error(call.step, &call.target, resp, auth.as_ref())
                            .await;
                        let detail = match err {
                            Error::Registry { message, .. } => message,
                            other => other.to_string(),
                        };
                        return Err(Error::Auth {
                            step: call.step,
                            target: call.target.clone(),
                            reason: format!(
                                "the registry still answered 401 ({detail}); {}",
                                auth::advice(&call.repo.registry)
                            ),
                        });
                    }
                    reauthed = true;
                    attempt -= 1; // an auth round is not a failed attempt
                    let headers = resp.headers().clone();
                    drop(resp);
                    self.on_unauthorized(call, &headers, auth.as_ref()).await?;
                }
                Ok(resp)
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS
                        || resp.status().is_server_error() =>
                {
                    if !policy.should_retry(attempt) {
                        return Err(self
                            .status_error(call.step, &call.target, resp, auth.as_ref())
                            .await);
                    }
                    let delay = policy.delay(attempt, retry_after(resp.headers()));
                    tracing::debug!(step = %call.step, target = %call.target, status = resp.status().as_u16(), attempt, delay_ms = delay.as_millis() as u64, "retrying");
                    drop(resp);
                    tokio::time::sleep(delay).await;
                }
                Ok(resp) => return Ok(resp),
                Err(err) => {
                    if !(err.is_retryable() && policy.should_retry(attempt)) {
                        return Err(err);
                    }
                    let delay = policy.delay(attempt, None);
                    tracing::debug!(step = %call.step, target = %call.target, error = %err, attempt, delay_ms = delay.as_millis() as u64, "retrying after a transport error");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn call<'a>(
        &self,
        step: Step,
        repo: &'a RepoRef,
        target: String,
        method: Method,
        url: Url,
        scopes: Vec<String>,
    ) -> Call<'a> {
        Call {
            step,
            repo,
            target,
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scopes,
            follow_redirects: false,
        }
    }

    // ---- public API ------------------------------------------------------------------

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

    /// GET a manifest by tag or digest. By digest, the bytes are verified against it.
    pub async fn get_manifest(&self, repo: &RepoRef, reference: &str) -> Result<Manifest> {
        let expected = manifest_digest(reference)?;
        let target = manifest_target(repo, reference);
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let mut call = self.call(
            Step::GetManifest,
            repo,
            target.clone(),
            Method::GET,
            url,
            pull_scope(repo),
        );
        call.headers.insert(ACCEPT, accept_value());
        call.follow_redirects = true;
        let resp = self.send(&call).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                step: Step::GetManifest,
                target,
            });
        }
        if !resp.status().is_success() {
            return Err(self
                .status_error(Step::GetManifest, &target, resp, None)
                .await);
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
            .unwrap_or("")
            .to_string();
        let status = resp.status().as_u16();
        let bytes = read_capped(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| Self::transport(Step::GetManifest, &target, e))?
            .ok_or_else(|| Error::Registry {
                step: Step::GetManifest,
                target: target.clone(),
                status,
                message: format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes; Ferry refuses to buffer it"),
            })?;
        let manifest = Manifest::from_bytes(bytes, &content_type)?;
        if let Some(expected) = expected {
            if manifest.digest != expected {
                return Err(Error::DigestMismatch {
                    expected,
                    actual: manifest.digest,
                });
            }
        }
        Ok(manifest)
    }

    /// HEAD a manifest: its descriptor (digest from `Docker-Content-Digest`, media type and
    /// size), or `None` on 404.
    pub async fn head_manifest(
        &self,
        repo: &RepoRef,
        reference: &str,
    ) -> Result<Option<Descriptor>> {
        let expected = manifest_digest(reference)?;
        let target = manifest_target(repo, reference);
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let mut call = self.call(
            Step::HeadManifest,
            repo,
            target.clone(),
            Method::HEAD,
            url,
            pull_scope(repo),
        );
        call.headers.insert(ACCEPT, accept_value());
        call.follow_redirects = true;
        let resp = self.send(&call).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self
                .status_error(Step::HeadManifest, &target, resp, None)
                .await);
        }
        let h = resp.headers();
        let digest = header_str(h, "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok())
            .or(expected);
        let media_type = header_str(h, CONTENT_TYPE.as_str())
            .map(|ct| ct.split(';').next().unwrap_or("").trim().to_string())
            .filter(|mt| media::is_manifest_type(mt));
        match (digest, media_type, content_length(h)) {
            (Some(digest), Some(media_type), Some(size)) => Ok(Some(Descriptor {
                media_type,
                digest,
                size,
                platform: None,
                artifact_type: None,
                annotations: BTreeMap::new(),
            })),
            // A registry that leaves something out of HEAD: read the manifest instead.
            _ => match self.get_manifest(repo, reference).await {
                Ok(m) => Ok(Some(m.descriptor())),
                Err(Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// PUT a manifest's exact bytes under a tag or its digest. Returns the digest the
    /// registry reports (checked against `manifest.digest`).
    pub async fn put_manifest(
        &self,
        repo: &RepoRef,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<Digest> {
        if let Some(expected) = manifest_digest(reference)? {
            if expected != manifest.digest {
                return Err(Error::DigestMismatch {
                    expected,
                    actual: manifest.digest.clone(),
                });
            }
        }
        let target = manifest_target(repo, reference);
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let mut call = self.call(
            Step::PutManifest,
            repo,
            target.clone(),
            Method::PUT,
            url,
            push_scope(repo),
        );
        let ct =
            HeaderValue::from_str(&manifest.media_type).map_err(|_| Error::InvalidManifest {
                target: target.clone(),
                reason: format!(
                    "media type {:?} cannot be sent as a header",
                    manifest.media_type
                ),
            })?;
        call.headers.insert(CONTENT_TYPE, ct);
        call.body = Some(manifest.bytes.clone());
        let resp = self.send(&call).await?;
        if !resp.status().is_success() {
            return Err(self
                .status_error(Step::PutManifest, &target, resp, None)
                .await);
        }
        check_reported_digest(resp.headers(), &manifest.digest)?;
        Ok(manifest.digest.clone())
    }

    /// HEAD a blob: `Some(size)` if present.
    pub async fn blob_exists(&self, repo: &RepoRef, digest: &Digest) -> Result<Option<u64>> {
        let target = format!("{repo}@{digest}");
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let mut call = self.call(
            Step::HeadBlob,
            repo,
            target.clone(),
            Method::HEAD,
            url,
            pull_scope(repo),
        );
        call.follow_redirects = true;
        let resp = self.send(&call).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(Step::HeadBlob, &target, resp, None).await);
        }
        match content_length(resp.headers()) {
            Some(n) => Ok(Some(n)),
            None => Err(Error::Registry {
                step: Step::HeadBlob,
                target,
                status: resp.status().as_u16(),
                message: "the registry answered without a Content-Length".into(),
            }),
        }
    }

    /// Opens a blob body at `offset`. Returns the response and whether it starts at
    /// `offset` (206) or at zero (200, a server that ignored `Range`).
    async fn open_blob(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, bool)> {
        let target = format!("{repo}@{digest}");
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let mut call = self.call(
            Step::GetBlob,
            repo,
            target.clone(),
            Method::GET,
            url,
            pull_scope(repo),
        );
        call.follow_redirects = true;
        if offset > 0 {
            call.headers.insert(
                reqwest::header::RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-"))
                    .map_err(|_| Error::Config("bad range".into()))?,
            );
        }
        let resp = self.send(&call).await?;
        match resp.status() {
            StatusCode::OK => Ok((resp, offset == 0)),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = header_str(resp.headers(), "content-range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start.is_some_and(|s| s != offset) {
                    return Err(Error::Registry {
                        step: Step::GetBlob,
                        target,
                        status: 206,
                        message: format!(
                            "asked for bytes from {offset} but the answer starts elsewhere"
                        ),
                    });
                }
                Ok((resp, true))
            }
            StatusCode::NOT_FOUND => Err(Error::NotFound {
                step: Step::GetBlob,
                target,
            }),
            _ => Err(self.status_error(Step::GetBlob, &target, resp, None).await),
        }
    }

    /// GET a blob as a stream, from its first byte.
    /// The stream yields raw bytes, unverified. With `size` known, a connection that drops
    /// mid-stream is resumed with `Range` transparently (bounded by the retry policy).
    pub async fn get_blob(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<ByteStream> {
        let (resp, _) = self.open_blob(repo, digest, 0).await?;
        let state = BlobState {
            client: self.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            received: 0,
            skip: 0,
            body: Some(Box::pin(resp.bytes_stream())),
            resumes: 0,
        };
        Ok(Box::pin(futures::stream::unfold(state, BlobState::next)))
    }

    /// Upload a blob: one POST, then one streaming PUT with `Content-Length: size` and
    /// `?digest=`. Never PATCH. The body is consumed once; on failure the caller re-opens.
    pub async fn upload_blob(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        let target = format!("{repo}@{digest}");
        // The POST carries no body, so it can be retried and re-authenticated freely; the
        // token it leaves in the cache is what the one-shot PUT uses.
        let url = self.url(repo, "blobs/uploads/")?;
        let mut call = self.call(
            Step::StartUpload,
            repo,
            target.clone(),
            Method::POST,
            url,
            push_scope(repo),
        );
        call.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        call.body = Some(Bytes::new());
        let resp = self.send(&call).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self
                .status_error(Step::StartUpload, &target, resp, None)
                .await);
        }
        let mut put_url = upload_location(&call.url, resp.headers(), Step::StartUpload, &target)?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());

        let auth = self
            .authorization(repo, &call.scopes, Step::PutBlob, &target)
            .await?;
        let mut rb = self
            .inner
            .http
            .put(put_url.clone())
            .header(CONTENT_LENGTH, size)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        if let Some(a) = &auth {
            if self.may_authorize(&repo.registry, &put_url) {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
        }
        self.count();
        let resp = rb
            .send()
            .await
            .map_err(|e| Self::transport(Step::PutBlob, &target, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            self.inner.auth.forget_token(
                &repo.registry,
                &self.credential(repo).identity_key(),
                &call.scopes.join(" "),
            );
            return Err(Error::Auth {
                step: Step::PutBlob,
                target,
                reason: format!(
                    "the registry refused the upload although the session was authorised (the token may have expired); retry, or {}",
                    auth::advice(&repo.registry)
                ),
            });
        }
        if !status.is_success() {
            return Err(self
                .status_error(Step::PutBlob, &target, resp, auth.as_ref())
                .await);
        }
        check_reported_digest(resp.headers(), digest)?;
        Ok(())
    }

    /// Cross-repository mount `POST ?mount=<digest>&from=<from>`.
    pub async fn mount_blob(
        &self,
        repo: &RepoRef,
        from: &str,
        digest: &Digest,
    ) -> Result<MountOutcome> {
        let target = format!("{repo}@{digest}");
        let mut url = self.url(repo, "blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let mut scopes = push_scope(repo);
        if from != repo.repository {
            scopes.push(format!("repository:{from}:pull"));
        }
        let mut call = self.call(
            Step::MountBlob,
            repo,
            target.clone(),
            Method::POST,
            url,
            scopes,
        );
        call.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        call.body = Some(Bytes::new());
        let resp = self.send(&call).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => {
                // Best effort: close the session the registry opened instead of mounting.
                if let Ok(loc) =
                    upload_location(&call.url, resp.headers(), Step::MountBlob, &target)
                {
                    let auth = self
                        .authorization(repo, &call.scopes, Step::MountBlob, &target)
                        .await
                        .ok()
                        .flatten();
                    let mut rb = self.inner.http.delete(loc.clone());
                    if let Some(a) = auth.filter(|_| self.may_authorize(&repo.registry, &loc)) {
                        rb = rb.header(AUTHORIZATION, a);
                    }
                    self.count();
                    if let Err(e) = rb.send().await {
                        tracing::debug!(target = %target, error = %e.without_url(), "could not cancel the upload session of a refused mount");
                    }
                }
                Ok(MountOutcome::NotMounted)
            }
            _ => Err(self
                .status_error(Step::MountBlob, &target, resp, None)
                .await),
        }
    }

    /// Fetches JSON pages following `Link: <…>; rel="next"`. `None` when the first page is
    /// 404. `on_page` receives each body.
    async fn paginate(
        &self,
        step: Step,
        repo: &RepoRef,
        target: &str,
        first: Url,
        accept: Option<HeaderValue>,
        mut on_page: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<Option<()>> {
        let mut url = first;
        let mut seen = HashSet::new();
        for page in 0..MAX_PAGES {
            if !seen.insert(url.to_string()) {
                break; // a Link loop: stop rather than spin
            }
            let mut call = self.call(
                step,
                repo,
                target.to_string(),
                Method::GET,
                url.clone(),
                pull_scope(repo),
            );
            call.follow_redirects = true;
            if let Some(a) = &accept {
                call.headers.insert(ACCEPT, a.clone());
            }
            let resp = self.send(&call).await?;
            if resp.status() == StatusCode::NOT_FOUND && page == 0 {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(self.status_error(step, target, resp, None).await);
            }
            let next = resp
                .headers()
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            let status = resp.status().as_u16();
            let body = read_capped(resp, MAX_LIST_BYTES)
                .await
                .map_err(|e| Self::transport(step, target, e))?
                .ok_or_else(|| Error::Registry {
                    step,
                    target: target.to_string(),
                    status,
                    message: format!("a page is larger than {MAX_LIST_BYTES} bytes"),
                })?;
            on_page(&body)?;
            match next {
                Some(n) => {
                    // Relative targets resolve against the page that named them (RFC 8288).
                    let next = url.join(&n).map_err(|_| Error::Registry {
                        step,
                        target: target.to_string(),
                        status,
                        message: "the Link header's next page is not a valid URL".into(),
                    })?;
                    // Pagination never legitimately leaves the registry, so a next page on
                    // another origin is refused outright rather than fetched without
                    // credentials: a partial listing that looks complete would be worse than
                    // an error, and nothing is sent to a host the registry merely named.
                    if !self.may_authorize(&repo.registry, &next) {
                        return Err(Error::Registry {
                            step,
                            target: target.to_string(),
                            status,
                            message: format!(
                                "the Link header points the next page at another origin ({}); \
                                 Ferry follows pagination only within the registry's own origin \
                                 and sent nothing there. The registry (or a proxy in front of \
                                 it) is misconfigured; report it to its operator",
                                origin_text(&next)
                            ),
                        });
                    }
                    url = next;
                }
                None => break,
            }
        }
        Ok(Some(()))
    }

    /// Every tag, following `Link` pagination.
    pub async fn list_tags(&self, repo: &RepoRef) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let target = repo.to_string();
        let url = self.url(repo, "tags/list")?;
        let mut tags = Vec::new();
        self.paginate(Step::ListTags, repo, &target, url, None, |body| {
            let page: TagList = serde_json::from_slice(body).map_err(|e| Error::Registry {
                step: Step::ListTags,
                target: target.clone(),
                status: 200,
                message: format!("the tag list is not valid JSON: {e}"),
            })?;
            tags.extend(page.tags.unwrap_or_default());
            Ok(())
        })
        .await?;
        Ok(tags)
    }

    /// Referrers of `digest`: the referrers API, or the `sha256-<hex>` tag-schema index when
    /// the API answers 404.
    pub async fn referrers(&self, repo: &RepoRef, digest: &Digest) -> Result<Vec<Descriptor>> {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        let target = format!("{repo}@{digest}");
        let url = self.url(repo, &format!("referrers/{digest}"))?;
        let mut out = Vec::new();
        let api = self
            .paginate(
                Step::Referrers,
                repo,
                &target,
                url,
                Some(HeaderValue::from_static(media::OCI_INDEX)),
                |body| {
                    let index: Index =
                        serde_json::from_slice(body).map_err(|e| Error::InvalidManifest {
                            target: target.clone(),
                            reason: format!("the referrers answer is not an image index: {e}"),
                        })?;
                    out.extend(index.manifests);
                    Ok(())
                },
            )
            .await?;
        if api.is_some() {
            return Ok(out);
        }
        // No referrers API (or none recorded): the tag schema `<alg>-<hex>`.
        let tag = format!("{}-{}", digest.algorithm(), digest.hex());
        match self.get_manifest(repo, &tag).await {
            Ok(index) => Ok(index.references()?.manifests),
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The number of HTTP requests sent (token requests and redirect hops included), for
    /// benchmarks and tests.
    pub fn request_count(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }
}

fn sensitive(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::Config("a credential contains characters that cannot be sent in a header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn accept_value() -> HeaderValue {
    HeaderValue::from_str(&media::accept_header())
        .unwrap_or_else(|_| HeaderValue::from_static(media::OCI_MANIFEST))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_str(headers, reqwest::header::RETRY_AFTER.as_str())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// A reference that looks like a digest must be one Ferry can verify.
fn manifest_digest(reference: &str) -> Result<Option<Digest>> {
    if reference.contains(':') {
        reference.parse::<Digest>().map(Some)
    } else {
        Ok(None)
    }
}

fn manifest_target(repo: &RepoRef, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
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

/// The upload session URL from a 202's `Location`, which may be relative.
fn upload_location(base: &Url, headers: &HeaderMap, step: Step, target: &str) -> Result<Url> {
    let bad = |message: &str| Error::Registry {
        step,
        target: target.to_string(),
        status: 202,
        message: message.to_string(),
    };
    let loc = header_str(headers, LOCATION.as_str())
        .ok_or_else(|| bad("the upload session has no Location"))?;
    base.join(loc)
        .map_err(|_| bad("the upload Location is not a valid URL"))
}

type BodyStream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A blob download that resumes with `Range` when the connection drops.
struct BlobState {
    client: RegistryClient,
    repo: RepoRef,
    digest: Digest,
    size: Option<u64>,
    /// Bytes handed out so far.
    received: u64,
    /// Bytes still to drop from the current body (a 200 answering a Range request).
    skip: u64,
    body: Option<BodyStream>,
    resumes: u32,
}

impl BlobState {
    async fn next(mut self) -> Option<(Result<Bytes>, BlobState)> {
        loop {
            let body = self.body.as_mut()?;
            let failure = match body.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let n = usize::try_from(self.skip)
                            .unwrap_or(usize::MAX)
                            .min(chunk.len());
                        chunk = chunk.slice(n..);
                        self.skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.received += chunk.len() as u64;
                    return Some((Ok(chunk), self));
                }
                Some(Err(e)) => Some(e),
                None => {
                    if self.size.is_none_or(|s| self.received >= s) {
                        self.body = None;
                        return None;
                    }
                    None
                }
            };
            let target = format!("{}@{}", self.repo, self.digest);
            let policy = &self.client.inner.config.retry;
            let resumable = self.size.is_some() && policy.should_retry(self.resumes + 1);
            if !resumable {
                self.body = None;
                let err = match failure {
                    Some(e) => RegistryClient::transport(Step::GetBlob, &target, e),
                    None => Error::Registry {
                        step: Step::GetBlob,
                        target,
                        status: 200,
                        message: format!(
                            "the body ended after {} bytes of {:?}",
                            self.received, self.size
                        ),
                    },
                };
                return Some((Err(err), self));
            }
            self.resumes += 1;
            let delay = policy.delay(self.resumes, None);
            tracing::debug!(step = %Step::GetBlob, target = %target, offset = self.received, resume = self.resumes, delay_ms = delay.as_millis() as u64, "resuming blob download");
            tokio::time::sleep(delay).await;
            match self
                .client
                .open_blob(&self.repo, &self.digest, self.received)
                .await
            {
                Ok((resp, from_offset)) => {
                    self.skip = if from_offset { 0 } else { self.received };
                    self.body = Some(Box::pin(resp.bytes_stream()));
                }
                Err(e) => {
                    self.body = None;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next?a=1,2>; rel=next"#)
                .as_deref(),
            Some("https://x/next?a=1,2")
        );
        assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
        assert_eq!(next_link("garbage <"), None);
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#),
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
                let basic = format!("Basic {}", auth::basic_token("alice", &Secret::new("s3cret-pw")));
                if req.uri.starts_with("/token") {
                    if req.header("authorization") != Some(basic) {
                        return reply(401, &[], "bad credentials");
                    }
                    let n = token_calls.fetch_add(1, Ordering::SeqCst) + 1;
                    return reply(200, &[("content-type", "application/json")], format!(r#"{{"token":"tok-{n}","expires_in":300}}"#));
                }
                let ok = req.header("authorization").is_some_and(|a| a.starts_with("Bearer tok-"));
                if !ok {
                    let challenge = format!(r#"Bearer realm="{}/token",service="test-registry""#, req.base());
                    return reply(401, &[("www-authenticate", challenge.as_str())], r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
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
        let elsewhere = serve(|_req: Seen| async move {
            reply(200, &[], r#"{"name":"team/app","tags":["stolen"]}"#)
        })
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
                        let msg =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", data.len());
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
}
