//! Revoked token ids (`jti`) and grant job ids, persisted so a restart keeps them.
//!
//! The file is rewritten atomically (temp file, fsync, rename) on every change. A revocation is
//! kept until every token it could match has expired, then pruned. This module must never
//! forget a revocation early, and never start with an empty list when the file is unreadable:
//! failing closed is the point.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// Why the revocation file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("revocation file {path} is corrupt ({message}); restore it from a backup, or delete it only if no grant issued in the last 15 minutes may still be in use")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    /// id -> unix time after which the entry may be pruned.
    revoked: BTreeMap<String, u64>,
}

/// The revocation list: ids mapped to when they may be forgotten.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    entries: RwLock<BTreeMap<String, u64>>,
}

impl RevocationList {
    /// Opens (or starts) the list stored at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RevocationError> {
        let path = path.into();
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: FileFormat =
                    serde_json::from_slice(&bytes).map_err(|e| RevocationError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if f.version != 1 {
                    return Err(RevocationError::Corrupt {
                        path,
                        message: format!("unknown version {}", f.version),
                    });
                }
                f.revoked
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RevocationError::Io { path, source }),
        };
        Ok(RevocationList {
            path,
            entries: RwLock::new(entries),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `id` is revoked. Entries past their keep-until time no longer match anything
    /// live, so they are ignored whether pruned or not.
    pub fn is_revoked(&self, id: &str) -> bool {
        // A poisoned lock means a writer panicked mid-update: refuse rather than guess.
        match self.entries.read() {
            Ok(e) => e.contains_key(id),
            Err(_) => true,
        }
    }

    /// Revokes `id` until `keep_until`, prunes entries past `now`, and persists before
    /// returning: once this returns `Ok`, a restart still refuses `id`.
    pub fn revoke(&self, id: &str, keep_until: u64, now: u64) -> Result<(), RevocationError> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut next = entries.clone();
        let until = next.entry(id.to_string()).or_insert(keep_until);
        *until = (*until).max(keep_until);
        next.retain(|_, until| *until >= now);
        self.write(&next)?;
        *entries = next;
        Ok(())
    }

    /// Drops entries whose keep-until time is before `now`. Returns how many were dropped.
    pub fn prune(&self, now: u64) -> Result<usize, RevocationError> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut next = entries.clone();
        next.retain(|_, until| *until >= now);
        let dropped = entries.len() - next.len();
        if dropped > 0 {
            self.write(&next)?;
            *entries = next;
        }
        Ok(dropped)
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self, entries: &BTreeMap<String, u64>) -> Result<(), RevocationError> {
        let io = |source| RevocationError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        crate::storage::create_private_dir(dir).map_err(io)?;
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            revoked: entries.clone(),
        })
        .map_err(|e| RevocationError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&body).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        // fsync the directory so the rename itself survives a crash.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_survive_reopen_and_prune_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/revocations.json");
        let list = RevocationList::open(&path).unwrap();
        assert!(!list.is_revoked("job-1"));
        list.revoke("job-1", 2_000, 1_000).unwrap();
        list.revoke("jti-2", 1_500, 1_000).unwrap();
        assert!(list.is_revoked("job-1"));

        let reopened = RevocationList::open(&path).unwrap();
        assert!(reopened.is_revoked("job-1"));
        assert!(reopened.is_revoked("jti-2"));
        assert!(!reopened.is_revoked("job-3"));

        assert_eq!(reopened.prune(1_600).unwrap(), 1);
        assert!(!reopened.is_revoked("jti-2"));
        assert!(reopened.is_revoked("job-1"));
        assert_eq!(RevocationList::open(&path).unwrap().len(), 1);
    }

    #[test]
    fn revoking_twice_keeps_the_later_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let list = RevocationList::open(dir.path().join("r.json")).unwrap();
        list.revoke("a", 2_000, 0).unwrap();
        list.revoke("a", 1_000, 0).unwrap();
        assert_eq!(list.prune(1_500).unwrap(), 0);
        assert!(list.is_revoked("a"));
    }

    #[test]
    fn corrupt_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            RevocationList::open(&path),
            Err(RevocationError::Corrupt { .. })
        ));
    }
}
