//! `ferry-agent import bundle.tar`: updates an air-gapped install from a bundle the vendor
//! exported (`ferry bundle export`), and writes signed receipts the vendor imports later
//! (`ferry receipts import`).
//!
//! Order is what makes an import safe; nothing is written to the install registry before
//! every check passed:
//!
//! 1. the tar is located entry by entry (a truncated or malformed tar is refused);
//! 2. the signed manifest is verified against the vendor key this agent pins (the same key its
//!    jobs are signed with), and must name this install or none;
//! 3. the tar's blob files must be exactly those the signed manifest lists, with their sizes;
//! 4. every blob is streamed into a private OCI layout, which verifies its digest and size;
//! 5. every artifact's graph is walked: each manifest must be in the bundle (it hashes to the
//!    digest that named it, down from the signed root) and each blob in the bundle or already
//!    in the install registry.
//!
//! Then each artifact is copied exactly as a sync copies it (ferry-oci's copy engine, the
//! repository mapped with `Repository::in_install`, tagged `sha256-<hex>` last), retention is
//! applied, and one receipt per artifact is signed with the agent's report key.
//!
//! This module must never tag anything before every check passed, never trust a file of the
//! bundle that the signed manifest does not list, and never put the identity secret into an
//! error or a log line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::bundle::{
    sign_receipt, verify_bundle, BundleArtifact, BundleManifest, BundleReceipt,
    BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE, MAX_BUNDLE_MANIFEST_BYTES, RECEIPT_SCHEMA,
};
use ferry_core::id::InstallId;
use ferry_core::seal::AgentKeypair;
use ferry_oci::bundle::BundleReader;
use ferry_oci::client::MountOutcome;
use ferry_oci::media::is_manifest_type;
use ferry_oci::progress::NoProgress;
use ferry_oci::{
    ClientConfig, CopyEngine, CopyOptions, CopyReport, CredentialStore, Descriptor, Digest,
    LayoutRef, OciLayout, Reference, RegistryClient, RegistryRef, RepoRef,
};

use crate::access::InstallAccess;

/// The largest signature file accepted.
const MAX_SIGNATURE_BYTES: u64 = 1024;

/// Why an import stopped. `Refused`: nothing was written to the install registry.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("bundle refused, nothing was tagged: {0}")]
    Refused(String),
    #[error("import failed after {done} of {total} artifacts were imported (each one complete and verified): {message}")]
    Failed {
        done: usize,
        total: usize,
        message: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Who imports, and into what.
pub struct ImportConfig<'a> {
    pub install_id: InstallId,
    /// `ferry-vendor-ed25519:…`: the key the bundle's manifest must be signed with.
    pub vendor_public_key: String,
    /// The install registry host (`host[:port]`).
    pub install_registry: String,
    /// `installs/<id>` by default.
    pub install_namespace: String,
    /// The vendor's repository prefix the namespace replaces (as for syncs).
    pub vendor_prefix: String,
    /// Push access to the install registry.
    pub access: &'a dyn InstallAccess,
    /// The agent's key: receipts are signed with its report key.
    pub keypair: &'a AgentKeypair,
    /// Retention after each artifact, as after a sync (`None`: the registry's own policy).
    pub keep_last: Option<usize>,
    /// Where the bundle is unpacked while it is checked (a private temporary directory is
    /// made inside and removed afterwards); it needs room for the bundle's blobs.
    pub work_dir: PathBuf,
    /// The agent's clock (unix ms), for the receipts.
    pub now_ms: fn() -> u64,
}

/// One artifact written into the install registry.
#[derive(Debug, Clone)]
pub struct ImportedArtifact {
    /// The repository in the install registry.
    pub repository: String,
    pub digest: Digest,
    pub report: CopyReport,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub bundle_id: String,
    pub artifacts: Vec<ImportedArtifact>,
    /// One per artifact, signed; write them with [`write_receipts`].
    pub receipts: Vec<BundleReceipt>,
}

fn refused(what: impl std::fmt::Display) -> ImportError {
    ImportError::Refused(what.to_string())
}

