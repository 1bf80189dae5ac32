//! `ferry-agent`: the install agent binary. Thin: parse flags, set up JSON logs, call the
//! library, answer. It must never print a secret (only `keygen`'s public key goes to stdout).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ferry_core::seal::AgentKeypair;

#[derive(Parser)]
#[command(
    name = "ferry-agent",
    about = "Ferry install agent: syncs vendor artifacts into this install's registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Makes a new agent key, writes its private half to a file (mode 0600) or straight into
    /// the install stack's key secret (`--secret-arn`, never printed or saved locally), and
    /// prints its two public keys: the sealing key (`--public-key` at registration) and the
    /// report key (`--report-key`).
    Keygen(KeygenArgs),
    /// Runs the agent until SIGTERM or Ctrl-C.
    Run(Box<RunArgs>),
    /// Declares what runs (embedded install registry): a digest marked in use is never
    /// removed by retention, whatever its keep-last window.
    InUse {
        #[command(subcommand)]
        action: InUseAction,
    },
    /// Air-gapped installs: checks a bundle (`ferry bundle export`) against the vendor key and
    /// every digest, then writes it into the install registry as a sync does, and writes
    /// signed receipts for the vendor (`ferry receipts import`). Nothing is tagged unless every
    /// check passed.
    Import(Box<ImportArgs>),
    /// Air-gapped installs: writes the digests the install registry already holds (every tag
    /// of the named repositories, each whole graph), read with the agent's identity, as the
    /// file `ferry bundle export --have` reads, so the next bundle carries only new blobs.
    Inventory(Box<InventoryArgs>),
}

