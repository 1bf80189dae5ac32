//! `ferry registry serve` and `ferry registry gc`: the embedded registry as a standalone
//! process, and its offline garbage collector.
//!
//! With `--auth`, identity secrets are generated once and written to 0600 files under the
//! root; only their paths are ever printed. Both commands hold the root's lock file
//! (`ferry_registry::lock`) for as long as they run, so GC never sweeps under a live server.
//! This module must never print or log a secret, never touch a root another process holds,
//! and never exit 0 when the registry could not be served.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::{valid_install_id, Identity};
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::limits::Limits;
use ferry_registry::lock::RootLock;
use ferry_registry::server::{RegistryConfig, RegistryServer};
use ferry_registry::storage::Storage;

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Serve the embedded OCI registry (distribution-spec 1.1) from a directory.
    Serve(ServeArgs),
    /// Remove unreferenced blobs. Refused while a `serve` holds the root.
    Gc(GcArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Storage root; all state lives here (created if missing).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Address to listen on; port 0 picks a free one (the URL printed says which).
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
    /// Require tokens: identities authenticate at /token with secrets kept under ROOT/auth.
    #[arg(long)]
    auth: bool,
    /// With --auth, also create credentials for this install's agent (`agent:<id>`, pull and
    /// push in `installs/<id>/`) and its nodes (`node:<id>`, pull only there) (repeatable).
    #[arg(long = "agent", value_name = "INSTALL", requires = "auth")]
    agents: Vec<String>,
    /// Make tags immutable under this repository prefix (repeatable).
    #[arg(long = "immutable-tags", value_name = "PREFIX")]
    immutable_tags: Vec<String>,
    /// The token service name (audience), with --auth.
    #[arg(long, default_value = "ferry-registry", requires = "auth")]
    service: String,
    // Boxed: the limit flags would make `Serve` much larger than `Gc`.
    #[command(flatten)]
    limits: Box<LimitArgs>,
}

/// What one client may consume. Every flag left out keeps its default from
/// `ferry_registry::limits` (the one place defaults are defined).
#[derive(Args, Default)]
pub struct LimitArgs {
    /// Connections served at once [default: 512]; when full, the longest-idle one is closed to
    /// make room. Keep it well under the open-file limit (`ulimit -n`).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Time a client has to send a request's line and headers [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    header_timeout: Option<Duration>,
    /// A kept-alive connection with no request is closed after this [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// A request body, or a response the client stops reading, that stalls this long fails
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    body_timeout: Option<Duration>,
    /// Upload sessions one identity may hold open at once [default: 64]; more get 429 with
    /// Retry-After.
    #[arg(long, value_name = "N")]
    upload_sessions_per_identity: Option<usize>,
    /// An upload session with no request for this long is dropped [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    upload_idle_timeout: Option<Duration>,
    /// Bytes of manifest bodies buffered across all requests at once [default: 16777216,
    /// 16 MiB; at least 4 MiB]; more get 429.
    #[arg(long, value_name = "BYTES")]
    manifest_memory: Option<usize>,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            header_read_timeout: self.header_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            body_timeout: self.body_timeout.unwrap_or(d.body_timeout),
            upload_sessions_per_identity: self
                .upload_sessions_per_identity
                .unwrap_or(d.upload_sessions_per_identity),
            upload_idle_timeout: self.upload_idle_timeout.unwrap_or(d.upload_idle_timeout),
            manifest_memory_bytes: self.manifest_memory.unwrap_or(d.manifest_memory_bytes),
            ..d
        }
    }
}

#[derive(Args)]
pub struct GcArgs {
    /// Storage root of the registry.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Keep unreferenced blobs younger than this (uploads waiting for their manifest):
    /// e.g. 30s, 10m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
}

pub async fn run(command: RegistryCommand) -> Result<()> {
    match command {
        RegistryCommand::Serve(args) => serve(args).await,
        RegistryCommand::Gc(args) => gc(args).await,
    }
}

/// `30s`, `10m`, `1h`, `2d`, or plain seconds.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 10m, 1h or 2d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("unknown unit in {s:?}; use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Where an identity's secret lives: `ROOT/auth/credentials/<name>` (`agent-<id>` for agents,
/// `node-<id>` for an install's nodes).
fn secret_path(root: &Path, identity: &Identity) -> PathBuf {
    let file = match identity {
        Identity::Agent(id) => format!("agent-{id}"),
        Identity::Node(id) => format!("node-{id}"),
        other => other.name(),
    };
    root.join("auth").join("credentials").join(file)
}

