//! Contexts: where the management commands act. A context is a local `ferry dev` state dir or
//! a deployed AWS vendor stack (its outputs, plus the region/profile/endpoint to reach it).
//! `ferry context add|list|use|remove` edit them; `--context NAME` / `FERRY_CONTEXT` pick one
//! for a command; with neither, the current context (`ferry context use`) or else the local
//! state dir `.ferry/dev`. An explicit `--state-dir` always means that local state dir.
//!
//! Contexts live in one JSON file, `$FERRY_CONFIG_DIR/contexts.json` (default
//! `$XDG_CONFIG_HOME/ferry`, else `~/.config/ferry`), written 0600 through a temp file and a
//! rename. It must never hold a secret: AWS credentials stay with the AWS profile or
//! environment, and of the vendor key only its public half is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use ferry_dev::manage::LocalManagement;
use ferry_dev::state::{StateDir, DEFAULT_STATE_DIR};
use serde::{Deserialize, Serialize};

use crate::state::print_table;

/// The environment variable that names the config directory.
pub const CONFIG_DIR_ENV: &str = "FERRY_CONFIG_DIR";

/// One backend, opened.
pub enum Backend {
    Local(LocalManagement),
    #[cfg(feature = "aws")]
    Aws(ferry_aws::manage::AwsManagement),
}

/// A deployed vendor stack, as a context keeps it (public values only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsContext {
    pub stack: String,
    pub region: Option<String>,
    pub profile: Option<String>,
    /// Another endpoint for every AWS call (moto, a VPC endpoint).
    pub endpoint_url: Option<String>,
    pub table: String,
    pub bus: String,
    pub install_queue_prefix: String,
    pub report_queue_url: String,
    pub vendor_registry: String,
    pub vendor_public_key: Option<String>,
    pub pull_role_arn: Option<String>,
}

/// Where a context points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContextTarget {
    Local { state_dir: PathBuf },
    Aws(Box<AwsContext>),
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contexts {
    pub current: Option<String>,
    pub contexts: BTreeMap<String, ContextTarget>,
}

/// The config directory (see the module doc).
pub fn config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("ferry"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config/ferry")),
        None => bail!("cannot tell where contexts live: set {CONFIG_DIR_ENV} (or HOME)"),
    }
}

fn contexts_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("contexts.json"))
}