#[derive(clap::Args)]
struct InventoryArgs {
    /// The `--have` file to write (one `sha256:…` a line).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "FERRY_INSTALL")]
    install: String,
    #[arg(long, env = "FERRY_INSTALL_REGISTRY")]
    install_registry: String,
    /// Repository prefix in the install registry (default `installs/<install>`).
    #[arg(long, env = "FERRY_INSTALL_NAMESPACE")]
    install_namespace: Option<String>,
    /// File holding the secret of identity `agent:<install>`.
    #[arg(long, env = "FERRY_AGENT_IDENTITY_SECRET_FILE")]
    identity_secret_file: PathBuf,
    /// A repository of the install registry to read (`installs/<install>/…`; repeatable).
    #[arg(long = "repository")]
    repositories: Vec<String>,
    /// Also read every repository this earlier bundle wrote (its signed manifest names them;
    /// checked against --vendor-public-key).
    #[arg(long = "bundle", requires = "vendor_public_key")]
    bundles: Vec<PathBuf>,
    /// The vendor's public key (`ferry-vendor-ed25519:…`), to check --bundle.
    #[arg(long, env = "FERRY_VENDOR_PUBLIC_KEY")]
    vendor_public_key: Option<String>,
    /// The vendor registry's repository prefix, replaced by the install namespace.
    #[arg(long, env = "FERRY_VENDOR_REPOSITORY_PREFIX", default_value = ferry_agent::config::DEFAULT_VENDOR_PREFIX)]
    vendor_prefix: String,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The bundle tar.
    bundle: PathBuf,
    /// Where the signed receipts are written (one JSON object a line); carry this file back
    /// to the vendor.
    #[arg(long)]
    receipts: PathBuf,
    #[arg(long, env = "FERRY_INSTALL")]
    install: String,
    #[arg(long, env = "FERRY_INSTALL_REGISTRY")]
    install_registry: String,
    /// Repository prefix in the install registry (default `installs/<install>`).
    #[arg(long, env = "FERRY_INSTALL_NAMESPACE")]
    install_namespace: Option<String>,
    /// The vendor registry's repository prefix, replaced by the install namespace.
    #[arg(long, env = "FERRY_VENDOR_REPOSITORY_PREFIX", default_value = ferry_agent::config::DEFAULT_VENDOR_PREFIX)]
    vendor_prefix: String,
    /// The vendor's public key (`ferry-vendor-ed25519:…`) the bundle must be signed with.
    #[arg(long, env = "FERRY_VENDOR_PUBLIC_KEY")]
    vendor_public_key: String,
    /// The agent key: receipts are signed with its report key.
    #[arg(long, env = "FERRY_AGENT_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// ECR mode: the Secrets Manager secret holding the agent key (instead of --key-file).
    #[arg(long, env = "FERRY_AGENT_KEY_SECRET_ARN", conflicts_with = "key_file")]
    key_secret_arn: Option<String>,
    /// File holding the secret of identity `agent:<install>` (the embedded install registry).
    #[arg(long, env = "FERRY_AGENT_IDENTITY_SECRET_FILE")]
    identity_secret_file: Option<PathBuf>,
    /// The install registry is the install's ECR: push with the ambient AWS credentials' ECR
    /// login (the agent role), creating repositories with the stack's protections, as the
    /// agent's AWS mode does. Retention is then ECR's lifecycle policy (--keep-last is not
    /// used).
    #[arg(long, conflicts_with = "identity_secret_file")]
    ecr: bool,
    /// ECR mode: the repository policy (JSON) applied to every repository written.
    #[arg(long, env = "FERRY_REPOSITORY_POLICY", requires = "ecr")]
    repository_policy: Option<String>,
    /// ECR mode: the lifecycle policy (JSON) applied to every repository written.
    #[arg(long, env = "FERRY_LIFECYCLE_POLICY", requires = "ecr")]
    lifecycle_policy: Option<String>,
    /// After each artifact keep the N most recent versions of its repository plus everything
    /// marked in use; 0 turns it off (embedded registry only).
    #[arg(long, env = "FERRY_KEEP_LAST", default_value_t = ferry_agent::DEFAULT_KEEP_LAST)]
    keep_last: usize,
    /// Where the bundle is unpacked while it is checked (needs room for its blobs).
    #[arg(long, env = "FERRY_IMPORT_WORK_DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["out", "secret_arn"])))]
struct KeygenArgs {
    /// Write the private key to this file (it must not exist).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the private key into this Secrets Manager secret (the install stack's
    /// AgentKeySecretArn output), with the ambient AWS credentials.
    #[arg(long)]
    secret_arn: Option<String>,
    /// Replace a key already put into the secret (the agent then needs a restart, and the
    /// install a new registration with the printed keys).
    #[arg(long, requires = "secret_arn")]
    rotate: bool,
}

#[derive(Subcommand)]
enum InUseAction {
    /// Mark REPO@sha256:… in use (the manifest must be in the install registry).
    Mark(InUseArgs),
    /// Remove the mark; retention may then remove the digest once it is out of the window.
    Unmark(InUseArgs),
    /// Print the digests marked in use in REPO, one a line.
    List(InUseArgs),
}

#[derive(clap::Args)]
struct InUseArgs {
    /// `REPO@sha256:…` (`list`: `REPO`), as deployed (`installs/<install>/demo/web`) or inside
    /// the install's namespace (`demo/web`).
    target: String,
    #[arg(long, env = "FERRY_INSTALL")]
    install: String,
    #[arg(long, env = "FERRY_INSTALL_REGISTRY")]
    install_registry: String,
    /// Repository prefix in the install registry (default `installs/<install>`).
    #[arg(long, env = "FERRY_INSTALL_NAMESPACE")]
    install_namespace: Option<String>,
    /// File holding the secret of identity `agent:<install>`.
    #[arg(long, env = "FERRY_AGENT_IDENTITY_SECRET_FILE")]
    identity_secret_file: PathBuf,
}

/// Local mode: `--queue-db` (SQLite queues, the embedded registry's identity). AWS mode: a
/// `--queue` that is an SQS URL (SQS, the install's ECR with the task role's credentials).
#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, env = "FERRY_INSTALL")]
    install: String,
    /// SQLite file holding the queues (local mode).
    #[arg(long, env = "FERRY_QUEUE_DB")]
    queue_db: Option<PathBuf>,
    /// The install's job queue: a name (local, default `install-<install>`) or an SQS URL (AWS).
    #[arg(long, env = "FERRY_AGENT_QUEUE")]
    queue: Option<String>,
    /// Where sync.reported goes: a queue name (local) or an SQS URL (AWS).
    #[arg(long, env = "FERRY_REPORT_QUEUE", default_value = ferry_agent::SYNC_REPORTED_QUEUE)]
    report_queue: String,
    /// The vendor registry host: the only registry this agent pulls from.
    #[arg(long, env = "FERRY_VENDOR_REGISTRY")]
    vendor_registry: String,
    /// The vendor's job-signing public key (`ferry-vendor-ed25519:…`): jobs not signed with it
    /// are refused.
    #[arg(long, env = "FERRY_VENDOR_PUBLIC_KEY")]
    vendor_public_key: String,
    #[arg(long, env = "FERRY_INSTALL_REGISTRY")]
    install_registry: String,
    /// Repository prefix in the install registry (default `installs/<install>`).
    #[arg(
        long,
        env = "FERRY_INSTALL_NAMESPACE",
        alias = "install-repository-prefix"
    )]
    install_namespace: Option<String>,
    /// The vendor registry's repository prefix, replaced by the install namespace (`vendor`
    /// under `ferry dev`; on AWS the vendor stack's RepositoryPrefix): vendor
    /// `<prefix>/demo/web` lands in `<namespace>/demo/web`.
    #[arg(long, env = "FERRY_VENDOR_REPOSITORY_PREFIX", default_value = ferry_agent::config::DEFAULT_VENDOR_PREFIX)]
    vendor_prefix: String,
    /// AWS mode: the repository policy (JSON) applied to every repository the agent writes.
    #[arg(long, env = "FERRY_REPOSITORY_POLICY")]
    repository_policy: Option<String>,
    /// AWS mode: the lifecycle policy (JSON) applied to every repository the agent writes.
    #[arg(long, env = "FERRY_LIFECYCLE_POLICY")]
    lifecycle_policy: Option<String>,
    #[arg(long, env = "FERRY_AGENT_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Secrets Manager secret holding the agent key (AWS mode; instead of --key-file).
    #[arg(long, env = "FERRY_AGENT_KEY_SECRET_ARN", conflicts_with = "key_file")]
    key_secret_arn: Option<String>,
    /// File holding the secret of identity `agent:<install>` (local mode).
    #[arg(long, env = "FERRY_AGENT_IDENTITY_SECRET_FILE")]
    identity_secret_file: Option<PathBuf>,
    #[arg(long, default_value_t = 60)]
    visibility_seconds: u32,
    #[arg(long, default_value_t = 20)]
    wait_seconds: u32,
    #[arg(long, default_value_t = 30)]
    grace_seconds: u64,
    /// Local mode: after each successful sync keep the N most recently synced versions of the
    /// repository plus everything marked in use (`ferry-agent in-use mark`); 0 turns it off.
    /// (AWS mode: the ECR lifecycle policy of the customer stack retains.)
    #[arg(long, env = "FERRY_KEEP_LAST", default_value_t = ferry_agent::DEFAULT_KEEP_LAST)]
    keep_last: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen(args) => match (args.out, args.secret_arn) {
            (Some(out), _) => keygen(&out),
            (None, Some(arn)) => {
                let rt = runtime()?;
                rt.block_on(keygen_into_secret(&arn, args.rotate))
            }
            (None, None) => bail!("say where the private key goes: --out FILE or --secret-arn ARN"),
        },
        Command::Run(args) => {
            init_logs();
            let rt = runtime()?;
            rt.block_on(run(*args))
        }
        Command::InUse { action } => {
            let rt = runtime()?;
            rt.block_on(in_use(action))
        }
        Command::Inventory(args) => {
            init_logs();
            let rt = runtime()?;
            rt.block_on(inventory(*args))
        }
        Command::Import(args) => {
            init_logs();
            let rt = runtime()?;
            rt.block_on(import(*args))
        }
    }
}

