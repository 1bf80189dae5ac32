//! The management commands (`app`, `component`, `install`, `build request`, `builds`, `syncs`,
//! `lineage`, `dlq`): each parses its flags, calls the management port of the selected context
//! (a `ferry dev` state dir, or a deployed AWS stack; see [`crate::context`]) and prints a
//! table, or JSON with `--json`. The same command prints the same thing on both backends.
//!
//! Bad input (an unknown app, component or install, a malformed digest) is an error that says
//! what to do, and exits 1. This module must never print a secret: registrations carry public
//! keys, and local agent keys and identity secrets stay in 0600 files that are only named.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use ferry_core::id::{AppName, ComponentName, InstallId};

use crate::context::{self, Backend};

/// Where a management command acts, and how it prints.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// A `ferry dev` state directory (overrides the context).
    #[arg(long, env = "FERRY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl StateArgs {
    pub(crate) async fn open(&self, ctx: Option<&str>) -> Result<Backend> {
        context::open(ctx, self.state_dir.as_deref()).await
    }
}

/// Runs `$body` with `$m` bound to the backend's management port.
macro_rules! with_backend {
    ($backend:expr, $m:ident => $body:expr) => {
        match $backend {
            Backend::Local($m) => $body,
            #[cfg(feature = "aws")]
            Backend::Aws($m) => $body,
        }
    };
}

mod app;
mod build;
mod component;
mod dlq;
mod install;
mod syncs;

pub use app::{app, AppCommand};
pub use build::{build, builds, BuildCommand, BuildsArgs};
pub use component::{component, ComponentCommand};
pub use dlq::{dlq, DlqCommand};
pub use install::{install, InstallCommand};
pub use syncs::{lineage, syncs, LineageArgs, SyncsArgs};

fn app_name(s: &str) -> Result<AppName> {
    AppName::new(s).with_context(|| format!("app name {s:?}"))
}

fn component_name(s: &str) -> Result<ComponentName> {
    ComponentName::new(s).with_context(|| format!("component name {s:?}"))
}

fn install_id(s: &str) -> Result<InstallId> {
    InstallId::new(s).with_context(|| format!("install id {s:?}"))
}

fn component_names(v: &[String]) -> Result<Vec<ComponentName>> {
    v.iter().map(|c| component_name(c)).collect()
}

/// Unix ms as RFC 3339 (UTC, seconds).
fn time(ms: u64) -> String {
    ferry_registry::token::rfc3339(ms / 1000)
}
