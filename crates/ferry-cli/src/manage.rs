//! The management commands that work on a `ferry dev` state directory, from another process
//! while `ferry dev` runs (the SQLite store and queues are cross-process safe): add apps,
//! components and installs, request builds, and show builds, syncs and lineage.
//!
//! Each prints a table, or JSON with `--json`. Bad input (an unknown app, component or install,
//! a malformed digest) is an error that says what to do, and exits 1. This module must never
//! print a secret: new installs get their key and identity secret in 0600 files.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferry_core::domain::{ChartSource, Component, ComponentKind};
use ferry_core::id::{AppName, ComponentName, Digest, InstallId, Repository};
use ferry_core::ports::JobStore as _;
use ferry_local::bus::LocalBus;
use ferry_local::clock::RandomIds;
use ferry_local::queue::SqliteQueue;
use ferry_local::store::SqliteStore;
use serde_json::json;

use crate::state::{self, print_table, short_digest, AppRecord, StateDir};

#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// The `ferry dev` state directory.
    #[arg(long, env = "FERRY_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl StateArgs {
    pub(crate) fn state(&self) -> StateDir {
        StateDir::new(&self.state_dir)
    }
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Register an app and the source tree its components build from.
    Add {
        name: String,
        /// The app's source root (component paths are relative to it).
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Image,
    DockerBuild,
    HelmChart,
    OpentofuModule,
}

