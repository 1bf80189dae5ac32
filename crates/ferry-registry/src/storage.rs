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
//! [`MAX_INDEX_DEPTH`], never hold a whole blob in memory, and never keep a file open for an
//! upload session between requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::errors::StorageError;
use crate::graph::ClosureCache;
use crate::limits::{Limits, MAX_INDEX_DEPTH};
use crate::server::GraphLookup;

pub type Result<T> = std::result::Result<T, StorageError>;

/// Default cap on manifest bodies.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const MAX_NAME_LEN: usize = 255;

/// Checks a repository name against the distribution-spec grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, max 255 chars.
/// This also keeps names safe as relative paths (no `..`, no leading `_`, no empty parts).
pub fn validate_repository(name: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(StorageError::NameInvalid {
            name: truncate(name, 80),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("names are at most 255 characters");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return invalid("a path component is empty (leading, trailing or double '/')");
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return invalid("each component must start and end with a lowercase letter or digit");
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric.
            let start = i;
            match b {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if i < bytes.len() && bytes[i] == b'_' {
                        i += 1;
                    }
                }
                b'-' => {
                    while i < bytes.len() && bytes[i] == b'-' {
                        i += 1;
                    }
                }
                _ => {
                    return invalid(
                        "only lowercase letters, digits, '.', '_', '__', '-' and '/' are allowed",
                    )
                }
            }
            if i >= bytes.len() || !alnum(bytes[i]) || i == start {
                return invalid(
                    "separators ('.', '_', '__', '-') must sit between letters or digits",
                );
            }
        }
    }
    Ok(())
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::TagInvalid {
            tag: truncate(tag, 140),
        })
    }
}

/// Parses `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let invalid = |reason: &str| {
        Err(StorageError::DigestInvalid {
            digest: truncate(digest, 80),
            reason: reason.to_string(),
        })
    };
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return invalid("expected <algorithm>:<hex>, e.g. sha256:<64 hex digits>");
    };
    if algorithm != "sha256" {
        return invalid("only sha256 digests are supported");
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return invalid("a sha256 digest has exactly 64 lowercase hex digits");
    }
    Ok(hex)
}

/// Is this reference a digest (as opposed to a tag)?
pub fn is_digest(reference: &str) -> bool {
    reference.contains(':')
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A descriptor as found in manifests (loose: unknown fields are ignored).
#[derive(Debug, Clone, Deserialize)]
struct LooseDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    urls: Vec<String>,
}