/// Checks and imports the bundle at `path`. See the module doc for the order.
pub async fn import_bundle(
    config: &ImportConfig<'_>,
    path: &Path,
) -> Result<ImportSummary, ImportError> {
    let reader = BundleReader::open(path, &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE])
        .await
        .map_err(refused)?;
    let manifest = verified_manifest(config, &reader).await?;
    check_entries(&reader, &manifest)?;

    let (work, layout) = unpack(config, &reader, &manifest).await?;

    let client = install_client(config).await?;
    let targets = install_targets(config, &manifest)?;
    check_and_tag(config, &layout, &client, &manifest, &targets).await?;

    // Every check passed: copy, as a sync does.
    let engine = CopyEngine::new(
        client.clone(),
        CopyOptions {
            referrers: true,
            ..CopyOptions::default()
        },
    );
    let total = manifest.artifacts.len();
    let mut summary = ImportSummary {
        bundle_id: manifest.bundle_id.clone(),
        artifacts: Vec::with_capacity(total),
        receipts: Vec::with_capacity(total),
    };
    let report_key = config.keypair.report_key();
    for (done, (a, dst)) in manifest.artifacts.iter().zip(&targets).enumerate() {
        let failed = |message: String| ImportError::Failed {
            done,
            total,
            message,
        };
        let started = Instant::now();
        let source = Reference::Layout(LayoutRef {
            dir: work.path().to_path_buf(),
            tag: None,
            digest: Some(a.digest.clone()),
        });
        let destination = Reference::Registry(RegistryRef {
            repo: dst.clone(),
            tag: Some(a.digest.as_str().replacen(':', "-", 1)),
            digest: None,
        });
        let report = engine
            .copy(&source, &[destination], Arc::new(NoProgress))
            .await
            .map_err(|e| failed(format!("{}@{}: {e}", dst, a.digest)))?;
        let held = client
            .head_manifest(dst, a.digest.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?;
        if held.as_ref().map(|d| &d.digest) != Some(&a.digest) {
            return Err(failed(format!(
                "{dst}@{} is not in the install registry after the copy",
                a.digest
            )));
        }
        apply_retention(&client, dst, config.keep_last).await;
        let mut receipt = receipt(config, &manifest.bundle_id, a, &report, started);
        sign_receipt(&report_key, &mut receipt);
        tracing::info!(repository = %dst, digest = %a.digest, build_id = %a.build_id, "artifact imported");
        summary.receipts.push(receipt);
        summary.artifacts.push(ImportedArtifact {
            repository: dst.repository.clone(),
            digest: a.digest.clone(),
            report,
        });
    }
    Ok(summary)
}

/// Extracts every blob of the bundle into an OCI layout in a fresh temporary directory under
/// the work dir, each verified against its digest; the directory goes when the guard drops.
async fn unpack(
    config: &ImportConfig<'_>,
    reader: &BundleReader,
    manifest: &BundleManifest,
) -> Result<(tempfile::TempDir, OciLayout), ImportError> {
    std::fs::create_dir_all(&config.work_dir).map_err(|e| {
        ImportError::Config(format!(
            "cannot create the work dir {}: {e}",
            config.work_dir.display()
        ))
    })?;
    let work = tempfile::Builder::new()
        .prefix("ferry-import-")
        .tempdir_in(&config.work_dir)
        .map_err(|e| {
            ImportError::Config(format!(
                "cannot create a temporary directory in {}: {e}",
                config.work_dir.display()
            ))
        })?;
    let layout = OciLayout::create(work.path()).await.map_err(refused)?;
    for b in &manifest.blobs {
        reader
            .extract_blob(&b.digest, b.size, &layout)
            .await
            .map_err(|e| refused(format!("blob {} does not verify: {e}", b.digest)))?;
    }
    Ok((work, layout))
}

/// Where each artifact goes: its repository under the install's namespace, in the install
/// registry (refused when it is not under the vendor prefix).
fn install_targets(
    config: &ImportConfig<'_>,
    manifest: &BundleManifest,
) -> Result<Vec<RepoRef>, ImportError> {
    let mut targets = Vec::with_capacity(manifest.artifacts.len());
    for a in &manifest.artifacts {
        let dst = a
            .repository
            .in_install(&config.vendor_prefix, &config.install_namespace)
            .map_err(refused)?;
        targets.push(RepoRef::new(
            config.install_registry.clone(),
            dst.as_str().to_string(),
        ));
    }
    Ok(targets)
}

