//! Writing manifests once every blob is in place: children first, then the root, the
//! referrers listing, and the tag last.
//!
//! It must never write the tag before everything it references is present and verified.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use super::endpoint::{Endpoint, Held};
use super::graph::Graph;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media::{Descriptor, Manifest, OCI_INDEX};
use crate::progress::{ProgressEvent, ProgressSink};

/// Writes, at every destination at once, what its warm check found missing: nothing, the
/// tag only, or the manifests and then the tag. Returns how many were written in all.
pub(super) async fn write_every_destination(
    dsts: &[Endpoint],
    tags: Vec<Option<String>>,
    held: Vec<Held>,
    graph: &Graph,
    root: &Manifest,
    progress: &dyn ProgressSink,
) -> Result<usize> {
    let jobs = dsts
        .iter()
        .zip(tags)
        .zip(held)
        .map(|((d, tag), h)| async move {
            match h {
                Held::Tagged => Ok(0),
                Held::Present => write_tag(d, root, tag, progress).await,
                Held::Absent => write_manifests(d, graph, root, tag, true, progress).await,
                Held::Missing => write_manifests(d, graph, root, tag, false, progress).await,
            }
        });
    Ok(futures::future::try_join_all(jobs).await?.into_iter().sum())
}

/// Writes every manifest a destination lacks, children first, then the tag. Returns how
/// many manifests (and tags) were written.
pub(super) async fn write_manifests(
    dst: &Endpoint,
    graph: &Graph,
    root: &Manifest,
    tag: Option<String>,
    root_absent: bool,
    progress: &dyn ProgressSink,
) -> Result<usize> {
    let mut written = 0;
    for m in &graph.manifests {
        // The warm check already found the root missing: no need to ask again.
        let known_absent = root_absent && m.digest == root.digest;
        if !known_absent && dst.has_manifest(&m.digest).await? {
            continue;
        }
        dst.put_manifest(m).await?;
        written += 1;
        progress.event(ProgressEvent::ManifestWritten {
            destination: dst.name(),
            digest: m.digest.clone(),
            tag: None,
        });
    }
    list_referrers(dst, graph).await?;
    // Last: the tag, now that everything it references is present and verified.
    if dst.put_tag(tag.as_deref(), root, root_absent).await? {
        written += 1;
        progress.event(ProgressEvent::ManifestWritten {
            destination: dst.name(),
            digest: root.digest.clone(),
            tag,
        });
    }
    Ok(written)
}

/// Points `tag` at a root the destination already holds; returns how many were written.
pub(super) async fn write_tag(
    dst: &Endpoint,
    root: &Manifest,
    tag: Option<String>,
    progress: &dyn ProgressSink,
) -> Result<usize> {
    // Only called after the warm check found the root without this tag.
    if !dst.put_tag(tag.as_deref(), root, true).await? {
        return Ok(0);
    }
    progress.event(ProgressEvent::ManifestWritten {
        destination: dst.name(),
        digest: root.digest.clone(),
        tag,
    });
    Ok(1)
}

/// Makes copied referrers discoverable at the destination: listed in a layout's
/// `index.json`, or, on a registry without the referrers API, in the `sha256-<hex>`
/// tag-schema index of their subject.
pub(super) async fn list_referrers(dst: &Endpoint, graph: &Graph) -> Result<()> {
    if graph.referrers.is_empty() {
        return Ok(());
    }
    match dst {
        Endpoint::Layout { layout, .. } => {
            for (_, desc) in &graph.referrers {
                layout.tag(None, desc).await?;
            }
            Ok(())
        }
        Endpoint::Registry { client, r } => {
            let mut by_subject: BTreeMap<&Digest, Vec<&Descriptor>> = BTreeMap::new();
            for (subject, desc) in &graph.referrers {
                by_subject.entry(subject).or_default().push(desc);
            }
            for (subject, descs) in by_subject {
                let listed: HashSet<Digest> = client
                    .referrers(&r.repo, subject)
                    .await?
                    .into_iter()
                    .map(|d| d.digest)
                    .collect();
                let missing: Vec<&Descriptor> = descs
                    .into_iter()
                    .filter(|d| !listed.contains(&d.digest))
                    .collect();
                if missing.is_empty() {
                    continue;
                }
                let tag = format!("{}-{}", subject.algorithm(), subject.hex());
                let existing = match client.get_manifest(&r.repo, &tag).await {
                    Ok(m) => Some(m),
                    Err(Error::NotFound { .. }) => None,
                    Err(Error::Registry { status: 404, .. }) => None,
                    Err(e) => return Err(e),
                };
                let index = fallback_index(existing.as_ref(), &missing)?;
                client.put_manifest(&r.repo, &tag, &index).await?;
            }
            Ok(())
        }
    }
}

/// The tag-schema referrers index with `add` appended to what `existing` lists.
pub(super) fn fallback_index(existing: Option<&Manifest>, add: &[&Descriptor]) -> Result<Manifest> {
    let mut index = match existing {
        Some(m) => serde_json::from_slice::<serde_json::Value>(&m.bytes).map_err(|e| {
            Error::InvalidManifest {
                target: m.digest.to_string(),
                reason: format!("referrers tag index is not JSON: {e}"),
            }
        })?,
        None => serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let list = index.as_object_mut().map(|o| {
        o.entry("manifests")
            .or_insert_with(|| serde_json::json!([]))
    });
    if let Some(serde_json::Value::Array(list)) = list {
        for d in add {
            let v = serde_json::to_value(d).map_err(|e| Error::InvalidManifest {
                target: d.digest.to_string(),
                reason: format!("cannot encode descriptor: {e}"),
            })?;
            list.push(v);
        }
    }
    let raw = serde_json::to_vec(&index).map_err(|e| Error::InvalidManifest {
        target: "referrers tag index".into(),
        reason: format!("cannot encode: {e}"),
    })?;
    Manifest::from_bytes(Bytes::from(raw), OCI_INDEX)
}