/// The parts of an image manifest or index the registry needs; raw bytes are kept elsewhere.
#[derive(Debug, Clone, Deserialize)]
struct LooseManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<LooseDescriptor>,
    #[serde(default)]
    layers: Vec<LooseDescriptor>,
    #[serde(default)]
    manifests: Vec<LooseDescriptor>,
    subject: Option<LooseDescriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl LooseManifest {
    fn parse(body: &[u8]) -> Result<Self> {
        let doc: LooseManifest = serde_json::from_slice(body).map_err(|e| {
            StorageError::ManifestInvalid(format!("not a valid manifest JSON document: {e}"))
        })?;
        match doc.schema_version {
            Some(2) => {}
            Some(v) => {
                return Err(StorageError::ManifestInvalid(format!(
                    "schemaVersion {v} is not supported; push an OCI or Docker schema 2 manifest"
                )))
            }
            None => {
                return Err(StorageError::ManifestInvalid(
                    "schemaVersion is missing; push an OCI or Docker schema 2 manifest".into(),
                ))
            }
        }
        if doc.config.is_none() && doc.manifests.is_empty() && doc.layers.is_empty() {
            let is_index = doc
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("index") || m.contains("list"));
            if !is_index {
                return Err(StorageError::ManifestInvalid(
                    "a manifest needs a config (image manifest) or a manifests list (index)".into(),
                ));
            }
        }
        for d in doc
            .config
            .iter()
            .chain(&doc.layers)
            .chain(&doc.manifests)
            .chain(&doc.subject)
        {
            digest_hex(&d.digest).map_err(|e| {
                StorageError::ManifestInvalid(format!("a descriptor has a bad digest: {e}"))
            })?;
            if d.size < 0 {
                return Err(StorageError::ManifestInvalid(format!(
                    "descriptor {} has a negative size",
                    d.digest
                )));
            }
        }
        Ok(doc)
    }

    /// Digests this manifest references directly (children, config, layers; not subject).
    fn references(&self) -> impl Iterator<Item = &LooseDescriptor> {
        self.manifests
            .iter()
            .chain(self.config.iter())
            .chain(self.layers.iter())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevisionLink {
    #[serde(rename = "mediaType")]
    media_type: String,
}

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

/// An upload session between requests: where its bytes are and how far they are hashed. No
/// file handle is kept; each PATCH/PUT opens the file, cuts it back to `offset` (dropping
/// whatever an interrupted request left past it), appends, and closes it.
struct UploadState {
    repository: String,
    path: PathBuf,
    hasher: Sha256,
    offset: u64,
    last_activity: std::time::Instant,
}

/// A registered upload session and the identity that opened it (for the per-identity cap).
struct UploadEntry {
    owner: String,
    state: Arc<tokio::sync::Mutex<Option<UploadState>>>,
}

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

/// What [`Storage::retain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub tags_kept: Vec<String>,
    pub tags_removed: Vec<String>,
    pub manifests_unlinked: Vec<String>,
    pub gc: GcReport,
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

fn valid_upload_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
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

    // ---- blobs ------------------------------------------------------------------------------

    /// The size of blob `digest` if repository `repository` has it.
    pub fn blob_size(&self, repository: &str, digest: &str) -> Result<Option<u64>> {
        let hex = digest_hex(digest)?;
        if !Self::exists(&self.layer_link(repository, hex)) {
            return Ok(None);
        }
        match fs::metadata(self.blob_path(hex)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(
                "reading blob metadata",
                self.blob_path(hex),
                e,
            )),
        }
    }

    /// Opens blob `digest` of `repository` for streaming. The open handle stays valid even if
    /// GC removes the file afterwards.
    pub async fn open_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<(tokio::fs::File, u64)> {
        let hex = digest_hex(digest)?;
        if !Self::exists(&self.layer_link(repository, hex)) {
            return Err(StorageError::BlobUnknown(digest.to_string()));
        }
        let path = self.blob_path(hex);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::BlobUnknown(digest.to_string()))
            }
            Err(e) => return Err(StorageError::io("opening a blob", path, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| StorageError::io("reading blob metadata", &path, e))?
            .len();
        Ok((file, size))
    }

    /// Unlinks blob `digest` from `repository` (the content stays until GC).
    pub fn delete_blob(&self, repository: &str, digest: &str) -> Result<()> {
        let hex = digest_hex(digest)?;
        let _gc = read_lock(&self.inner.gc_lock);
        if !Self::remove_if_exists(&self.layer_link(repository, hex))? {
            return Err(StorageError::BlobUnknown(digest.to_string()));
        }
        Ok(())
    }

    /// Cross-repository mount: links `digest` into `repository` if `from` has it.
    /// Returns `false` (and changes nothing) when `from` does not have it.
    pub fn mount_blob(&self, repository: &str, digest: &str, from: &str) -> Result<bool> {
        let hex = digest_hex(digest)?;
        let _gc = read_lock(&self.inner.gc_lock);
        let blob = self.blob_path(hex);
        if !Self::exists(&self.layer_link(from, hex)) || !Self::exists(&blob) {
            return Ok(false);
        }
        touch(&blob);
        self.link_layer(repository, hex)?;
        Ok(true)
    }

    fn link_layer(&self, repository: &str, hex: &str) -> Result<()> {
        let link = self.layer_link(repository, hex);
        if Self::exists(&link) {
            return Ok(());
        }
        self.atomic_write(&link, format!("sha256:{hex}").as_bytes())
    }

    /// Moves a verified, fsynced upload file into the blob store and links it into
    /// `repository`. If the content already exists the upload is dropped and the existing
    /// file's mtime refreshed, so GC's grace period protects it until a manifest refers to it.
    fn commit_blob(&self, repository: &str, upload: &Path, hex: &str) -> Result<()> {
        let _gc = read_lock(&self.inner.gc_lock);
        let dest = self.blob_path(hex);
        if Self::exists(&dest) {
            touch(&dest);
            let _ = fs::remove_file(upload);
        } else {
            fs::rename(upload, &dest)
                .map_err(|e| StorageError::io("committing an upload", &dest, e))?;
            sync_parent(&dest);
        }
        self.link_layer(repository, hex)
    }

    // ---- uploads ----------------------------------------------------------------------------

    /// Starts an upload session for `owner` (the authenticated identity) and returns its id.
    /// An owner already holding [`Limits::upload_sessions_per_identity`] sessions is refused
    /// with [`StorageError::TooManyUploads`]. The session's file is created and closed again:
    /// nothing stays open between requests.
    pub async fn start_upload(&self, repository: &str, owner: &str) -> Result<String> {
        let id = random_id();
        let path = self.inner.root.join("uploads").join(&id);
        {
            // Counted and registered under one lock, so parallel POSTs cannot overshoot.
            let mut uploads = mutex(&self.inner.uploads);
            let held = uploads.values().filter(|e| e.owner == owner).count();
            if held >= self.inner.upload_sessions_per_identity {
                return Err(StorageError::TooManyUploads {
                    owner: truncate(owner, 80),
                    limit: self.inner.upload_sessions_per_identity,
                    retry_after_secs: self.inner.upload_idle_timeout.as_secs().max(1),
                });
            }
            let state = UploadState {
                repository: repository.to_string(),
                path: path.clone(),
                hasher: Sha256::new(),
                offset: 0,
                last_activity: std::time::Instant::now(),
            };
            uploads.insert(
                id.clone(),
                UploadEntry {
                    owner: owner.to_string(),
                    state: Arc::new(tokio::sync::Mutex::new(Some(state))),
                },
            );
        }
        let created = tokio::task::spawn_blocking({
            let path = path.clone();
            move || private_file_options().open(&path).map(drop)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        if let Err(e) = created {
            mutex(&self.inner.uploads).remove(&id);
            return Err(StorageError::io("creating an upload file", &path, e));
        }
        Ok(id)
    }

    fn session(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<Option<UploadState>>>> {
        if !valid_upload_id(id) {
            return Err(StorageError::UploadUnknown(truncate(id, 40)));
        }
        mutex(&self.inner.uploads)
            .get(id)
            .map(|e| e.state.clone())
            .ok_or_else(|| StorageError::UploadUnknown(id.to_string()))
    }

    /// How many upload sessions `owner` holds open.
    pub fn upload_sessions_of(&self, owner: &str) -> usize {
        mutex(&self.inner.uploads)
            .values()
            .filter(|e| e.owner == owner)
            .count()
    }

    /// Current offset of an upload session.
    pub async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        let session = self.session(id)?;
        let guard = session.lock().await;
        match guard.as_ref() {
            Some(state) if state.repository == repository => Ok(UploadStatus {
                offset: state.offset,
            }),
            _ => Err(StorageError::UploadUnknown(id.to_string())),
        }
    }

    /// Appends a chunk. `range` is the inclusive `Content-Range` (start, end): the start must
    /// equal the current offset and the body must be exactly that long. If the body fails
    /// midway or has the wrong length, the session stays where it was before this chunk.
    pub async fn append_upload<S, E>(
        &self,
        repository: &str,
        id: &str,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let session = self.session(id)?;
        let mut guard = session.lock().await;
        let state = match guard.as_mut() {
            Some(state) if state.repository == repository => state,
            _ => return Err(StorageError::UploadUnknown(id.to_string())),
        };
        let announced = match range {
            Some((start, end)) => {
                if start != state.offset {
                    return Err(StorageError::UploadOutOfOrder {
                        expected: state.offset,
                        got: start,
                    });
                }
                Some(range_len(start, end).ok_or(StorageError::RangeInvalid {
                    expected: state.offset,
                })?)
            }
            None => None,
        };
        state.last_activity = std::time::Instant::now();
        // Hash into a copy: the session only moves forward once the whole chunk is on disk.
        let mut hasher = state.hasher.clone();
        let mut file = open_upload_at(&state.path, state.offset).await?;
        let written = write_stream(&mut file, &mut hasher, body)
            .await
            .and_then(|n| match announced {
                Some(len) if n != len => Err(StorageError::UploadInvalid(format!(
                    "Content-Range announces {len} bytes but the body had {n}; resend the chunk"
                ))),
                _ => Ok(n),
            })
            .and_then(|n| {
                state.offset.checked_add(n).ok_or_else(|| {
                    StorageError::UploadInvalid("the upload would exceed 2^64 bytes".into())
                })
            });
        let flushed = match written {
            Ok(offset) => file
                .flush()
                .await
                .map(|()| offset)
                .map_err(|e| StorageError::io("writing an upload", &state.path, e)),
            Err(e) => Err(e),
        };
        match flushed {
            Ok(offset) => {
                state.hasher = hasher;
                state.offset = offset;
                state.last_activity = std::time::Instant::now();
                Ok(UploadStatus { offset })
            }
            Err(err) => {
                // Best effort: the next request cuts the file back to the offset anyway.
                let _ = file.set_len(state.offset).await;
                Err(err)
            }
        }
    }

    /// Finishes an upload: appends `body` (possibly empty), verifies `digest`, commits.
    /// On any failure the session is discarded and nothing becomes visible.
    pub async fn finish_upload<S, E>(
        &self,
        repository: &str,
        id: &str,
        digest: &str,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        digest_hex(digest)?;
        let session = self.session(id)?;
        let mut guard = session.lock().await;
        match guard.as_ref() {
            Some(state) if state.repository == repository => {}
            _ => return Err(StorageError::UploadUnknown(id.to_string())),
        }
        let Some(state) = guard.take() else {
            return Err(StorageError::UploadUnknown(id.to_string()));
        };
        mutex(&self.inner.uploads).remove(id);
        self.finish_state(state, digest, body).await
    }

    /// Appends `body` to a session taken out of the table, verifies and commits it; removes
    /// its file on failure.
    async fn finish_state<S, E>(&self, mut state: UploadState, digest: &str, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let hex = digest_hex(digest)?.to_string();
        let result = async {
            let mut file = open_upload_at(&state.path, state.offset).await?;
            let n = write_stream(&mut file, &mut state.hasher, body).await?;
            state.offset = state.offset.checked_add(n).ok_or_else(|| {
                StorageError::UploadInvalid("the upload would exceed 2^64 bytes".into())
            })?;
            let actual = hex::encode(state.hasher.clone().finalize());
            if actual != hex {
                return Err(StorageError::DigestMismatch {
                    expected: digest.to_string(),
                    actual: format!("sha256:{actual}"),
                });
            }
            file.flush()
                .await
                .map_err(|e| StorageError::io("flushing an upload", &state.path, e))?;
            file.sync_all()
                .await
                .map_err(|e| StorageError::io("syncing an upload", &state.path, e))?;
            drop(file);
            let storage = self.clone();
            let path = state.path.clone();
            let repo = state.repository.clone();
            tokio::task::spawn_blocking(move || storage.commit_blob(&repo, &path, &hex))
                .await
                .map_err(|e| StorageError::UploadInvalid(format!("commit task failed: {e}")))??;
            Ok(state.offset)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&state.path).await;
        }
        result
    }

    /// Cancels an upload session.
    pub async fn cancel_upload(&self, repository: &str, id: &str) -> Result<()> {
        let session = self.session(id)?;
        let mut guard = session.lock().await;
        match guard.as_ref() {
            Some(state) if state.repository == repository => {}
            _ => return Err(StorageError::UploadUnknown(id.to_string())),
        }
        if let Some(state) = guard.take() {
            mutex(&self.inner.uploads).remove(id);
            let _ = tokio::fs::remove_file(&state.path).await;
        }
        Ok(())
    }

    /// Drops upload sessions idle for longer than `idle` (clients that went away) and deletes
    /// their files. Sessions busy with a request are skipped. Returns how many were dropped.
    pub fn expire_uploads(&self, idle: Duration) -> usize {
        let sessions: Vec<(String, Arc<tokio::sync::Mutex<Option<UploadState>>>)> =
            mutex(&self.inner.uploads)
                .iter()
                .map(|(k, v)| (k.clone(), v.state.clone()))
                .collect();
        let mut dropped = 0;
        for (id, session) in sessions {
            let Ok(mut guard) = session.try_lock() else {
                continue;
            };
            let stale = guard
                .as_ref()
                .is_some_and(|s| s.last_activity.elapsed() >= idle);
            if stale {
                if let Some(state) = guard.take() {
                    mutex(&self.inner.uploads).remove(&id);
                    let _ = fs::remove_file(&state.path);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// [`Storage::expire_uploads`] with the configured [`Limits::upload_idle_timeout`].
    pub fn expire_idle_uploads(&self) -> usize {
        self.expire_uploads(self.inner.upload_idle_timeout)
    }

    /// Monolithic upload: the whole blob in one body, verified against `digest`. It holds no
    /// session between requests, so it does not count against the per-identity cap.
    pub async fn put_blob<S, E>(&self, repository: &str, digest: &str, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        digest_hex(digest)?;
        let path = self.inner.root.join("uploads").join(random_id());
        let state = UploadState {
            repository: repository.to_string(),
            path,
            hasher: Sha256::new(),
            offset: 0,
            last_activity: std::time::Instant::now(),
        };
        self.finish_state(state, digest, body).await
    }

    // ---- manifests ----------------------------------------------------------------------

    fn has_manifest(&self, repository: &str, hex: &str) -> bool {
        Self::exists(&self.revision_link(repository, hex)) && Self::exists(&self.blob_path(hex))
    }

    fn has_blob(&self, repository: &str, hex: &str) -> bool {
        Self::exists(&self.layer_link(repository, hex)) && Self::exists(&self.blob_path(hex))
    }

    fn read_tag(&self, repository: &str, tag: &str) -> Result<Option<String>> {
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
    fn tag_time(&self, repository: &str, tag: &str) -> u128 {
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

    /// Resolves a tag or digest to a digest linked into `repository`.
    fn resolve(&self, repository: &str, reference: &str) -> Result<String> {
        let unknown = || StorageError::ManifestUnknown {
            repository: repository.to_string(),
            reference: reference.to_string(),
        };
        let digest = if is_digest(reference) {
            digest_hex(reference)?;
            reference.to_string()
        } else {
            validate_tag(reference)?;
            self.read_tag(repository, reference)?.ok_or_else(unknown)?
        };
        let hex = digest_hex(&digest)?;
        if !self.has_manifest(repository, hex) {
            return Err(unknown());
        }
        Ok(digest)
    }

    /// Reads a manifest by tag or digest. A reference that is neither a valid tag nor a
    /// supported digest names nothing here, so it is `ManifestUnknown` (the distribution spec
    /// allows only 404 for reads), never `TAG_INVALID`/`DIGEST_INVALID`.
    pub fn get_manifest(&self, repository: &str, reference: &str) -> Result<StoredManifest> {
        let digest = self.resolve(repository, reference).map_err(|e| match e {
            StorageError::TagInvalid { .. } | StorageError::DigestInvalid { .. } => {
                StorageError::ManifestUnknown {
                    repository: repository.to_string(),
                    reference: truncate(reference, 140),
                }
            }
            other => other,
        })?;
        let hex = digest_hex(&digest)?;
        let link_path = self.revision_link(repository, hex);
        let link: RevisionLink = read_json(&link_path)?;
        let path = self.blob_path(hex);
        let body = fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StorageError::ManifestUnknown {
                    repository: repository.to_string(),
                    reference: reference.to_string(),
                }
            } else {
                StorageError::io("reading a manifest", &path, e)
            }
        })?;
        Ok(StoredManifest {
            digest,
            media_type: link.media_type,
            body: Bytes::from(body),
        })
    }

    /// Stores a manifest under a tag or digest reference. Refuses it when anything it
    /// references is missing from `repository`, when the digest reference does not match
    /// the body, or when it would move an immutable tag.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<PutManifest> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(StorageError::ManifestTooLarge {
                size: body.len(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let tag = if is_digest(reference) {
            digest_hex(reference)?;
            None
        } else {
            validate_tag(reference)?;
            Some(reference)
        };
        let digest = sha256_digest(body);
        if tag.is_none() && digest != reference {
            return Err(StorageError::DigestMismatch {
                expected: reference.to_string(),
                actual: digest,
            });
        }
        let doc = LooseManifest::parse(body)?;
        let media_type = match content_type.map(str::trim) {
            Some(ct) if !ct.is_empty() && ct != "application/octet-stream" => ct.to_string(),
            _ => doc.media_type.clone().unwrap_or_else(|| {
                if doc.manifests.is_empty() {
                    OCI_MANIFEST.to_string()
                } else {
                    OCI_INDEX.to_string()
                }
            }),
        };
        if let Some(declared) = &doc.media_type {
            if *declared != media_type {
                return Err(StorageError::ManifestInvalid(format!(
                    "Content-Type {media_type} does not match the manifest's mediaType {declared}; send them equal"
                )));
            }
        }

        let _gc = read_lock(&self.inner.gc_lock);
        for child in &doc.manifests {
            let hex = digest_hex(&child.digest)?;
            if !self.has_manifest(repository, hex) {
                return Err(StorageError::ManifestBlobUnknown {
                    repository: repository.to_string(),
                    digest: child.digest.clone(),
                });
            }
            // What a grant, GC or retention could not walk is refused here, not cut short there.
            let child_depth = self.index_depth(repository, hex);
            if child_depth.is_none_or(|d| d >= MAX_INDEX_DEPTH) {
                return Err(StorageError::ManifestInvalid(format!(
                    "this index would nest more than {MAX_INDEX_DEPTH} levels deep (its child {} nests {}); a sync grant could not serve it: flatten the index",
                    child.digest,
                    child_depth.map_or_else(|| format!("more than {MAX_INDEX_DEPTH}"), |d| d.to_string()),
                )));
            }
        }
        for blob in doc.config.iter().chain(&doc.layers) {
            let hex = digest_hex(&blob.digest)?;
            // Non-distributable layers live elsewhere (their `urls`); they are not required.
            if !blob.urls.is_empty() {
                continue;
            }
            if !self.has_blob(repository, hex) {
                return Err(StorageError::ManifestBlobUnknown {
                    repository: repository.to_string(),
                    digest: blob.digest.clone(),
                });
            }
        }

        let hex = digest_hex(&digest)?.to_string();
        let blob_path = self.blob_path(&hex);
        if Self::exists(&blob_path) {
            touch(&blob_path);
        } else {
            self.atomic_write(&blob_path, body)?;
        }
        let link = serde_json::to_vec(&RevisionLink {
            media_type: media_type.clone(),
        })
        .map_err(|e| StorageError::ManifestInvalid(e.to_string()))?;
        self.atomic_write(&self.revision_link(repository, &hex), &link)?;
        // A manifest (re)appearing can complete a closure computed while it was missing.
        self.inner.closures.invalidate();

        let subject = match &doc.subject {
            Some(subject) => {
                let subject_hex = digest_hex(&subject.digest)?;
                let descriptor = referrer_descriptor(&doc, &media_type, &digest, body.len());
                let bytes = serde_json::to_vec(&descriptor)
                    .map_err(|e| StorageError::ManifestInvalid(e.to_string()))?;
                self.atomic_write(
                    &self.referrers_dir(repository, subject_hex).join(&hex),
                    &bytes,
                )?;
                Some(subject.digest.clone())
            }
            None => None,
        };

        if let Some(tag) = tag {
            // Written last: the tag only ever names a manifest that is fully present.
            let _tags = mutex(&self.inner.tag_lock);
            if let Some(existing) = self.read_tag(repository, tag)? {
                if existing != digest && self.is_immutable(repository) {
                    return Err(StorageError::TagImmutable {
                        repository: repository.to_string(),
                        tag: tag.to_string(),
                        existing,
                    });
                }
                if existing == digest {
                    return Ok(PutManifest { digest, subject });
                }
            }
            // Line 2 is the write time in ns: file mtimes can be too coarse to order tags.
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let record = format!("{digest}\n{nanos}\n");
            self.atomic_write(&self.tag_path(repository, tag), record.as_bytes())?;
        }
        Ok(PutManifest { digest, subject })
    }

    /// Deletes a tag (when `reference` is a tag) or a manifest and every tag pointing at it
    /// (when it is a digest). Content stays until GC.
    pub fn delete_manifest(&self, repository: &str, reference: &str) -> Result<()> {
        let _gc = read_lock(&self.inner.gc_lock);
        if !is_digest(reference) {
            validate_tag(reference)?;
            let _tags = mutex(&self.inner.tag_lock);
            if !Self::remove_if_exists(&self.tag_path(repository, reference))? {
                return Err(StorageError::ManifestUnknown {
                    repository: repository.to_string(),
                    reference: reference.to_string(),
                });
            }
            return Ok(());
        }
        let hex = digest_hex(reference)?.to_string();
        if !Self::exists(&self.revision_link(repository, &hex)) {
            return Err(StorageError::ManifestUnknown {
                repository: repository.to_string(),
                reference: reference.to_string(),
            });
        }
        self.unlink_manifest(repository, &hex)
    }

    /// Removes a manifest's revision link, the tags naming it and its referrer record.
    fn unlink_manifest(&self, repository: &str, hex: &str) -> Result<()> {
        let digest = format!("sha256:{hex}");
        {
            let _tags = mutex(&self.inner.tag_lock);
            for tag in self.list_tags_unchecked(repository)? {
                if self.read_tag(repository, &tag)?.as_deref() == Some(digest.as_str()) {
                    Self::remove_if_exists(&self.tag_path(repository, &tag))?;
                }
            }
        }
        if let Ok(body) = fs::read(self.blob_path(hex)) {
            if let Ok(doc) = serde_json::from_slice::<LooseManifest>(&body) {
                if let Some(subject) = doc.subject {
                    if let Ok(subject_hex) = digest_hex(&subject.digest) {
                        Self::remove_if_exists(
                            &self.referrers_dir(repository, subject_hex).join(hex),
                        )?;
                    }
                }
            }
        }
        Self::remove_if_exists(&self.revision_link(repository, hex))?;
        self.inner.closures.invalidate();
        Ok(())
    }

    /// The manifests `hex` lists under `manifests` (an index's children), if it is a manifest
    /// of `repository`.
    fn child_manifests(&self, repository: &str, hex: &str) -> Vec<String> {
        if !self.has_manifest(repository, hex) {
            return Vec::new();
        }
        fs::read(self.blob_path(hex))
            .ok()
            .and_then(|body| serde_json::from_slice::<LooseManifest>(&body).ok())
            .map(|doc| doc.manifests.into_iter().map(|d| d.digest).collect())
            .unwrap_or_default()
    }

    /// How deep manifest `hex` nests (0 for an image manifest, 1 for an index of image
    /// manifests, ...), or `None` when deeper than [`MAX_INDEX_DEPTH`]. Walks level by level,
    /// each level a set, so a shared child is read once per level and the longest path counts.
    fn index_depth(&self, repository: &str, hex: &str) -> Option<usize> {
        let mut level: HashSet<String> = HashSet::from([hex.to_string()]);
        for depth in 0..=MAX_INDEX_DEPTH {
            let next: HashSet<String> = level
                .iter()
                .flat_map(|h| self.child_manifests(repository, h))
                .filter_map(|d| digest_hex(&d).ok().map(str::to_string))
                .collect();
            if next.is_empty() {
                return Some(depth);
            }
            level = next;
        }
        None
    }

    /// Direct references of a manifest stored in `repository` (children, config, layers).
    fn direct_references(&self, repository: &str, hex: &str) -> Option<Vec<String>> {
        if !self.has_manifest(repository, hex) {
            return None;
        }
        let body = fs::read(self.blob_path(hex)).ok()?;
        let doc = serde_json::from_slice::<LooseManifest>(&body).ok()?;
        Some(doc.references().map(|d| d.digest.clone()).collect())
    }

    /// All digests reachable from `digest` in `repository` (excluding `digest` itself).
    fn closure(&self, repository: &str, digest: &str) -> Option<Vec<String>> {
        let hex = digest_hex(digest).ok()?;
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![(self.direct_references(repository, hex)?, 0usize)];
        while let Some((refs, depth)) = stack.pop() {
            for r in refs {
                if !seen.insert(r.clone()) {
                    continue;
                }
                out.push(r.clone());
                // Manifests at levels 1..=MAX_INDEX_DEPTH are expanded: the deepest one a PUT
                // accepts, so nothing accepted is ever cut short.
                if depth < MAX_INDEX_DEPTH {
                    if let Ok(h) = digest_hex(&r) {
                        if let Some(children) = self.direct_references(repository, h) {
                            stack.push((children, depth + 1));
                        }
                    }
                }
            }
        }
        Some(out)
    }

    // ---- listings ---------------------------------------------------------------------------

    /// Does `repository` exist (has any blob or manifest link)?
    pub fn repository_exists(&self, repository: &str) -> bool {
        let dir = self.repo_dir(repository);
        dir.join("_manifests").is_dir() || dir.join("_layers").is_dir()
    }

    fn list_tags_unchecked(&self, repository: &str) -> Result<Vec<String>> {
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

    // ---- garbage collection and retention -----------------------------------------------------

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
}

impl Storage {
    /// [`Storage::gc`] on a blocking thread, for async callers.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport> {
        let storage = self.clone();
        tokio::task::spawn_blocking(move || storage.gc(grace))
            .await
            .map_err(|e| StorageError::UploadInvalid(format!("gc task failed: {e}")))?
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

impl GraphLookup for Storage {
    /// Served from the closure cache; a miss walks the graph (blocking: the server calls the
    /// authorizer on a blocking thread).
    fn manifest_references(&self, repository: &str, manifest_digest: &str) -> Option<Vec<String>> {
        self.inner
            .closures
            .get_or_compute(repository, manifest_digest, || {
                self.closure(repository, manifest_digest)
            })
    }

    fn resolve_tag(&self, repository: &str, tag: &str) -> Option<String> {
        validate_tag(tag).ok()?;
        self.read_tag(repository, tag).ok().flatten()
    }
}

fn referrer_descriptor(doc: &LooseManifest, media_type: &str, digest: &str, size: usize) -> Value {
    let artifact_type = doc.artifact_type.clone().or_else(|| {
        doc.config
            .as_ref()
            .map(|c| c.media_type.clone())
            .filter(|m| !m.is_empty())
    });
    let mut d = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
    });
    if let Some(at) = artifact_type {
        d["artifactType"] = Value::String(at);
    }
    if let Some(annotations) = &doc.annotations {
        if !annotations.is_empty() {
            d["annotations"] = serde_json::json!(annotations);
        }
    }
    d
}

async fn write_stream<S, E>(
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
    mut body: S,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StorageError::BodyInterrupted(e.to_string()))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| StorageError::io("writing an upload", PathBuf::from("uploads"), e))?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| StorageError::io("reading metadata", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn list_hex_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing a directory", dir, e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect())
}

/// The length of the inclusive byte range `start..=end`, or `None` when `end < start` or the
/// length does not fit in a u64 (`0-18446744073709551615`). Every client-supplied range goes
/// through here.
pub fn range_len(start: u64, end: u64) -> Option<u64> {
    end.checked_sub(start)?.checked_add(1)
}

/// Options that create a file readable and writable by the registry's user only.
fn private_file_options() -> fs::OpenOptions {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts
}

/// Creates `path` and its missing parents with mode 0700 (registry state is for the registry's
/// user only). The one way every part of the registry creates a directory.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// [`create_private_dir`] with a storage error.
fn create_storage_dir(path: &Path) -> Result<()> {
    create_private_dir(path).map_err(|e| StorageError::io("creating a directory", path, e))
}

/// Sets an existing directory's mode to 0700.
fn set_private_dir_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| StorageError::io("making the storage root private", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Opens an upload file for writing at `offset`, cutting off anything past it (bytes an
/// interrupted request wrote but never committed). Creates the file (0600) only at offset 0:
/// a session whose file vanished cannot silently continue.
async fn open_upload_at(path: &Path, offset: u64) -> Result<tokio::fs::File> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(offset == 0);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts
        .open(path)
        .await
        .map_err(|e| StorageError::io("opening an upload file", path, e))?;
    file.set_len(offset)
        .await
        .map_err(|e| StorageError::io("truncating an upload file", path, e))?;
    tokio::io::AsyncSeekExt::seek(&mut file, io::SeekFrom::Start(offset))
        .await
        .map_err(|e| StorageError::io("seeking in an upload file", path, e))?;
    Ok(file)
}

/// Refreshes a file's mtime (GC grace starts again). Best effort.
fn touch(path: &Path) {
    if let Ok(file) = fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// fsyncs a file's directory so the rename itself survives a crash. Best effort.
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["vendor/app", "installs/acme/app/web", "a", "a.b_c__d--e/f0"] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(300);
        for bad in [
            "",
            "../etc",
            "Upper",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "_a",
            "a-",
            "a/..",
            long.as_str(),
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_and_tags() {
        let d = sha256_digest(b"x");
        assert!(digest_hex(&d).is_ok());
        assert!(digest_hex("sha256:ABC").is_err());
        assert!(digest_hex("sha512:00").is_err());
        assert!(validate_tag("v1.0_rc-1").is_ok());
        assert!(validate_tag(".hidden").is_err());
        assert!(validate_tag("a/b").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(prefix_matches("installs/acme", "installs/acme/app"));
        assert!(prefix_matches("installs/acme", "installs/acme"));
        assert!(!prefix_matches("installs/acme", "installs/acme2/app"));
    }
}
