//! Blob endpoints: HEAD, streaming GET (resumed with `Range` when a connection drops), upload
//! as one POST then one streaming PUT, and cross-repository mount with the 202 fallback.
//!
//! It must never buffer a blob (bodies are streams end to end), never PATCH in chunks (ECR
//! refuses them), and never send credentials to an upload or redirect location on another
//! origin.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, Response, StatusCode, Url};

use crate::auth;
use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::reference::RepoRef;
use crate::ByteStream;

use super::transport::{content_length, header_str};
use super::{check_reported_digest, pull_scope, push_scope, MountOutcome, RegistryClient};

/// The upload session URL from a 202's `Location`, which may be relative.
pub(super) fn upload_location(
    base: &Url,
    headers: &HeaderMap,
    step: Step,
    target: &str,
) -> Result<Url> {
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
                .open_blob(&self.repo, &self.digest, self.received, None)
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

impl RegistryClient {
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

    /// Opens a blob body at `offset`, up to and including byte `last` if given. Returns the
    /// response and whether it starts at `offset` (206, or 200 for offset 0) or at zero (200,
    /// a server that ignored `Range`). A 206 that starts anywhere else is an error.
    pub(super) async fn open_blob(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        offset: u64,
        last: Option<u64>,
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
        if offset > 0 || last.is_some() {
            let last = last.map(|l| l.to_string()).unwrap_or_default();
            call.headers.insert(
                reqwest::header::RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-{last}"))
                    .map_err(|_| Error::Config("bad range".into()))?,
            );
        }
        let resp = self.send(&call).await?;
        match resp.status() {
            StatusCode::OK => Ok((resp, offset == 0)),
            StatusCode::PARTIAL_CONTENT if offset > 0 || last.is_some() => {
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
    ///
    /// A blob of known size at or above [`RangedReads::threshold`](super::RangedReads), from a
    /// host on a long link ([`RegistryClient::is_long_link`]), is read
    /// as parallel `Range` requests and reassembled in order (see `ranged.rs`); the caller's
    /// host permit covers the first range, and further ranges run only on permits that are
    /// free at the time. A source that answers the first range with 200 is read as one stream.
    pub async fn get_blob(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<ByteStream> {
        let ranged =
            |s: &u64| self.inner.config.ranged.applies(*s) && self.is_long_link(&repo.registry);
        if let Some(size) = size.filter(ranged) {
            return self.get_blob_ranged(repo, digest, size).await;
        }
        let (resp, _) = self.open_blob(repo, digest, 0, None).await?;
        Ok(self.resumable_stream(repo, digest, size, resp))
    }

    /// A body from offset 0 as a stream that resumes with `Range` when the connection drops.
    pub(super) fn resumable_stream(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        size: Option<u64>,
        resp: Response,
    ) -> ByteStream {
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
        Box::pin(futures::stream::unfold(state, BlobState::next))
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
        self.observe(&repo.registry, status);
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
}
