//! `ferry bundle export` and `ferry receipts import`: the vendor side of air-gapped installs.
//! Parses flags, opens the context's store, vendor key and vendor registry, calls
//! `ferry_dev::bundle` and prints. Local contexts only for now (an AWS context is refused with
//! a message saying so).
//!
//! This module must never print a secret: the vendor key and the registry identity stay in
//! their 0600 files.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use ferry_core::bundle::ReceiptOutcome;
use ferry_core::id::{BuildId, InstallId, ReleaseId};
use ferry_core::trust::VendorKey;
use ferry_dev::bundle::{
    export_bundle, import_receipts, read_receipts, ExportRequest, VendorSource,
};
use ferry_dev::manage::LocalManagement;
use ferry_dev::state;
use ferry_oci::{ClientConfig, Credential, CredentialStore, RegistryClient, Secret};

use crate::context::Backend;
use crate::manage::StateArgs;

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Write one signed bundle tar (an OCI image layout) of a release's or builds' artifacts,
    /// for an install that cannot reach the vendor registry (`ferry-agent import` reads it).
    Export(Box<ExportArgs>),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Every build of this release.
    #[arg(long)]
    release: Option<String>,
    /// A build (repeatable).
    #[arg(long = "build")]
    builds: Vec<String>,
    /// The only install that may import it (default: any install of the vendor).
    #[arg(long)]
    install: Option<String>,
    /// The bundle file to write.
    #[arg(long)]
    out: PathBuf,
    /// Incremental: leave out blobs the artifacts of this earlier bundle required (the
    /// install imported it). Manifests are always carried.
    #[arg(long, conflicts_with = "have")]
    since: Option<PathBuf>,
    /// Incremental: leave out these blobs (a file of `sha256:…`, one a line).
    #[arg(long)]
    have: Option<PathBuf>,
    /// The vendor registry (default: the one the running `ferry dev` serves).
    #[arg(long)]
    registry: Option<String>,
    #[command(flatten)]
    common: StateArgs,
}

#[derive(Subcommand, Debug)]
pub enum ReceiptsCommand {
    /// Record an air-gapped install's signed receipts (`ferry-agent import --receipts FILE`)
    /// as if its agent had reported the syncs online: current versions and lineage.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The receipts file.
    file: PathBuf,
    #[command(flatten)]
    common: StateArgs,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn local(backend: Backend, what: &str) -> Result<LocalManagement> {
    match backend {
        Backend::Local(m) => Ok(m),
        #[cfg(feature = "aws")]
        Backend::Aws(_) => bail!(
            "`ferry {what}` works on local contexts only for now; pass --state-dir or select a \
             local context (see docs/design/bundles.md, what is not done)"
        ),
    }
}

fn vendor_key(m: &LocalManagement) -> Result<VendorKey> {
    let path = m.state().vendor_key_path();
    let text = state::read_secret(&path)?;
    VendorKey::from_secret_string(&text)
        .with_context(|| format!("{} does not hold a vendor key", path.display()))
}

/// `ferry bundle export`.
pub async fn bundle(cmd: BundleCommand, ctx: Option<&str>) -> Result<()> {
    let BundleCommand::Export(args) = cmd;
    let m = local(args.common.open(ctx).await?, "bundle export")?;
    let key = vendor_key(&m)?;
    let registry = args.registry.clone().unwrap_or_else(|| m.dev_registry());
    let secret = state::read_secret(&m.state().vendor_secret_path())?;
    let mut credentials = CredentialStore::new();
    credentials.insert(
        &registry,
        Some("vendor"),
        Credential::Basic {
            username: "vendor".into(),
            password: Secret::new(secret.as_str()),
        },
    );
    let client = RegistryClient::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })?;
    let request = ExportRequest {
        release: args.release.as_deref().map(ReleaseId::new).transpose()?,
        builds: args
            .builds
            .iter()
            .map(|b| BuildId::new(b.as_str()))
            .collect::<Result<_, _>>()?,
        install: args.install.as_deref().map(InstallId::new).transpose()?,
        out: args.out.clone(),
        since: args.since.clone(),
        have: args.have.clone(),
    };
    let source = VendorSource {
        client: &client,
        registry,
    };
    let summary = export_bundle(m.store(), &key, &source, &request, now_ms()).await?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "bundle {} written to {}: {} artifacts, {} manifests, {} blobs ({} left out: the install holds them), {} bytes",
        summary.bundle_id,
        summary.out.display(),
        summary.artifacts,
        summary.manifests,
        summary.blobs_included,
        summary.blobs_left_out,
        summary.bytes
    );
    Ok(())
}

/// `ferry receipts import`.
pub async fn receipts(cmd: ReceiptsCommand, ctx: Option<&str>) -> Result<()> {
    let ReceiptsCommand::Import(args) = cmd;
    let m = local(args.common.open(ctx).await?, "receipts import")?;
    let key = vendor_key(&m)?;
    let receipts = read_receipts(&args.file)?;
    let outcomes = import_receipts(m.store(), &key, now_ms(), &receipts).await?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        for (r, o) in receipts.iter().zip(&outcomes) {
            let what = match o {
                ReceiptOutcome::Recorded { sync_id } => format!("recorded (sync {sync_id})"),
                ReceiptOutcome::Replayed { sync_id } => {
                    format!("already recorded (sync {sync_id})")
                }
                ReceiptOutcome::Refused { reason } => format!("REFUSED: {reason}"),
            };
            println!(
                "{} {} {}@{}: {what}",
                r.install_id, r.build_id, r.repository, r.digest
            );
        }
    }
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, ReceiptOutcome::Refused { .. }))
        .count();
    if refused > 0 {
        bail!(
            "{refused} of {} receipts were refused and recorded nothing",
            outcomes.len()
        );
    }
    Ok(())
}
