//! `ferry syncs` and `ferry lineage`: list syncs and what an install holds, by digest. Read
//! only: it must never change a job.

use anyhow::{Context as _, Result};
use clap::Args;
use ferry_core::id::{BuildId, Digest};
use ferry_core::manage::Management as _;
use ferry_core::manage::SyncFilter;

use super::{install_id, time, StateArgs};
use crate::context::Backend;
use crate::state::{print_table, short_digest};

#[derive(Args, Debug)]
pub struct SyncsArgs {
    /// Only syncs to this install.
    #[arg(long)]
    install: Option<String>,
    /// Only syncs of this build.
    #[arg(long)]
    build: Option<String>,
    #[command(flatten)]
    common: StateArgs,
}

#[derive(Args, Debug)]
pub struct LineageArgs {
    /// The artifact digest (sha256:<64 hex>).
    digest: String,
    #[command(flatten)]
    common: StateArgs,
}

pub async fn syncs(args: SyncsArgs, ctx: Option<&str>) -> Result<()> {
    let backend = args.common.open(ctx).await?;
    let filter = SyncFilter {
        install: args.install.as_deref().map(install_id).transpose()?,
        build: args
            .build
            .as_deref()
            .map(|b| BuildId::new(b).with_context(|| format!("build id {b:?}")))
            .transpose()?,
    };
    let listing = with_backend!(&backend, m => m.list_syncs(&filter).await)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&listing.items)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listing
        .items
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.install_id.to_string(),
                s.repository.to_string(),
                short_digest(s.digest.as_str()),
                s.status().to_string(),
                s.state.attempts.to_string(),
                s.stats
                    .map(|st| format!("{}/{}", st.bytes_copied, st.bytes_skipped))
                    .unwrap_or_else(|| "-".into()),
                s.state
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "SYNC",
            "INSTALL",
            "REPOSITORY",
            "DIGEST",
            "STATUS",
            "ATTEMPTS",
            "COPIED/SKIPPED",
            "ERROR",
        ],
        &rows,
    );
    if listing.truncated {
        println!(
            "(the newest {} only; filter with --install or --build)",
            rows.len()
        );
    }
    Ok(())
}

pub async fn lineage(args: LineageArgs, ctx: Option<&str>) -> Result<()> {
    let digest = Digest::new(args.digest.as_str()).with_context(|| {
        format!(
            "{:?} is not a digest; give the full sha256:<64 hex> (see `ferry builds`)",
            args.digest
        )
    })?;
    let backend = args.common.open(ctx).await?;
    let records = with_backend!(&backend, m => m.lineage(&digest).await)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.is_empty() {
        println!("no install holds {digest}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.install_id.to_string(),
                r.repository.to_string(),
                time(r.since),
                r.build_id.to_string(),
                r.sync_id.to_string(),
            ]
        })
        .collect();
    println!("{digest} is held by {} installs:", records.len());
    print_table(&["INSTALL", "REPOSITORY", "SINCE", "BUILD", "SYNC"], &rows);
    Ok(())
}