/// Before anything is copied: each install repository exists, each artifact's graph checks
/// against what the install holds, and each root and referrer is tagged in the layout.
async fn check_and_tag(
    config: &ImportConfig<'_>,
    layout: &OciLayout,
    client: &RegistryClient,
    manifest: &BundleManifest,
    targets: &[RepoRef],
) -> Result<(), ImportError> {
    for (a, dst) in manifest.artifacts.iter().zip(targets) {
        config
            .access
            .prepare_repository(&dst.repository)
            .await
            .map_err(|e| ImportError::Config(format!("install repository {dst}: {e}")))?;
        check_graph(layout, client, dst, targets, &a.digest).await?;
        layout
            .tag(None, &root_descriptor(layout, &a.digest).await?)
            .await
            .map_err(refused)?;
        for r in &a.referrers {
            let desc = Descriptor {
                media_type: r.media_type.clone(),
                digest: r.digest.clone(),
                size: r.size,
                platform: None,
                artifact_type: None,
                annotations: BTreeMap::new(),
            };
            layout.tag(None, &desc).await.map_err(refused)?;
        }
    }
    Ok(())
}

/// Applies the configured retention after an import; a failure is logged, not fatal (the next
/// sync or import of the repository tries again).
async fn apply_retention(client: &RegistryClient, dst: &RepoRef, keep_last: Option<usize>) {
    if let Some(keep_last) = keep_last {
        match client.apply_retention(dst, keep_last).await {
            Ok(r) => tracing::info!(repository = %dst, keep_last,
                tags_removed = r.tags_removed.len(), "retention applied"),
            Err(e) => tracing::warn!(repository = %dst, error = %e,
                "retention not applied; the next sync or import of this repository tries again"),
        }
    }
}

/// The receipt of one imported artifact, unsigned.
fn receipt(
    config: &ImportConfig<'_>,
    bundle_id: &str,
    a: &BundleArtifact,
    report: &CopyReport,
    started: Instant,
) -> BundleReceipt {
    BundleReceipt {
        schema: RECEIPT_SCHEMA,
        install_id: config.install_id.clone(),
        bundle_id: bundle_id.to_string(),
        build_id: a.build_id.clone(),
        repository: a.repository.clone(),
        digest: a.digest.clone(),
        imported_at: (config.now_ms)(),
        bytes_copied: report.bytes_copied,
        bytes_skipped: report.bytes_skipped,
        duration_ms: started.elapsed().as_millis() as u64,
        signature: String::new(),
    }
}

/// Reads and verifies the signed manifest; it must be for this install or for any.
async fn verified_manifest(
    config: &ImportConfig<'_>,
    reader: &BundleReader,
) -> Result<BundleManifest, ImportError> {
    let bytes = reader
        .read_file(BUNDLE_MANIFEST_FILE, MAX_BUNDLE_MANIFEST_BYTES)
        .await
        .map_err(refused)?;
    let sig = reader
        .read_file(BUNDLE_SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
        .await
        .map_err(refused)?;
    let sig = String::from_utf8_lossy(&sig);
    verify_bundle(&config.vendor_public_key, &bytes, sig.trim()).map_err(|e| {
        refused(format!(
            "{e}; ask the vendor for a bundle signed with the key this agent pins \
             (--vendor-public-key)"
        ))
    })?;
    let manifest = BundleManifest::parse(&bytes).map_err(refused)?;
    if let Some(for_install) = &manifest.install {
        if for_install != &config.install_id {
            return Err(refused(format!(
                "bundle {} was exported for install {for_install}, not {}; ask the vendor for \
                 one exported with --install {}",
                manifest.bundle_id, config.install_id, config.install_id
            )));
        }
    }
    Ok(manifest)
}

/// The tar's blob files must be exactly the signed list.
fn check_entries(reader: &BundleReader, manifest: &BundleManifest) -> Result<(), ImportError> {
    let listed: BTreeSet<(Digest, u64)> = manifest
        .blobs
        .iter()
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    let present: BTreeSet<(Digest, u64)> = reader.blobs().map_err(refused)?.into_iter().collect();
    if let Some((d, s)) = present.difference(&listed).next() {
        return Err(refused(format!(
            "the tar holds {d} ({s} bytes), which its signed manifest does not list: it was altered"
        )));
    }
    if let Some((d, s)) = listed.difference(&present).next() {
        return Err(refused(format!(
            "the signed manifest lists {d} ({s} bytes), which the tar does not hold: it is \
             truncated or was altered"
        )));
    }
    Ok(())
}

async fn install_client(config: &ImportConfig<'_>) -> Result<RegistryClient, ImportError> {
    let push = config
        .access
        .credential()
        .await
        .map_err(|e| ImportError::Config(format!("install registry login: {e}")))?;
    let mut credentials = CredentialStore::new();
    let namespace = config.install_namespace.trim_end_matches('/');
    credentials.insert(
        &config.install_registry,
        (!namespace.is_empty()).then_some(namespace),
        push,
    );
    RegistryClient::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })
    .map_err(|e| ImportError::Config(e.to_string()))
}