#[derive(Subcommand, Debug)]
pub enum ComponentCommand {
    /// Add (or replace) a component of an app.
    Add {
        app: String,
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// image: the image to copy (a reference, or oci:DIR[:tag] under the app root).
        #[arg(long)]
        source: Option<String>,
        /// docker-build: the build context directory.
        #[arg(long)]
        context: Option<String>,
        /// docker-build: the Dockerfile, relative to the context.
        #[arg(long, default_value = "Dockerfile")]
        dockerfile: String,
        /// helm-chart: the chart directory; opentofu-module: the module directory.
        #[arg(long)]
        dir: Option<String>,
        /// Vendor repository (default <app>/<name>).
        #[arg(long)]
        repository: Option<String>,
        /// Also subscribe every existing install of the app to it.
        #[arg(long)]
        subscribe_all: bool,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum InstallCommand {
    /// Add an install: its queue, identity secret and agent key (0600 files under keys/).
    Add {
        id: String,
        #[arg(long)]
        app: String,
        /// Components it receives (comma separated; default: every component of the app).
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        /// The agent's public key (ferry-x25519-pub:…) when the agent runs elsewhere; without
        /// it a key is generated and `ferry dev` runs the agent.
        #[arg(long, requires = "report_key")]
        public_key: Option<String>,
        /// The agent's report key (ferry-agent-ed25519:…, printed by `ferry-agent keygen`
        /// with the public key): only reports signed with it are accepted.
        #[arg(long, requires = "public_key")]
        report_key: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum BuildCommand {
    /// Request a build of a component (build.requested, drained by `ferry dev`).
    Request {
        app: String,
        component: String,
        /// The source ref to build.
        #[arg(long = "ref", default_value = "dev")]
        source_ref: String,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Args, Debug)]
pub struct BuildsArgs {
    /// Only builds of this component.
    #[arg(long)]
    component: Option<String>,
    #[command(flatten)]
    common: StateArgs,
}

#[derive(Args, Debug)]
pub struct SyncsArgs {
    /// Only syncs to this install.
    #[arg(long)]
    install: Option<String>,
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

pub async fn app(cmd: AppCommand) -> Result<()> {
    let AppCommand::Add { name, root, common } = cmd;
    let state = common.state();
    state.open_existing()?;
    let name = AppName::new(name.as_str()).with_context(|| format!("app name {name:?}"))?;
    let root = std::fs::canonicalize(&root)
        .with_context(|| format!("--root {}: no such directory", root.display()))?;
    if !root.is_dir() {
        bail!("--root {} is not a directory", root.display());
    }
    state.write_app(&AppRecord {
        name: name.clone(),
        root: root.clone(),
    })?;
    if common.json {
        println!("{}", json!({"app": name, "root": root}));
    } else {
        println!("app {name} added (source root {})", root.display());
    }
    Ok(())
}

async fn require_app(state: &StateDir, app: &str) -> Result<AppName> {
    let name = AppName::new(app).with_context(|| format!("app name {app:?}"))?;
    if state.read_app(&name)?.is_none() {
        let known: Vec<String> = state.apps()?.iter().map(|a| a.name.to_string()).collect();
        bail!(
            "unknown app {app}; known apps: {}; add it with `ferry app add {app} --root DIR`",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    Ok(name)
}

pub async fn component(cmd: ComponentCommand) -> Result<()> {
    let ComponentCommand::Add {
        app,
        name,
        kind,
        source,
        context,
        dockerfile,
        dir,
        repository,
        subscribe_all,
        common,
    } = cmd;
    let state = common.state();
    let db = state.open_existing()?;
    let app = require_app(&state, &app).await?;
    let cname =
        ComponentName::new(name.as_str()).with_context(|| format!("component name {name:?}"))?;
    let need = |v: Option<String>, flag: &str| {
        v.ok_or_else(|| anyhow::anyhow!("a {kind:?} component needs {flag}"))
    };
    let kind = match kind {
        Kind::Image => ComponentKind::Image {
            source: need(source, "--source")?,
        },
        Kind::DockerBuild => ComponentKind::DockerBuild {
            context: need(context, "--context")?,
            dockerfile,
        },
        Kind::HelmChart => ComponentKind::HelmChart {
            chart: ChartSource::Dir {
                path: need(dir, "--dir")?,
            },
        },
        Kind::OpentofuModule => ComponentKind::OpentofuModule {
            dir: need(dir, "--dir")?,
        },
    };
    let repo_text = repository.unwrap_or_else(|| format!("{app}/{cname}").to_lowercase());
    let repository = Repository::new(repo_text.as_str())
        .with_context(|| format!("repository {repo_text:?}; pass a valid --repository"))?;
    let component = Component {
        app: app.clone(),
        name: cname.clone(),
        kind,
        repository,
    };
    let store = SqliteStore::new(db.clone());
    store.put_component(&component).await?;
    let mut subscribed = Vec::new();
    if subscribe_all {
        for mut i in state::all_installs(&db).await? {
            if i.app == app && !i.components.contains(&cname) {
                i.components.push(cname.clone());
                store.put_install(&i).await?;
                subscribed.push(i.id.to_string());
            }
        }
    }
    if common.json {
        println!(
            "{}",
            json!({"component": component, "subscribed": subscribed})
        );
    } else {
        println!(
            "component {app}/{cname} ({}) → vendor/{}",
            component.kind.name(),
            component.repository
        );
        if !subscribed.is_empty() {
            println!("subscribed: {}", subscribed.join(", "));
        }
    }
    Ok(())
}

pub async fn install(cmd: InstallCommand) -> Result<()> {
    let InstallCommand::Add {
        id,
        app,
        components,
        public_key,
        report_key,
        common,
    } = cmd;
    let state = common.state();
    let db = state.open_existing()?;
    let app = require_app(&state, &app).await?;
    let id = InstallId::new(id.as_str()).with_context(|| format!("install id {id:?}"))?;
    if !ferry_registry::access::identity::valid_install_id(id.as_str()) {
        bail!("install id {id} is not valid (lowercase letters, digits, single . _ -)");
    }
    let known: Vec<Component> = state::all_components(&db)
        .await?
        .into_iter()
        .filter(|c| c.app == app)
        .collect();
    let names = if components.is_empty() {
        known.iter().map(|c| c.name.clone()).collect()
    } else {
        let mut out = Vec::new();
        for c in &components {
            let Some(k) = known.iter().find(|k| k.name.as_str() == c) else {
                bail!(
                    "unknown component {c} of app {app}; known: {}",
                    known
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            out.push(k.name.clone());
        }
        out
    };
    let registry = state
        .read_info()
        .map(|i| i.registry)
        .unwrap_or_else(|| "127.0.0.1".into());
    let keys = match (public_key, report_key) {
        (Some(public_key), Some(report_key)) => Some(state::AgentPublicKeys {
            public_key,
            report_key,
        }),
        _ => None,
    };
    let external = keys.is_some();
    let install = state::provision_install(&state, &db, &id, &app, names, keys, &registry).await?;
    // What an agent running elsewhere must pin: the vendor key's public half and the registry.
    let vendor_public_key =
        state::load_or_create_vendor_key(&state.vendor_key_path())?.public_key_string();
    if common.json {
        println!(
            "{}",
            json!({"install": install, "identity": format!("agent:{id}"),
                "identity_secret_file": state.agent_secret_path(&id),
                "agent_key_file": if external { None } else { Some(state.agent_key_path(&id)) },
                "vendor_registry": registry, "vendor_public_key": vendor_public_key})
        );
    } else {
        println!(
            "install {id} added: app {app}, components {}",
            install
                .components
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("  queue            {}", install.queue);
        println!("  public key       {}", install.agent_public_key);
        println!("  report key       {}", install.agent_report_key);
        println!(
            "  identity         agent:{id}, secret in {} (0600)",
            state.agent_secret_path(&id).display()
        );
        if external {
            println!("  agent            runs elsewhere (its key was given); run it with");
            println!("                   --vendor-registry {registry} --vendor-public-key {vendor_public_key}");
        } else {
            println!(
                "  agent key        {} (0600); a running `ferry dev` starts its agent",
                state.agent_key_path(&id).display()
            );
        }
    }
    Ok(())
}

pub async fn build(cmd: BuildCommand) -> Result<()> {
    let BuildCommand::Request {
        app,
        component,
        source_ref,
        common,
    } = cmd;
    let state = common.state();
    let db = state.open_existing()?;
    let app_name = AppName::new(app.as_str()).with_context(|| format!("app name {app:?}"))?;
    let cname = ComponentName::new(component.as_str())
        .with_context(|| format!("component name {component:?}"))?;
    let store = SqliteStore::new(db.clone());
    if store.get_component(&app_name, &cname).await?.is_none() {
        let known: Vec<String> = state::all_components(&db)
            .await?
            .into_iter()
            .map(|c| format!("{}/{}", c.app, c.name))
            .collect();
        bail!(
            "unknown component {app}/{component}; known: {}; add it with `ferry component add`",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    let bus = LocalBus::new(SqliteQueue::new(db));
    let id = ferry_core::handlers::request_build(
        &bus,
        &RandomIds,
        app_name,
        cname,
        source_ref.clone(),
        "ferry build request".into(),
    )
    .await
    .context("publishing build.requested (is this the state dir `ferry dev` uses?)")?;
    if common.json {
        println!(
            "{}",
            json!({"build_id": id, "app": app, "component": component, "source_ref": source_ref})
        );
    } else {
        println!("build {id} requested: {app}/{component} at {source_ref}");
        println!(
            "watch it with `ferry builds --component {component} --state-dir {}`",
            state.root().display()
        );
    }
    Ok(())
}

pub async fn builds(args: BuildsArgs) -> Result<()> {
    let state = args.common.state();
    let db = state.open_existing()?;
    let mut builds = state::all_builds(&db).await?;
    if let Some(c) = &args.component {
        let comps = state::all_components(&db).await?;
        if !comps.iter().any(|k| k.name.as_str() == c) {
            bail!("unknown component {c}");
        }
        builds.retain(|b| b.component.as_str() == c);
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&builds)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = builds
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                format!("{}/{}", b.app, b.component),
                b.source_ref.clone(),
                b.status().to_string(),
                b.artifact
                    .as_ref()
                    .map(|a| a.digest.to_string())
                    .or_else(|| b.state.error.as_ref().map(|e| e.message.clone()))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &["BUILD", "COMPONENT", "REF", "STATUS", "DIGEST / ERROR"],
        &rows,
    );
    Ok(())
}

pub async fn syncs(args: SyncsArgs) -> Result<()> {
    let state = args.common.state();
    let db = state.open_existing()?;
    let mut syncs = state::all_syncs(&db).await?;
    if let Some(i) = &args.install {
        let installs = state::all_installs(&db).await?;
        if !installs.iter().any(|k| k.id.as_str() == i) {
            bail!(
                "unknown install {i}; known: {}",
                installs
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        syncs.retain(|s| s.install_id.as_str() == i);
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&syncs)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = syncs
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
    Ok(())
}

pub async fn lineage(args: LineageArgs) -> Result<()> {
    let digest = Digest::new(args.digest.as_str()).with_context(|| {
        format!(
            "{:?} is not a digest; give the full sha256:<64 hex> (see `ferry builds`)",
            args.digest
        )
    })?;
    let state = args.common.state();
    let db = state.open_existing()?;
    let records = state::lineage_of(&db, digest.as_str()).await?;
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
                since(r.since),
                r.build_id.to_string(),
                r.sync_id.to_string(),
            ]
        })
        .collect();
    println!("{digest} is held by {} installs:", records.len());
    print_table(&["INSTALL", "REPOSITORY", "SINCE", "BUILD", "SYNC"], &rows);
    Ok(())
}

/// Unix ms as RFC 3339 (UTC, seconds).
fn since(ms: u64) -> String {
    ferry_registry::token::rfc3339(ms / 1000)
}
