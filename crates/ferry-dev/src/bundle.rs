//! The vendor side of air-gapped installs: `ferry bundle export` (builds → one signed bundle
//! tar) and `ferry receipts import` (an agent's signed receipts → sync state and lineage).
//!
//! Export resolves each build to its recorded artifact, resolves every artifact's graph from
//! the vendor registry (ferry-oci's `bundle::resolve_graph`: every platform, referrers), decides
//! which blobs the install already holds (`--since` a previous bundle, whose signed manifest
//! is verified first, or `--have` a list of digests), signs the manifest with the vendor key
//! and streams the tar. Receipts go through ferry-core's `bundle::record_receipt`, which
//! authenticates each against its install's report key and records it by the online report's
//! rule (releases advance). Both are generic over the store (and, for receipts, the release
//! desk), so they work on any backend.
//!
//! This module must never hold a blob in memory, never write a bundle whose manifest is not
//! signed, and never record a receipt that did not verify.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};

use ferry_core::bundle::{
    record_receipt, sign_bundle, verify_bundle, BundleArtifact, BundleBlob, BundleManifest,
    BundleReceipt, BundleReferrer, ReceiptOutcome, BUNDLE_MANIFEST_FILE, BUNDLE_SCHEMA,
    BUNDLE_SIGNATURE_FILE, MAX_BUNDLE_ARTIFACTS, MAX_BUNDLE_BLOBS, MAX_BUNDLE_MANIFEST_BYTES,
};
use ferry_core::id::{BuildId, Digest, InstallId, ReleaseId, Repository};
use ferry_core::ports::JobStore;
use ferry_core::release::ReleaseStore;
use ferry_core::release_port::Desk;
use ferry_core::state::JobStatus;
use ferry_core::trust::VendorKey;
use ferry_oci::bundle::{resolve_graph, BundleReader, BundleWriter};
use ferry_oci::layout::REF_NAME;
use ferry_oci::{Descriptor, RegistryClient, RepoRef};

use crate::error::{bail, Context as _, DevError, Result};

/// The most lines a `--have` file may have.
pub const MAX_HAVE_LINES: usize = 1_000_000;
/// The most receipts one file may hold.
pub const MAX_RECEIPTS: usize = 10_000;
/// The longest receipt line accepted.
pub const MAX_RECEIPT_LINE: usize = 64 * 1024;

/// What to put in a bundle.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// A release: its builds.
    pub release: Option<ReleaseId>,
    /// Builds, besides the release's.
    pub builds: Vec<BuildId>,
    /// The one install that may import it; `None`: any.
    pub install: Option<InstallId>,
    pub out: PathBuf,
    /// A previous bundle: what its artifacts required is left out (manifests never are).
    pub since: Option<PathBuf>,
    /// A file of digests (`sha256:…`, one a line, `#` comments) the install holds.
    pub have: Option<PathBuf>,
}

/// Where the artifacts are read from.
pub struct VendorSource<'a> {
    pub client: &'a RegistryClient,
    /// The vendor registry host (`host[:port]`).
    pub registry: String,
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub bundle_id: String,
    pub out: PathBuf,
    pub artifacts: usize,
    pub manifests: usize,
    pub blobs_included: usize,
    /// Blobs left out because the install holds them.
    pub blobs_left_out: usize,
    pub bytes: u64,
}

/// What the install holds already, by `--since` and `--have`.
#[derive(Default)]
struct Held {
    /// (vendor repository, digest) pairs from a previous bundle.
    pairs: HashSet<(Repository, Digest)>,
    /// Digests from `--have`.
    digests: HashSet<Digest>,
}

impl Held {
    fn holds(&self, repository: &Repository, digest: &Digest) -> bool {
        self.digests.contains(digest) || self.pairs.contains(&(repository.clone(), digest.clone()))
    }
}