/// The agent's runtime: one thread. Its work is long polls, one copy at a time (I/O plus
/// sha256, which one core keeps up with on any link an install has) and small writes, so
/// more worker threads buy nothing; each would bring its own malloc arena, and the agent's
/// resident memory must stay small and flat in every customer account (as `ferry copy`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} exists; refusing to overwrite an agent key (delete it first if you mean to rotate)",
            out.display()
        );
    }
    let kp = AgentKeypair::generate().context("generating a key")?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(kp.to_secret_string().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("public key: {}", kp.public_key_string());
    println!("report key: {}", kp.report_key().public_key_string());
    Ok(())
}

/// `keygen --secret-arn`: the private key goes from memory into the secret; only the public
/// keys are printed. No logging is set up here, so no layer can record the value.
#[cfg(feature = "aws")]
async fn keygen_into_secret(secret_arn: &str, rotate: bool) -> anyhow::Result<()> {
    let kp = AgentKeypair::generate().context("generating a key")?;
    let text = zeroize::Zeroizing::new(format!("{}\n", kp.to_secret_string().as_str()));
    let config = ferry_aws::config::from_env().await;
    let version = ferry_aws::agent::put_secret_string(&config, secret_arn, &text, rotate)
        .await
        .with_context(|| format!("writing the agent key into secret {secret_arn}"))?;
    println!("public key: {}", kp.public_key_string());
    println!("report key: {}", kp.report_key().public_key_string());
    println!(
        "private key: in secret {secret_arn} (version {version}); not printed, not saved here"
    );
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn keygen_into_secret(_secret_arn: &str, _rotate: bool) -> anyhow::Result<()> {
    bail!("--secret-arn needs a ferry-agent built with the `aws` feature; use --out FILE")
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

fn vendor_trust(args: &RunArgs) -> anyhow::Result<ferry_agent::VendorTrust> {
    ferry_core::trust::check_vendor_public_key(&args.vendor_public_key)?;
    if args.vendor_registry.trim().is_empty() {
        bail!("--vendor-registry (FERRY_VENDOR_REGISTRY) is empty; set it to the vendor registry host");
    }
    Ok(ferry_agent::VendorTrust {
        registry: args.vendor_registry.trim().to_owned(),
        public_key: args.vendor_public_key.trim().to_owned(),
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.queue_db.is_none() && args.queue.as_deref().is_some_and(is_url) {
        return run_aws(args).await;
    }
    run_local(args).await
}

#[cfg(feature = "aws")]
async fn run_aws(args: RunArgs) -> anyhow::Result<()> {
    use ferry_agent::aws::{aws_agent, load_keypair, AwsAgentOptions, KeySource};
    use ferry_core::id::InstallId;
    use ferry_core::ports::ReceiveOptions;

    let install_id = InstallId::new(args.install.as_str())?;
    let vendor = vendor_trust(&args)?;
    let source = match (args.key_file, args.key_secret_arn) {
        (Some(f), None) => KeySource::File(f),
        (None, Some(arn)) => KeySource::SecretArn(arn),
        _ => bail!("AWS mode needs the agent key: --key-secret-arn ARN (FERRY_AGENT_KEY_SECRET_ARN) or --key-file FILE"),
    };
    if !is_url(&args.report_queue) {
        bail!(
            "AWS mode needs --report-queue (FERRY_REPORT_QUEUE) as the vendor's sync-reported \
             queue URL, not {:?}",
            args.report_queue
        );
    }
    let config = ferry_aws::config::from_env().await;
    let keypair = load_keypair(&config, &source).await?;
    let options = AwsAgentOptions {
        install_id,
        queue_url: args.queue.unwrap_or_default(),
        report_queue_url: args.report_queue,
        install_registry: args.install_registry,
        install_namespace: args.install_namespace,
        vendor_prefix: args.vendor_prefix,
        protections: ferry_aws::agent::RepositoryProtections {
            policy: args.repository_policy,
            lifecycle: args.lifecycle_policy,
        },
        vendor,
        receive: ReceiveOptions::new(1, args.wait_seconds, args.visibility_seconds)?,
        shutdown_grace: std::time::Duration::from_secs(args.grace_seconds),
    };
    let (agent, _access) = aws_agent(&config, options, keypair)?;
    serve(&agent).await
}

#[cfg(not(feature = "aws"))]
async fn run_aws(_args: RunArgs) -> anyhow::Result<()> {
    bail!("--queue is an SQS URL, but this ferry-agent was built without the `aws` feature")
}

async fn run_local(args: RunArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Duration;

    use ferry_agent::{Agent, AgentConfig, QueueReporter};
    use ferry_core::id::{InstallId, QueueName};
    use ferry_core::ports::ReceiveOptions;
    use ferry_local::queue::SqliteQueue;
    use ferry_oci::Secret;

    let install = InstallId::new(args.install.as_str())?;
    let vendor = vendor_trust(&args)?;
    let Some(queue_db) = args.queue_db else {
        bail!("local mode needs --queue-db FILE (FERRY_QUEUE_DB); for AWS mode pass --queue <SQS queue URL>")
    };
    let Some(key_file) = args.key_file else {
        bail!("local mode needs --key-file FILE (FERRY_AGENT_KEY_FILE)")
    };
    let Some(identity_secret_file) = args.identity_secret_file else {
        bail!("local mode needs --identity-secret-file FILE (FERRY_AGENT_IDENTITY_SECRET_FILE)")
    };
    let queue_name = QueueName::new(args.queue.unwrap_or_else(|| format!("install-{install}")))?;
    let report_queue = QueueName::new(args.report_queue)?;
    let key_text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&key_file)
            .with_context(|| format!("reading the agent key {}", key_file.display()))?,
    );
    let keypair = AgentKeypair::from_secret_string(&key_text)?;
    let secret = zeroize::Zeroizing::new(
        std::fs::read_to_string(&identity_secret_file).with_context(|| {
            format!(
                "reading the identity secret {}",
                identity_secret_file.display()
            )
        })?,
    );
    let secret = secret.trim();
    if secret.is_empty() {
        bail!(
            "{} is empty; it must hold the secret of agent:{install}",
            identity_secret_file.display()
        );
    }
    let queue = Arc::new(
        SqliteQueue::open(&queue_db)
            .with_context(|| format!("opening the queue database {}", queue_db.display()))?,
    );
    let mut config = AgentConfig::new(
        install,
        queue_name,
        vendor,
        args.install_registry,
        Secret::new(secret),
    )
    .with_receive(ReceiveOptions::new(
        1,
        args.wait_seconds,
        args.visibility_seconds,
    )?);
    if let Some(ns) = args.install_namespace {
        config.install_namespace = ns;
    }
    config.vendor_prefix = args.vendor_prefix;
    config.shutdown_grace = Duration::from_secs(args.grace_seconds);
    config.keep_last = (args.keep_last > 0).then_some(args.keep_last);
    let reporter = Arc::new(QueueReporter::new(queue.clone(), report_queue));
    let agent = Agent::new(config, queue, reporter, keypair);
    serve(&agent).await
}

/// `ferry-agent in-use mark|unmark|list`: parses, calls the library, prints.
async fn in_use(action: InUseAction) -> anyhow::Result<()> {
    use ferry_agent::in_use::{self, InUseTarget};
    let (args, mark) = match action {
        InUseAction::Mark(a) => (a, Some(true)),
        InUseAction::Unmark(a) => (a, Some(false)),
        InUseAction::List(a) => (a, None),
    };
    let namespace = args
        .install_namespace
        .clone()
        .unwrap_or_else(|| format!("installs/{}", args.install));
    let secret = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.identity_secret_file).with_context(|| {
            format!(
                "reading the identity secret {}",
                args.identity_secret_file.display()
            )
        })?,
    );
    let client = in_use::agent_client(
        &args.install_registry,
        &args.install,
        ferry_oci::Secret::new(secret.trim()),
    )?;
    match mark {
        Some(mark) => {
            let target = InUseTarget::parse(&args.target, &namespace)?;
            in_use::set(&client, &args.install_registry, &target, mark).await?;
            let what = if mark { "marked in use" } else { "unmarked" };
            println!("{}@{} {what}", target.repository, target.digest);
        }
        None => {
            let repository = in_use::in_namespace(&args.target, &namespace);
            for d in in_use::list(&client, &args.install_registry, &repository).await? {
                println!("{d}");
            }
        }
    }
    Ok(())
}

