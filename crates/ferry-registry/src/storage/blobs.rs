//! Blobs: size, streaming reads, unlink, cross-repository mounts, and committing a verified
//! upload into the content store. It must never make an unverified file visible.

use std::fs;
use std::io;
use std::path::Path;

use super::files::{sync_parent, touch};
use super::names::digest_hex;
use super::{read_lock, Result, Storage};
use crate::errors::StorageError;

impl Storage {
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

    pub(super) fn link_layer(&self, repository: &str, hex: &str) -> Result<()> {
        let link = self.layer_link(repository, hex);
        if Self::exists(&link) {
            return Ok(());
        }
        self.atomic_write(&link, format!("sha256:{hex}").as_bytes())
    }

    /// Moves a verified, fsynced upload file into the blob store and links it into
    /// `repository`. If the content already exists the upload is dropped and the existing
    /// file's mtime refreshed, so GC's grace period protects it until a manifest refers to it.
    pub(super) fn commit_blob(&self, repository: &str, upload: &Path, hex: &str) -> Result<()> {
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
}