/// Exports the builds of `request` into one bundle tar at `request.out`.
pub async fn export_bundle<S: JobStore + ReleaseStore>(
    store: &S,
    vendor_key: &VendorKey,
    source: &VendorSource<'_>,
    request: &ExportRequest,
    now_ms: u64,
) -> Result<ExportSummary> {
    let builds = resolve_builds(store, request).await?;
    let held = held(vendor_key, request).await?;

    let mut contents = Contents::default();
    for (build, artifact) in &builds {
        let repo = RepoRef::new(source.registry.clone(), artifact.repository.as_str());
        let graph = resolve_graph(source.client, &repo, &artifact.digest)
            .await
            .with_context(|| format!("reading {repo}@{} (build {})", artifact.digest, build.id))?;
        contents.add(build, artifact, &repo, graph, &held);
    }
    // A blob carried for one artifact is carried, whatever another artifact's install holds.
    let blob_sources = &contents.blob_sources;
    contents.left_out.retain(|d| !blob_sources.contains_key(d));

    let (seen, listed) = contents.list_blobs();
    if listed.len() > MAX_BUNDLE_BLOBS {
        bail!(
            "the bundle would hold {} files, more than {MAX_BUNDLE_BLOBS}; export fewer builds at once",
            listed.len()
        );
    }
    let bundle_id = format!("bdl-{:016x}", rand_id());
    let manifest = BundleManifest {
        schema: BUNDLE_SCHEMA,
        bundle_id: bundle_id.clone(),
        created_at: now_ms,
        install: request.install.clone(),
        since: since_id(vendor_key, request).await?,
        artifacts: std::mem::take(&mut contents.artifacts),
        blobs: listed,
    };
    let bytes = manifest
        .to_bytes()
        .context("encoding the bundle manifest")?;
    let signature = sign_bundle(vendor_key, &bytes);

    let (bytes, blobs_included) = contents
        .write(source, request, &bytes, &signature, &seen)
        .await?;
    Ok(ExportSummary {
        bundle_id,
        out: request.out.clone(),
        artifacts: manifest.artifacts.len(),
        manifests: contents.manifests.len(),
        blobs_included,
        blobs_left_out: contents.left_out.len(),
        bytes,
    })
}

/// What goes into a bundle, gathered artifact by artifact from their graphs.
#[derive(Default)]
struct Contents {
    artifacts: Vec<BundleArtifact>,
    /// Every manifest of every graph (deduplicated by [`Contents::list_blobs`]).
    manifests: Vec<ferry_oci::Manifest>,
    /// The blobs the bundle carries, each with a repository it can be read from.
    blob_sources: BTreeMap<Digest, (RepoRef, u64)>,
    /// The blobs the install holds already.
    left_out: BTreeSet<Digest>,
    /// The tar's OCI index: each root (named by its build id) and each referrer.
    index: Vec<Descriptor>,
}

impl Contents {
    /// Adds the artifact of `build`, whose graph was read from `repo`; a blob `held` by the
    /// install is left out.
    fn add(
        &mut self,
        build: &ferry_core::domain::Build,
        artifact: &ferry_core::domain::Artifact,
        repo: &RepoRef,
        graph: ferry_oci::bundle::ArtifactGraph,
        held: &Held,
    ) {
        let mut requires = Vec::new();
        for m in &graph.manifests {
            requires.push(BundleBlob {
                digest: m.digest.clone(),
                size: m.bytes.len() as u64,
            });
        }
        for (digest, size) in &graph.blobs {
            requires.push(BundleBlob {
                digest: digest.clone(),
                size: *size,
            });
            if held.holds(&artifact.repository, digest) {
                self.left_out.insert(digest.clone());
            } else {
                self.blob_sources
                    .entry(digest.clone())
                    .or_insert_with(|| (repo.clone(), *size));
            }
        }
        let mut root = graph.root.descriptor();
        root.annotations
            .insert(REF_NAME.to_string(), build.id.to_string());
        self.index.push(root);
        let referrers = graph
            .referrers
            .iter()
            .map(|(subject, d)| BundleReferrer {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
                subject: subject.clone(),
            })
            .collect::<Vec<_>>();
        for (_, d) in &graph.referrers {
            self.index.push(Descriptor {
                annotations: BTreeMap::new(),
                ..d.clone()
            });
        }
        self.artifacts.push(BundleArtifact {
            build_id: build.id.clone(),
            app: build.app.clone(),
            component: build.component.clone(),
            repository: artifact.repository.clone(),
            digest: artifact.digest.clone(),
            media_type: graph.root.media_type.clone(),
            size: graph.root.bytes.len() as u64,
            referrers,
            requires,
        });
        self.manifests.extend(graph.manifests);
    }

