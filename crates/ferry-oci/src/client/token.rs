//! The registry auth flows behind a 401: learning the scheme from `WWW-Authenticate`, the
//! bearer token request (Basic to the realm when there is a password), and the token cache
//! keyed by (registry, identity, scope).
//!
//! It must never send credentials to a realm that [`realm_refusal`] rejects (an https→http
//! downgrade, a password in clear to another host), never hand a token minted for one
//! identity to a request made as another, and never cache or print a token past its use.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};

use crate::auth::{self, AuthScheme, Credential, Secret};
use crate::error::{Error, Result, Step};
use crate::reference::RepoRef;

use super::transport::{origin_text, read_capped, retry_after, same_origin, sensitive, Call};
use super::{RegistryClient, MAX_ERROR_BYTES};

/// Whether a URL's host is loopback (`localhost`, 127.0.0.0/8, `::1`): traffic that never
/// leaves the machine, which is why plain HTTP is allowed there.
pub(super) fn url_is_loopback(url: &Url) -> bool {
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

impl RegistryClient {
    /// A token cached for this identity and these scopes; a push token also serves a pull
    /// of the same repository (a destination is HEADed before it is written).
    pub(super) fn cached_token(
        &self,
        repo: &RepoRef,
        identity: &str,
        scopes: &[String],
    ) -> Option<Secret> {
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
    pub(super) async fn fetch_token(
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
        let url = self.token_url(repo, credential, realm, service, scopes, &auth_err)?;
        let realm_target = format!("{}{}", url.host_str().unwrap_or(""), url.path());
        let resp = self
            .send_token_request(&url, credential, &realm_target)
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let who = match credential {
                Credential::Basic { username, .. } => {
                    format!("the credentials of user {username:?} were refused")
                }
                Credential::IdentityToken(_) => {
                    "the identity token (docker config.json `identitytoken`) was refused; log \
                     in again"
                        .to_string()
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

    /// The token request's URL: the realm, checked by [`realm_refusal`], with the service
    /// and every scope as query parameters.
    fn token_url(
        &self,
        repo: &RepoRef,
        credential: &Credential,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        auth_err: &dyn Fn(String) -> Error,
    ) -> Result<Url> {
        let mut url = Url::parse(realm)
            .map_err(|_| auth_err(format!("the registry's token realm {realm:?} is not a URL")))?;
        // Both carry a long-lived secret: the realm policy treats them alike.
        let sends_basic = matches!(
            credential,
            Credential::Basic { .. } | Credential::IdentityToken(_)
        );
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
        Ok(url)
    }

    /// Sends the token request (Basic when we have a password), retrying 429, 5xx and
    /// retryable connection errors as the client's policy allows.
    async fn send_token_request(
        &self,
        url: &Url,
        credential: &Credential,
        realm_target: &str,
    ) -> Result<reqwest::Response> {
        let policy = &self.inner.config.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut rb = match credential {
                Credential::IdentityToken(refresh) => self.refresh_token_request(url, refresh)?,
                _ => self.inner.http.get(url.clone()),
            };
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
                Ok(r) => return Ok(r),
                Err(e) => {
                    let err = Self::transport(Step::Auth, realm_target, e);
                    if err.is_retryable() && policy.should_retry(attempt) {
                        let delay = policy.delay(attempt, None);
                        tracing::debug!(step = %Step::Auth, target = %realm_target, attempt, delay_ms = delay.as_millis() as u64, "retrying token request after a connection error");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// The OAuth2 token request for a refresh token (the docker `identitytoken` flow): a POST
    /// to the realm with `grant_type=refresh_token`, the service and scopes in the form body
    /// (where token services read them), the token never in the URL.
    fn refresh_token_request(
        &self,
        url: &Url,
        refresh: &crate::auth::Secret,
    ) -> Result<reqwest::RequestBuilder> {
        let mut form: Vec<(String, String)> = vec![
            ("grant_type".into(), "refresh_token".into()),
            ("client_id".into(), "ferry".into()),
        ];
        form.extend(
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned())),
        );
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &form {
            body.append_pair(k, v);
        }
        body.append_pair("refresh_token", refresh.expose());
        let mut bare = url.clone();
        bare.set_query(None);
        Ok(self
            .inner
            .http
            .post(bare)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body.finish()))
    }

    /// Reacts to a 401: learn the registry's scheme from its challenge, so that the next
    /// `authorization` yields something new; an error when there is nothing new to try.
    pub(super) async fn on_unauthorized(
        &self,
        call: &Call<'_>,
        headers: &HeaderMap,
        sent: Option<&HeaderValue>,
    ) -> Result<()> {
        let repo = call.repo;
        let credential = self.credential(repo);
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
                self.inner.auth.set_scheme(&repo.registry, scheme.clone());
            }
            AuthScheme::Bearer { realm, service } => {
                let _guard = self.inner.token_fetch.lock().await;
                let bearer = Bearer {
                    realm,
                    service: service.as_deref(),
                    challenges: &challenges,
                };
                self.refresh_bearer(call, &credential, bearer, sent).await?;
                self.inner.auth.set_scheme(&repo.registry, scheme.clone());
            }
        }
        Ok(())
    }

    /// The bearer half of [`Self::on_unauthorized`], run under the token-fetch lock: reuse a
    /// token another request fetched meanwhile, else forget the refused one and fetch anew
    /// for the call's scopes plus any the challenge names.
    async fn refresh_bearer(
        &self,
        call: &Call<'_>,
        credential: &Credential,
        bearer: Bearer<'_>,
        sent: Option<&HeaderValue>,
    ) -> Result<()> {
        let repo = call.repo;
        let identity = credential.identity_key();
        let key = call.scopes.join(" ");
        // Concurrent first requests all meet a 401: the first to get here fetches, the rest
        // find its token (newer than what they sent) and reuse it.
        let sent_token = sent
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(fresh) = self.cached_token(repo, &identity, &call.scopes) {
            if Some(fresh.expose()) != sent_token {
                return Ok(());
            }
        }
        self.inner
            .auth
            .forget_token(&repo.registry, &identity, &key);
        let scopes = challenge_scopes(&call.scopes, bearer.challenges);
        let token = self
            .fetch_token(
                repo,
                credential,
                bearer.realm,
                bearer.service,
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
        Ok(())
    }
}

/// What a `Bearer` challenge asks for: where to get a token, and every challenge answered
/// (one may name a scope of its own).
struct Bearer<'a> {
    realm: &'a str,
    service: Option<&'a str>,
    challenges: &'a [auth::Challenge],
}

/// The call's scopes plus any the bearer challenge names that we did not think of.
fn challenge_scopes(scopes: &[String], challenges: &[auth::Challenge]) -> Vec<String> {
    let mut scopes = scopes.to_vec();
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
    scopes
}
