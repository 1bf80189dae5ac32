//! Shared packaging plumbing: walking a source tree in a stable order, hashing an archive as it
//! is written, and turning an archive file plus a config into a one-layer manifest in an OCI
//! layout.
//!
//! Archives are written to a temporary file and streamed into the layout from disk; this module
//! must never read a whole file or archive into memory, and never follow a symlink out of the
//! tree it packages.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_core::domain::Component;
use ferry_oci::media::{Descriptor, Manifest, OCI_MANIFEST};
use ferry_oci::{ByteStream, Digest as OciDigest, OciLayout};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::{io_err, BuildError};

/// The tag a build's manifest gets inside its private layout.
pub(crate) const LAYOUT_TAG: &str = "build";

/// One regular file of a source tree.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// Path relative to the tree root, with `/` separators.
    pub rel: String,
    pub abs: PathBuf,
    pub executable: bool,
}

/// Every regular file under `root`, sorted by relative path (bytewise), skipping what
/// `skip(rel, is_dir)` says. Symlinks and special files are refused: following them could
/// package files from outside the tree, and archives of them differ between tools.
pub(crate) fn collect_files(
    component: &Component,
    root: &Path,
    skip: &dyn Fn(&str, bool) -> bool,
) -> Result<Vec<SourceFile>, BuildError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(io_err("read directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let abs = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(BuildError::Unpackable {
                    component: component.name.to_string(),
                    path: abs,
                    reason: "its name is not valid UTF-8".into(),
                });
            };
            let rel = if rel_dir.is_empty() {
                name.to_string()
            } else {
                format!("{rel_dir}/{name}")
            };
            let meta = std::fs::symlink_metadata(&abs).map_err(io_err("stat", &abs))?;
            let ft = meta.file_type();
            if skip(&rel, ft.is_dir()) {
                continue;
            }
            if ft.is_dir() {
                stack.push((abs, rel));
            } else if ft.is_file() {
                out.push(SourceFile {
                    rel,
                    abs,
                    executable: is_executable(&meta),
                });
            } else {
                let reason = if ft.is_symlink() {
                    "it is a symlink; replace it with the file it points to"
                } else {
                    "it is not a regular file or directory"
                };
                return Err(BuildError::Unpackable {
                    component: component.name.to_string(),
                    path: abs,
                    reason: reason.into(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Counts and hashes what passes through, so an archive's digest is known when it is closed.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and size of everything written, and the inner writer.
    pub fn finish(self) -> (OciDigest, u64, W) {
        let hex = hex::encode(self.hasher.finalize());
        let digest = match format!("sha256:{hex}").parse::<OciDigest>() {
            Ok(d) => d,
            // A sha256 hex string always parses; keep a non-panicking fallback regardless.
            Err(_) => OciDigest::of(b""),
        };
        (digest, self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a file from disk into the layout as a blob (verified there against `digest`).
pub(crate) async fn add_file_blob(
    layout: &OciLayout,
    path: &Path,
    digest: &OciDigest,
    size: u64,
) -> Result<(), ferry_oci::Error> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| ferry_oci::Error::Io {
            step: ferry_oci::Step::ReadLayout,
            path: path.display().to_string(),
            source,
        })?;
    let shown = path.display().to_string();
    let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::new(file).map(move |r| {
        r.map_err(|source| ferry_oci::Error::Io {
            step: ferry_oci::Step::ReadLayout,
            path: shown.clone(),
            source,
        })
    }));
    layout.write_blob(digest, size, body).await
}

/// Writes a small in-memory blob (a config) and returns its descriptor.
pub(crate) async fn add_small_blob(
    layout: &OciLayout,
    media_type: &str,
    bytes: Vec<u8>,
) -> Result<Descriptor, ferry_oci::Error> {
    let digest = OciDigest::of(&bytes);
    let size = bytes.len() as u64;
    let body: ByteStream = Box::pin(futures::stream::iter([Ok(Bytes::from(bytes))]));
    layout.write_blob(&digest, size, body).await?;
    Ok(descriptor(media_type, digest, size))
}

pub(crate) fn descriptor(media_type: &str, digest: OciDigest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    }
}

/// An image manifest as written: field order is fixed so the bytes (and the digest) are too.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// Writes an image manifest over `config` and `layers` and tags it [`LAYOUT_TAG`].
pub(crate) async fn write_manifest(
    layout: &OciLayout,
    artifact_type: Option<&str>,
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Result<Manifest, ferry_oci::Error> {
    let manifest = put_manifest(layout, artifact_type, config, layers, annotations).await?;
    layout.tag(Some(LAYOUT_TAG), &manifest.descriptor()).await?;
    Ok(manifest)
}

/// Writes an image manifest over `config` and `layers` into the layout, untagged (the child
/// of an index is reached through the index).
pub(crate) async fn put_manifest(
    layout: &OciLayout,
    artifact_type: Option<&str>,
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Result<Manifest, ferry_oci::Error> {
    let shape = ImageManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        artifact_type,
        config,
        layers,
        annotations,
    };
    let bytes = serde_json::to_vec(&shape).map_err(|e| ferry_oci::Error::InvalidManifest {
        target: "new manifest".into(),
        reason: format!("cannot encode: {e}"),
    })?;
    let manifest = Manifest::from_bytes(Bytes::from(bytes), OCI_MANIFEST)?;
    layout.write_manifest(&manifest).await?;
    Ok(manifest)
}

/// Runs blocking packaging work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Config(format!("packaging task failed: {e}")))?
}
