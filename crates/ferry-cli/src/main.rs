//! `ferry`: the command-line entry point. This file only parses arguments, sets up logging
//! and dispatches to one module per subcommand.
//!
//! It must never print a credential, and never exit 0 after a failure.

mod copy;
mod progress;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy an image, index or artifact (by digest, verified) to one or more destinations.
    Copy(copy::CopyArgs),
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
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Copy(args) => copy::run(args).await,
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