/// Runs the agent until SIGTERM or Ctrl-C.
async fn serve<Q, R>(agent: &ferry_agent::Agent<Q, R>) -> anyhow::Result<()>
where
    Q: ferry_core::ports::Queue + 'static,
    R: ferry_agent::Reporter + 'static,
{
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        on_signal.cancel();
    });
    agent.run(shutdown).await?;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `ferry-agent inventory`: reads the identity secret, names the repositories, calls the
/// library, writes the `--have` file, prints.
async fn inventory(args: InventoryArgs) -> anyhow::Result<()> {
    use ferry_agent::inventory::{
        repositories_of_bundle, take_inventory, write_have, InventoryConfig,
    };
    use ferry_core::id::InstallId;

    let install = InstallId::new(args.install.as_str())?;
    let namespace = args
        .install_namespace
        .unwrap_or_else(|| format!("installs/{install}"));
    let mut repositories = args.repositories;
    for b in &args.bundles {
        let key = args.vendor_public_key.as_deref().unwrap_or_default();
        repositories.extend(
            repositories_of_bundle(key, &install, &args.vendor_prefix, &namespace, b).await?,
        );
    }
    let access = static_identity(&install, &args.identity_secret_file)?;
    let inv = take_inventory(&InventoryConfig {
        install_registry: args.install_registry,
        install_namespace: namespace,
        access: &access,
        repositories,
    })
    .await?;
    write_have(&args.out, install.as_str(), &inv)?;
    for m in &inv.missing {
        println!("{m}: not in the install registry yet (nothing imported there)");
    }
    println!(
        "{} digests of {} artifacts in {} repositories written to {}",
        inv.digests.len(),
        inv.artifacts,
        inv.repositories.len(),
        args.out.display()
    );
    Ok(())
}

