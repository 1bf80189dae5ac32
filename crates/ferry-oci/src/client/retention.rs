//! Ferry's retention extension of the embedded registry, for install agents:
//! `PUT|DELETE|GET /v2/<name>/_ferry/in-use[/<digest>]` (the deployer's in-use marks) and
//! `POST /v2/<name>/_ferry/retention?keep_last=N`. Other registries (ECR, distribution) do not
//! have it; there, retention is the registry's own lifecycle policy.
//!
//! It must never send these requests with anything but the repository's push credentials, and
//! never buffer an answer larger than [`MAX_ANSWER_BYTES`].

use reqwest::Method;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::reference::RepoRef;

use super::transport::read_capped;
use super::{push_scope, RegistryClient};

/// The largest answer read: a retention report of a big repository stays well under it.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What one retention run did, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RetentionSummary {
    pub keep_last: usize,
    /// The digests marked in use when it ran (all kept).
    pub in_use: Vec<String>,
    pub tags_kept: Vec<String>,
    pub tags_removed: Vec<String>,
    pub manifests_unlinked: Vec<String>,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

impl RegistryClient {
    async fn ferry_call(
        &self,
        repo: &RepoRef,
        method: Method,
        path: &str,
        target: String,
    ) -> Result<bytes::Bytes> {
        let url = self.url(repo, path)?;
        let call = self.call(
            Step::Retention,
            repo,
            target.clone(),
            method,
            url,
            push_scope(repo),
        );
        let resp = self.send(&call).await?;
        if !resp.status().is_success() {
            return Err(self
                .status_error(Step::Retention, &target, resp, None)
                .await);
        }
        read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| Self::transport(Step::Retention, &target, e))?
            .ok_or_else(|| Error::Registry {
                step: Step::Retention,
                target,
                status: 200,
                message: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
            })
    }

    /// Marks (`in_use` true) or unmarks `digest` in use in `repo`. Marking needs the manifest
    /// to be in the repository.
    pub async fn set_in_use(&self, repo: &RepoRef, digest: &Digest, in_use: bool) -> Result<()> {
        let method = if in_use { Method::PUT } else { Method::DELETE };
        self.ferry_call(
            repo,
            method,
            &format!("_ferry/in-use/{digest}"),
            format!("{repo}@{digest}"),
        )
        .await
        .map(|_| ())
    }

    /// The digests marked in use in `repo`.
    pub async fn list_in_use(&self, repo: &RepoRef) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Marks {
            in_use: Vec<String>,
        }
        let target = repo.to_string();
        let body = self
            .ferry_call(repo, Method::GET, "_ferry/in-use", target.clone())
            .await?;
        let marks: Marks = serde_json::from_slice(&body).map_err(|e| Error::Registry {
            step: Step::Retention,
            target,
            status: 200,
            message: format!("the in-use list is not the expected JSON: {e}"),
        })?;
        Ok(marks.in_use)
    }

    /// Applies retention to `repo`: keeps the `keep_last` newest tags, everything marked in
    /// use, and everything those reference.
    pub async fn apply_retention(
        &self,
        repo: &RepoRef,
        keep_last: usize,
    ) -> Result<RetentionSummary> {
        let target = repo.to_string();
        let body = self
            .ferry_call(
                repo,
                Method::POST,
                &format!("_ferry/retention?keep_last={keep_last}"),
                target.clone(),
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| Error::Registry {
            step: Step::Retention,
            target,
            status: 200,
            message: format!("the retention report is not the expected JSON: {e}"),
        })
    }
}
