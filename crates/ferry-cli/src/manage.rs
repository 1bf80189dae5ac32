//! The management commands (`app`, `component`, `install`, `build request`, `builds`, `syncs`,
//! `lineage`, `dlq`): each parses its flags, calls the management port of the selected context
//! (a `ferry dev` state dir, or a deployed AWS stack; see [`crate::context`]) and prints a
//! table, or JSON with `--json`. The same command prints the same thing on both backends.
//!
//! Bad input (an unknown app, component or install, a malformed digest) is an error that says
//! what to do, and exits 1. This module must never print a secret: registrations carry public
//! keys, and local agent keys and identity secrets stay in 0600 files that are only named.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferry_core::domain::{
    ChartSource, Component, ComponentKind, GitSource, KeyRequirement, RegistryTarget, VerifyPolicy,
};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, Repository};
use ferry_core::manage::{
    AppRecord, BuildFilter, InstallRegistration, Management, Registration, SyncFilter,
};
use serde_json::json;

use crate::context::{self, Backend};
use crate::state::{print_table, short_digest};

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
        #[arg(long, visible_alias = "image", value_name = "REF")]
        source: Option<String>,
        /// docker-build: the build context directory (`--context` is the global context).
        #[arg(long)]
        build_context: Option<String>,
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
        extras: Box<ComponentExtras>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// List components (of one app, or all).
    List {
        app: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
}

/// A component's own git source and its signature policy.
#[derive(Args, Debug, Default)]
pub struct ComponentExtras {
    /// docker-build, helm-chart (directory), opentofu-module: the component's own git
    /// repository (https, ssh, git or file URL); its paths are then relative to it.
    #[arg(long)]
    git: Option<String>,
    /// With --git: the ref to build by default (a branch, tag or commit; `ferry build request
    /// --ref` overrides it). Default: the repository's HEAD.
    #[arg(long, requires = "git")]
    git_ref: Option<String>,
    /// With --git: the directory inside the repository that the component's paths are
    /// relative to.
    #[arg(long, requires = "git")]
    git_path: Option<String>,
    /// image: a cosign public key file (PEM, ECDSA P-256, `cosign.pub`) whose signature the
    /// image must carry before it is imported and before any install takes it. Repeatable.
    #[arg(long = "verify-key", value_name = "FILE")]
    verify_keys: Vec<PathBuf>,
    /// With --verify-key: whether a signature by any one key suffices, or every key must sign.
    #[arg(long, value_enum, default_value = "any", requires = "verify_keys")]
    verify_require: Require,
    /// The credential the build reads the private source with (image registry, chart
    /// repository, https git): its name only. The secret is in the builder's credentials file
    /// (~/.config/ferry/credentials.json, mode 0600) locally, and in the Secrets Manager secret
    /// ferry/sources/NAME on AWS. See docs/design/build.md.
    #[arg(long, value_name = "NAME")]
    credentials: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default)]
pub enum Require {
    #[default]
    Any,
    All,
}

impl ComponentExtras {
    fn git_source(&self) -> Option<GitSource> {
        self.git.as_ref().map(|url| GitSource {
            git: url.clone(),
            reference: self.git_ref.clone(),
            path: self.git_path.clone(),
        })
    }

    /// The policy from the key files, each checked to be a key cosign verifies with.
    fn policy(&self) -> Result<Option<VerifyPolicy>> {
        if self.verify_keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(self.verify_keys.len());
        for path in &self.verify_keys {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("--verify-key {}: cannot read it", path.display()))?;
            if meta.len() > ferry_core::domain::MAX_POLICY_KEY_BYTES as u64 {
                bail!(
                    "--verify-key {}: {} bytes is not a public key file (cosign.pub is under 1 KiB)",
                    path.display(),
                    meta.len()
                );
            }
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--verify-key {}: cannot read it", path.display()))?;
            ferry_oci::cosign::PublicKey::from_pem(&pem)
                .with_context(|| format!("--verify-key {}", path.display()))?;
            keys.push(pem);
        }
        Ok(Some(VerifyPolicy {
            keys,
            require: match self.verify_require {
                Require::Any => KeyRequirement::Any,
                Require::All => KeyRequirement::All,
            },
        }))
    }
}