/// Reads an identity's secret, or creates it (256 random bits, file mode 0600) on first run.
/// Returns the secret and whether it was created now.
fn load_or_create_secret(path: &Path) -> Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_string(), false)),
        Ok(_) => bail!(
            "{} is empty; delete it to have a new secret generated",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    ferry_registry::storage::create_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let secret = format!(
        "{}{}",
        ferry_registry::token::random_id(),
        ferry_registry::token::random_id()
    );
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((secret, true))
}

async fn serve(args: ServeArgs) -> Result<()> {
    for agent in &args.agents {
        if !valid_install_id(agent) {
            bail!("--agent {agent:?} is not a valid install id (lowercase letters, digits, single . _ -)");
        }
    }
    // Before storage is opened: opening deletes leftover uploads, which must not be another
    // server's live ones.
    let _lock = RootLock::acquire(&args.root)?;
    let listener = ferry_registry::listener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let url = format!("http://{addr}");

    let mut config = RegistryConfig::new(&args.root);
    config.immutable_tags = args.immutable_tags.clone();
    config.limits = args.limits.limits();
    let mut builder = RegistryServer::from_config(config);
    let mut notes = Vec::new();
    if args.auth {
        let mut identities = vec![Identity::Vendor, Identity::Admin];
        for id in &args.agents {
            identities.push(Identity::Agent(id.clone()));
            identities.push(Identity::Node(id.clone()));
        }
        let mut policy = AccessPolicy::new();
        for identity in &identities {
            let path = secret_path(&args.root, identity);
            let (secret, created) = load_or_create_secret(&path)?;
            policy.add_identity(identity.clone(), &secret);
            notes.push(format!(
                "  {:<16} secret in {}{}",
                identity.name(),
                path.display(),
                if created { " (new)" } else { "" }
            ));
        }
        let mut auth = AuthConfig::new(&args.service, args.root.join("auth"));
        auth.realm = format!("{url}/token");
        let access = Arc::new(
            AccessControl::open(auth, policy).context("opening the registry's signing key")?,
        );
        builder = builder
            .authorizer(access.clone())
            .extra_routes(token_router(access));
    }
    let server = builder
        .build()
        .with_context(|| format!("opening registry storage at {}", args.root.display()))?;

    // The URL goes first, alone on its line, so scripts and tests can read it.
    let mut out = std::io::stdout().lock();
    writeln!(out, "ferry registry listening on {url}")?;
    if args.auth {
        writeln!(
            out,
            "token auth on: identities exchange Basic credentials at {url}/token"
        )?;
        for n in &notes {
            writeln!(out, "{n}")?;
        }
        writeln!(
            out,
            "  e.g. skopeo copy --dest-creds \"vendor:$(cat {})\" ... docker://{addr}/vendor/<name>:<tag>",
            secret_path(&args.root, &Identity::Vendor).display()
        )?;
    }
    out.flush()?;
    drop(out);

    server
        .serve_with_shutdown(listener, shutdown_signal())
        .await
        .context("the registry stopped with an error")?;
    eprintln!("ferry registry stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn gc(args: GcArgs) -> Result<()> {
    if !args.root.join("repositories").is_dir() {
        bail!(
            "{} is not a registry root (no repositories/ directory); pass the --root the registry was served from",
            args.root.display()
        );
    }
    // Held until GC is done, and taken before storage is opened (see `serve`).
    let _lock = RootLock::acquire(&args.root)?;
    let storage = Storage::open(&args.root)
        .with_context(|| format!("opening registry storage at {}", args.root.display()))?;
    let report = storage
        .collect_garbage(args.grace)
        .await
        .context("garbage collection failed")?;
    println!(
        "gc: {} blobs referenced, {} removed ({} bytes freed), {} kept in the grace period, {} dangling links removed",
        report.blobs_marked,
        report.blobs_removed,
        report.bytes_freed,
        report.blobs_in_grace,
        report.links_removed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn limit_flags_default_to_the_library_defaults_and_override_one_by_one() {
        assert_eq!(LimitArgs::default().limits(), Limits::default());
        let args = LimitArgs {
            max_connections: Some(7),
            upload_idle_timeout: Some(Duration::from_secs(90)),
            ..LimitArgs::default()
        };
        let l = args.limits();
        assert_eq!(l.max_connections, 7);
        assert_eq!(l.upload_idle_timeout, Duration::from_secs(90));
        assert_eq!(l.body_timeout, Limits::default().body_timeout);
    }

    #[test]
    fn secrets_are_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = secret_path(dir.path(), &Identity::Agent("a".into()));
        assert!(path.ends_with("auth/credentials/agent-a"));
        let (first, created) = load_or_create_secret(&path).expect("create");
        assert!(created);
        assert_eq!(first.len(), 64);
        let (again, created) = load_or_create_secret(&path).expect("load");
        assert!(!created);
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
