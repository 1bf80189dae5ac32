//! `ferry dev`: the whole system on one machine, no cloud account. The assembly (registry, IMS,
//! builder, agents) is `ferry_dev::DevSystem`; this command only parses its flags, sets up the
//! log file, requests a build of each component and prints builds and syncs until every
//! artifact is verified in every install.
//!
//! It must never print or log a secret (it points at the 0600 files under `keys/` instead),
//! and never exit 0 with `--exit-when-synced` when a build or a sync failed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use ferry_core::domain::{Build, SyncJob};
use ferry_core::id::{AppName, BuildId, InstallId};
use ferry_core::state::JobStatus;
use ferry_dev::{error_text, DevOptions, DevSystem, Snapshot, POLL};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::state::{self, StateDir};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of installs to create (dev-1 … dev-N), each with its own agent.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=200))]
    installs: u32,
    /// Where everything is kept: SQLite file, registry root, keys (0600), logs.
    #[arg(long, env = "FERRY_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The app to seed: a directory holding ferry.json.
    #[arg(long, default_value = "examples/demo")]
    app: PathBuf,
    /// Registry listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    registry_addr: std::net::SocketAddr,
    /// Exit once every build is done and every sync succeeded (exit 1 if any failed).
    #[arg(long)]
    exit_when_synced: bool,
    /// Give up (exit 1) if not everything is done after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// JSON lines on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Do not sync builds on their own: `ferry release create` decides which installs get a
    /// build, in steps.
    #[arg(long)]
    releases: bool,
    /// Where the vendor console listens (loopback; if the port is taken, a free one is used).
    #[arg(long, default_value = "127.0.0.1:8080")]
    console_addr: std::net::SocketAddr,
    /// Do not serve the vendor console.
    #[arg(long)]
    no_console: bool,
}

/// Binds the console's listener: the asked address, or a free loopback port if it is taken.
async fn console_listener(addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::info!(%addr, error = %e, "console address taken; using a free port");
            tokio::net::TcpListener::bind((addr.ip(), 0)).await.ok()
        }
    }
}

pub async fn run(args: DevArgs) -> Result<()> {
    let state = StateDir::new(&args.state_dir);
    state.create()?;
    init_file_logging(&state.log_file())?;
    let system = DevSystem::start(DevOptions {
        state_dir: args.state_dir.clone(),
        app_dir: args.app.clone(),
        manual_releases: args.releases,
        installs: args.installs,
        registry_addr: args.registry_addr,
    })
    .await?;
    let requested = match system.request_builds("ferry dev").await {
        Ok(r) => r,
        Err(e) => {
            system.shutdown().await;
            return Err(e.into());
        }
    };
    let host = system.registry_host().to_string();
    let (app, app_root) = system.app();
    let out = Output { json: args.json };
    let signal = CancellationToken::new();
    // The vendor console, on loopback, over this state dir's management and release ports.
    let console_url = if args.no_console {
        None
    } else {
        spawn_console(&args, &signal).await
    };
    out.banner(
        &state,
        &host,
        app,
        app_root,
        args.installs,
        console_url.as_deref(),
    );

    {
        let s = signal.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            s.cancel();
        });
    }
    let result = watch(&system, &requested, &args, &out, &state, &host, &signal).await;

    // Clean shutdown: agents finish or release their job, workers stop, the registry stops.
    system.shutdown().await;
    result
}

