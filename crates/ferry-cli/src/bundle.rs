//! `ferry bundle export` and `ferry receipts import`: the vendor side of air-gapped installs.
//! Parses flags, opens the context's store, vendor key and vendor registry, calls
//! `ferry_dev::bundle` and prints. On a local context the vendor key and the registry identity
//! are the state dir's 0600 files; on an AWS context the vendor key is read from Secrets
//! Manager (the stack's `VendorKeySecretArn`) and the vendor registry (ECR) is logged into with
//! ECR GetAuthorizationToken; the store is DynamoDB and releases hear of receipts through the
//! stack's release queue.
//!
//! This module must never print a secret: the vendor key, the registry identity and the ECR
//! token are held in memory only as long as the command runs, and never formatted.

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
    /// The vendor registry (default: the one the running `ferry dev` serves; on AWS the
    /// context's vendor registry, ECR).
    #[arg(long)]
    registry: Option<String>,
    #[command(flatten)]
    aws: AwsKeyArgs,
    #[command(flatten)]
    common: StateArgs,
}

/// Where an AWS context's vendor key is.
#[derive(Args, Debug, Clone)]
pub struct AwsKeyArgs {
    /// AWS contexts: the Secrets Manager secret holding the vendor key (default: the vendor
    /// stack's VendorKeySecretArn output, read with CloudFormation DescribeStacks).
    #[arg(long)]
    vendor_key_secret_arn: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ReceiptsCommand {
    /// Record an air-gapped install's signed receipts (`ferry-agent import --receipts FILE`)
    /// as if its agent had reported the syncs online: current versions, lineage, and the
    /// release steps waiting on the install.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The receipts file.
    file: PathBuf,
    #[command(flatten)]
    aws: AwsKeyArgs,
    #[command(flatten)]
    common: StateArgs,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn vendor_key(m: &LocalManagement) -> Result<VendorKey> {
    let path = m.state().vendor_key_path();
    let text = state::read_secret(&path)?;
    VendorKey::from_secret_string(&text)
        .with_context(|| format!("{} does not hold a vendor key", path.display()))
}

/// A registry client holding one Basic credential for every repository of `registry`
/// (`prefix`: only those below it).
fn client_for(
    registry: &str,
    prefix: Option<&str>,
    username: &str,
    password: &str,
) -> Result<RegistryClient> {
    let mut credentials = CredentialStore::new();
    credentials.insert(
        registry,
        prefix,
        Credential::Basic {
            username: username.into(),
            password: Secret::new(password),
        },
    );
    Ok(RegistryClient::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })?)
}

/// The AWS context a command opened (`Backend::Aws` comes only from one).
#[cfg(feature = "aws")]
fn aws_context(ctx: Option<&str>) -> Result<crate::context::AwsContext> {
    crate::context::selected_aws(ctx)?
        .context("the selected context is not an AWS context; see `ferry context list`")
}

/// The vendor key of an AWS context: the secret `arn` names, else the stack's
/// VendorKeySecretArn. Refused when it is not the key the context pins (agents trust that one).
#[cfg(feature = "aws")]
async fn aws_vendor_key(aws: &crate::context::AwsContext, arn: Option<&str>) -> Result<VendorKey> {
    let arn = match arn {
        Some(a) => a.to_string(),
        None => crate::context::stack_outputs(aws)
            .await?
            .get(ferry_aws::stack::OUTPUT_VENDOR_KEY_SECRET_ARN)
            .cloned()
            .with_context(|| {
                format!(
                    "stack {} has no {} output; pass --vendor-key-secret-arn",
                    aws.stack,
                    ferry_aws::stack::OUTPUT_VENDOR_KEY_SECRET_ARN
                )
            })?,
    };
    let config = crate::context::sdk_config(aws).await;
    let text = ferry_aws::agent::read_secret_string(&config, &arn)
        .await
        .with_context(|| format!("reading the vendor key secret {arn}"))?;
    let key = VendorKey::from_secret_string(&text)
        .with_context(|| format!("secret {arn} does not hold a vendor key"))?;
    if let Some(pinned) = &aws.vendor_public_key {
        if *pinned != key.public_key_string() {
            bail!(
                "secret {arn} holds another vendor key than the one context {} pins (and agents \
                 trust); pass the secret of the stack's own key with --vendor-key-secret-arn",
                aws.stack
            );
        }
    }
    Ok(key)
}

/// A pull client for the AWS context's vendor registry: ECR GetAuthorizationToken with the
/// vendor's own credentials, for `registry` (ECR, or what --registry names instead).
#[cfg(feature = "aws")]
async fn ecr_client(aws: &crate::context::AwsContext, registry: &str) -> Result<RegistryClient> {
    let config = crate::context::sdk_config(aws).await;
    let login = ferry_aws::agent::InstallEcr::new(&config)
        .login()
        .await
        .context("logging into the vendor registry (ECR GetAuthorizationToken)")?;
    client_for(registry, None, &login.username, login.password.as_str())
}

/// `ferry bundle export`.
pub async fn bundle(cmd: BundleCommand, ctx: Option<&str>) -> Result<()> {
    let BundleCommand::Export(args) = cmd;
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
    let summary = match args.common.open(ctx).await? {
        Backend::Local(m) => {
            let key = vendor_key(&m)?;
            let registry = args.registry.clone().unwrap_or_else(|| m.dev_registry());
            let secret = state::read_secret(&m.state().vendor_secret_path())?;
            let client = client_for(&registry, Some("vendor"), "vendor", secret.as_str())?;
            let source = VendorSource {
                client: &client,
                registry,
            };
            export_bundle(m.store(), &key, &source, &request, now_ms()).await?
        }
        #[cfg(feature = "aws")]
        Backend::Aws(m) => {
            let aws = aws_context(ctx)?;
            let key = aws_vendor_key(&aws, args.aws.vendor_key_secret_arn.as_deref()).await?;
            let registry = args
                .registry
                .clone()
                .unwrap_or_else(|| aws.vendor_registry.clone());
            let client = ecr_client(&aws, &registry).await?;
            let source = VendorSource {
                client: &client,
                registry,
            };
            export_bundle(m.store(), &key, &source, &request, now_ms()).await?
        }
    };
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
    let receipts = read_receipts(&args.file)?;
    let outcomes = match args.common.open(ctx).await? {
        Backend::Local(m) => {
            let key = vendor_key(&m)?;
            import_receipts(&m.release_desk()?, &key, &receipts).await?
        }
        #[cfg(feature = "aws")]
        Backend::Aws(m) => {
            let aws = aws_context(ctx)?;
            let key = aws_vendor_key(&aws, args.aws.vendor_key_secret_arn.as_deref()).await?;
            import_receipts(&m.release_desk()?, &key, &receipts).await?
        }
    };
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
