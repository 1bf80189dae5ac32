//! A copy's source or destination, registry or OCI layout, behind one set of methods, and
//! what a destination already holds of the root (the warm check).
//!
//! It must never write a manifest without checking the digest the destination answers with.

use crate::client::RegistryClient;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::OciLayout;
use crate::media::{Descriptor, Manifest};
use crate::reference::{LayoutRef, RegistryRef};
use crate::ByteStream;

/// What a destination already holds of the root, found before any blob is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// The root, under the wanted tag (or no tag is wanted): nothing to do.
    Tagged,
    /// The root by digest, but not the tag: only the tag is written.
    Present,
    /// Checked: neither the root nor the tag on it. The graph is copied, and the root and
    /// the tag are written without asking again.
    Absent,
    /// Not checked (a layout, or referrers are copied too): the full graph is checked and
    /// copied.
    Missing,
}

/// A source or destination: both kinds go through the same code path.
#[derive(Clone)]
pub(super) enum Endpoint {
    Registry {
        client: RegistryClient,
        r: RegistryRef,
    },
    Layout {
        layout: OciLayout,
        r: LayoutRef,
    },
}

impl Endpoint {
    pub(super) fn name(&self) -> String {
        match self {
            Endpoint::Registry { r, .. } => r.to_string(),
            Endpoint::Layout { r, .. } => r.to_string(),
        }
    }

    /// The key concurrency is bounded by: a registry host, or a layout directory.
    pub(super) fn host_key(&self) -> String {
        match self {
            Endpoint::Registry { r, .. } => format!("registry {}", r.repo.registry),
            Endpoint::Layout { r, .. } => format!("layout {}", r.dir.display()),
        }
    }

    pub(super) fn tag(&self) -> Option<&str> {
        match self {
            Endpoint::Registry { r, .. } => r.tag.as_deref(),
            Endpoint::Layout { r, .. } => r.tag.as_deref(),
        }
    }

    pub(super) fn digest(&self) -> Option<&Digest> {
        match self {
            Endpoint::Registry { r, .. } => r.digest.as_ref(),
            Endpoint::Layout { r, .. } => r.digest.as_ref(),
        }
    }

    pub(super) async fn root_manifest(&self) -> Result<Manifest> {
        match self {
            Endpoint::Registry { client, r } => client.get_manifest(&r.repo, &r.reference()).await,
            Endpoint::Layout { layout, r } => match &r.digest {
                Some(d) => layout.read_manifest(d, "").await,
                None => {
                    let desc = layout.resolve(r.tag.as_deref()).await?;
                    layout.read_manifest(&desc.digest, &desc.media_type).await
                }
            },
        }
    }

    /// A manifest by descriptor, verified against the descriptor's digest.
    pub(super) async fn manifest(&self, desc: &Descriptor) -> Result<Manifest> {
        let m = match self {
            Endpoint::Registry { client, r } => {
                client.get_manifest(&r.repo, desc.digest.as_str()).await?
            }
            Endpoint::Layout { layout, .. } => {
                layout.read_manifest(&desc.digest, &desc.media_type).await?
            }
        };
        if m.digest != desc.digest {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                actual: m.digest,
            });
        }
        Ok(m)
    }

    pub(super) async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>> {
        match self {
            Endpoint::Registry { client, r } => client.referrers(&r.repo, digest).await,
            Endpoint::Layout { layout, .. } => layout.referrers(digest).await,
        }
    }

    pub(super) async fn has_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        match self {
            Endpoint::Registry { client, r } => client.blob_exists(&r.repo, digest).await,
            Endpoint::Layout { layout, .. } => layout.has_blob(digest).await,
        }
    }

    pub(super) async fn open_blob(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        match self {
            Endpoint::Registry { client, r } => client.get_blob(&r.repo, digest, Some(size)).await,
            Endpoint::Layout { layout, .. } => layout.read_blob(digest).await,
        }
    }

    pub(super) async fn write_blob(
        &self,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        match self {
            Endpoint::Registry { client, r } => {
                client.upload_blob(&r.repo, digest, size, body).await
            }
            Endpoint::Layout { layout, .. } => layout.write_blob(digest, size, body).await,
        }
    }

    pub(super) async fn has_manifest(&self, digest: &Digest) -> Result<bool> {
        match self {
            Endpoint::Registry { client, r } => Ok(client
                .head_manifest(&r.repo, digest.as_str())
                .await?
                .is_some_and(|d| &d.digest == digest)),
            Endpoint::Layout { layout, .. } => Ok(layout.has_blob(digest).await?.is_some()),
        }
    }

    /// The warm check. A registry accepts a manifest only once everything it references is
    /// present (and Ferry writes children first), so holding the root by digest means
    /// holding its whole graph: one or two HEADs instead of one per blob and manifest.
    /// Layouts are cheap to check file by file, so they always take the full path.
    pub(super) async fn holds_root(&self, root: &Digest, tag: Option<&str>) -> Result<Held> {
        let Endpoint::Registry { client, r } = self else {
            return Ok(Held::Missing);
        };
        if let Some(tag) = tag {
            if let Some(existing) = client.head_manifest(&r.repo, tag).await? {
                if &existing.digest == root {
                    return Ok(Held::Tagged);
                }
            }
        }
        let present = client
            .head_manifest(&r.repo, root.as_str())
            .await?
            .is_some_and(|d| &d.digest == root);
        Ok(match (present, tag) {
            (false, _) => Held::Absent,
            (true, Some(_)) => Held::Present,
            (true, None) => Held::Tagged,
        })
    }

    pub(super) async fn put_manifest(&self, m: &Manifest) -> Result<()> {
        match self {
            Endpoint::Registry { client, r } => {
                let got = client.put_manifest(&r.repo, m.digest.as_str(), m).await?;
                check_put_digest(m, got)
            }
            Endpoint::Layout { layout, .. } => layout.write_manifest(m).await,
        }
    }

    /// Points `tag` at the root. Returns whether anything was written: an existing tag that
    /// already holds the digest is left alone, which is what makes immutable tags work.
    /// `checked`: the warm check already found the tag not on the root.
    pub(super) async fn put_tag(
        &self,
        tag: Option<&str>,
        root: &Manifest,
        checked: bool,
    ) -> Result<bool> {
        match self {
            Endpoint::Registry { client, r } => {
                let Some(tag) = tag else { return Ok(false) };
                let existing = if checked {
                    None
                } else {
                    client.head_manifest(&r.repo, tag).await?
                };
                if let Some(existing) = existing {
                    if existing.digest == root.digest {
                        return Ok(false);
                    }
                }
                let got = client.put_manifest(&r.repo, tag, root).await?;
                check_put_digest(root, got)?;
                Ok(true)
            }
            Endpoint::Layout { layout, .. } => {
                if let Some(t) = tag {
                    match layout.resolve(Some(t)).await {
                        Ok(existing) if existing.digest == root.digest => return Ok(false),
                        Ok(_) | Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                layout.tag(tag, &root.descriptor()).await?;
                Ok(true)
            }
        }
    }
}

pub(super) fn check_put_digest(m: &Manifest, got: Digest) -> Result<()> {
    if got != m.digest {
        return Err(Error::DigestMismatch {
            expected: m.digest.clone(),
            actual: got,
        });
    }
    Ok(())
}