impl Contexts {
    /// The contexts file, or none when it does not exist yet.
    pub fn load() -> Result<Contexts> {
        let path = contexts_path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a valid contexts file; fix or delete it",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file (0600, directory 0700) atomically.
    pub fn save(&self) -> Result<()> {
        let path = contexts_path()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            opts.mode(0o600);
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let text = serde_json::to_string_pretty(self)?;
        {
            use std::io::Write as _;
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Opens the backend a command should use (see the module doc for the order).
pub async fn open(name: Option<&str>, state_dir: Option<&Path>) -> Result<Backend> {
    if let Some(dir) = state_dir {
        return open_local(dir);
    }
    let contexts = Contexts::load()?;
    let chosen = name.map(str::to_owned).or_else(|| contexts.current.clone());
    let Some(chosen) = chosen else {
        return open_local(Path::new(DEFAULT_STATE_DIR));
    };
    let Some(target) = contexts.contexts.get(&chosen) else {
        let known: Vec<&str> = contexts.contexts.keys().map(String::as_str).collect();
        bail!(
            "unknown context {chosen}; known: {}; add it with `ferry context add {chosen} --local|--aws …`",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    match target {
        ContextTarget::Local { state_dir } => open_local(state_dir),
        ContextTarget::Aws(aws) => open_aws(aws).await,
    }
}

/// The AWS context [`open`] picks without `--state-dir` (`name`, else the current one), if it
/// is an AWS context: for commands that need more of it than the management port (the stack's
/// vendor key secret, an ECR login).
pub fn selected_aws(name: Option<&str>) -> Result<Option<AwsContext>> {
    let contexts = Contexts::load()?;
    let chosen = name.map(str::to_owned).or_else(|| contexts.current.clone());
    Ok(
        match chosen.and_then(|c| contexts.contexts.get(&c).cloned()) {
            Some(ContextTarget::Aws(a)) => Some(*a),
            _ => None,
        },
    )
}

fn open_local(dir: &Path) -> Result<Backend> {
    Ok(Backend::Local(LocalManagement::open(&StateDir::new(dir))?))
}

#[cfg(feature = "aws")]
async fn open_aws(aws: &AwsContext) -> Result<Backend> {
    let settings = ferry_aws::manage::StackSettings {
        table: aws.table.clone(),
        bus: aws.bus.clone(),
        install_queue_prefix: aws.install_queue_prefix.clone(),
        report_queue_url: aws.report_queue_url.clone(),
        vendor_registry: aws.vendor_registry.clone(),
        vendor_public_key: aws.vendor_public_key.clone(),
    };
    let config = sdk_config(aws).await;
    Ok(Backend::Aws(ferry_aws::manage::AwsManagement::new(
        &config, settings,
    )))
}

#[cfg(not(feature = "aws"))]
async fn open_aws(aws: &AwsContext) -> Result<Backend> {
    bail!(
        "context for stack {} is on AWS, but this ferry was built without the `aws` feature",
        aws.stack
    )
}

#[cfg(feature = "aws")]
pub(crate) async fn sdk_config(aws: &AwsContext) -> ferry_aws::SdkConfig {
    let mut loader = ferry_aws::config::loader();
    if let Some(r) = &aws.region {
        loader = loader.region(ferry_aws::config::Region::new(r.clone()));
    }
    if let Some(p) = &aws.profile {
        loader = loader.profile_name(p);
    }
    if let Some(u) = &aws.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    loader.load().await
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// Add (or replace) a context and make it current.
    Add(Box<AddArgs>),
    /// List contexts (* marks the current one).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make a context current.
    Use { name: String },
    /// Remove a context.
    Remove { name: String },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    name: String,
    /// A local `ferry dev` state dir.
    #[arg(long, conflicts_with = "aws", requires = "state_dir")]
    local: bool,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A deployed vendor stack.
    #[arg(long, requires = "stack")]
    aws: bool,
    /// The vendor stack's name (what `sam deploy` was given). Its outputs are read once with
    /// CloudFormation DescribeStacks; the flags below override them.
    #[arg(long)]
    stack: Option<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    profile: Option<String>,
    /// Every AWS call goes here (moto, a VPC endpoint).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Stack output JobTableName.
    #[arg(long)]
    table: Option<String>,
    /// Stack output EventBusName.
    #[arg(long)]
    bus: Option<String>,
    /// Stack output InstallQueuePrefix.
    #[arg(long)]
    queue_prefix: Option<String>,
    /// Stack output ReportQueueUrl.
    #[arg(long)]
    report_queue_url: Option<String>,
    /// Stack output VendorRegistry.
    #[arg(long)]
    vendor_registry: Option<String>,
    /// Stack output PullRoleArn.
    #[arg(long)]
    pull_role_arn: Option<String>,
    /// Stack output VendorKeySecretArn (default: the stack's): read once to learn the vendor
    /// key's public half (only that is kept), which registrations hand to agents.
    #[arg(long, conflicts_with = "vendor_public_key")]
    vendor_key_secret_arn: Option<String>,
    /// The vendor key's public half (ferry-vendor-ed25519:…), if you have it instead.
    #[arg(long)]
    vendor_public_key: Option<String>,
}

/// A flag's value, else the stack output of that name, else an error naming both.
fn need(
    v: Option<String>,
    outputs: &BTreeMap<String, String>,
    flag: &str,
    output: &str,
) -> Result<String> {
    match v.or_else(|| outputs.get(output).cloned()) {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => bail!(
            "--aws needs {flag}: the vendor stack has no {output} output (is --stack the Ferry \
             vendor stack?); pass {flag} with the value `sam deploy` printed"
        ),
    }
}

/// The flags that name stack outputs a context must have.
fn all_required_flags(a: &AddArgs) -> bool {
    [
        &a.table,
        &a.bus,
        &a.queue_prefix,
        &a.report_queue_url,
        &a.vendor_registry,
    ]
    .iter()
    .all(|v| v.as_deref().is_some_and(|s| !s.trim().is_empty()))
}

pub async fn run(cmd: ContextCommand) -> Result<()> {
    let mut contexts = Contexts::load()?;
    match cmd {
        ContextCommand::Add(a) => add(&mut contexts, *a).await?,
        ContextCommand::List { json } => list(&contexts, json)?,
        ContextCommand::Use { name } => {
            if !contexts.contexts.contains_key(&name) {
                bail!("unknown context {name}; see `ferry context list`");
            }
            contexts.current = Some(name.clone());
            contexts.save()?;
            println!("context {name} in use");
        }
        ContextCommand::Remove { name } => {
            if contexts.contexts.remove(&name).is_none() {
                bail!("unknown context {name}; see `ferry context list`");
            }
            if contexts.current.as_deref() == Some(name.as_str()) {
                contexts.current = None;
            }
            contexts.save()?;
            println!("context {name} removed");
        }
    }
    Ok(())
}

/// `context add`: a local state dir or a deployed stack; the new context becomes current.
async fn add(contexts: &mut Contexts, a: AddArgs) -> Result<()> {
    let name = a.name.clone();
    let target = if a.local {
        let dir = a
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        ContextTarget::Local { state_dir: dir }
    } else if a.aws {
        ContextTarget::Aws(Box::new(aws_context(a).await?))
    } else {
        bail!("say where the context points: --local --state-dir DIR, or --aws --stack NAME …");
    };
    contexts.contexts.insert(name.clone(), target);
    contexts.current = Some(name.clone());
    contexts.save()?;
    println!(
        "context {} added and in use ({})",
        name,
        contexts_path()?.display()
    );
    Ok(())
}

/// An AWS context from the flags, and the stack's outputs for what the flags leave out (read
/// once, unless every needed one came as a flag).
async fn aws_context(a: AddArgs) -> Result<AwsContext> {
    let stack = match a.stack.clone() {
        Some(s) if !s.trim().is_empty() => s,
        _ => bail!("--aws needs --stack NAME (the vendor stack `sam deploy` created)"),
    };
    let mut ctx = AwsContext {
        region: a.region.clone(),
        profile: a.profile.clone(),
        endpoint_url: a.endpoint_url.clone(),
        table: String::new(),
        bus: String::new(),
        install_queue_prefix: String::new(),
        report_queue_url: String::new(),
        vendor_registry: String::new(),
        vendor_public_key: None,
        pull_role_arn: None,
        stack,
    };
    // The stack's outputs, read once, unless every needed one came as a flag.
    let outputs = if all_required_flags(&a) {
        BTreeMap::new()
    } else {
        stack_outputs(&ctx).await?
    };
    ctx.table = need(a.table, &outputs, "--table", out::TABLE)?;
    ctx.bus = need(a.bus, &outputs, "--bus", out::BUS)?;
    ctx.install_queue_prefix = need(
        a.queue_prefix,
        &outputs,
        "--queue-prefix",
        out::QUEUE_PREFIX,
    )?;
    ctx.report_queue_url = need(
        a.report_queue_url,
        &outputs,
        "--report-queue-url",
        out::REPORT_QUEUE_URL,
    )?;
    ctx.vendor_registry = need(
        a.vendor_registry,
        &outputs,
        "--vendor-registry",
        out::VENDOR_REGISTRY,
    )?;
    ctx.pull_role_arn = a
        .pull_role_arn
        .or_else(|| outputs.get(out::PULL_ROLE_ARN).cloned());
    if let Some(k) = &a.vendor_public_key {
        ferry_core::trust::check_vendor_public_key(k)
            .context("--vendor-public-key is not a vendor public key")?;
        ctx.vendor_public_key = Some(k.clone());
    } else if let Some(arn) = a
        .vendor_key_secret_arn
        .or_else(|| outputs.get(out::VENDOR_KEY_SECRET_ARN).cloned())
    {
        ctx.vendor_public_key = Some(vendor_public_key(&ctx, &arn).await?);
    }
    Ok(ctx)
}

/// `context list`: a table (* marks the current context), or JSON.
fn list(contexts: &Contexts, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(contexts)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = contexts
        .contexts
        .iter()
        .map(|(n, t)| {
            let mark = if contexts.current.as_deref() == Some(n) {
                "*"
            } else {
                ""
            };
            let (kind, at) = match t {
                ContextTarget::Local { state_dir } => ("local", state_dir.display().to_string()),
                ContextTarget::Aws(a) => (
                    "aws",
                    format!(
                        "stack {} {}",
                        a.stack,
                        a.region.as_deref().unwrap_or("(default region)")
                    ),
                ),
            };
            vec![mark.into(), n.clone(), kind.into(), at]
        })
        .collect();
    print_table(&["", "CONTEXT", "KIND", "WHERE"], &rows);
    if contexts.current.is_none() {
        println!("(no current context: commands use {DEFAULT_STATE_DIR})");
    }
    Ok(())
}

/// The vendor stack's output names (one definition: ferry-aws's, checked against template.yaml).
#[cfg(feature = "aws")]
mod out {
    pub use ferry_aws::stack::{
        OUTPUT_BUS as BUS, OUTPUT_INSTALL_QUEUE_PREFIX as QUEUE_PREFIX,
        OUTPUT_PULL_ROLE_ARN as PULL_ROLE_ARN, OUTPUT_REPORT_QUEUE_URL as REPORT_QUEUE_URL,
        OUTPUT_TABLE as TABLE, OUTPUT_VENDOR_KEY_SECRET_ARN as VENDOR_KEY_SECRET_ARN,
        OUTPUT_VENDOR_REGISTRY as VENDOR_REGISTRY,
    };
}

#[cfg(not(feature = "aws"))]
mod out {
    pub const BUS: &str = "EventBusName";
    pub const QUEUE_PREFIX: &str = "InstallQueuePrefix";
    pub const PULL_ROLE_ARN: &str = "PullRoleArn";
    pub const REPORT_QUEUE_URL: &str = "ReportQueueUrl";
    pub const TABLE: &str = "JobTableName";
    pub const VENDOR_KEY_SECRET_ARN: &str = "VendorKeySecretArn";
    pub const VENDOR_REGISTRY: &str = "VendorRegistry";
}

/// The stack's outputs (CloudFormation DescribeStacks, once).
#[cfg(feature = "aws")]
pub(crate) async fn stack_outputs(ctx: &AwsContext) -> Result<BTreeMap<String, String>> {
    let config = sdk_config(ctx).await;
    ferry_aws::stack::describe_outputs(&config, &ctx.stack)
        .await
        .with_context(|| {
            format!(
                "reading the outputs of stack {} (or pass --table, --bus, --queue-prefix, \
                 --report-queue-url and --vendor-registry)",
                ctx.stack
            )
        })
}

#[cfg(not(feature = "aws"))]
async fn stack_outputs(ctx: &AwsContext) -> Result<BTreeMap<String, String>> {
    bail!(
        "this ferry was built without the `aws` feature: pass the outputs of stack {} as flags",
        ctx.stack
    )
}

#[cfg(feature = "aws")]
async fn vendor_public_key(ctx: &AwsContext, secret_arn: &str) -> Result<String> {
    let config = sdk_config(ctx).await;
    let text = ferry_aws::agent::read_secret_string(&config, secret_arn)
        .await
        .with_context(|| {
            format!("reading the vendor key secret {secret_arn} (or pass --vendor-public-key)")
        })?;
    let key = ferry_core::trust::VendorKey::from_secret_string(&text)
        .with_context(|| format!("secret {secret_arn} does not hold a vendor key"))?;
    Ok(key.public_key_string())
}

#[cfg(not(feature = "aws"))]
async fn vendor_public_key(_ctx: &AwsContext, _secret_arn: &str) -> Result<String> {
    bail!("this ferry was built without the `aws` feature; pass --vendor-public-key")
}
