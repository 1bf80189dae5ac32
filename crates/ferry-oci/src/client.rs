//! The OCI distribution client: one HTTP request per method, written on reqwest.
//!
//! It speaks distribution-spec 1.1 and the ECR quirks (see ARCHITECTURE.md): every manifest
//! media type in `Accept`; blob GETs that follow redirects and drop `Authorization` when the
//! host changes; uploads as one POST then one streaming PUT, never PATCH chunks; mount with
//! the 202 fallback; paginated tags; referrers with the tag-schema fallback.
//! It knows nothing of manifest graphs; that is the copy engine's job.
//! It must never buffer a blob, and never put a credential into an error or a log line.

use std::time::Duration;

use crate::auth::CredentialStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::media::{Descriptor, Manifest};
use crate::reference::RepoRef;
use crate::retry::RetryPolicy;
use crate::ByteStream;

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
    // filled in by the implementation
}

impl RegistryClient {
    pub fn new(_config: ClientConfig) -> Result<Self> {
        todo!()
    }

    /// GET a manifest by tag or digest. By digest, the bytes are verified against it.
    pub async fn get_manifest(&self, _repo: &RepoRef, _reference: &str) -> Result<Manifest> {
        todo!()
    }

    /// HEAD a manifest: its descriptor (digest from `Docker-Content-Digest`, media type and
    /// size), or `None` on 404.
    pub async fn head_manifest(&self, _repo: &RepoRef, _reference: &str) -> Result<Option<Descriptor>> {
        todo!()
    }

    /// PUT a manifest's exact bytes under a tag or its digest. Returns the digest the
    /// registry reports (checked against `manifest.digest`).
    pub async fn put_manifest(&self, _repo: &RepoRef, _reference: &str, _manifest: &Manifest) -> Result<Digest> {
        todo!()
    }

    /// HEAD a blob: `Some(size)` if present.
    pub async fn blob_exists(&self, _repo: &RepoRef, _digest: &Digest) -> Result<Option<u64>> {
        todo!()
    }

    /// GET a blob as a stream, starting at `offset` (a `Range` request when non-zero).
    /// The stream yields raw bytes, unverified. With `size` known, a connection that drops
    /// mid-stream is resumed with `Range` transparently (bounded by the retry policy).
    pub async fn get_blob(&self, _repo: &RepoRef, _digest: &Digest, _size: Option<u64>) -> Result<ByteStream> {
        todo!()
    }

    /// Upload a blob: one POST, then one streaming PUT with `Content-Length: size` and
    /// `?digest=`. Never PATCH. The body is consumed once; on failure the caller re-opens.
    pub async fn upload_blob(&self, _repo: &RepoRef, _digest: &Digest, _size: u64, _body: ByteStream) -> Result<()> {
        todo!()
    }

    /// Cross-repository mount `POST ?mount=<digest>&from=<from>`.
    pub async fn mount_blob(&self, _repo: &RepoRef, _from: &str, _digest: &Digest) -> Result<MountOutcome> {
        todo!()
    }

    /// Every tag, following `Link` pagination.
    pub async fn list_tags(&self, _repo: &RepoRef) -> Result<Vec<String>> {
        todo!()
    }

    /// Referrers of `digest`: the referrers API, or the `sha256-<hex>` tag-schema index when
    /// the API answers 404.
    pub async fn referrers(&self, _repo: &RepoRef, _digest: &Digest) -> Result<Vec<Descriptor>> {
        todo!()
    }

    /// Counters of requests sent, by method, for benchmarks and tests.
    pub fn request_count(&self) -> u64 {
        todo!()
    }
}
