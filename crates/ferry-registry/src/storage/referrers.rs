//! Referrers: the descriptors of manifests whose `subject` is a given digest, whole or paged.
//! It must never return a descriptor whose manifest is no longer linked.

use std::fs;
use std::io;

use serde_json::Value;

use super::files::read_json;
use super::names::digest_hex;
use super::{Result, Storage};
use crate::errors::StorageError;

impl Storage {
    /// Descriptors of manifests in `repository` whose subject is `digest`, optionally only
    /// those with the given artifact type. Sorted by digest for stable output. All of them:
    /// for retention; the server answers with [`Storage::referrers_page`].
    pub fn referrers(
        &self,
        repository: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Value>> {
        Ok(self
            .referrers_page(repository, digest, artifact_type, None, usize::MAX)?
            .0)
    }

    /// One page of [`Storage::referrers`]: the descriptors whose digest sorts after `last`,
    /// at most `max_bytes` of serialized JSON (but at least one, so paging always advances).
    /// Returns the page and whether more remain.
    pub fn referrers_page(
        &self,
        repository: &str,
        digest: &str,
        artifact_type: Option<&str>,
        last: Option<&str>,
        max_bytes: usize,
    ) -> Result<(Vec<Value>, bool)> {
        let subject_hex = digest_hex(digest)?;
        let after = match last {
            Some(last) => Some(digest_hex(last)?.to_string()),
            None => None,
        };
        let dir = self.referrers_dir(repository, subject_hex);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((out, false)),
            Err(e) => return Err(StorageError::io("listing referrers", dir, e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| after.as_deref().is_none_or(|a| n.as_str() > a))
            .collect();
        names.sort();
        let mut bytes = 0usize;
        for hex in names {
            if digest_hex(&format!("sha256:{hex}")).is_err() || !self.has_manifest(repository, &hex)
            {
                continue;
            }
            let descriptor: Value = read_json(&dir.join(&hex))?;
            if let Some(wanted) = artifact_type {
                if descriptor.get("artifactType").and_then(Value::as_str) != Some(wanted) {
                    continue;
                }
            }
            let size = descriptor.to_string().len();
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                return Ok((out, true));
            }
            bytes = bytes.saturating_add(size);
            out.push(descriptor);
        }
        Ok((out, false))
    }
}
