//! An OCI image layout on disk (image-spec `image-layout.md`): `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`, readable by skopeo and others.
//!
//! Writes are atomic: a blob goes to a temporary file in the layout, is verified and fsynced,
//! then renamed; `index.json` is replaced the same way. It must never leave a partial blob
//! under its final name, and never tag a manifest whose references are not all present.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::Result;
use crate::media::{Descriptor, Manifest};
use crate::ByteStream;

#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout, checking `oci-layout`.
    pub async fn open(_dir: &Path) -> Result<Self> {
        todo!()
    }

    /// Opens a layout, creating the directory, `oci-layout` and an empty `index.json` if absent.
    pub async fn create(_dir: &Path) -> Result<Self> {
        todo!()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The descriptor `index.json` lists for a tag (`org.opencontainers.image.ref.name`), or
    /// the only manifest when `tag` is `None` and there is exactly one.
    pub async fn resolve(&self, _tag: Option<&str>) -> Result<Descriptor> {
        todo!()
    }

    pub async fn has_blob(&self, _digest: &Digest) -> Result<Option<u64>> {
        todo!()
    }

    /// A blob's bytes as a stream (unverified; the engine verifies).
    pub async fn read_blob(&self, _digest: &Digest) -> Result<ByteStream> {
        todo!()
    }

    /// A manifest, verified against its digest.
    pub async fn read_manifest(&self, _digest: &Digest, _media_type: &str) -> Result<Manifest> {
        todo!()
    }

    /// Streams a blob in, verifying digest and size before it becomes visible.
    pub async fn write_blob(&self, _digest: &Digest, _size: u64, _body: ByteStream) -> Result<()> {
        todo!()
    }

    pub async fn write_manifest(&self, _manifest: &Manifest) -> Result<()> {
        todo!()
    }

    /// Points `tag` (or no tag) at `descriptor` in `index.json`, replacing an older entry
    /// for the same tag.
    pub async fn tag(&self, _tag: Option<&str>, _descriptor: &Descriptor) -> Result<()> {
        todo!()
    }

    /// The referrers of `digest` found in the layout (manifests whose `subject` is it).
    pub async fn referrers(&self, _digest: &Digest) -> Result<Vec<Descriptor>> {
        todo!()
    }
}
