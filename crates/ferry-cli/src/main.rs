//! `ferry`: the command-line entry point. This file only parses arguments, sets up logging
//! and dispatches to one module per subcommand.
//!
//! It must never print a credential, and never exit 0 after a failure.

mod bundle;
mod console;
mod context;
mod copy;
mod dev;
mod grants;
mod image;
mod manage;
mod progress;
mod registry;
mod release;
mod state;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: copy OCI artifacts by digest, verified"
)]
struct Cli {
    /// More logging (debug for ferry's crates); RUST_LOG overrides it.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// The context the management commands act in (see `ferry context list`).
    #[arg(long, global = true, env = "FERRY_CONTEXT")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy an image, index or artifact (by digest, verified) to one or more destinations.
    Copy(copy::CopyArgs),
    /// Run the embedded OCI registry, or collect its garbage.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// Run the whole system on this machine: registry, IMS, builder and one agent per install.
    Dev(dev::DevArgs),
    /// Where the management commands act: local state dirs and AWS stacks.
    Context {
        #[command(subcommand)]
        command: context::ContextCommand,
    },
    /// Manage apps.
    App {
        #[command(subcommand)]
        command: manage::AppCommand,
    },
    /// Manage components.
    Component {
        #[command(subcommand)]
        command: manage::ComponentCommand,
    },
    /// Manage installs: register, list, show, remove.
    Install {
        #[command(subcommand)]
        command: manage::InstallCommand,
    },
    /// Request builds.
    Build {
        #[command(subcommand)]
        command: manage::BuildCommand,
    },
    /// List builds.
    Builds(manage::BuildsArgs),
    /// List sync jobs.
    Syncs(manage::SyncsArgs),
    /// Which installs hold an artifact digest, and since when.
    Lineage(manage::LineageArgs),
    /// Dead letters: list them with their jobs' errors, send them back.
    Dlq {
        #[command(subcommand)]
        command: manage::DlqCommand,
    },
    /// Pack static binaries into a FROM-scratch multi-platform OCI image (the agent image).
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// The vendor console: a web page for the fleet, releases, builds and lineage.
    Console(console::ConsoleArgs),
    /// Roll builds out to installs in steps: create, show, list, pause, resume, abort.
    Release {
        #[command(subcommand)]
        command: release::ReleaseCommand,
    },
    /// Air-gapped installs: export a signed bundle of a release or builds.
    Bundle {
        #[command(subcommand)]
        command: bundle::BundleCommand,
    },
    /// Air-gapped installs: record the receipts an install's agent wrote on import.
    Receipts {
        #[command(subcommand)]
        command: bundle::ReceiptsCommand,
    },
    /// Pull grants: the incident kill switch.
    Grants {
        #[command(subcommand)]
        command: grants::GrantsCommand,
    },
}

fn init_logging(verbose: bool) {
    let default = if verbose {
        "warn,ferry=debug,ferry_oci=debug"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `ferry dev` logs to a file in its state dir instead.
    if !matches!(cli.command, Command::Dev(_)) {
        init_logging(cli.verbose);
    }
    // A copy is I/O-bound: one thread keeps its memory flat and small (no buffers handed
    // between threads, one malloc arena); servers get every core.
    let mut builder = match cli.command {
        Command::Copy(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = cli.context.clone();
    let ctx = ctx.as_deref();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Context { command } => context::run(command).await,
            Command::Copy(args) => copy::run(args).await,
            Command::Registry { command } => registry::run(command).await,
            Command::Dev(args) => dev::run(args).await,
            Command::App { command } => manage::app(command, ctx).await,
            Command::Component { command } => manage::component(command, ctx).await,
            Command::Install { command } => manage::install(command, ctx).await,
            Command::Build { command } => manage::build(command, ctx).await,
            Command::Builds(args) => manage::builds(args, ctx).await,
            Command::Syncs(args) => manage::syncs(args, ctx).await,
            Command::Lineage(args) => manage::lineage(args, ctx).await,
            Command::Dlq { command } => manage::dlq(command, ctx).await,
            Command::Release { command } => release::run(command, ctx).await,
            Command::Console(args) => console::run(args, ctx).await,
            Command::Grants { command } => grants::run(command).await,
            Command::Bundle { command } => bundle::bundle(command, ctx).await,
            Command::Receipts { command } => bundle::receipts(command, ctx).await,
            Command::Image { command } => image::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain: "outer: cause: root cause".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
