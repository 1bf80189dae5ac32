//! Manifest endpoints: GET (verified against the digest it was asked by, size-capped), HEAD
//! (descriptor from headers, GET when they are incomplete) and PUT of exact bytes.
//!
//! It must never return manifest bytes that do not hash to the digest they were addressed by,
//! and never buffer more than `MAX_MANIFEST_BYTES`.

use std::collections::BTreeMap;

use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::media::{self, Descriptor, Manifest};
use crate::reference::RepoRef;

use super::transport::{content_length, header_str, read_capped};
use super::{check_reported_digest, pull_scope, push_scope, RegistryClient, MAX_MANIFEST_BYTES};

pub(super) fn accept_value() -> HeaderValue {
    HeaderValue::from_str(&media::accept_header())
        .unwrap_or_else(|_| HeaderValue::from_static(media::OCI_MANIFEST))
}

/// A reference that looks like a digest must be one Ferry can verify.
pub(super) fn manifest_digest(reference: &str) -> Result<Option<Digest>> {
    if ferry_spec::is_digest_reference(reference) {
        Ok(Some(reference.parse::<Digest>()?))
    } else {
        Ok(None)
    }
}

pub(super) fn manifest_target(repo: &RepoRef, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    }
}

impl RegistryClient {
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
}