/// Reads a key file's text into a key pair (zeroized once parsed).
fn keypair_from_file(path: &Path) -> anyhow::Result<AgentKeypair> {
    let key_text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the agent key {}", path.display()))?,
    );
    Ok(AgentKeypair::from_secret_string(&key_text)?)
}

/// The embedded install registry's `agent:<install>` identity, from its secret file.
fn static_identity(
    install: &ferry_core::id::InstallId,
    identity_secret_file: &Path,
) -> anyhow::Result<ferry_agent::StaticIdentity> {
    let secret = zeroize::Zeroizing::new(
        std::fs::read_to_string(identity_secret_file).with_context(|| {
            format!(
                "reading the identity secret {}",
                identity_secret_file.display()
            )
        })?,
    );
    Ok(ferry_agent::StaticIdentity {
        username: format!("agent:{install}"),
        password: ferry_oci::Secret::new(secret.trim()),
    })
}

/// `ferry-agent import`: reads the keys, calls the library, writes the receipts, prints.
async fn import(args: ImportArgs) -> anyhow::Result<()> {
    use ferry_agent::import::{import_bundle, write_receipts, ImportConfig};
    use ferry_agent::InstallAccess;
    use ferry_core::id::InstallId;

    let install = InstallId::new(args.install.as_str())?;
    // The push access and the key: the embedded registry's identity and a key file, or (ECR
    // mode) the agent role's ECR login and a key file or secret, as the agent's AWS mode.
    let (access, keypair, keep_last): (Box<dyn InstallAccess>, AgentKeypair, usize) = if args.ecr {
        ecr_import_access(&args).await?
    } else {
        let Some(identity) = &args.identity_secret_file else {
            bail!("say how to write to the install registry: --identity-secret-file FILE (embedded registry) or --ecr (the install's ECR)");
        };
        let Some(key_file) = &args.key_file else {
            bail!("the embedded registry mode needs the agent key: --key-file FILE (FERRY_AGENT_KEY_FILE)");
        };
        (
            Box::new(static_identity(&install, identity)?),
            keypair_from_file(key_file)?,
            args.keep_last,
        )
    };
    let config = ImportConfig {
        install_namespace: args
            .install_namespace
            .clone()
            .unwrap_or_else(|| format!("installs/{install}")),
        install_id: install,
        vendor_public_key: args.vendor_public_key.clone(),
        install_registry: args.install_registry.clone(),
        vendor_prefix: args.vendor_prefix.clone(),
        access: access.as_ref(),
        keypair: &keypair,
        keep_last: (keep_last > 0).then_some(keep_last),
        work_dir: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        now_ms: ferry_clock::unix_ms,
    };
    let summary = import_bundle(&config, &args.bundle).await?;
    write_receipts(&args.receipts, &summary.receipts)?;
    for a in &summary.artifacts {
        println!(
            "{}@{} imported ({} bytes copied, {} already present)",
            a.repository, a.digest, a.report.bytes_copied, a.report.bytes_skipped
        );
    }
    println!(
        "bundle {}: {} artifacts; {} receipts written to {}",
        summary.bundle_id,
        summary.artifacts.len(),
        summary.receipts.len(),
        args.receipts.display()
    );
    Ok(())
}

