//! Referrers of a manifest: the referrers API, paginated, or the `<alg>-<hex>` tag-schema
//! index when the API answers 404.
//!
//! It must never follow a next page off the registry's origin, and never treat a missing
//! listing as an error (no referrers is an empty list).

use reqwest::header::HeaderValue;

use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::media::{self, Descriptor};
use crate::reference::RepoRef;

use super::RegistryClient;

impl RegistryClient {
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
}
