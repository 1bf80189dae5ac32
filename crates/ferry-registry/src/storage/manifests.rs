//! Manifests: resolve, read, put (every reference present, nesting bounded, tag written
//! last), delete, and the reference graph a grant, GC and retention walk. It must never accept
//! a manifest whose references are missing or that nests deeper than [`MAX_INDEX_DEPTH`], and
//! never point a tag at a manifest that is not fully present.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::time::SystemTime;

use bytes::Bytes;

use ferry_spec::{is_digest_reference as is_digest, ManifestDoc};

use super::document::{referrer_descriptor, RevisionLink};
use super::files::{read_json, touch};
use super::names::{digest_hex, sha256_digest, truncate, validate_tag};
use super::{
    mutex, read_lock, PutManifest, Result, Storage, StoredManifest, MAX_MANIFEST_BYTES, OCI_INDEX,
    OCI_MANIFEST,
};
use crate::authz::GraphLookup;
use crate::errors::StorageError;
use crate::limits::MAX_INDEX_DEPTH;

impl Storage {
    pub(super) fn has_manifest(&self, repository: &str, hex: &str) -> bool {
        Self::exists(&self.revision_link(repository, hex)) && Self::exists(&self.blob_path(hex))
    }

    pub(super) fn has_blob(&self, repository: &str, hex: &str) -> bool {
        Self::exists(&self.layer_link(repository, hex)) && Self::exists(&self.blob_path(hex))
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
        let (tag, digest) = checked_reference(reference, body)?;
        let doc =
            ManifestDoc::parse_strict(body).map_err(|e| StorageError::ManifestInvalid(e.reason))?;
        let media_type = media_type_of(&doc, content_type)?;

        let _gc = read_lock(&self.inner.gc_lock);
        self.check_references(repository, &doc)?;

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
                let descriptor = referrer_descriptor(&doc, &media_type, &digest, body.len());
                let bytes = serde_json::to_vec(&descriptor)
                    .map_err(|e| StorageError::ManifestInvalid(e.to_string()))?;
                self.atomic_write(
                    &self
                        .referrers_dir(repository, subject.digest.hex())
                        .join(&hex),
                    &bytes,
                )?;
                Some(subject.digest.to_string())
            }
            None => None,
        };

        if let Some(tag) = tag {
            // Written last: the tag only ever names a manifest that is fully present.
            self.point_tag(repository, tag, &digest)?;
        }
        Ok(PutManifest { digest, subject })
    }

    /// Refuses a manifest that references anything missing from `repository`, or an index
    /// nested deeper than a grant, GC or retention could walk. Called under the GC lock.
    fn check_references(&self, repository: &str, doc: &ManifestDoc) -> Result<()> {
        for child in &doc.manifests {
            let hex = child.digest.hex();
            if !self.has_manifest(repository, hex) {
                return Err(StorageError::ManifestBlobUnknown {
                    repository: repository.to_string(),
                    digest: child.digest.to_string(),
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
            // Non-distributable layers live elsewhere (their `urls`); they are not required.
            if doc.is_foreign(&blob.digest) {
                continue;
            }
            if !self.has_blob(repository, blob.digest.hex()) {
                return Err(StorageError::ManifestBlobUnknown {
                    repository: repository.to_string(),
                    digest: blob.digest.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Points `tag` at `digest`, unless it already does; refuses to move an immutable tag.
    fn point_tag(&self, repository: &str, tag: &str, digest: &str) -> Result<()> {
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
                return Ok(());
            }
        }
        // Line 2 is the write time in ns: file mtimes can be too coarse to order tags.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let record = format!("{digest}\n{nanos}\n");
        self.atomic_write(&self.tag_path(repository, tag), record.as_bytes())
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
    pub(super) fn unlink_manifest(&self, repository: &str, hex: &str) -> Result<()> {
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
            if let Ok(doc) = ManifestDoc::parse(&body) {
                if let Some(subject) = doc.subject {
                    Self::remove_if_exists(
                        &self
                            .referrers_dir(repository, subject.digest.hex())
                            .join(hex),
                    )?;
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
            .and_then(|body| ManifestDoc::parse(&body).ok())
            .map(|doc| {
                doc.manifests
                    .into_iter()
                    .map(|d| d.digest.to_string())
                    .collect()
            })
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
        let doc = ManifestDoc::parse(&body).ok()?;
        Some(doc.references().map(|d| d.digest.to_string()).collect())
    }

    /// All digests reachable from `digest` in `repository` (excluding `digest` itself).
    pub(super) fn closure(&self, repository: &str, digest: &str) -> Option<Vec<String>> {
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

    fn referrers_of(&self, repository: &str, digest: &str, limit: usize) -> Vec<String> {
        // Bounded read: descriptors are well under 4 KiB each.
        self.referrers_page(repository, digest, None, None, limit.saturating_mul(4096))
            .map(|(page, _)| page)
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d.get("digest").and_then(serde_json::Value::as_str))
            .take(limit)
            .map(str::to_string)
            .collect()
    }
}

/// Checks a manifest PUT's size and reference: the tag to write (`None` for a digest
/// reference), and the body's digest, which a digest reference must equal.
fn checked_reference<'r>(reference: &'r str, body: &[u8]) -> Result<(Option<&'r str>, String)> {
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
    Ok((tag, digest))
}

/// The media type a manifest is stored with: the request's Content-Type, else the body's
/// `mediaType`, else guessed from its shape; refused when Content-Type and `mediaType` differ.
fn media_type_of(doc: &ManifestDoc, content_type: Option<&str>) -> Result<String> {
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
    Ok(media_type)
}