/// ECR mode of `ferry-agent import`: the agent role's ECR login (ambient credentials) with the
/// stack's repository protections, the key from its file or secret; no --keep-last (ECR's
/// lifecycle policy retains).
#[cfg(feature = "aws")]
async fn ecr_import_access(
    args: &ImportArgs,
) -> anyhow::Result<(Box<dyn ferry_agent::InstallAccess>, AgentKeypair, usize)> {
    use ferry_agent::aws::{load_keypair, EcrPushAccess, KeySource};
    let source = match (&args.key_file, &args.key_secret_arn) {
        (Some(f), None) => KeySource::File(f.clone()),
        (None, Some(arn)) => KeySource::SecretArn(arn.clone()),
        _ => bail!("--ecr needs the agent key: --key-secret-arn ARN (FERRY_AGENT_KEY_SECRET_ARN) or --key-file FILE"),
    };
    let config = ferry_aws::config::from_env().await;
    let keypair = load_keypair(&config, &source).await?;
    let access = EcrPushAccess::new(
        &config,
        ferry_aws::agent::RepositoryProtections {
            policy: args.repository_policy.clone(),
            lifecycle: args.lifecycle_policy.clone(),
        },
    );
    Ok((Box::new(access), keypair, 0))
}

#[cfg(not(feature = "aws"))]
async fn ecr_import_access(
    _args: &ImportArgs,
) -> anyhow::Result<(Box<dyn ferry_agent::InstallAccess>, AgentKeypair, usize)> {
    bail!("--ecr needs a ferry-agent built with the `aws` feature")
}
