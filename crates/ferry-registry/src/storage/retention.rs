//! Retention for one repository: keep the newest tags, what is in use, what those reference
//! and their referrers; unlink the rest, then collect garbage. It must never unlink a manifest
//! that a kept manifest references.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::files::list_hex_dir;
use super::names::validate_repository;
use super::{mutex, write_lock, Result, Storage};
use crate::errors::StorageError;

/// What [`Storage::retain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub tags_kept: Vec<String>,
    pub tags_removed: Vec<String>,
    pub manifests_unlinked: Vec<String>,
    pub gc: super::GcReport,
}

impl Storage {
    /// Retention for one repository: keeps the `keep_last` most recently written tags, every
    /// digest in `in_use`, everything those reference, and their referrers; removes other tags
    /// and unlinks other manifests and blob links older than `grace`, then runs [`Self::gc`].
    pub fn retain(
        &self,
        repository: &str,
        keep_last: usize,
        in_use: &[String],
        grace: Duration,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        {
            let _gc = write_lock(&self.inner.gc_lock);
            let mut tags: Vec<(u128, String, String)> = Vec::new();
            for tag in self.list_tags_unchecked(repository)? {
                if let Some(digest) = self.read_tag(repository, &tag)? {
                    tags.push((self.tag_time(repository, &tag), tag, digest));
                }
            }
            // Newest first; ties broken by name for determinism.
            tags.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));

            let mut roots: Vec<String> = in_use.to_vec();
            roots.extend(tags.iter().take(keep_last).map(|t| t.2.clone()));
            let mut keep: HashSet<String> = HashSet::new();
            let mut queue = roots;
            while let Some(digest) = queue.pop() {
                if !keep.insert(digest.clone()) {
                    continue;
                }
                if let Some(refs) = self.closure(repository, &digest) {
                    keep.extend(refs);
                }
                // Referrers (signatures, SBOMs) of a kept manifest are kept with it.
                if let Ok(referrers) = self.referrers(repository, &digest, None) {
                    for r in referrers {
                        if let Some(d) = r.get("digest").and_then(Value::as_str) {
                            queue.push(d.to_string());
                        }
                    }
                }
            }

            for (_, tag, digest) in &tags {
                if keep.contains(digest) {
                    report.tags_kept.push(tag.clone());
                } else {
                    let _tags = mutex(&self.inner.tag_lock);
                    Self::remove_if_exists(&self.tag_path(repository, tag))?;
                    report.tags_removed.push(tag.clone());
                }
            }
            for hex in list_hex_dir(&self.repo_dir(repository).join("_manifests/revisions"))? {
                let digest = format!("sha256:{hex}");
                if !keep.contains(&digest) {
                    self.unlink_manifest(repository, &hex)?;
                    report.manifests_unlinked.push(digest);
                }
            }
            let now = SystemTime::now();
            for hex in list_hex_dir(&self.repo_dir(repository).join("_layers"))? {
                let digest = format!("sha256:{hex}");
                let link = self.layer_link(repository, &hex);
                let age = fs::metadata(&link)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if !keep.contains(&digest) && age >= grace {
                    Self::remove_if_exists(&link)?;
                }
            }
        }
        report.gc = self.gc(grace)?;
        Ok(report)
    }

    /// [`Storage::retain`] on a blocking thread, for async callers.
    pub async fn apply_retention(
        &self,
        repository: &str,
        keep_last: usize,
        in_use: Vec<String>,
        grace: Duration,
    ) -> Result<RetentionReport> {
        validate_repository(repository)?;
        let storage = self.clone();
        let repository = repository.to_string();
        tokio::task::spawn_blocking(move || storage.retain(&repository, keep_last, &in_use, grace))
            .await
            .map_err(|e| StorageError::UploadInvalid(format!("retention task failed: {e}")))?
    }
}
