//! Content-addressed storage on disk, the only state the registry has.
//!
//! Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>                                  content (blobs and manifests), shared
//! uploads/<uuid>                                      upload in progress (never served)
//! tmp/                                                temp files for atomic writes
//! settings.json                                       immutable-tag prefixes, namespaces
//! repositories/<name>/_layers/<hex>                   "repo has blob" link
//! repositories/<name>/_manifests/revisions/<hex>      "repo has manifest" link: {"mediaType"}
//! repositories/<name>/_manifests/tags/<tag>           tag -> digest
//! repositories/<name>/_referrers/<subject-hex>/<hex>  referrer descriptor (JSON)
//! ```
//!
//! Every file becomes visible by rename after fsync, so a crash never leaves a partial blob or
//! a half-written link. Files are created 0600 and directories 0700: blobs and metadata are
//! for the registry process only. It must never make an unverified upload visible, never
//! accept a manifest whose references are missing or that nests deeper than
//! [`crate::limits::MAX_INDEX_DEPTH`], never hold a whole blob in memory, and never keep a file open for an
//! upload session between requests.
//!
//! The code is split by concern, one file each: `names` (ferry-spec's name and digest rules as
//! storage errors), `document` (the revision link and referrer record), `blobs`, `uploads`, `manifests` (and the
//! reference graph), `tags` (tags and repository listings), `referrers`, `gc`, `retention`,
//! and `files` (atomic writes, private modes). This file holds the [`Storage`] handle, its
//! settings and the on-disk paths.

mod blobs;
mod document;
mod files;
mod gc;
mod manifests;
mod names;
mod referrers;
mod retention;
mod tags;
mod uploads;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::errors::StorageError;
use crate::graph::ClosureCache;
use crate::limits::Limits;

use files::{create_storage_dir, private_file_options, set_private_dir_mode, sync_parent};
use uploads::UploadEntry;

pub use files::create_private_dir;
pub use gc::GcReport;
pub use names::{digest_hex, sha256_digest, validate_repository, validate_tag};
pub use retention::RetentionReport;
pub use uploads::range_len;

pub type Result<T> = std::result::Result<T, StorageError>;

/// Default cap on manifest bodies.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The media types the registry defaults to: ferry-spec's.
pub use ferry_spec::media::{OCI_INDEX, OCI_MANIFEST};

/// Settings persisted under the root so a restart keeps them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// Repository prefixes whose tags cannot move to another digest once written.
    #[serde(default)]
    pub immutable_prefixes: Vec<String>,
    /// When set, repositories must live under one of these namespaces (prefixes).
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
}

fn prefix_matches(prefix: &str, repository: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || repository == prefix
        || (repository.starts_with(prefix)
            && repository.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// A manifest as read back.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub body: Bytes,
}

/// The result of a manifest PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutManifest {
    pub digest: String,
    /// The digest of the manifest's `subject`, when it has one.
    pub subject: Option<String>,
}

/// An upload session's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    pub offset: u64,
}

