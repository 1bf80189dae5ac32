//! The resolved manifest graph of one copy: manifests in write order (children first,
//! referrers after their subjects), unique blobs with their sizes, and platform selection.
//!
//! It only reads from the source; it must never write anywhere.

use std::collections::{BTreeMap, HashSet};

use super::endpoint::Endpoint;
use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::media::{is_manifest_type, Descriptor, Manifest, Platform};

pub(super) fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

pub(super) async fn select_platform(
    src: &Endpoint,
    index: &Manifest,
    want: &Platform,
) -> Result<Manifest> {
    let refs = index.references()?;
    if let Some(desc) = refs
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
    {
        return src.manifest(desc).await;
    }
    let available: Vec<String> = refs
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(platform_name))
        .collect();
    Err(Error::NotFound {
        step: Step::GetManifest,
        target: format!(
            "platform {} in {}@{} (available: {})",
            platform_name(want),
            src.name(),
            index.digest,
            if available.is_empty() {
                "none listed".to_string()
            } else {
                available.join(", ")
            }
        ),
    })
}

/// The resolved graph of one copy.
#[derive(Default)]
pub(super) struct Graph {
    /// Write order: children before parents, referrers after their subjects.
    pub(super) manifests: Vec<Manifest>,
    pub(super) seen: HashSet<Digest>,
    /// Unique blobs and their sizes.
    pub(super) blobs: BTreeMap<Digest, u64>,
    /// Each copied referrer's source descriptor, by its subject.
    pub(super) referrers: Vec<(Digest, Descriptor)>,
}

impl Graph {
    pub(super) fn add_blob(&mut self, owner: &Manifest, d: &Descriptor) -> Result<()> {
        match self.blobs.get(&d.digest) {
            Some(size) if *size != d.size => Err(Error::InvalidManifest {
                target: owner.digest.to_string(),
                reason: format!(
                    "blob {} is listed with sizes {size} and {}",
                    d.digest, d.size
                ),
            }),
            _ => {
                self.blobs.insert(d.digest.clone(), d.size);
                Ok(())
            }
        }
    }

    /// Adds `top` and everything below it, in post-order.
    pub(super) async fn add_tree(&mut self, src: &Endpoint, top: Manifest) -> Result<()> {
        let mut stack = vec![(top, false)];
        while let Some((m, expanded)) = stack.pop() {
            if self.seen.contains(&m.digest) {
                continue;
            }
            if expanded {
                self.seen.insert(m.digest.clone());
                self.manifests.push(m);
                continue;
            }
            let refs = m.references()?;
            if let Some(c) = &refs.config {
                self.add_blob(&m, c)?;
            }
            for l in &refs.layers {
                self.add_blob(&m, l)?;
            }
            let mut children = Vec::new();
            for child in &refs.manifests {
                if !is_manifest_type(&child.media_type) {
                    // Not a manifest (an index may list plain blobs): copy it as a blob.
                    self.add_blob(&m, child)?;
                } else if !self.seen.contains(&child.digest) {
                    children.push(src.manifest(child).await?);
                }
            }
            stack.push((m, true));
            // Reversed so the first child is written first.
            stack.extend(children.into_iter().rev().map(|c| (c, false)));
        }
        Ok(())
    }

    /// Adds the referrers of every manifest in the graph, and theirs, after their subjects.
    pub(super) async fn add_referrers(&mut self, src: &Endpoint) -> Result<()> {
        let mut i = 0;
        while i < self.manifests.len() {
            let subject = self.manifests[i].digest.clone();
            for desc in src.referrers(&subject).await? {
                if self.seen.contains(&desc.digest) {
                    continue;
                }
                let m = src.manifest(&desc).await?;
                self.referrers.push((subject.clone(), desc.clone()));
                self.add_tree(src, m).await?;
            }
            i += 1;
        }
        Ok(())
    }
}