/// Serves the vendor console on loopback over this state dir's ports until `signal`; its URL,
/// or `None` (logged) when it cannot start.
async fn spawn_console(args: &DevArgs, signal: &CancellationToken) -> Option<String> {
    let mut console_url = None;
    let listener = console_listener(args.console_addr).await;
    let source = crate::context::open(None, Some(&args.state_dir))
        .await
        .and_then(crate::console::BackendSource::new);
    match (listener, source) {
        (Some(listener), Ok(source)) => {
            if let Ok(local) = listener.local_addr() {
                console_url = Some(format!("http://{local}/"));
            }
            let config = ferry_console::ConsoleConfig::new(args.console_addr);
            let stop = signal.clone();
            tokio::spawn(async move {
                let shutdown = async move { stop.cancelled().await };
                if let Err(e) = ferry_console::serve(listener, source, &config, shutdown).await {
                    tracing::warn!(error = %e, "the console stopped");
                }
            });
        }
        (None, _) => tracing::warn!("no loopback port for the console"),
        (_, Err(e)) => tracing::warn!(error = %e, "the console could not open the state"),
    }
    console_url
}

/// Prints what changed every [`POLL`] until the signal, the deadline, or (with
/// `--exit-when-synced`) everything done; the verdict is the command's result.
async fn watch(
    system: &DevSystem,
    requested: &[BuildId],
    args: &DevArgs,
    out: &Output,
    state: &StateDir,
    host: &str,
    signal: &CancellationToken,
) -> Result<()> {
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut view = View::default();
    let mut result: Result<()> = Ok(());
    let mut announced = false;
    loop {
        tokio::select! {
            _ = signal.cancelled() => {
                if !args.json { println!("\nshutting down (signal)…"); }
                break;
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        if let Err(e) = system.refresh_agents().await {
            tracing::warn!(error = %e, "could not refresh the installs");
        }
        let snap = match system.snapshot(requested).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the store");
                continue;
            }
        };
        view.print_changes(&snap, out);
        if snap.all_done() {
            if !announced {
                out.closing(&snap, state, host);
                announced = true;
            }
            if args.exit_when_synced {
                result = verdict(&snap);
                break;
            }
        } else {
            announced = false;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            out.closing(&snap, state, host);
            result = Err(anyhow::anyhow!(
                "not everything was done within {}s: {}",
                args.timeout.unwrap_or(0),
                snap.pending_summary()
            ));
            break;
        }
    }
    result
}

/// Ok when every build and every sync succeeded; else names each failure and why.
fn verdict(snap: &Snapshot) -> Result<()> {
    let failures = snap.failures();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{} failed:\n  {}", failures.len(), failures.join("\n  "))
    }
}

