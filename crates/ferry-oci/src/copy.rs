//! The copy engine: resolves a source manifest graph and copies it, by digest, to one or
//! more destinations (registries or OCI layouts).
//!
//! Order is what makes a copy safe: blobs first (largest first, bounded per host), then child
//! manifests, then the root by digest, and the tag last, only once everything it references
//! is present and verified. An existing tag that already holds the digest is success.
//! Each source blob is read once however many destinations there are. It must never buffer
//! a blob, and never write a manifest after any verification failure.
//! See docs/design/copy-engine.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::{MountOutcome, RegistryClient};
use crate::digest::{Digest, VerifyingStream};
use crate::error::{Error, Result, Step};
use crate::layout::OciLayout;
use crate::media::{is_manifest_type, Descriptor, Manifest, Platform, OCI_INDEX};
use crate::progress::{BlobOutcome, ProgressEvent, ProgressSink};
use crate::reference::{LayoutRef, Reference, RegistryRef};
use crate::retry::RetryPolicy;
use crate::ByteStream;

/// Chunks buffered per destination in the fan-out tee: enough to absorb jitter between
/// destinations, small enough that memory stays flat (a few hundred KiB per transfer).
const TEE_DEPTH: usize = 1;

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
        let mut root = src.root_manifest().await?;
        if let Some(want) = &self.options.platform {
            if root.is_index() {
                root = select_platform(&src, &root, want).await?;
            }
        }
        for d in &dsts {
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

        // Each destination's tag, decided once: used by the warm check and written last.
        let tags: Vec<Option<String>> =
            dsts.iter().map(|d| self.destination_tag(&src, d)).collect();

        // 1b. Warm check: a destination that already holds the root holds its whole graph,
        // so it needs no blob or manifest HEADs, at most the tag.
        let mut held = Vec::with_capacity(dsts.len());
        match early {
            // Already asked about this very digest (the source named it): not again.
            Some((digest, early_held)) if digest == root.digest => held = early_held,
            _ => {
                for (d, tag) in dsts.iter().zip(&tags) {
                    held.push(if self.options.referrers {
                        Held::Missing
                    } else {
                        d.holds_root(&root.digest, tag.as_deref()).await?
                    });
                }
            }
        }

        // 2. The graph.
        let mut graph = Graph::default();
        graph.add_tree(&src, root.clone()).await?;
        if self.options.referrers {
            graph.add_referrers(&src).await?;
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
            for (digest, size) in &graph.blobs {
                progress.event(ProgressEvent::BlobStarted {
                    digest: digest.clone(),
                    size: *size,
                });
                progress.event(ProgressEvent::BlobFinished {
                    digest: digest.clone(),
                    size: *size,
                    outcome: BlobOutcome::Skipped,
                });
                report.blobs_skipped += 1;
                report.bytes_skipped += size;
            }
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
        let (graph, root_ref, sink) = (&graph, &root, progress.as_ref());
        let mut jobs = Vec::new();
        for ((d, tag), h) in dsts.iter().zip(tags).zip(held) {
            jobs.push(async move {
                match h {
                    Held::Tagged => Ok(0),
                    Held::Present => write_tag(d, root_ref, tag, sink).await,
                    Held::Absent => write_manifests(d, graph, root_ref, tag, true, sink).await,
                    Held::Missing => write_manifests(d, graph, root_ref, tag, false, sink).await,
                }
            });
        }
        for written in futures::future::try_join_all(jobs).await? {
            report.manifests_written += written;
        }
        report.duration = started.elapsed();
        Ok(report)
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

/// What a destination already holds of the root, found before any blob is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
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
enum Endpoint {
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
    fn name(&self) -> String {
        match self {
            Endpoint::Registry { r, .. } => r.to_string(),
            Endpoint::Layout { r, .. } => r.to_string(),
        }
    }

    /// The key concurrency is bounded by: a registry host, or a layout directory.
    fn host_key(&self) -> String {
        match self {
            Endpoint::Registry { r, .. } => format!("registry {}", r.repo.registry),
            Endpoint::Layout { r, .. } => format!("layout {}", r.dir.display()),
        }
    }

    fn tag(&self) -> Option<&str> {
        match self {
            Endpoint::Registry { r, .. } => r.tag.as_deref(),
            Endpoint::Layout { r, .. } => r.tag.as_deref(),
        }
    }

    fn digest(&self) -> Option<&Digest> {
        match self {
            Endpoint::Registry { r, .. } => r.digest.as_ref(),
            Endpoint::Layout { r, .. } => r.digest.as_ref(),
        }
    }

    async fn root_manifest(&self) -> Result<Manifest> {
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
    async fn manifest(&self, desc: &Descriptor) -> Result<Manifest> {
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

    async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>> {
        match self {
            Endpoint::Registry { client, r } => client.referrers(&r.repo, digest).await,
            Endpoint::Layout { layout, .. } => layout.referrers(digest).await,
        }
    }

    async fn has_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        match self {
            Endpoint::Registry { client, r } => client.blob_exists(&r.repo, digest).await,
            Endpoint::Layout { layout, .. } => layout.has_blob(digest).await,
        }
    }

    async fn open_blob(&self, digest: &Digest, size: u64) -> Result<ByteStream> {
        match self {
            Endpoint::Registry { client, r } => client.get_blob(&r.repo, digest, Some(size)).await,
            Endpoint::Layout { layout, .. } => layout.read_blob(digest).await,
        }
    }

    async fn write_blob(&self, digest: &Digest, size: u64, body: ByteStream) -> Result<()> {
        match self {
            Endpoint::Registry { client, r } => {
                client.upload_blob(&r.repo, digest, size, body).await
            }
            Endpoint::Layout { layout, .. } => layout.write_blob(digest, size, body).await,
        }
    }

    async fn has_manifest(&self, digest: &Digest) -> Result<bool> {
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
    async fn holds_root(&self, root: &Digest, tag: Option<&str>) -> Result<Held> {
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

    async fn put_manifest(&self, m: &Manifest) -> Result<()> {
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
    async fn put_tag(&self, tag: Option<&str>, root: &Manifest, checked: bool) -> Result<bool> {
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

fn check_put_digest(m: &Manifest, got: Digest) -> Result<()> {
    if got != m.digest {
        return Err(Error::DigestMismatch {
            expected: m.digest.clone(),
            actual: got,
        });
    }
    Ok(())
}

fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

async fn select_platform(src: &Endpoint, index: &Manifest, want: &Platform) -> Result<Manifest> {
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
struct Graph {
    /// Write order: children before parents, referrers after their subjects.
    manifests: Vec<Manifest>,
    seen: HashSet<Digest>,
    /// Unique blobs and their sizes.
    blobs: BTreeMap<Digest, u64>,
    /// Each copied referrer's source descriptor, by its subject.
    referrers: Vec<(Digest, Descriptor)>,
}

impl Graph {
    fn add_blob(&mut self, owner: &Manifest, d: &Descriptor) -> Result<()> {
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
    async fn add_tree(&mut self, src: &Endpoint, top: Manifest) -> Result<()> {
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
    async fn add_referrers(&mut self, src: &Endpoint) -> Result<()> {
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

/// What bounds the transfers touching one host: a registry host by its client's adaptive
/// limit (shared by every copy and manifest request over that client) and, unless the copy
/// reads from a host on a long link, by `max_per_host` transfers of this copy (each costs about 2 MiB; on a short
/// link more buy nothing); a layout directory by `max_per_host` permits of this copy.
enum HostGate {
    Registry {
        client: RegistryClient,
        registry: String,
        cap: Arc<Semaphore>,
    },
    Layout(Arc<Semaphore>),
}

/// A permit of either kind, held (never read) for one blob transfer.
enum HeldPermit {
    Registry {
        _cap: tokio::sync::OwnedSemaphorePermit,
        _permit: crate::client::HostPermit,
    },
    Layout {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

impl HostGate {
    /// `long`: the copy reads from a host on a long link, where a transfer's time is mostly
    /// waiting on that link, so more transfers than `max_per_host` are worth running (their
    /// chunks are small, so they cost little memory), at the destinations too.
    fn of(e: &Endpoint, per_layout: usize, long: bool) -> HostGate {
        match e {
            Endpoint::Registry { client, r } => {
                let cap = if long {
                    client.host_max()
                } else {
                    per_layout.max(1)
                };
                HostGate::Registry {
                    client: client.clone(),
                    registry: r.repo.registry.clone(),
                    cap: Arc::new(Semaphore::new(cap)),
                }
            }
            Endpoint::Layout { .. } => {
                HostGate::Layout(Arc::new(Semaphore::new(per_layout.max(1))))
            }
        }
    }

    /// The most transfers this host can ever run at once.
    fn capacity(&self, per_layout: usize) -> usize {
        match self {
            HostGate::Registry { cap, .. } => cap.available_permits(),
            HostGate::Layout(_) => per_layout.max(1),
        }
    }

    async fn acquire(&self, digest: &Digest) -> Result<HeldPermit> {
        let closed = |_| {
            Error::Config(format!(
                "blob {digest}: the transfer scheduler was shut down"
            ))
        };
        match self {
            HostGate::Registry {
                client,
                registry,
                cap,
            } => {
                // This copy's cap first, then the client's limit: always in this order.
                let cap = cap.clone().acquire_owned().await.map_err(closed)?;
                Ok(HeldPermit::Registry {
                    _cap: cap,
                    _permit: client.host_permit(registry).await,
                })
            }
            HostGate::Layout(sem) => sem
                .clone()
                .acquire_owned()
                .await
                .map(|p| HeldPermit::Layout { _permit: p })
                .map_err(closed),
        }
    }
}

/// Everything a blob transfer task needs, shared by all of them.
struct BlobCtx {
    src: Endpoint,
    src_key: String,
    dsts: Vec<Endpoint>,
    dst_keys: Vec<String>,
    hosts: HashMap<String, HostGate>,
    /// Transfer tasks worth running at once: enough to fill every host's upper bound.
    task_limit: usize,
    retry: RetryPolicy,
    progress: Arc<dyn ProgressSink>,
}

impl BlobCtx {
    fn new(
        src: Endpoint,
        dsts: Vec<Endpoint>,
        per_layout: usize,
        retry: RetryPolicy,
        progress: Arc<dyn ProgressSink>,
    ) -> Self {
        let src_key = src.host_key();
        let dst_keys: Vec<String> = dsts.iter().map(Endpoint::host_key).collect();
        let long = match &src {
            Endpoint::Registry { client, r } => client.is_long_link(&r.repo.registry),
            Endpoint::Layout { .. } => false,
        };
        let mut hosts = HashMap::new();
        for (k, e) in std::iter::once((&src_key, &src)).chain(dst_keys.iter().zip(&dsts)) {
            hosts
                .entry(k.clone())
                .or_insert_with(|| HostGate::of(e, per_layout, long));
        }
        let task_limit = hosts
            .values()
            .map(|g| g.capacity(per_layout))
            .sum::<usize>()
            .max(1);
        BlobCtx {
            src,
            src_key,
            dsts,
            dst_keys,
            hosts,
            task_limit,
            retry,
            progress,
        }
    }
}

async fn copy_blobs(
    ctx: Arc<BlobCtx>,
    blobs: &BTreeMap<Digest, u64>,
    report: &mut CopyReport,
) -> Result<()> {
    let mut jobs: Vec<(Digest, u64)> = blobs.iter().map(|(d, s)| (d.clone(), *s)).collect();
    // Largest first: the long transfers start early and small ones fill the gaps.
    jobs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // Enough tasks to saturate every host; the per-host permits do the real bounding.
    let limit = ctx.task_limit;
    let mut jobs = jobs.into_iter();
    // A JoinSet aborts whatever is still running when it is dropped on the first error.
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < limit {
            let Some((digest, size)) = jobs.next() else {
                break;
            };
            let ctx = ctx.clone();
            running.spawn(async move {
                let outcome = transfer_blob(&ctx, &digest, size).await;
                (size, outcome)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (size, outcome) =
            joined.map_err(|e| Error::Config(format!("a blob transfer task failed: {e}")))?;
        match outcome? {
            BlobOutcome::Copied => {
                report.blobs_copied += 1;
                report.bytes_copied += size;
            }
            BlobOutcome::Skipped => {
                report.blobs_skipped += 1;
                report.bytes_skipped += size;
            }
            BlobOutcome::Mounted => report.blobs_mounted += 1,
        }
    }
    Ok(())
}

/// Moves one blob to every destination that lacks it.
async fn transfer_blob(ctx: &BlobCtx, digest: &Digest, size: u64) -> Result<BlobOutcome> {
    // One permit per distinct host, always taken in sorted order so two transfers can never
    // each hold what the other waits for.
    let mut keys: Vec<&String> = std::iter::once(&ctx.src_key)
        .chain(ctx.dst_keys.iter())
        .collect();
    keys.sort();
    keys.dedup();
    let mut permits = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(gate) = ctx.hosts.get(k) {
            permits.push(gate.acquire(digest).await?);
        }
    }

    ctx.progress.event(ProgressEvent::BlobStarted {
        digest: digest.clone(),
        size,
    });
    let mut pending = Vec::new();
    for (i, d) in ctx.dsts.iter().enumerate() {
        if d.has_blob(digest).await?.is_none() {
            pending.push(i);
        }
    }
    let finish = |outcome: BlobOutcome| -> Result<BlobOutcome> {
        ctx.progress.event(ProgressEvent::BlobFinished {
            digest: digest.clone(),
            size,
            outcome,
        });
        Ok(outcome)
    };
    if pending.is_empty() {
        return finish(BlobOutcome::Skipped);
    }

    // Same registry, other repository, same identity: ask the registry to mount instead of
    // moving bytes. A mount is authorised as the destination's identity and needs pull on
    // the source; when the copy was given a separate identity for the source, that is not
    // expected to hold, and asking would send the destination identity after the source's
    // scope (and cost a 202 round trip per blob), so the bytes are streamed instead.
    if let Endpoint::Registry { client, r: src } = &ctx.src {
        let mut still = Vec::new();
        for i in pending {
            let mounted = match &ctx.dsts[i] {
                Endpoint::Registry { r: dst, .. }
                    if dst.repo.registry == src.repo.registry
                        && dst.repo.repository != src.repo.repository
                        && client.same_identity(&src.repo, &dst.repo) =>
                {
                    match client
                        .mount_blob(&dst.repo, &src.repo.repository, digest)
                        .await
                    {
                        Ok(MountOutcome::Mounted) => true,
                        Ok(MountOutcome::NotMounted) => false,
                        Err(e) => {
                            tracing::debug!(%digest, error = %e, "mount failed; copying instead");
                            false
                        }
                    }
                }
                _ => false,
            };
            if !mounted {
                still.push(i);
            }
        }
        pending = still;
        if pending.is_empty() {
            return finish(BlobOutcome::Mounted);
        }
    }

    // Upload once per registry, mount the rest: a destination that is another repository of
    // a registry this transfer already uploads to, under the same identity, gets a
    // cross-repository mount from that repository once the upload has committed.
    let (upload, followers) = split_for_mounts(ctx, &pending);
    stream_with_retries(ctx, digest, size, upload).await?;
    let mounts = followers
        .iter()
        .map(|&(i, leader)| async move { (i, mount_from_sibling(ctx, leader, i, digest).await) });
    let fallback: Vec<usize> = futures::future::join_all(mounts)
        .await
        .into_iter()
        .filter_map(|(i, mounted)| (!mounted).then_some(i))
        .collect();
    if !fallback.is_empty() {
        // A registry that answered 202 (or refused) gets the bytes after all.
        stream_with_retries(ctx, digest, size, fallback).await?;
    }
    // The permits are released only after BlobFinished, so events show the real overlap.
    let outcome = finish(BlobOutcome::Copied);
    drop(permits);
    outcome
}

/// Splits the destinations that need a blob into those the bytes are streamed to and those
/// that can mount it from one of them afterwards, as `(destination, leader)` pairs. A
/// follower is a registry destination on the same registry as an earlier streamed one whose
/// credentials are the same identity (the mount is authorised as the follower's identity and
/// needs pull on the leader's repository, which the same credential covers).
fn split_for_mounts(ctx: &BlobCtx, pending: &[usize]) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut upload: Vec<usize> = Vec::new();
    let mut followers = Vec::new();
    for &i in pending {
        let leader = match &ctx.dsts[i] {
            Endpoint::Registry { client, r } => upload.iter().copied().find(|&j| {
                matches!(&ctx.dsts[j], Endpoint::Registry { r: lr, .. }
                    if lr.repo.registry == r.repo.registry && client.same_identity(&lr.repo, &r.repo))
            }),
            Endpoint::Layout { .. } => None,
        };
        match leader {
            Some(j) => followers.push((i, j)),
            None => upload.push(i),
        }
    }
    (upload, followers)
}

/// Mounts a just-uploaded blob from destination `leader`'s repository into destination
/// `i`'s. Whether it is there now; a 202 or an error means it must be uploaded after all.
async fn mount_from_sibling(ctx: &BlobCtx, leader: usize, i: usize, digest: &Digest) -> bool {
    let (Endpoint::Registry { r: from, .. }, Endpoint::Registry { client, r: to }) =
        (&ctx.dsts[leader], &ctx.dsts[i])
    else {
        return false;
    };
    if from.repo == to.repo {
        return true; // the same repository under another tag: the upload already put it there
    }
    match client
        .mount_blob(&to.repo, &from.repo.repository, digest)
        .await
    {
        Ok(MountOutcome::Mounted) => true,
        Ok(MountOutcome::NotMounted) => false,
        Err(e) => {
            tracing::debug!(%digest, error = %e, "mount between destinations failed; uploading instead");
            false
        }
    }
}

/// Streams the blob to `targets`, retrying the destinations that failed (re-opening the
/// source each time) while the cause is retryable and the policy allows.
async fn stream_with_retries(
    ctx: &BlobCtx,
    digest: &Digest,
    size: u64,
    mut targets: Vec<usize>,
) -> Result<()> {
    let mut attempt = 1;
    loop {
        match fan_out(ctx, digest, size, &targets).await {
            Ok(()) => return Ok(()),
            Err(failure) => {
                if !failure.cause.is_retryable() || !ctx.retry.should_retry(attempt) {
                    return Err(failure.cause);
                }
                ctx.progress.event(ProgressEvent::Retrying {
                    what: format!("blob {digest}"),
                    attempt,
                    error: failure.cause.to_string(),
                });
                tokio::time::sleep(ctx.retry.delay(attempt, None)).await;
                attempt += 1;
                targets = failure.failed;
            }
        }
    }
}

/// Why one fan-out attempt failed, and which destinations still lack the blob.
struct FanOutFailure {
    cause: Error,
    failed: Vec<usize>,
}

fn aborted(digest: &Digest, why: &str) -> Error {
    Error::Io {
        step: Step::GetBlob,
        path: digest.to_string(),
        source: std::io::Error::other(format!("copy aborted: {why}")),
    }
}

fn receiver_stream(rx: mpsc::Receiver<Result<Bytes>>) -> ByteStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Reads the source blob once and tees it, verified, into every target destination.
///
/// The verifier withholds the last chunk until the digest matches, and any failure (source,
/// verifier or one destination) pushes an error into every body, so no destination can
/// commit a blob that some part of this attempt found wrong.
async fn fan_out(
    ctx: &BlobCtx,
    digest: &Digest,
    size: u64,
    targets: &[usize],
) -> std::result::Result<(), FanOutFailure> {
    let source = match ctx.src.open_blob(digest, size).await {
        Ok(s) => s,
        Err(cause) => {
            return Err(FanOutFailure {
                cause,
                failed: targets.to_vec(),
            })
        }
    };
    let mut source = VerifyingStream::new(source, digest.clone(), Some(size));
    let cancel = CancellationToken::new();
    let first_failed: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));

    let mut txs = Vec::with_capacity(targets.len());
    let mut writers = Vec::with_capacity(targets.len());
    for &i in targets {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(TEE_DEPTH);
        txs.push(Some(tx));
        let dst = &ctx.dsts[i];
        let cancel = cancel.clone();
        let first_failed = first_failed.clone();
        writers.push(async move {
            let result = dst.write_blob(digest, size, receiver_stream(rx)).await;
            if result.is_err() {
                if let Ok(mut first) = first_failed.lock() {
                    first.get_or_insert(i);
                }
                cancel.cancel();
            }
            (i, result)
        });
    }

    let progress = ctx.progress.clone();
    let pump = async move {
        async fn abort_all(
            txs: &mut [Option<mpsc::Sender<Result<Bytes>>>],
            digest: &Digest,
            why: &str,
        ) {
            for tx in txs.iter_mut().filter_map(Option::take) {
                let _ = tx.send(Err(aborted(digest, why))).await;
            }
        }
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    abort_all(&mut txs, digest, "a destination failed").await;
                    return None;
                }
                n = source.next() => n,
            };
            match next {
                // Verified and complete: closing the channels ends every body.
                None => return None,
                Some(Err(e)) => {
                    abort_all(
                        &mut txs,
                        digest,
                        "the source failed verification or reading",
                    )
                    .await;
                    return Some(e);
                }
                Some(Ok(chunk)) => {
                    let mut cancelled = false;
                    for slot in txs.iter_mut() {
                        let Some(tx) = slot.as_ref() else { continue };
                        let sent = tokio::select! {
                            biased;
                            _ = cancel.cancelled() => {
                                cancelled = true;
                                break;
                            }
                            r = tx.send(Ok(chunk.clone())) => r,
                        };
                        if sent.is_err() {
                            // The writer stopped reading; its own result says why.
                            *slot = None;
                        }
                    }
                    if cancelled {
                        abort_all(&mut txs, digest, "a destination failed").await;
                        return None;
                    }
                    progress.event(ProgressEvent::BlobProgress {
                        digest: digest.clone(),
                        bytes: chunk.len() as u64,
                    });
                    if txs.iter().all(Option::is_none) {
                        return None;
                    }
                }
            }
        }
    };
    let (source_error, results) = tokio::join!(pump, futures::future::join_all(writers));

    let first = first_failed.lock().ok().and_then(|f| *f);
    let mut failed = Vec::new();
    let mut first_error = None;
    let mut other_error = None;
    for (i, r) in results {
        if let Err(e) = r {
            failed.push(i);
            if Some(i) == first {
                first_error = Some(e);
            } else if other_error.is_none() {
                other_error = Some(e);
            }
        }
    }
    match source_error.or(first_error).or(other_error) {
        None => Ok(()),
        Some(cause) => {
            if failed.is_empty() {
                failed = targets.to_vec();
            }
            Err(FanOutFailure { cause, failed })
        }
    }
}

/// Writes every manifest a destination lacks, children first, then the tag. Returns how
/// many manifests (and tags) were written.
async fn write_manifests(
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
async fn write_tag(
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
async fn list_referrers(dst: &Endpoint, graph: &Graph) -> Result<()> {
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
fn fallback_index(existing: Option<&Manifest>, add: &[&Descriptor]) -> Result<Manifest> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::journal;
    use crate::layout::tests::{bytes_stream, write_real_image};
    use crate::media::{OCI_MANIFEST, ZIP_LAYER};
    use std::path::Path;

    #[derive(Default)]
    struct Events(Mutex<Vec<ProgressEvent>>);

    impl ProgressSink for Events {
        fn event(&self, event: ProgressEvent) {
            if let Ok(mut v) = self.0.lock() {
                v.push(event);
            }
        }
    }

    impl Events {
        fn all(&self) -> Vec<ProgressEvent> {
            self.0.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }

    fn engine(options: CopyOptions) -> CopyEngine {
        CopyEngine::layouts_only(options)
    }

    fn oci(dir: &Path, tag: Option<&str>) -> Reference {
        let s = match tag {
            Some(t) => format!("oci:{}:{t}", dir.display()),
            None => format!("oci:{}", dir.display()),
        };
        s.parse().expect("layout reference")
    }

    async fn put_blob(layout: &OciLayout, data: &[u8]) -> Descriptor {
        let d = Digest::of(data);
        layout
            .write_blob(&d, data.len() as u64, bytes_stream(data.to_vec()))
            .await
            .expect("blob");
        Descriptor {
            media_type: ZIP_LAYER.into(),
            digest: d,
            size: data.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    /// An image manifest with a config and the given layers, optionally with a subject.
    async fn put_image(
        layout: &OciLayout,
        config: &[u8],
        layers: &[&[u8]],
        subject: Option<&Manifest>,
    ) -> Manifest {
        let c = put_blob(layout, config).await;
        let mut ls = Vec::new();
        for l in layers {
            ls.push(put_blob(layout, l).await);
        }
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": c.digest, "size": c.size},
            "layers": ls,
        });
        if let Some(s) = subject {
            v["subject"] = serde_json::to_value(s.descriptor()).expect("json");
            v["artifactType"] = "application/example.signature".into();
        }
        let m = Manifest::from_bytes(Bytes::from(serde_json::to_vec(&v).expect("json")), "")
            .expect("manifest");
        layout.write_manifest(&m).await.expect("write");
        m
    }

    async fn put_index(layout: &OciLayout, children: &[(&Manifest, &str)]) -> Manifest {
        let list: Vec<_> = children
            .iter()
            .map(|(m, p)| {
                let mut d = m.descriptor();
                d.platform = Some(Platform::parse(p).expect("platform"));
                d
            })
            .collect();
        let v = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list});
        let m = Manifest::from_bytes(Bytes::from(serde_json::to_vec(&v).expect("json")), "")
            .expect("index");
        layout.write_manifest(&m).await.expect("write");
        m
    }

    fn count(ops: &[String], prefix: &str) -> usize {
        ops.iter().filter(|o| o.starts_with(prefix)).count()
    }

    #[tokio::test]
    async fn copies_a_layout_and_a_second_copy_skips_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let m = put_image(&layout, b"{}", &[b"layer one", b"layer number two"], None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");

        let events = Arc::new(Events::default());
        let report = engine(CopyOptions::default())
            .copy(&oci(&src, Some("v1")), &[oci(&dst, None)], events.clone())
            .await
            .expect("copy");
        assert_eq!(report.digest.as_ref(), Some(&m.digest));
        assert_eq!(report.blobs_copied, 3);
        assert_eq!(report.bytes_copied, 2 + 9 + 16);
        assert_eq!(report.manifests_written, 2, "the manifest, then the tag");
        let out = OciLayout::open(&dst).await.expect("dst");
        // The destination had no tag of its own, so the source's is used.
        assert_eq!(out.resolve(Some("v1")).await.expect("tag").digest, m.digest);
        let evs = events.all();
        assert!(matches!(
            evs.first(),
            Some(ProgressEvent::Plan {
                blobs: 3,
                total_bytes: 27,
                ..
            })
        ));
        let finished = evs
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    ProgressEvent::BlobFinished {
                        outcome: BlobOutcome::Copied,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(finished, 3);

        let again = engine(CopyOptions::default())
            .copy(&oci(&src, Some("v1")), &[oci(&dst, None)], events.clone())
            .await
            .expect("copy again");
        assert_eq!(again.blobs_copied, 0);
        assert_eq!(again.blobs_skipped, 3);
        assert_eq!(again.bytes_skipped, 27);
        assert_eq!(
            again.manifests_written, 0,
            "the tag already holds the digest"
        );
    }

    #[tokio::test]
    async fn a_corrupt_source_blob_fails_and_commits_no_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let m = put_image(&layout, b"{}", &[b"good layer", b"this will rot"], None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
        let rotten = Digest::of(b"this will rot");
        std::fs::write(
            src.join("blobs/sha256").join(rotten.hex()),
            b"this has rot!",
        )
        .expect("rot");

        let err = engine(CopyOptions::default())
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&dst, Some("v1"))],
                Arc::new(Events::default()),
            )
            .await
            .expect_err("must fail");
        assert!(
            matches!(&err, Error::DigestMismatch { expected, .. } if expected == &rotten),
            "{err}"
        );
        assert!(err.to_string().contains(rotten.as_str()), "{err}");
        let out = OciLayout::open(&dst).await.expect("dst");
        assert_eq!(out.has_blob(&rotten).await.expect("has"), None);
        assert_eq!(
            out.has_blob(&m.digest).await.expect("has"),
            None,
            "no manifest"
        );
        assert!(
            out.resolve(Some("v1")).await.is_err(),
            "no index.json entry"
        );
        let index = std::fs::read_to_string(dst.join("index.json")).expect("index");
        assert!(!index.contains(m.digest.hex()), "{index}");
    }

    #[tokio::test]
    async fn a_failing_destination_fails_the_copy_and_no_destination_is_tagged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, good, bad) = (
            dir.path().join("src"),
            dir.path().join("good"),
            dir.path().join("bad"),
        );
        let layout = OciLayout::create(&src).await.expect("src");
        let m = put_image(&layout, b"{}", &[b"a layer"], None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
        // A non-empty directory where the layer must go: the final rename fails.
        let blocked = Digest::of(b"a layer");
        std::fs::create_dir_all(bad.join("blobs/sha256").join(blocked.hex()).join("x"))
            .expect("blocker");

        let err = engine(CopyOptions::default())
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&good, None), oci(&bad, None)],
                Arc::new(Events::default()),
            )
            .await
            .expect_err("must fail");
        assert!(err.to_string().contains(blocked.hex()), "{err}");
        for d in [&good, &bad] {
            let out = OciLayout::open(d).await.expect("layout");
            assert_eq!(
                out.has_blob(&m.digest).await.expect("has"),
                None,
                "no manifest"
            );
            assert!(out.resolve(Some("v1")).await.is_err(), "untagged");
        }
    }

    #[tokio::test]
    async fn fan_out_reads_each_source_blob_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let layout = OciLayout::create(&src).await.expect("src");
        // Large enough for many chunks, so the bounded tee has to apply backpressure.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let m = put_image(&layout, b"{}", &[&big, b"small"], None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
        let dsts: Vec<_> = (0..3).map(|i| dir.path().join(format!("dst{i}"))).collect();
        let refs: Vec<_> = dsts.iter().map(|d| oci(d, Some("copied"))).collect();

        let report = engine(CopyOptions::default())
            .copy(&oci(&src, Some("v1")), &refs, Arc::new(Events::default()))
            .await
            .expect("copy");
        assert_eq!(report.blobs_copied, 3);
        assert_eq!(
            report.bytes_copied,
            big.len() as u64 + 5 + 2,
            "counted once, not per destination"
        );
        let ops = journal::ops(&src);
        for blob in [Digest::of(&big), Digest::of(b"small"), Digest::of(b"{}")] {
            assert_eq!(
                count(&ops, &format!("read_blob {blob}")),
                1,
                "{blob}: {ops:?}"
            );
        }
        for d in &dsts {
            let out = OciLayout::open(d).await.expect("dst");
            assert_eq!(
                out.resolve(Some("copied")).await.expect("tag").digest,
                m.digest
            );
            assert_eq!(
                out.has_blob(&Digest::of(&big)).await.expect("has"),
                Some(big.len() as u64)
            );
        }
    }

    #[tokio::test]
    async fn writes_the_tag_last_and_children_before_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let amd = put_image(&layout, b"{}", &[b"amd64 layer"], None).await;
        let arm = put_image(&layout, b"{ }", &[b"arm64 layer"], None).await;
        let index = put_index(&layout, &[(&amd, "linux/amd64"), (&arm, "linux/arm64/v8")]).await;
        layout
            .tag(Some("v1"), &index.descriptor())
            .await
            .expect("tag");

        engine(CopyOptions::default())
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&dst, Some("v2"))],
                Arc::new(Events::default()),
            )
            .await
            .expect("copy");
        let ops = journal::ops(&dst);
        let pos = |op: &str| ops.iter().position(|o| o == op).unwrap_or(usize::MAX);
        let tag = pos(&format!("tag v2 {}", index.digest));
        assert_eq!(
            tag,
            ops.len() - 1,
            "the tag is the very last write: {ops:?}"
        );
        let parent = pos(&format!("write_manifest {}", index.digest));
        for child in [&amd, &arm] {
            assert!(
                pos(&format!("write_manifest {}", child.digest)) < parent,
                "{ops:?}"
            );
        }
        let last_blob = ops.iter().rposition(|o| {
            o.starts_with("write_blob ") && {
                let d = o.trim_start_matches("write_blob ");
                d != amd.digest.as_str() && d != arm.digest.as_str() && d != index.digest.as_str()
            }
        });
        let first_manifest = ops.iter().position(|o| o.starts_with("write_manifest "));
        assert!(
            last_blob < first_manifest,
            "blobs before manifests: {ops:?}"
        );
    }

    #[tokio::test]
    async fn selects_one_platform_or_lists_the_available_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let amd = put_image(&layout, b"{}", &[b"amd64 layer"], None).await;
        let arm = put_image(&layout, b"{ }", &[b"arm64 layer"], None).await;
        let index = put_index(&layout, &[(&amd, "linux/amd64"), (&arm, "linux/arm64/v8")]).await;
        layout
            .tag(Some("v1"), &index.descriptor())
            .await
            .expect("tag");

        let options = CopyOptions {
            platform: Some(Platform::parse("linux/arm64").expect("platform")),
            ..CopyOptions::default()
        };
        let report = engine(options)
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&dst, None)],
                Arc::new(Events::default()),
            )
            .await
            .expect("copy");
        assert_eq!(report.digest.as_ref(), Some(&arm.digest));
        let out = OciLayout::open(&dst).await.expect("dst");
        assert_eq!(
            out.resolve(Some("v1")).await.expect("tag").digest,
            arm.digest
        );
        assert!(out
            .has_blob(&Digest::of(b"arm64 layer"))
            .await
            .expect("has")
            .is_some());
        assert_eq!(
            out.has_blob(&Digest::of(b"amd64 layer"))
                .await
                .expect("has"),
            None
        );
        assert_eq!(out.has_blob(&index.digest).await.expect("has"), None);

        let options = CopyOptions {
            platform: Some(Platform::parse("windows/amd64").expect("platform")),
            ..CopyOptions::default()
        };
        let err = engine(options)
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&dst, Some("w"))],
                Arc::new(Events::default()),
            )
            .await
            .expect_err("no such platform")
            .to_string();
        assert!(err.contains("windows/amd64"), "{err}");
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64/v8"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn copies_referrers_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let layout = OciLayout::create(&src).await.expect("src");
        let subject = put_image(&layout, b"{}", &[b"app layer"], None).await;
        layout
            .tag(Some("v1"), &subject.descriptor())
            .await
            .expect("tag");
        let sig = put_image(&layout, b"{}", &[b"signature bytes"], Some(&subject)).await;
        layout.tag(None, &sig.descriptor()).await.expect("list");

        let plain = dir.path().join("plain");
        engine(CopyOptions::default())
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&plain, None)],
                Arc::new(Events::default()),
            )
            .await
            .expect("copy");
        let out = OciLayout::open(&plain).await.expect("plain");
        assert!(out
            .referrers(&subject.digest)
            .await
            .expect("refs")
            .is_empty());
        assert_eq!(
            out.has_blob(&Digest::of(b"signature bytes"))
                .await
                .expect("has"),
            None
        );

        let with = dir.path().join("with");
        let options = CopyOptions {
            referrers: true,
            ..CopyOptions::default()
        };
        let report = engine(options)
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&with, None)],
                Arc::new(Events::default()),
            )
            .await
            .expect("copy");
        assert_eq!(report.digest.as_ref(), Some(&subject.digest));
        let out = OciLayout::open(&with).await.expect("with");
        let refs = out.referrers(&subject.digest).await.expect("refs");
        assert_eq!(
            refs.iter().map(|d| &d.digest).collect::<Vec<_>>(),
            vec![&sig.digest]
        );
        assert!(out
            .has_blob(&Digest::of(b"signature bytes"))
            .await
            .expect("has")
            .is_some());
        assert_eq!(
            out.resolve(Some("v1")).await.expect("tag").digest,
            subject.digest
        );
        // The referrer is written after its subject, and the tag after both.
        let ops = journal::ops(&with);
        let pos = |op: String| ops.iter().position(|o| *o == op).unwrap_or(usize::MAX);
        assert!(
            pos(format!("write_manifest {}", subject.digest))
                < pos(format!("write_manifest {}", sig.digest))
        );
        assert_eq!(
            pos(format!("tag v1 {}", subject.digest)),
            ops.len() - 1,
            "{ops:?}"
        );
    }

    #[tokio::test]
    async fn transfers_are_bounded_per_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let layers: Vec<Vec<u8>> = (0..12u8)
            .map(|i| vec![i; 40_000 + usize::from(i)])
            .collect();
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let m = put_image(&layout, b"{}", &refs, None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");

        let events = Arc::new(Events::default());
        let options = CopyOptions {
            max_per_host: 2,
            ..CopyOptions::default()
        };
        engine(options)
            .copy(&oci(&src, Some("v1")), &[oci(&dst, None)], events.clone())
            .await
            .expect("copy");
        let (mut now, mut peak) = (0i32, 0i32);
        let mut sizes = Vec::new();
        for e in events.all() {
            match e {
                ProgressEvent::BlobStarted { size, .. } => {
                    now += 1;
                    peak = peak.max(now);
                    sizes.push(size);
                }
                ProgressEvent::BlobFinished { .. } => now -= 1,
                _ => {}
            }
        }
        assert_eq!(sizes.len(), 13);
        assert!(
            (1..=2).contains(&peak),
            "at most 2 transfers per host, saw {peak}"
        );
        // With one transfer slot free at a time, the start order is largest first.
        assert_eq!(sizes.first(), Some(&40_011), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&2), "{sizes:?}");
    }

    #[tokio::test]
    async fn rejects_a_destination_digest_that_does_not_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let m = write_real_image(&layout, "v1").await;
        let wrong = Digest::of(b"not it");
        let dst_ref: Reference = format!("oci:{}@{wrong}", dst.display())
            .parse()
            .expect("ref");
        let err = engine(CopyOptions::default())
            .copy(
                &oci(&src, Some("v1")),
                &[dst_ref],
                Arc::new(Events::default()),
            )
            .await
            .expect_err("mismatch")
            .to_string();
        assert!(
            err.contains(wrong.as_str()) && err.contains(m.digest.as_str()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn what_the_engine_writes_skopeo_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let layout = OciLayout::create(&src).await.expect("src");
        let m = write_real_image(&layout, "v1").await;
        engine(CopyOptions::default())
            .copy(
                &oci(&src, Some("v1")),
                &[oci(&dst, Some("v9"))],
                Arc::new(Events::default()),
            )
            .await
            .expect("copy");
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", &format!("oci:{}:v9", dst.display())])
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, m.bytes.to_vec());
    }

    /// A minimal registry for one repository, whose blob PUTs fail with 503 a set number of
    /// times: the only way to make the one-shot upload fail after the client's own retries.
    mod flaky {
        use axum::body::Bytes as Body;
        use axum::extract::State;
        use axum::http::{Method, StatusCode, Uri};
        use axum::response::{IntoResponse, Response};
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        #[derive(Default)]
        pub struct Store {
            pub blobs: HashMap<String, usize>,
            pub manifests: HashMap<String, (String, Vec<u8>)>,
            pub blob_puts: usize,
            pub manifest_puts: usize,
            pub fail_blob_puts: usize,
            uploads: usize,
        }

        pub struct Server {
            pub addr: String,
            pub store: Arc<Mutex<Store>>,
            task: tokio::task::JoinHandle<()>,
        }

        impl Drop for Server {
            fn drop(&mut self) {
                self.task.abort();
            }
        }

        fn digest_of(b: &[u8]) -> String {
            crate::digest::Digest::of(b).to_string()
        }

        async fn handle(
            State(store): State<Arc<Mutex<Store>>>,
            method: Method,
            uri: Uri,
            body: Body,
        ) -> Response {
            let path = uri.path().to_string();
            let Ok(mut st) = store.lock() else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            if path == "/v2/" {
                return StatusCode::OK.into_response();
            }
            if let Some(d) = path.strip_prefix("/v2/app/blobs/") {
                if method == Method::POST {
                    st.uploads += 1;
                    let loc = format!("/v2/app/blobs/uploads/{}", st.uploads);
                    return (StatusCode::ACCEPTED, [("location", loc)]).into_response();
                }
                if method == Method::PUT {
                    st.blob_puts += 1;
                    if st.fail_blob_puts > 0 {
                        st.fail_blob_puts -= 1;
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let want = uri
                        .query()
                        .and_then(|q| q.strip_prefix("digest="))
                        .unwrap_or_default()
                        .replace("%3A", ":");
                    if digest_of(&body) != want {
                        return StatusCode::BAD_REQUEST.into_response();
                    }
                    st.blobs.insert(want, body.len());
                    return StatusCode::CREATED.into_response();
                }
                return match st.blobs.get(d) {
                    Some(len) => {
                        (StatusCode::OK, [("content-length", len.to_string())]).into_response()
                    }
                    None => StatusCode::NOT_FOUND.into_response(),
                };
            }
            if let Some(r) = path.strip_prefix("/v2/app/manifests/") {
                if method == Method::PUT {
                    st.manifest_puts += 1;
                    let d = digest_of(&body);
                    st.manifests
                        .insert(r.to_string(), (d.clone(), body.to_vec()));
                    st.manifests.insert(d.clone(), (d.clone(), body.to_vec()));
                    return (StatusCode::CREATED, [("docker-content-digest", d)]).into_response();
                }
                return match st.manifests.get(r) {
                    Some((d, raw)) => (
                        StatusCode::OK,
                        [
                            ("docker-content-digest", d.clone()),
                            ("content-type", crate::media::OCI_MANIFEST.to_string()),
                            ("content-length", raw.len().to_string()),
                        ],
                    )
                        .into_response(),
                    None => StatusCode::NOT_FOUND.into_response(),
                };
            }
            StatusCode::NOT_FOUND.into_response()
        }

        pub async fn start(fail_blob_puts: usize) -> Server {
            let store = Arc::new(Mutex::new(Store {
                fail_blob_puts,
                ..Store::default()
            }));
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(store.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Server { addr, store, task }
        }
    }

    fn quick_retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        }
    }

    fn registry_engine() -> CopyEngine {
        let client = RegistryClient::new(crate::client::ClientConfig {
            retry: quick_retry(),
            ..Default::default()
        })
        .expect("client");
        CopyEngine::new(client, CopyOptions::default()).with_retry(quick_retry())
    }

    #[tokio::test]
    async fn a_failed_upload_is_retried_by_reopening_the_source() {
        let server = flaky::start(1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, side) = (dir.path().join("src"), dir.path().join("side"));
        let layout = OciLayout::create(&src).await.expect("src");
        let m = put_image(&layout, b"{}", &[b"the only layer"], None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
        let dst: Reference = format!("{}/app:v1", server.addr).parse().expect("ref");

        let events = Arc::new(Events::default());
        let report = registry_engine()
            .copy(
                &oci(&src, Some("v1")),
                &[dst, oci(&side, None)],
                events.clone(),
            )
            .await
            .expect("the retry carries the copy through");
        assert_eq!(report.blobs_copied, 2);
        let retried = events
            .all()
            .into_iter()
            .filter(|e| matches!(e, ProgressEvent::Retrying { error, .. } if error.contains("503")))
            .count();
        assert_eq!(retried, 1);
        // The first blob PUT failed, so exactly one blob was read from the source twice.
        let ops = journal::ops(&src);
        let reads: usize = [Digest::of(b"{}"), Digest::of(b"the only layer")]
            .iter()
            .map(|d| count(&ops, &format!("read_blob {d}")))
            .sum();
        assert_eq!(reads, 3, "{ops:?}");
        {
            let st = server.store.lock().expect("store");
            assert_eq!(st.blob_puts, 3);
            assert_eq!(st.blobs.len(), 2);
            assert_eq!(
                st.manifests.get("v1").map(|(d, _)| d.clone()),
                Some(m.digest.to_string())
            );
        }
        let out = OciLayout::open(&side).await.expect("side");
        assert_eq!(out.resolve(Some("v1")).await.expect("tag").digest, m.digest);
    }

    #[tokio::test]
    async fn an_upload_that_keeps_failing_fails_the_copy_and_writes_no_manifest() {
        let server = flaky::start(100).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let layout = OciLayout::create(&src).await.expect("src");
        let m = put_image(&layout, b"{}", &[b"the only layer"], None).await;
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
        let dst: Reference = format!("{}/app:v1", server.addr).parse().expect("ref");

        let err = registry_engine()
            .copy(&oci(&src, Some("v1")), &[dst], Arc::new(Events::default()))
            .await
            .expect_err("must give up")
            .to_string();
        assert!(err.contains("503") && err.contains(&server.addr), "{err}");
        let st = server.store.lock().expect("store");
        assert_eq!(st.manifest_puts, 0, "no manifest after a failed blob");
        assert!(st.blob_puts >= 3, "retried: {}", st.blob_puts);
    }
}