    /// Drops repeated manifests; every file the bundle lists (manifests, then the carried
    /// blobs that are not manifests), and the manifest digests.
    fn list_blobs(&mut self) -> (HashSet<Digest>, Vec<BundleBlob>) {
        let mut seen = HashSet::new();
        self.manifests.retain(|m| seen.insert(m.digest.clone()));
        let mut listed: Vec<BundleBlob> = self
            .manifests
            .iter()
            .map(|m| BundleBlob {
                digest: m.digest.clone(),
                size: m.bytes.len() as u64,
            })
            .collect();
        listed.extend(
            self.blob_sources
                .iter()
                .filter(|(d, _)| !seen.contains(*d))
                .map(|(d, (_, size))| BundleBlob {
                    digest: d.clone(),
                    size: *size,
                }),
        );
        (seen, listed)
    }

    /// Streams the bundle tar: the signed manifest, the manifests, then each carried blob
    /// read from the vendor registry (never held in memory). Its size, and the blobs written.
    async fn write(
        &self,
        source: &VendorSource<'_>,
        request: &ExportRequest,
        manifest: &[u8],
        signature: &str,
        seen: &HashSet<Digest>,
    ) -> Result<(u64, usize)> {
        let mut writer = BundleWriter::create(&request.out)
            .await
            .with_context(|| format!("creating {}", request.out.display()))?;
        writer.add_file(BUNDLE_MANIFEST_FILE, manifest).await?;
        writer
            .add_file(BUNDLE_SIGNATURE_FILE, signature.as_bytes())
            .await?;
        for m in &self.manifests {
            writer.add_manifest(m).await?;
        }
        let mut blobs_included = 0;
        for (digest, (repo, size)) in &self.blob_sources {
            if seen.contains(digest) {
                continue;
            }
            let body = source
                .client
                .get_blob(repo, digest, Some(*size))
                .await
                .with_context(|| format!("reading blob {digest} of {repo}"))?;
            writer
                .add_blob(digest, *size, body)
                .await
                .with_context(|| format!("writing blob {digest} of {repo} into the bundle"))?;
            blobs_included += 1;
        }
        let bytes = writer.finish(&self.index).await?;
        Ok((bytes, blobs_included))
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Each build with its artifact: the release's, then the named ones (each once), all
/// succeeded, all of the install's app when an install is named.
async fn resolve_builds<S: JobStore + ReleaseStore>(
    store: &S,
    request: &ExportRequest,
) -> Result<Vec<(ferry_core::domain::Build, ferry_core::domain::Artifact)>> {
    let mut ids: Vec<BuildId> = Vec::new();
    if let Some(rid) = &request.release {
        let Some(release) = store.get_release(rid).await? else {
            bail!("release {rid} does not exist; see `ferry release list`");
        };
        ids.extend(release.builds.into_iter().map(|b| b.build_id));
    }
    ids.extend(request.builds.iter().cloned());
    let mut seen = HashSet::new();
    ids.retain(|b| seen.insert(b.clone()));
    if ids.is_empty() {
        bail!("nothing to export: give --release R or --build B (see `ferry builds`)");
    }
    if ids.len() > MAX_BUNDLE_ARTIFACTS {
        bail!(
            "{} builds is more than one bundle holds ({MAX_BUNDLE_ARTIFACTS})",
            ids.len()
        );
    }
    let install = match &request.install {
        Some(id) => match store.get_install(id).await? {
            Some(i) => Some(i),
            None => bail!("install {id} is not registered; see `ferry install list`"),
        },
        None => None,
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(build) = store.get_build(&id).await? else {
            bail!("build {id} does not exist; see `ferry builds`");
        };
        let Some(artifact) = build.artifact.clone() else {
            bail!(
                "build {id} has no artifact (it is {}); export only succeeded builds",
                build.state.status.as_str()
            );
        };
        if build.state.status != JobStatus::Succeeded {
            bail!(
                "build {id} is {}; export only succeeded builds",
                build.state.status.as_str()
            );
        }
        if let Some(i) = &install {
            if i.app != build.app {
                bail!(
                    "build {id} is of app {}, but install {} runs app {}",
                    build.app,
                    i.id,
                    i.app
                );
            }
        }
        out.push((build, artifact));
    }
    Ok(out)
}

/// Reads a previous bundle's signed manifest, verified against this vendor's own key.
async fn previous(vendor_key: &VendorKey, path: &Path) -> Result<BundleManifest> {
    let reader = BundleReader::open(path, &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE])
        .await
        .with_context(|| format!("--since {}", path.display()))?;
    let bytes = reader
        .read_file(BUNDLE_MANIFEST_FILE, MAX_BUNDLE_MANIFEST_BYTES)
        .await?;
    let sig = reader.read_file(BUNDLE_SIGNATURE_FILE, 1024).await?;
    verify_bundle(
        &vendor_key.public_key_string(),
        &bytes,
        String::from_utf8_lossy(&sig).trim(),
    )
    .with_context(|| format!("--since {}", path.display()))?;
    BundleManifest::parse(&bytes).with_context(|| format!("--since {}", path.display()))
}

async fn since_id(vendor_key: &VendorKey, request: &ExportRequest) -> Result<Option<String>> {
    Ok(match &request.since {
        Some(p) => Some(previous(vendor_key, p).await?.bundle_id),
        None => None,
    })
}

async fn held(vendor_key: &VendorKey, request: &ExportRequest) -> Result<Held> {
    let mut held = Held::default();
    if let Some(path) = &request.since {
        let prev = previous(vendor_key, path).await?;
        if let (Some(a), Some(b)) = (&prev.install, &request.install) {
            if a != b {
                bail!(
                    "--since {} was exported for install {a}, not {b}",
                    path.display()
                );
            }
        }
        for a in prev.artifacts {
            for r in a.requires {
                held.pairs.insert((a.repository.clone(), r.digest));
            }
        }
    }
    if let Some(path) = &request.have {
        let file =
            std::fs::File::open(path).with_context(|| format!("--have {}", path.display()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            if n >= MAX_HAVE_LINES {
                bail!(
                    "--have {}: more than {MAX_HAVE_LINES} lines",
                    path.display()
                );
            }
            let line = line.with_context(|| format!("--have {}", path.display()))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let digest = Digest::new(line).map_err(|e| {
                DevError::Failed(format!(
                    "--have {} line {}: {e}; give one sha256:<64 hex> a line",
                    path.display(),
                    n + 1
                ))
            })?;
            held.digests.insert(digest);
        }
    }
    Ok(held)
}

/// Reads a receipts file (one JSON receipt a line), bounded in lines and line length.
pub fn read_receipts(path: &Path) -> Result<Vec<BundleReceipt>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_RECEIPT_LINE as u64 + 1)
            .read_line(&mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if read > MAX_RECEIPT_LINE {
            bail!(
                "{} line {n} is longer than {MAX_RECEIPT_LINE} bytes; this is not a receipts file",
                path.display()
            );
        }
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_RECEIPTS {
            bail!(
                "{} holds more than {MAX_RECEIPTS} receipts; split it",
                path.display()
            );
        }
        let r: BundleReceipt = serde_json::from_str(line.trim()).map_err(|e| {
            DevError::Failed(format!(
                "{} line {n} is not a receipt ({e}); give the file `ferry-agent import --receipts` wrote",
                path.display()
            ))
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Records every receipt (see `ferry_core::bundle::record_receipt`: the rule of an online
/// report, so a release waiting on the install hears of it through `desk`'s release queue);
/// one refused receipt does not stop the others.
pub async fn import_receipts<D: Desk>(
    desk: &D,
    vendor_key: &VendorKey,
    receipts: &[BundleReceipt],
) -> Result<Vec<ReceiptOutcome>> {
    let mut out = Vec::with_capacity(receipts.len());
    for r in receipts {
        out.push(record_receipt(desk, vendor_key, r).await.with_context(|| {
            format!(
                "recording the receipt of install {} for build {}",
                r.install_id, r.build_id
            )
        })?);
    }
    Ok(out)
}
