//! Request dispatch over one reqwest client: URLs, the Authorization header each request
//! carries, redirects followed by hand, retries of 429/5xx and dropped connections, `Link`
//! pagination, and reading (capped) answers and error bodies.
//!
//! It holds the one same-origin rule ([`same_origin`], asked through
//! [`RegistryClient::may_authorize`]): credentials go only to the registry's own origin. It
//! must never attach credentials anywhere else, never follow pagination off that origin,
//! never retry a body it cannot replay, and never put a credential or a presigned URL into an
//! error or a log line.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};

use crate::auth::{self, AuthScheme, Credential};
use crate::error::{Error, Result, Step};
use crate::reference::{is_loopback, RepoRef};
use crate::retry::parse_retry_after;

use super::limiter;
use super::{
    pull_scope, RegistryClient, MAX_ERROR_BYTES, MAX_LIST_BYTES, MAX_PAGES, MAX_REDIRECTS,
};

/// One logical request: everything needed to send it again after a 401, a 429 or a dropped
/// connection. Only re-sendable (buffered) bodies live here.
pub(super) struct Call<'a> {
    pub(super) step: Step,
    pub(super) repo: &'a RepoRef,
    pub(super) target: String,
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<Bytes>,
    pub(super) scopes: Vec<String>,
    pub(super) follow_redirects: bool,
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok())
}

/// Whether two URLs share scheme, host and port (their origin, RFC 6454).
///
/// This is the one definition of "same origin" in the client. Registry credentials (Basic,
/// a bearer token, a grant) are attached only to requests whose URL has the registry's own
/// origin ([`RegistryClient::may_authorize`]): redirects (ECR sends blob GETs to S3), upload
/// sessions, mount cancellations and pagination all ask it. Hosts compare as the URL parser
/// normalised them (lower case), so `localhost` and `127.0.0.1` are different origins.
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `scheme://host[:port]` of a URL, for errors: never its path or query, which may carry
/// presigned parameters.
pub(super) fn origin_text(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}://{}:{p}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}

/// The `rel="next"` target of a `Link` header, if any.
pub(super) fn next_link(value: &str) -> Option<String> {
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
pub(super) fn error_message(status: StatusCode, body: &[u8]) -> String {
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
pub(super) fn snippet(s: &str) -> String {
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
pub(super) async fn read_capped(
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
pub(super) async fn read_prefix(mut resp: Response, cap: usize) -> Vec<u8> {
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

pub(super) fn sensitive(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::Config("a credential contains characters that cannot be sent in a header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_str(headers, reqwest::header::RETRY_AFTER.as_str())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

impl RegistryClient {
    pub(super) fn scheme(&self, registry: &str) -> &'static str {
        if self.inner.config.insecure || is_loopback(registry) {
            "http"
        } else {
            "https"
        }
    }

    pub(super) fn url(&self, repo: &RepoRef, path: &str) -> Result<Url> {
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

    pub(super) fn registry_url(&self, registry: &str) -> Result<Url> {
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
    pub(super) fn may_authorize(&self, registry: &str, url: &Url) -> bool {
        self.registry_url(registry)
            .map(|origin| same_origin(&origin, url))
            .unwrap_or(false)
    }

    pub(super) fn count(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes every known secret (and the Authorization value just sent) from text that a
    /// server produced, in case it echoes request headers back.
    pub(super) fn scrub(&self, text: String, sent: Option<&HeaderValue>) -> String {
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

    pub(super) async fn status_error(
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

    pub(super) fn transport(step: Step, target: &str, e: reqwest::Error) -> Error {
        // The URL may carry presigned query parameters (S3 redirects): never show it.
        Error::Transport {
            step,
            target: target.to_string(),
            source: e.without_url(),
        }
    }

    /// The Authorization value to send up front: a pre-issued bearer, Basic for a registry
    /// known to want it, or a (cached or freshly fetched) token for a Bearer registry.
    pub(super) async fn authorization(
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
    pub(super) fn credential(&self, repo: &RepoRef) -> Credential {
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

    /// One HTTP exchange, following redirects by hand so Authorization goes only to the
    /// registry's own origin (ECR sends blob GETs to S3, which must not see it).
    pub(super) async fn dispatch(
        &self,
        call: &Call<'_>,
        auth: Option<&HeaderValue>,
    ) -> Result<Response> {
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
    pub(super) async fn send(&self, call: &Call<'_>) -> Result<Response> {
        let policy = &self.inner.config.retry;
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let auth = self
                .authorization(call.repo, &call.scopes, call.step, &call.target)
                .await?;
            // Manifest and listing requests take a permit of the client-wide host limit for
            // the exchange; blob requests run under the caller's transfer permit.
            let permit = if limiter::self_limited(call.step) {
                Some(self.inner.limiter.acquire(&call.repo.registry).await)
            } else {
                None
            };
            let sent = std::time::Instant::now();
            let answer = self.dispatch(call, auth.as_ref()).await;
            drop(permit);
            if let Ok(resp) = &answer {
                self.inner
                    .limiter
                    .observe_latency(&call.repo.registry, sent.elapsed());
                self.observe(&call.repo.registry, resp.status());
            }
            match answer {
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

    /// Feeds an answer's status to the host's adaptive limit: 429 and 503 are the registry
    /// asking for less; a success while saturated lets the limit probe upwards.
    pub(super) fn observe(&self, registry: &str, status: StatusCode) {
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            self.inner.limiter.throttled(registry);
        } else if status.is_success() {
            self.inner.limiter.succeeded(registry);
        }
    }

    pub(super) fn call<'a>(
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

    /// Fetches JSON pages following `Link: <…>; rel="next"`. `None` when the first page is
    /// 404. `on_page` receives each body.
    pub(super) async fn paginate(
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
        let mut total = 0usize;
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
            let body = self.read_page(step, target, resp, &mut total).await?;
            on_page(&body)?;
            match next {
                Some(n) => url = self.next_page(step, repo, target, &url, &n, status)?,
                None => break,
            }
        }
        Ok(Some(()))
    }

    /// Reads one listing page, bounded by [`MAX_LIST_BYTES`], and adds it to `total`, which
    /// the whole listing may not take past the client's `max_listing_bytes`.
    async fn read_page(
        &self,
        step: Step,
        target: &str,
        resp: Response,
        total: &mut usize,
    ) -> Result<Bytes> {
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
        *total = total.saturating_add(body.len());
        let budget = self.inner.config.max_listing_bytes;
        if *total > budget {
            return Err(Error::Registry {
                step,
                target: target.to_string(),
                status,
                message: format!(
                    "the listing's pages add up to more than {budget} bytes; Ferry stops \
                     there rather than hold it in memory"
                ),
            });
        }
        Ok(body)
    }

    /// The next page's URL from a `Link: <…>; rel="next"` target `link`, resolved against
    /// the page `url` that named it (RFC 8288).
    ///
    /// Pagination never legitimately leaves the registry, so a next page on another origin
    /// is refused outright rather than fetched without credentials: a partial listing that
    /// looks complete would be worse than an error, and nothing is sent to a host the
    /// registry merely named.
    fn next_page(
        &self,
        step: Step,
        repo: &RepoRef,
        target: &str,
        url: &Url,
        link: &str,
        status: u16,
    ) -> Result<Url> {
        let next = url.join(link).map_err(|_| Error::Registry {
            step,
            target: target.to_string(),
            status,
            message: "the Link header's next page is not a valid URL".into(),
        })?;
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
        Ok(next)
    }
}
