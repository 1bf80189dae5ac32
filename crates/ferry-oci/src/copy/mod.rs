//! The copy engine: resolves a source manifest graph and copies it, by digest, to one or
//! more destinations (registries or OCI layouts).
//!
//! Order is what makes a copy safe: blobs first (largest first, bounded per host), then child
//! manifests, then the root by digest, and the tag last, only once everything it references
//! is present and verified. An existing tag that already holds the digest is success.
//! Each source blob is read once however many destinations there are. It must never buffer
//! a blob, and never write a manifest after any verification failure.
//! See docs/design/copy-engine.md.
//!
//! This file holds the options, the report and the engine's top-level order. The parts:
//! [`endpoint`] (a source or destination of either kind, and the warm check), [`graph`]
//! (the manifest graph and platform selection), [`hosts`] (per-host transfer bounds),
//! [`blobs`] (scheduling, skip, mount, retry), [`fan_out`] (one verified read teed to every
//! destination) and [`manifests`] (children, root, referrers, tag last).

mod blobs;
mod endpoint;
mod fan_out;
mod graph;
mod hosts;
mod manifests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::RegistryClient;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::OciLayout;
use crate::media::{Manifest, Platform};
use crate::progress::{ProgressEvent, ProgressSink};
use crate::reference::Reference;
use crate::retry::RetryPolicy;

use blobs::{copy_blobs, skip_all_blobs};
use endpoint::{Endpoint, Held};
use graph::{select_platform, Graph};
use hosts::BlobCtx;
use manifests::write_every_destination;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy only this platform of an index (the root then becomes that child manifest).
    pub platform: Option<Platform>,
    /// Copy referrers (signatures, SBOMs, attestations) of every copied manifest too.
    pub referrers: bool,
    /// Concurrent blob transfers per registry host.
    pub max_per_host: usize,
    /// Tag to write at every destination; `None` means each destination's own tag, if any.
    pub tag_override: Option<String>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platform: None,
            referrers: false,
            max_per_host: 4,
            tag_override: None,
        }
    }
}

/// What a copy did, for the closing summary and for sync reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// The digest of the root that was copied (after platform selection).
    pub digest: Option<Digest>,
    pub media_type: String,
    pub manifests_written: usize,
    pub blobs_copied: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    /// Bytes read from the source (each blob once, whatever the fan-out).
    pub bytes_copied: u64,
    pub bytes_skipped: u64,
    #[serde(with = "duration_secs")]
    pub duration: Duration,
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

pub struct CopyEngine {
    client: Option<RegistryClient>,
    options: CopyOptions,
    retry: RetryPolicy,
}

impl CopyEngine {
    pub fn new(client: RegistryClient, options: CopyOptions) -> Self {
        CopyEngine {
            client: Some(client),
            options,
            retry: RetryPolicy::default(),
        }
    }

    /// An engine for OCI layouts only: a registry reference then fails with a clear error.
    pub fn layouts_only(options: CopyOptions) -> Self {
        CopyEngine {
            client: None,
            options,
            retry: RetryPolicy::default(),
        }
    }