/// The registry's storage. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Manifest puts, blob commits and links take it shared; GC takes it exclusive so the
    /// mark phase sees a graph nobody is adding to.
    gc_lock: RwLock<()>,
    /// Serialises tag check-and-write so two puts cannot race past an immutability check.
    tag_lock: Mutex<()>,
    settings: RwLock<Settings>,
    uploads: Mutex<HashMap<String, UploadEntry>>,
    /// [`Limits::upload_sessions_per_identity`] and [`Limits::upload_idle_timeout`].
    upload_sessions_per_identity: usize,
    upload_idle_timeout: Duration,
    /// Reference closures served to grants; invalidated whenever a manifest link changes.
    closures: ClosureCache,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave on-disk state half-done (every write is a
    // rename), so a poisoned lock is safe to keep using.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn mutex<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Storage {
    /// Opens (creating if needed) storage at `root` with the default [`Limits`]. Leftover temp
    /// files and upload sessions from a previous run are removed: sessions live in memory and
    /// cannot be resumed. Only one process may open a root at a time
    /// ([`crate::lock::RootLock`]): another's open would delete the first one's uploads.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(root, &Limits::default())
    }

    /// [`Storage::open`] with the upload-session limits of `limits`.
    pub fn open_with(root: impl Into<PathBuf>, limits: &Limits) -> Result<Self> {
        let root = root.into();
        create_storage_dir(&root)?;
        // An existing root may predate private modes: tighten it, which covers everything below.
        set_private_dir_mode(&root)?;
        for dir in ["blobs/sha256", "repositories", "uploads", "tmp"] {
            create_storage_dir(&root.join(dir))?;
        }
        for dir in ["uploads", "tmp"] {
            let path = root.join(dir);
            let entries = fs::read_dir(&path)
                .map_err(|e| StorageError::io("listing leftover temp files", &path, e))?;
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let settings_path = root.join("settings.json");
        let settings = match fs::read(&settings_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                path: settings_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Settings::default(),
            Err(e) => return Err(StorageError::io("reading settings", settings_path, e)),
        };
        Ok(Storage {
            inner: Arc::new(Inner {
                root,
                gc_lock: RwLock::new(()),
                tag_lock: Mutex::new(()),
                settings: RwLock::new(settings),
                uploads: Mutex::new(HashMap::new()),
                upload_sessions_per_identity: limits.upload_sessions_per_identity.max(1),
                upload_idle_timeout: limits.upload_idle_timeout,
                closures: ClosureCache::new(crate::limits::CLOSURE_CACHE_ENTRIES),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    // ---- settings -------------------------------------------------------------------------

    pub fn settings(&self) -> Settings {
        read_lock(&self.inner.settings).clone()
    }

    fn update_settings(&self, f: impl FnOnce(&mut Settings)) -> Result<()> {
        let mut settings = write_lock(&self.inner.settings);
        let mut next = settings.clone();
        f(&mut next);
        if next != *settings {
            let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StorageError::Corrupt {
                path: self.inner.root.join("settings.json"),
                reason: e.to_string(),
            })?;
            self.atomic_write(&self.inner.root.join("settings.json"), &bytes)?;
            *settings = next;
        }
        Ok(())
    }

    /// Makes tags immutable in every repository equal to or under `prefix`.
    pub fn set_immutable(&self, prefix: &str) -> Result<()> {
        let prefix = prefix.trim_end_matches('/').to_string();
        self.update_settings(|s| {
            if !s.immutable_prefixes.contains(&prefix) {
                s.immutable_prefixes.push(prefix);
            }
        })
    }

    pub fn is_immutable(&self, repository: &str) -> bool {
        read_lock(&self.inner.settings)
            .immutable_prefixes
            .iter()
            .any(|p| prefix_matches(p, repository))
    }

    /// Declares a namespace (e.g. `vendor`, `installs/acme`). Once any namespace is declared,
    /// only repositories under a declared namespace are served.
    pub fn add_namespace(&self, namespace: &str) -> Result<()> {
        validate_repository(namespace)?;
        let namespace = namespace.to_string();
        self.update_settings(|s| {
            let list = s.namespaces.get_or_insert_with(Vec::new);
            if !list.contains(&namespace) {
                list.push(namespace);
            }
        })
    }

    /// `true` when namespaces are off, or `repository` is under a declared one.
    pub fn in_namespace(&self, repository: &str) -> bool {
        match &read_lock(&self.inner.settings).namespaces {
            None => true,
            Some(list) => list.iter().any(|n| prefix_matches(n, repository)),
        }
    }

    // ---- paths and small-file helpers -----------------------------------------------------

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(hex)
    }

    fn repo_dir(&self, repository: &str) -> PathBuf {
        self.inner.root.join("repositories").join(repository)
    }

    fn layer_link(&self, repository: &str, hex: &str) -> PathBuf {
        self.repo_dir(repository).join("_layers").join(hex)
    }

    fn revision_link(&self, repository: &str, hex: &str) -> PathBuf {
        self.repo_dir(repository)
            .join("_manifests/revisions")
            .join(hex)
    }

    fn tag_path(&self, repository: &str, tag: &str) -> PathBuf {
        self.repo_dir(repository).join("_manifests/tags").join(tag)
    }

    fn referrers_dir(&self, repository: &str, subject_hex: &str) -> PathBuf {
        self.repo_dir(repository)
            .join("_referrers")
            .join(subject_hex)
    }

    /// Writes `bytes` to a temp file, fsyncs it, then renames it over `path`.
    fn atomic_write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if let Some(parent) = path.parent() {
            create_storage_dir(parent)?;
        }
        let tmp = self.inner.root.join("tmp").join(random_id());
        let write = || -> io::Result<()> {
            let mut file = private_file_options().open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            sync_parent(path);
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StorageError::io("writing a file atomically", path, e)
        })
    }

    fn remove_if_exists(path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("removing a file", path, e)),
        }
    }

    fn exists(path: &Path) -> bool {
        path.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(prefix_matches("installs/acme", "installs/acme/app"));
        assert!(prefix_matches("installs/acme", "installs/acme"));
        assert!(!prefix_matches("installs/acme", "installs/acme2/app"));
    }
}