async fn root_descriptor(layout: &OciLayout, digest: &Digest) -> Result<Descriptor, ImportError> {
    let m = layout.read_manifest(digest, "").await.map_err(refused)?;
    Ok(m.descriptor())
}

/// Walks `root` (and the referrers the layout lists for each manifest) in the layout: every
/// manifest must be there and verify; every blob must be there or already in `dst` (or
/// mountable into it from another repository this bundle writes).
async fn check_graph(
    layout: &OciLayout,
    client: &RegistryClient,
    dst: &RepoRef,
    siblings: &[RepoRef],
    root: &Digest,
) -> Result<(), ImportError> {
    let mut stack = vec![(root.clone(), String::new())];
    let mut seen = BTreeSet::new();
    while let Some((digest, media_type)) = stack.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        let m = layout
            .read_manifest(&digest, &media_type)
            .await
            .map_err(|e| refused(format!("manifest {digest}: {e}")))?;
        let refs = m.references().map_err(refused)?;
        for child in &refs.manifests {
            if is_manifest_type(&child.media_type) {
                stack.push((child.digest.clone(), child.media_type.clone()));
            } else {
                require_blob(layout, client, dst, siblings, &child.digest).await?;
            }
        }
        for b in refs.config.iter().chain(refs.layers.iter()) {
            require_blob(layout, client, dst, siblings, &b.digest).await?;
        }
    }
    Ok(())
}

async fn require_blob(
    layout: &OciLayout,
    client: &RegistryClient,
    dst: &RepoRef,
    siblings: &[RepoRef],
    digest: &Digest,
) -> Result<(), ImportError> {
    if layout.has_blob(digest).await.map_err(refused)?.is_some() {
        return Ok(());
    }
    if client
        .blob_exists(dst, digest)
        .await
        .map_err(refused)?
        .is_some()
    {
        return Ok(());
    }
    for other in siblings.iter().filter(|s| s.repository != dst.repository) {
        if client
            .blob_exists(other, digest)
            .await
            .map_err(refused)?
            .is_some()
            && matches!(
                client.mount_blob(dst, &other.repository, digest).await,
                Ok(MountOutcome::Mounted)
            )
        {
            return Ok(());
        }
    }
    Err(refused(format!(
        "blob {digest} of {dst} is neither in the bundle nor in the install registry; this \
         incremental bundle needs an earlier one imported first (export it again --since the \
         last bundle this install imported, or without --since/--have)"
    )))
}

/// Writes the receipts, one JSON object a line, to `path` (through a temporary file and a
/// rename, so a reader never sees half a file). Receipts are signed, not secret.
pub fn write_receipts(path: &Path, receipts: &[BundleReceipt]) -> Result<(), ImportError> {
    let mut out = String::new();
    for r in receipts {
        let line = serde_json::to_string(r).map_err(|e| ImportError::Config(e.to_string()))?;
        out.push_str(&line);
        out.push('\n');
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let io = |e: std::io::Error| {
        ImportError::Config(format!("writing receipts to {}: {e}", path.display()))
    };
    std::fs::write(&tmp, out).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
