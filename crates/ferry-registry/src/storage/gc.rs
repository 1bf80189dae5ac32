//! Garbage collection: mark every blob a linked manifest is or references, sweep the rest
//! once older than the grace period, and drop dangling blob links. It must never remove a
//! blob younger than the grace period (an upload waiting for its manifest).

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, SystemTime};

use super::files::list_hex_dir;
use super::names::digest_hex;
use super::{write_lock, Result, Storage};
use crate::errors::StorageError;

/// What [`Storage::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_marked: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_in_grace: usize,
    pub links_removed: usize,
}

impl Storage {
    /// Mark-and-sweep: removes blobs that no manifest linked into any repository (tagged or
    /// not) is or references, unless younger than `grace` (uploads waiting for their manifest).
    /// Blob links left dangling are removed too. Blocking; run it on a blocking thread.
    pub fn gc(&self, grace: Duration) -> Result<GcReport> {
        let _gc = write_lock(&self.inner.gc_lock);
        let mut report = GcReport::default();
        let mut marked: HashSet<String> = HashSet::new();
        let repositories = self.list_repositories()?;
        for repo in &repositories {
            for hex in list_hex_dir(&self.repo_dir(repo).join("_manifests/revisions"))? {
                // Walked per repository even if already marked: links are per repository.
                marked.insert(hex.clone());
                let digest = format!("sha256:{hex}");
                if let Some(refs) = self.closure(repo, &digest) {
                    for r in refs {
                        if let Ok(h) = digest_hex(&r) {
                            marked.insert(h.to_string());
                        }
                    }
                }
            }
        }
        report.blobs_marked = marked.len();
        let now = SystemTime::now();
        let blob_dir = self.inner.root.join("blobs/sha256");
        for hex in list_hex_dir(&blob_dir)? {
            if marked.contains(&hex) {
                continue;
            }
            let path = blob_dir.join(&hex);
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < grace {
                report.blobs_in_grace += 1;
                continue;
            }
            if Self::remove_if_exists(&path)? {
                self.inner.closures.invalidate();
                report.blobs_removed += 1;
                report.bytes_freed += meta.len();
            }
        }
        for repo in &repositories {
            for hex in list_hex_dir(&self.repo_dir(repo).join("_layers"))? {
                if !Self::exists(&self.blob_path(&hex))
                    && Self::remove_if_exists(&self.layer_link(repo, &hex))?
                {
                    report.links_removed += 1;
                }
            }
        }
        Ok(report)
    }

    /// [`Storage::gc`] on a blocking thread, for async callers.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport> {
        let storage = self.clone();
        tokio::task::spawn_blocking(move || storage.gc(grace))
            .await
            .map_err(|e| StorageError::UploadInvalid(format!("gc task failed: {e}")))?
    }
}