fn init_file_logging(path: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Terminal output

/// Remembers what was printed, to print only changes.
#[derive(Default)]
struct View {
    seen: HashMap<String, String>,
}

impl View {
    fn print_changes(&mut self, snap: &Snapshot, out: &Output) {
        for b in &snap.builds {
            let digest = b
                .artifact
                .as_ref()
                .map(|a| a.digest.to_string())
                .unwrap_or_default();
            let key = format!("build:{}", b.id);
            let val = format!("{}{digest}", b.status());
            if self.seen.get(&key) != Some(&val) {
                self.seen.insert(key, val);
                out.build_line(b);
            }
            for s in snap.syncs_of(&b.id) {
                let key = format!("sync:{}", s.id);
                let val = s.status().to_string();
                if self.seen.get(&key) != Some(&val) {
                    self.seen.insert(key, val);
                    out.sync_line(b, s);
                }
            }
        }
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn banner(
        &self,
        state: &StateDir,
        host: &str,
        app: &AppName,
        root: &Path,
        installs: u32,
        console: Option<&str>,
    ) {
        let db = state.db_path();
        if self.json {
            println!(
                "{}",
                json!({"event": "started", "registry": format!("http://{host}"),
                    "vendor_namespace": "vendor/", "install_namespace": "installs/<id>/",
                    "database": db, "state_dir": state.root(), "app": app, "app_root": root,
                    "installs": installs, "log": state.log_file(), "console": console})
            );
            return;
        }
        println!(
            "ferry dev: app {app} ({}), {installs} installs",
            root.display()
        );
        println!("  registry   http://{host}   namespaces vendor/ and installs/<id>/");
        println!("  database   {}", db.display());
        println!(
            "  state      {}   (keys, 0600: {}; logs: {})",
            state.root().display(),
            state.keys_dir().display(),
            state.log_file().display()
        );
        println!(
            "  manage     ferry builds|syncs|lineage|build request … --state-dir {}",
            state.root().display()
        );
        if let Some(url) = console {
            println!("  console    {url}   (fleet, releases, builds, lineage)");
        }
        println!();
    }

    fn build_line(&self, b: &Build) {
        let digest = b.artifact.as_ref().map(|a| a.digest.to_string());
        if self.json {
            println!(
                "{}",
                json!({"event": "build", "build_id": b.id, "component": b.component,
                    "status": b.status(), "digest": digest, "error": b.state.error})
            );
            return;
        }
        let tail = match (&digest, &b.state.error) {
            (Some(d), _) => d.clone(),
            (None, Some(e)) => e.message.clone(),
            _ => String::new(),
        };
        println!(
            "build  {:<10} {:<9} {tail}",
            b.component.as_str(),
            b.status().as_str()
        );
    }

    fn sync_line(&self, b: &Build, s: &SyncJob) {
        if self.json {
            println!(
                "{}",
                json!({"event": "sync", "sync_id": s.id, "install_id": s.install_id,
                    "component": b.component, "status": s.status(), "digest": s.digest,
                    "error": s.state.error})
            );
            return;
        }
        let err = s
            .state
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        println!(
            "sync   {:<10} {:<9} → {} {err}",
            b.component.as_str(),
            s.status().as_str(),
            s.install_id
        );
    }

    fn closing(&self, snap: &Snapshot, state: &StateDir, host: &str) {
        let verified_installs = verified_installs(snap);
        let synced = snap.failures().is_empty();
        if self.json {
            print_summary_json(snap, synced, &verified_installs);
            return;
        }
        println!();
        print_build_table(snap);
        print_failures(snap);
        if verified_installs.is_empty() {
            println!("\nno artifact was verified in any install");
            return;
        }
        println!(
            "\nartifact verified in {} installs ({})",
            verified_installs.len(),
            verified_installs
                .iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        print_pull_hint(snap, &verified_installs, state, host);
    }
}

/// The installs every succeeded build reached.
fn verified_installs(snap: &Snapshot) -> BTreeSet<&InstallId> {
    let mut verified_installs: BTreeSet<&InstallId> = BTreeSet::new();
    let mut all_installs: BTreeSet<&InstallId> = BTreeSet::new();
    for b in &snap.builds {
        for s in snap.syncs_of(&b.id) {
            all_installs.insert(&s.install_id);
        }
    }
    // An install is verified when every succeeded build reached it.
    for i in &all_installs {
        let ok = snap
            .builds
            .iter()
            .filter(|b| b.status() == JobStatus::Succeeded)
            .all(|b| {
                snap.syncs_of(&b.id)
                    .iter()
                    .any(|s| &&s.install_id == i && s.status() == JobStatus::Succeeded)
            });
        if ok {
            verified_installs.insert(i);
        }
    }
    verified_installs
}

/// The closing summary as one JSON line (`--json`).
fn print_summary_json(snap: &Snapshot, synced: bool, verified_installs: &BTreeSet<&InstallId>) {
    let builds: Vec<_> = snap
        .builds
        .iter()
        .map(|b| {
            json!({"build_id": b.id, "component": b.component, "status": b.status(),
                "digest": b.artifact.as_ref().map(|a| &a.digest),
                "repository": b.artifact.as_ref().map(|a| &a.repository),
                "error": b.state.error,
                "syncs": snap.syncs_of(&b.id).iter().map(|s| json!({
                    "sync_id": s.id, "install_id": s.install_id, "status": s.status(),
                    "error": s.state.error})).collect::<Vec<_>>()})
        })
        .collect();
    println!(
        "{}",
        json!({"event": "summary", "synced": synced,
            "verified_installs": verified_installs.len(), "builds": builds})
    );
}

/// One row per build (component, kind, status, digest, syncs), and a note per chart bundle.
fn print_build_table(snap: &Snapshot) {
    let rows: Vec<Vec<String>> = snap
        .builds
        .iter()
        .map(|b| {
            let kind = snap
                .kinds
                .get(&(b.app.clone(), b.component.clone()))
                .copied()
                .unwrap_or("?");
            let syncs = snap.syncs_of(&b.id);
            let ok = syncs
                .iter()
                .filter(|s| s.status() == JobStatus::Succeeded)
                .count();
            vec![
                b.component.to_string(),
                kind.to_string(),
                b.status().to_string(),
                b.artifact
                    .as_ref()
                    .map(|a| a.digest.to_string())
                    .unwrap_or_else(|| "-".into()),
                format!("{ok}/{}", snap.expected_of(b)),
            ]
        })
        .collect();
    state::print_table(&["COMPONENT", "KIND", "BUILD", "DIGEST", "SYNCED"], &rows);
    // A chart bundle (a helm-chart built as an index): the chart and its images, as one.
    for b in &snap.builds {
        let kind = snap.kinds.get(&(b.app.clone(), b.component.clone()));
        if let (Some(&"helm-chart"), Some(a)) = (kind, &b.artifact) {
            if a.media_type == ferry_oci::media::OCI_INDEX {
                let repo = a.repository.as_str();
                let repo = repo.strip_prefix("vendor/").unwrap_or(repo);
                println!(
                    "\n  {}: the chart and the images it runs, synced as one; each install's \
                     values override (images at its own registry, by digest): \
                     installs/<install>/{repo}:{}",
                    b.component,
                    ferry_oci::chart_bundle::values_tag(&a.digest)
                );
            }
        }
    }
}

/// Why each failed build and each unsucceeded sync did not get there.
fn print_failures(snap: &Snapshot) {
    let failed: Vec<&Build> = snap
        .builds
        .iter()
        .filter(|b| b.status() != JobStatus::Succeeded)
        .collect();
    for b in &failed {
        println!(
            "\n  build of {} {}: {}",
            b.component,
            b.status(),
            error_text(&b.state.error)
        );
        if snap.kinds.get(&(b.app.clone(), b.component.clone())) == Some(&"docker-build")
            && error_text(&b.state.error).contains("buildah")
        {
            println!("  (docker-build components need buildah: scripts/dev.sh installs it; the other components still synced)");
        }
    }
    for b in &snap.builds {
        for s in snap.syncs_of(&b.id) {
            if s.status() != JobStatus::Succeeded {
                println!(
                    "\n  sync of {} to {} {}: {}",
                    b.component,
                    s.install_id,
                    s.status(),
                    error_text(&s.state.error)
                );
            }
        }
    }
}

/// How to pull the first succeeded artifact as the first verified install's nodes do.
fn print_pull_hint(
    snap: &Snapshot,
    verified_installs: &BTreeSet<&InstallId>,
    state: &StateDir,
    host: &str,
) {
    if let (Some(i), Some(b)) = (
        verified_installs.iter().next(),
        snap.builds
            .iter()
            .find(|b| b.status() == JobStatus::Succeeded),
    ) {
        if let Some(a) = &b.artifact {
            let repo = a
                .repository
                .as_str()
                .strip_prefix("vendor/")
                .unwrap_or(a.repository.as_str());
            // As the install's nodes pull: their pull-only identity, not the agent's.
            if let Ok(recipe) = ferry_dev::state::node_pull_recipe(state, i, host) {
                println!(
                    "pull it as {i}'s nodes do ({}, pull only; the secret stays in its 0600 file):",
                    recipe.identity
                );
                println!(
                    "  skopeo inspect --tls-verify=false --creds {} docker://{host}/installs/{i}/{repo}@{}",
                    recipe.creds_expr(),
                    a.digest
                );
                println!("  {}", recipe.ctr_pull(repo, &format!("@{}", a.digest)));
            }
        }
    }
}