#[derive(Subcommand, Debug)]
pub enum InstallCommand {
    /// Local only: add an install whose agent `ferry dev` runs (its key is generated into a
    /// 0600 file), or, with both keys, one whose agent runs elsewhere.
    Add {
        id: String,
        #[arg(long)]
        app: String,
        /// Components it receives (comma separated; default: every component of the app).
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        /// The agent's public key (ferry-x25519-pub:…) when the agent runs elsewhere.
        #[arg(long, requires = "report_key")]
        public_key: Option<String>,
        /// The agent's report key (ferry-agent-ed25519:…): only reports signed with it count.
        #[arg(long, requires = "public_key")]
        report_key: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Register a customer's install: its queue (with a dead-letter queue, admitting only its
    /// agent), its record and subscriptions. Running it again changes nothing, or updates.
    Register {
        id: String,
        #[arg(long)]
        app: String,
        /// The agent's public key (ferry-x25519-pub:…, from `ferry-agent keygen`).
        #[arg(long)]
        public_key: String,
        /// The agent's report key (ferry-agent-ed25519:…, from `ferry-agent keygen`).
        #[arg(long)]
        report_key: String,
        /// The IAM role the agent runs as (AWS: the only principal its queue admits).
        #[arg(long)]
        agent_role_arn: Option<String>,
        /// The install's registry, HOST[/NAMESPACE] (default namespace installs/<id>).
        #[arg(long)]
        registry: Option<String>,
        /// Components it receives (comma separated; default: every component of the app).
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// List installs.
    List {
        #[command(flatten)]
        common: StateArgs,
    },
    /// One install: its settings, last sync, last report and what it holds.
    Show {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Remove an install: delete its queue and stop fan-out to it (its lineage stays).
    Remove {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum BuildCommand {
    /// Request a build of a component (posts build.requested).
    Request {
        app: String,
        component: String,
        /// The source ref to build: for a component with its own git repository, the branch,
        /// tag or commit (overriding the component's ref); for an image without a tag, the tag.
        /// Default: the component's own (its git ref, the image's tag as written).
        #[arg(long = "ref")]
        source_ref: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Args, Debug)]
pub struct BuildsArgs {
    /// Only builds of this app.
    #[arg(long)]
    app: Option<String>,
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

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// The dead letters of QUEUE with the error each job recorded; without QUEUE, the queues
    /// that have a dead-letter queue.
    List {
        queue: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Send the dead letters of QUEUE back onto it.
    Redrive {
        queue: String,
        #[command(flatten)]
        common: StateArgs,
    },
}

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

pub async fn component(cmd: ComponentCommand, ctx: Option<&str>) -> Result<()> {
    let (
        app,
        name,
        kind,
        source,
        context,
        dockerfile,
        dir,
        repository,
        subscribe_all,
        extras,
        common,
    ) = match cmd {
        ComponentCommand::List { app, common } => {
            let backend = common.open(ctx).await?;
            let app = app.as_deref().map(app_name).transpose()?;
            let comps = with_backend!(&backend, m => m.list_components(app.as_ref()).await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&comps)?);
            } else {
                let rows: Vec<Vec<String>> = comps
                    .iter()
                    .map(|c| {
                        vec![
                            format!("{}/{}", c.app, c.name),
                            c.kind.name().to_string(),
                            c.repository.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["COMPONENT", "KIND", "REPOSITORY"], &rows);
            }
            return Ok(());
        }
        ComponentCommand::Add {
            app,
            name,
            kind,
            source,
            build_context,
            dockerfile,
            dir,
            repository,
            subscribe_all,
            extras,
            common,
        } => (
            app,
            name,
            kind,
            source,
            build_context,
            dockerfile,
            dir,
            repository,
            subscribe_all,
            extras,
            common,
        ),
    };
    let backend = common.open(ctx).await?;
    let app = app_name(&app)?;
    let cname = component_name(&name)?;
    let need = |v: Option<String>, flag: &str| {
        v.ok_or_else(|| anyhow::anyhow!("a {kind:?} component needs {flag}"))
    };
    let kind = match kind {
        Kind::Image => ComponentKind::Image {
            source: need(source, "--source")?,
        },
        Kind::DockerBuild => ComponentKind::DockerBuild {
            context: need(context, "--build-context")?,
            dockerfile,
            source: extras.git_source(),
        },
        Kind::HelmChart => ComponentKind::HelmChart {
            chart: ChartSource::Dir {
                path: need(dir, "--dir")?,
            },
            images: vec![],
            discover_images: false,
            values: None,
            source: extras.git_source(),
        },
        Kind::OpentofuModule => ComponentKind::OpentofuModule {
            dir: need(dir, "--dir")?,
            source: extras.git_source(),
        },
    };
    let repo_text = repository.unwrap_or_else(|| format!("{app}/{cname}").to_lowercase());
    let repository = Repository::new(repo_text.as_str())
        .with_context(|| format!("repository {repo_text:?}; pass a valid --repository"))?;
    if extras.git.is_some() && matches!(kind, ComponentKind::Image { .. }) {
        bail!("--git is for components built from files; an image's --source names its registry");
    }
    let component = Component {
        app: app.clone(),
        name: cname.clone(),
        kind,
        repository,
        verify: extras.policy()?,
        credentials: extras.credentials.clone(),
    };
    component.check().map_err(anyhow::Error::msg)?;
    let subscribed =
        with_backend!(&backend, m => m.put_component(&component, subscribe_all).await)?;
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
            let ids: Vec<&str> = subscribed.iter().map(|i| i.as_str()).collect();
            println!("subscribed: {}", ids.join(", "));
        }
    }
    Ok(())
}

/// `HOST[/NAMESPACE]` → a registry target (namespace `installs/<id>` by default).
fn registry_target(text: &str, id: &InstallId) -> Result<RegistryTarget> {
    let (endpoint, namespace) = match text.split_once('/') {
        Some((h, ns)) => (h, ns.trim_matches('/').to_string()),
        None => (text, format!("installs/{id}")),
    };
    if endpoint.is_empty() || namespace.is_empty() {
        bail!("--registry {text:?}: want HOST[/NAMESPACE], e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ferry");
    }
    Ok(RegistryTarget {
        endpoint: endpoint.to_string(),
        namespace,
    })
}

fn print_registration(r: &Registration, json_out: bool, extra: serde_json::Value) -> Result<()> {
    if json_out {
        let mut v = json!({
            "install": r.install,
            "outcome": r.outcome,
            "agent_settings": r.agent_settings,
        });
        if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        println!("{v}");
        return Ok(());
    }
    let i = &r.install;
    let comps: Vec<&str> = i.components.iter().map(|c| c.as_str()).collect();
    println!(
        "install {} {}: app {}, components {}",
        i.id,
        match r.outcome {
            ferry_core::manage::RegistrationOutcome::Created => "registered",
            ferry_core::manage::RegistrationOutcome::Updated => "updated",
            ferry_core::manage::RegistrationOutcome::Unchanged => "unchanged (already registered)",
        },
        i.app,
        comps.join(", ")
    );
    println!("  queue            {}", i.queue);
    println!(
        "  registry         {}/{}",
        i.registry.endpoint, i.registry.namespace
    );
    println!("  public key       {}", i.agent_public_key);
    println!("  report key       {}", i.agent_report_key);
    println!("  agent settings (pass to ferry-agent):");
    for (k, v) in &r.agent_settings {
        println!("    --{k} {v}");
    }
    Ok(())
}

pub async fn install(cmd: InstallCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        InstallCommand::Add {
            id,
            app,
            components,
            public_key,
            report_key,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let Backend::Local(m) = &backend else {
                bail!("`ferry install add` is for a local state dir; on AWS the customer runs `ferry-agent keygen` and you run `ferry install register ID --app A --public-key K --report-key R --agent-role-arn ARN --registry R`");
            };
            let id = install_id(&id)?;
            let external = public_key.is_some();
            let keys = match (public_key, report_key) {
                (Some(public_key), Some(report_key)) => ferry_dev::state::AgentPublicKeys {
                    public_key,
                    report_key,
                },
                _ => m.dev_agent_keys(&id)?,
            };
            let registration = InstallRegistration {
                id: id.clone(),
                app: app_name(&app)?,
                components: component_names(&components)?,
                agent_public_key: keys.public_key,
                agent_report_key: keys.report_key,
                agent_role_arn: None,
                registry: None,
            };
            let r = m.register_install(&registration).await?;
            let state = m.state();
            let vendor_public_key = r
                .agent_settings
                .get("vendor-public-key")
                .cloned()
                .unwrap_or_default();
            let vendor_registry = r
                .agent_settings
                .get("vendor-registry")
                .cloned()
                .unwrap_or_default();
            if common.json {
                println!(
                    "{}",
                    json!({"install": r.install, "outcome": r.outcome,
                        "identity": format!("agent:{id}"),
                        "identity_secret_file": state.agent_secret_path(&id),
                        "agent_key_file": if external { None } else { Some(state.agent_key_path(&id)) },
                        "vendor_registry": vendor_registry, "vendor_public_key": vendor_public_key})
                );
            } else {
                let comps: Vec<&str> = r.install.components.iter().map(|c| c.as_str()).collect();
                println!(
                    "install {id} added: app {}, components {}",
                    r.install.app,
                    comps.join(", ")
                );
                println!("  queue            {}", r.install.queue);
                println!("  public key       {}", r.install.agent_public_key);
                println!("  report key       {}", r.install.agent_report_key);
                println!(
                    "  identity         agent:{id}, secret in {} (0600)",
                    state.agent_secret_path(&id).display()
                );
                if external {
                    println!("  agent            runs elsewhere (its key was given); run it with");
                    println!("                   --vendor-registry {vendor_registry} --vendor-public-key {vendor_public_key}");
                } else {
                    println!(
                        "  agent key        {} (0600); a running `ferry dev` starts its agent",
                        state.agent_key_path(&id).display()
                    );
                }
            }
        }
        InstallCommand::Register {
            id,
            app,
            public_key,
            report_key,
            agent_role_arn,
            registry,
            components,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let id = install_id(&id)?;
            let registry = registry
                .as_deref()
                .map(|r| registry_target(r, &id))
                .transpose()?;
            let registration = InstallRegistration {
                id,
                app: app_name(&app)?,
                components: component_names(&components)?,
                agent_public_key: public_key,
                agent_report_key: report_key,
                agent_role_arn,
                registry,
            };
            let r = with_backend!(&backend, m => m.register_install(&registration).await)?;
            print_registration(&r, common.json, json!({}))?;
        }
        InstallCommand::List { common } => {
            let backend = common.open(ctx).await?;
            let installs = with_backend!(&backend, m => m.list_installs().await)?;
            let now = crate::console::now_ms();
            let stale_after = crate::console::STALE_AFTER.as_millis() as u64;
            let mut statuses = Vec::with_capacity(installs.len());
            for i in &installs {
                statuses.push(with_backend!(&backend, m => m.install_status(&i.id).await)?);
            }
            if common.json {
                let rows: Vec<serde_json::Value> = statuses
                    .iter()
                    .map(|st| {
                        let mut v = serde_json::to_value(&st.install).unwrap_or_default();
                        v["last_seen"] = json!(st.last_seen);
                        v["liveness"] = json!(st.liveness(now, stale_after).as_str());
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = statuses
                    .iter()
                    .map(|st| {
                        let i = &st.install;
                        let comps: Vec<&str> = i.components.iter().map(|c| c.as_str()).collect();
                        let liveness = st.liveness(now, stale_after);
                        vec![
                            i.id.to_string(),
                            i.app.to_string(),
                            comps.join(","),
                            if liveness.is_stale() { "STALE" } else { "" }.to_string(),
                            st.last_seen
                                .map(|t| ferry_core::telemetry::ago(t, now))
                                .unwrap_or_else(|| "never".into()),
                            i.queue.to_string(),
                            format!("{}/{}", i.registry.endpoint, i.registry.namespace),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "INSTALL",
                        "APP",
                        "COMPONENTS",
                        "STALE",
                        "LAST SEEN",
                        "QUEUE",
                        "REGISTRY",
                    ],
                    &rows,
                );
            }
        }
        InstallCommand::Show { id, common } => {
            let backend = common.open(ctx).await?;
            let id = install_id(&id)?;
            let st = with_backend!(&backend, m => m.install_status(&id).await)?;
            let versions = with_backend!(&backend, m => {
                ferry_core::release_port::install_versions(m.store(), &st.install, &st.holds).await
            })?;
            let comps =
                with_backend!(&backend, m => m.list_components(Some(&st.install.app)).await)?;
            let signatures = verified_signatures(&comps, &st.holds);
            if common.json {
                let mut out = serde_json::to_value(&st)?;
                out["versions"] = serde_json::to_value(&versions)?;
                out["signatures_verified"] = serde_json::to_value(&signatures)?;
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            let i = &st.install;
            let comps: Vec<&str> = i.components.iter().map(|c| c.as_str()).collect();
            println!("install {}", i.id);
            println!("  app              {}", i.app);
            println!("  components       {}", comps.join(", "));
            println!("  queue            {}", i.queue);
            println!(
                "  registry         {}/{}",
                i.registry.endpoint, i.registry.namespace
            );
            let now = crate::console::now_ms();
            let liveness = st.liveness(now, crate::console::STALE_AFTER.as_millis() as u64);
            println!(
                "  last seen        {}{}",
                st.last_seen
                    .map(|t| format!("{} ({})", time(t), ferry_core::telemetry::ago(t, now)))
                    .unwrap_or_else(|| "never".into()),
                if liveness.is_stale() { "  STALE" } else { "" }
            );
            match &st.telemetry {
                Some(t) => {
                    println!("  agent version    {}", t.agent_version);
                    println!(
                        "  last poll        {}",
                        t.last_poll_at.map(time).unwrap_or_else(|| "never".into())
                    );
                    println!(
                        "  last agent sync  {}",
                        t.last_sync_at
                            .map(time)
                            .unwrap_or_else(|| "none yet".into())
                    );
                    println!("  health           {}", t.health);
                }
                None => println!("  heartbeat        none received"),
            }
            match &st.last_sync {
                Some(s) => println!(
                    "  last sync        {} {} {} ({})",
                    s.id,
                    s.repository,
                    short_digest(s.digest.as_str()),
                    s.status()
                ),
                None => println!("  last sync        none"),
            }
            if st.holds.is_empty() {
                println!("  holds            nothing yet");
            } else {
                let rows: Vec<Vec<String>> = st
                    .holds
                    .iter()
                    .map(|h| {
                        vec![
                            h.repository.to_string(),
                            h.digest.to_string(),
                            time(h.since),
                            h.build_id.to_string(),
                        ]
                    })
                    .collect();
                println!("  holds:");
                print_table(&["REPOSITORY", "DIGEST", "SINCE", "BUILD"], &rows);
            }
            // Desired (the newest release naming the install) vs current (what its agent verified).
            let rows: Vec<Vec<String>> = versions
                .iter()
                .map(|v| {
                    let desired = v.desired.as_ref().map_or_else(
                        || "no release yet".to_string(),
                        |d| {
                            format!(
                                "{} {} ({} in {})",
                                d.build_id,
                                short_digest(d.digest.as_str()),
                                d.state.as_str(),
                                d.release_id
                            )
                        },
                    );
                    let current = v.current.as_ref().map_or_else(
                        || "nothing".to_string(),
                        |c| format!("{} {}", c.build_id, short_digest(c.digest.as_str())),
                    );
                    let in_sync = if v.in_sync { "yes" } else { "no" };
                    vec![
                        v.component.to_string(),
                        desired,
                        current,
                        in_sync.to_string(),
                    ]
                })
                .collect();
            println!("  versions:");
            print_table(&["COMPONENT", "DESIRED", "CURRENT", "IN SYNC"], &rows);
            for v in &signatures {
                println!(
                    "  signature        {} {}: verified (key {}) at the build and by its agent",
                    v.component,
                    short_digest(v.digest.as_str()),
                    v.keys.join(", ")
                );
            }
            // How the install's nodes pull: a pull-only identity whose secret stays in its file.
            match &backend {
                Backend::Local(m) => {
                    match ferry_dev::state::node_pull_recipe(m.state(), &id, &i.registry.endpoint)
                    {
                        Ok(recipe) => {
                            println!("  nodes pull with:");
                            for line in recipe.render().lines() {
                                println!("    {line}");
                            }
                        }
                        Err(e) => println!("  nodes pull with  (no node identity: {e:#})"),
                    }
                }
                #[cfg(feature = "aws")]
                Backend::Aws(_) => println!(
                    "  nodes pull with  the customer stack's PullPrincipalArns (docs/install-side.md)"
                ),
            }
        }
        InstallCommand::Remove { id, common } => {
            let backend = common.open(ctx).await?;
            let id = install_id(&id)?;
            let removed = with_backend!(&backend, m => m.remove_install(&id).await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!(
                    "install {} removed: queue {} deleted, no more syncs; its lineage stays (`ferry lineage`)",
                    removed.install, removed.queue_deleted
                );
            }
        }
    }
    Ok(())
}

pub async fn build(cmd: BuildCommand, ctx: Option<&str>) -> Result<()> {
    let BuildCommand::Request {
        app,
        component,
        source_ref,
        common,
    } = cmd;
    let source_ref = source_ref.unwrap_or_default();
    let backend = common.open(ctx).await?;
    let (a, c) = (app_name(&app)?, component_name(&component)?);
    let id = with_backend!(&backend, m => m.request_build(&a, &c, &source_ref, "ferry build request").await)?;
    if common.json {
        println!(
            "{}",
            json!({"build_id": id, "app": app, "component": component, "source_ref": source_ref})
        );
    } else {
        let at = if source_ref.is_empty() {
            "its default ref"
        } else {
            source_ref.as_str()
        };
        println!("build {id} requested: {app}/{component} at {at}");
        println!("watch it with `ferry builds --component {component}`");
    }
    Ok(())
}

pub async fn builds(args: BuildsArgs, ctx: Option<&str>) -> Result<()> {
    let backend = args.common.open(ctx).await?;
    let filter = BuildFilter {
        app: args.app.as_deref().map(app_name).transpose()?,
        component: args.component.as_deref().map(component_name).transpose()?,
    };
    let listing = with_backend!(&backend, m => m.list_builds(&filter).await)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&listing.items)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listing
        .items
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
    if listing.truncated {
        println!("(the newest {} only; filter with --component)", rows.len());
    }
    Ok(())
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

pub async fn dlq(cmd: DlqCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        DlqCommand::List {
            queue: None,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let queues = with_backend!(&backend, m => m.dead_letter_queues().await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&queues)?);
            } else {
                let rows: Vec<Vec<String>> = queues.iter().map(|q| vec![q.clone()]).collect();
                print_table(&["QUEUE (has a dead-letter queue)"], &rows);
            }
        }
        DlqCommand::List {
            queue: Some(queue),
            common,
        } => {
            let backend = common.open(ctx).await?;
            let dead = with_backend!(&backend, m => m.dead_letters(&queue).await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
                return Ok(());
            }
            if dead.is_empty() {
                println!("no dead letters in {queue}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = dead
                .iter()
                .map(|d| {
                    vec![
                        d.message_id.clone(),
                        d.job.clone().unwrap_or_else(|| "-".into()),
                        d.job_status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.receive_count
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.job_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["MESSAGE", "JOB", "STATUS", "RECEIVES", "ERROR"], &rows);
            println!("send them back with `ferry dlq redrive {queue}`");
        }
        DlqCommand::Redrive { queue, common } => {
            let backend = common.open(ctx).await?;
            let n = with_backend!(&backend, m => m.redrive(&queue).await)?;
            if common.json {
                println!("{}", json!({"queue": queue, "redriven": n}));
            } else {
                println!("{n} dead letters sent back to {queue}");
            }
        }
    }
    Ok(())
}

// ---- install show: verified signatures (issue 13) ---------------------------------------------

/// A component the install holds whose signature policy it passed.
#[derive(Debug, serde::Serialize)]
struct SignatureVerified {
    component: ferry_core::id::ComponentName,
    digest: ferry_core::id::Digest,
    /// Ids of the policy's keys (`ferry_oci::cosign::PublicKey::id`).
    keys: Vec<String>,
}

/// For each component with a verification policy that the install holds: its digest passed
/// that policy, since the build verifies before importing and the agent verifies again before
/// it tags anything into the install (a failure ends the sync `policy_failed`, holding nothing).
/// Holds name the vendor repository (`vendor/<component repository>` locally).
fn verified_signatures(
    components: &[Component],
    holds: &[ferry_core::manage::Held],
) -> Vec<SignatureVerified> {
    components
        .iter()
        .filter_map(|c| {
            let policy = c.verify.as_ref()?;
            let repo = c.repository.as_str();
            let held = holds.iter().find(|h| {
                let r = h.repository.as_str();
                r == repo || r.strip_suffix(repo).is_some_and(|p| p.ends_with('/'))
            })?;
            let keys = policy.keys.iter().map(|pem| {
                ferry_oci::cosign::PublicKey::from_pem(pem)
                    .map_or_else(|_| "(unreadable key)".to_string(), |k| k.id().to_string())
            });
            Some(SignatureVerified {
                component: c.name.clone(),
                digest: held.digest.clone(),
                keys: keys.collect(),
            })
        })
        .collect()
}
