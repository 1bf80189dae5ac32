//! `ferry app`: add, list and remove apps. It must never print a secret.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use ferry_core::manage::AppRecord;
use ferry_core::manage::Management as _;
use serde_json::json;

use super::{app_name, StateArgs};
use crate::context::Backend;
use crate::state::print_table;

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Add (or replace) an app.
    Add {
        name: String,
        /// The app's source root on this machine (local: component paths are relative to it).
        #[arg(long, conflicts_with = "source")]
        root: Option<PathBuf>,
        /// Where its sources are, as text (AWS: a repository URL; informational).
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// List apps.
    List {
        #[command(flatten)]
        common: StateArgs,
    },
}

pub async fn app(cmd: AppCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        AppCommand::Add {
            name,
            root,
            source,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let name = app_name(&name)?;
            let source = match root {
                Some(root) => {
                    let root = std::fs::canonicalize(&root)
                        .with_context(|| format!("--root {}: no such directory", root.display()))?;
                    if !root.is_dir() {
                        bail!("--root {} is not a directory", root.display());
                    }
                    Some(root.display().to_string())
                }
                None => source,
            };
            if matches!(backend, Backend::Local(_)) && source.is_none() {
                bail!("a local app needs --root DIR: `ferry dev` builds its components from there");
            }
            let record = AppRecord {
                name: name.clone(),
                source: source.clone(),
            };
            with_backend!(&backend, m => m.put_app(&record).await)?;
            if common.json {
                println!("{}", json!({"app": name, "source": source}));
            } else {
                println!(
                    "app {name} added (source {})",
                    source.as_deref().unwrap_or("-")
                );
            }
        }
        AppCommand::List { common } => {
            let backend = common.open(ctx).await?;
            let apps = with_backend!(&backend, m => m.list_apps().await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                let rows: Vec<Vec<String>> = apps
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.to_string(),
                            a.source.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print_table(&["APP", "SOURCE"], &rows);
            }
        }
    }
    Ok(())
}