    /// How failed blob transfers are retried (the source is re-opened for each attempt).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn options(&self) -> &CopyOptions {
        &self.options
    }

    /// Copies `source` to every destination. Returns when every destination holds the
    /// artifact (tagged, if a tag was named) or at the first failure, naming the reference,
    /// the step and the HTTP status.
    pub async fn copy(
        &self,
        source: &Reference,
        destinations: &[Reference],
        progress: Arc<dyn ProgressSink>,
    ) -> Result<CopyReport> {
        let started = Instant::now();
        if destinations.is_empty() {
            return Err(Error::Config(format!(
                "copy {source}: no destination given"
            )));
        }
        let src = self.open(source, false).await?;
        let mut dsts = Vec::with_capacity(destinations.len());
        for d in destinations {
            dsts.push(self.open(d, true).await?);
        }

        // 0. Warm by digest: a source named by digest, that every destination already holds
        // under its tag, needs nothing from the source at all (one HEAD per destination).
        let early = self.warm_by_digest(&src, &dsts).await?;
        if let Some((digest, held)) = &early {
            if held.iter().all(|h| *h == Held::Tagged) {
                return Ok(CopyReport {
                    digest: Some(digest.clone()),
                    duration: started.elapsed(),
                    ..CopyReport::default()
                });
            }
        }

        // 1. The root, narrowed to one platform if asked.
        let root = self.resolve_root(source, &src, &dsts).await?;
        // Each destination's tag, decided once: used by the warm check and written last.
        let tags: Vec<Option<String>> =
            dsts.iter().map(|d| self.destination_tag(&src, d)).collect();
        // 1b. Warm check: what each destination already holds of the root.
        let held = self.warm_check(&dsts, &tags, &root.digest, early).await?;

        // 2. The graph.
        let graph = self.plan(source, &src, &root, progress.as_ref()).await?;
        let mut report = CopyReport {
            digest: Some(root.digest.clone()),
            media_type: root.media_type.clone(),
            ..CopyReport::default()
        };

        // 3. Blobs, to the destinations that lack the root. Any failure returns here, before
        // a single manifest is written.
        let missing: Vec<Endpoint> = dsts
            .iter()
            .zip(&held)
            .filter(|(_, h)| matches!(h, Held::Absent | Held::Missing))
            .map(|(d, _)| d.clone())
            .collect();
        if missing.is_empty() {
            skip_all_blobs(&graph.blobs, progress.as_ref(), &mut report);
        } else {
            let ctx = Arc::new(BlobCtx::new(
                src.clone(),
                missing,
                self.options.max_per_host,
                self.retry.clone(),
                progress.clone(),
            ));
            copy_blobs(ctx, &graph.blobs, &mut report).await?;
        }

        // 5. Manifests, children first, then the tag, per destination.
        report.manifests_written +=
            write_every_destination(&dsts, tags, held, &graph, &root, progress.as_ref()).await?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// The source's root manifest, narrowed to the selected platform, checked against any
    /// digest a destination names.
    async fn resolve_root(
        &self,
        source: &Reference,
        src: &Endpoint,
        dsts: &[Endpoint],
    ) -> Result<Manifest> {
        let mut root = src.root_manifest().await?;
        if let Some(want) = &self.options.platform {
            if root.is_index() {
                root = select_platform(src, &root, want).await?;
            }
        }
        for d in dsts {
            if let Some(want) = d.digest() {
                if want != &root.digest {
                    return Err(Error::Config(format!(
                        "destination {} names digest {want}, but {source} resolves to {}; \
                         drop the digest from the destination or fix it",
                        d.name(),
                        root.digest
                    )));
                }
            }
        }
        Ok(root)
    }

    /// What each destination holds of `root`. A destination that already holds the root
    /// holds its whole graph, so it needs no blob or manifest HEADs, at most the tag. `early`
    /// is the answer of [`Self::warm_by_digest`], reused when it asked about this very root.
    async fn warm_check(
        &self,
        dsts: &[Endpoint],
        tags: &[Option<String>],
        root: &Digest,
        early: Option<(Digest, Vec<Held>)>,
    ) -> Result<Vec<Held>> {
        match early {
            // Already asked about this very digest (the source named it): not again.
            Some((digest, early_held)) if &digest == root => Ok(early_held),
            _ => {
                let mut held = Vec::with_capacity(dsts.len());
                for (d, tag) in dsts.iter().zip(tags) {
                    held.push(if self.options.referrers {
                        Held::Missing
                    } else {
                        d.holds_root(root, tag.as_deref()).await?
                    });
                }
                Ok(held)
            }
        }
    }

    /// Resolves the graph below `root` (and its referrers, if asked) and announces the plan.
    async fn plan(
        &self,
        source: &Reference,
        src: &Endpoint,
        root: &Manifest,
        progress: &dyn ProgressSink,
    ) -> Result<Graph> {
        let mut graph = Graph::default();
        graph.add_tree(src, root.clone()).await?;
        if self.options.referrers {
            graph.add_referrers(src).await?;
        }
        let total_bytes = graph.blobs.values().sum();
        progress.event(ProgressEvent::Plan {
            source: source.to_string(),
            digest: root.digest.clone(),
            manifests: graph.manifests.len(),
            blobs: graph.blobs.len(),
            total_bytes,
        });
        tracing::debug!(source = %source, digest = %root.digest, manifests = graph.manifests.len(),
            blobs = graph.blobs.len(), total_bytes, "copy planned");
        Ok(graph)
    }

    /// The warm check done before the source is touched, possible when the source names a
    /// digest, no platform is selected (the root is then that digest), referrers are not
    /// copied, and every destination is a registry that names no other digest. Returns the
    /// digest and what each destination holds, or `None` when the check does not apply.
    async fn warm_by_digest(
        &self,
        src: &Endpoint,
        dsts: &[Endpoint],
    ) -> Result<Option<(Digest, Vec<Held>)>> {
        let Some(digest) = src.digest() else {
            return Ok(None);
        };
        if self.options.platform.is_some() || self.options.referrers {
            return Ok(None);
        }
        if dsts.iter().any(|d| {
            matches!(d, Endpoint::Layout { .. }) || d.digest().is_some_and(|w| w != digest)
        }) {
            return Ok(None);
        }
        let mut held = Vec::with_capacity(dsts.len());
        for d in dsts {
            let tag = self.destination_tag(src, d);
            held.push(d.holds_root(digest, tag.as_deref()).await?);
        }
        Ok(Some((digest.clone(), held)))
    }

    /// The tag written at `dst`: the override, else the destination's own, else (when the
    /// destination names no digest) the source's.
    fn destination_tag(&self, src: &Endpoint, dst: &Endpoint) -> Option<String> {
        self.options
            .tag_override
            .clone()
            .or_else(|| dst.tag().map(str::to_string))
            .or_else(|| {
                dst.digest()
                    .is_none()
                    .then(|| src.tag().map(str::to_string))
                    .flatten()
            })
    }

    async fn open(&self, reference: &Reference, destination: bool) -> Result<Endpoint> {
        match reference {
            Reference::Registry(r) => {
                let client = self.client.clone().ok_or_else(|| {
                    Error::Config(format!(
                        "{r}: this copy engine was built for OCI layouts only and has no registry client"
                    ))
                })?;
                Ok(Endpoint::Registry {
                    client,
                    r: r.clone(),
                })
            }
            Reference::Layout(l) => {
                let layout = if destination {
                    OciLayout::create(&l.dir).await?
                } else {
                    OciLayout::open(&l.dir).await?
                };
                Ok(Endpoint::Layout {
                    layout,
                    r: l.clone(),
                })
            }
        }
    }
}
