//! Tags and repository listings: reading a tag (and when it was written), listing tags and
//! repositories. Tag writes happen in `manifests` (a tag is written last, under the tag lock).
//! It must never list a file that is not a valid tag.

use std::fs;
use std::io;
use std::time::SystemTime;

use super::names::{digest_hex, validate_tag};
use super::{Result, Storage};
use crate::errors::StorageError;

impl Storage {
    pub(super) fn read_tag(&self, repository: &str, tag: &str) -> Result<Option<String>> {
        let path = self.tag_path(repository, tag);
        match fs::read_to_string(&path) {
            Ok(s) => {
                let digest = s.lines().next().unwrap_or("").trim().to_string();
                digest_hex(&digest).map_err(|_| StorageError::Corrupt {
                    path: path.clone(),
                    reason: "tag file does not hold a digest".into(),
                })?;
                Ok(Some(digest))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("reading a tag", path, e)),
        }
    }

    /// When a tag was last written, in ns since the epoch (0 if unknown).
    pub(super) fn tag_time(&self, repository: &str, tag: &str) -> u128 {
        let path = self.tag_path(repository, tag);
        let recorded = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse::<u128>().ok()));
        recorded.unwrap_or_else(|| {
            fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        })
    }

    /// Does `repository` exist (has any blob or manifest link)?
    pub fn repository_exists(&self, repository: &str) -> bool {
        let dir = self.repo_dir(repository);
        dir.join("_manifests").is_dir() || dir.join("_layers").is_dir()
    }

    pub(super) fn list_tags_unchecked(&self, repository: &str) -> Result<Vec<String>> {
        let dir = self.repo_dir(repository).join("_manifests/tags");
        let mut tags = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if let Some(name) = entry.file_name().to_str() {
                        if validate_tag(name).is_ok() {
                            tags.push(name.to_string());
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("listing tags", dir, e)),
        }
        tags.sort();
        Ok(tags)
    }

    /// Tags of `repository`, sorted.
    pub fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        if !self.repository_exists(repository) {
            return Err(StorageError::NameUnknown(repository.to_string()));
        }
        self.list_tags_unchecked(repository)
    }

    /// Every repository, sorted.
    pub fn list_repositories(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let base = self.inner.root.join("repositories");
        let mut stack = vec![(base.clone(), String::new())];
        while let Some((dir, name)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("listing repositories", dir, e)),
            };
            let mut is_repo = false;
            for entry in entries.flatten() {
                let Some(child) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if child == "_manifests" || child == "_layers" {
                    is_repo = true;
                } else if !child.starts_with('_') && entry.path().is_dir() {
                    let child_name = if name.is_empty() {
                        child
                    } else {
                        format!("{name}/{child}")
                    };
                    stack.push((entry.path(), child_name));
                }
            }
            if is_repo && !name.is_empty() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }
}
