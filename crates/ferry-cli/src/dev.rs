//! `ferry dev`: the whole system on one machine, no cloud account. One embedded registry
//! (`vendor/` plus `installs/<id>/` per install, with the real token authorizer), the IMS
//! (SQLite store and queues, in-process bus, one worker per IMS queue), an in-process builder
//! pushing to the vendor namespace, the local grant minter, and one install agent per install.
//! It seeds an app from its `ferry.json`, N installs subscribed to every component, requests a
//! build of each component and shows builds and syncs until every artifact is verified in
//! every install.
//!
//! It must never print or log a secret (it points at the 0600 files under `keys/` instead),
//! and never exit 0 with `--exit-when-synced` when a build or a sync failed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use ferry_agent::{Agent, AgentConfig, QueueReporter, VendorTrust, SYNC_REPORTED_QUEUE};
use ferry_build::{ArtifactBuilder, BuildConfig, InProcessBuilder};
use ferry_core::domain::{Build, Install, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, InstallId, QueueName};
use ferry_core::ports::{BuildSpec, Builder, BuilderError, JobStore as _, ReceiveOptions};
use ferry_core::state::JobStatus;
use ferry_local::bus::LocalBus;
use ferry_local::clock::{RandomIds, SystemClock};
use ferry_local::db::Db;
use ferry_local::minter::LocalGrantMinter;
use ferry_local::queue::SqliteQueue;
use ferry_local::worker::{ImsOptions, LocalIms};
use ferry_oci::{Credential, CredentialStore, Secret};
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::{RegistryServer, RunningRegistry};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::state::{self, AppRecord, DevInfo, StateDir};

/// How often the status view and the install watcher look at the store.
const POLL: Duration = Duration::from_millis(400);

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
}

pub async fn run(args: DevArgs) -> Result<()> {
    let state = StateDir::new(&args.state_dir);
    state.create()?;
    init_file_logging(&state.log_file())?;
    let app_file = args.app.join("ferry.json");
    let app = ferry_build::AppFile::load(&app_file)
        .with_context(|| format!("loading the app file {}", app_file.display()))?;
    let app_root = std::fs::canonicalize(&app.root)
        .with_context(|| format!("resolving {}", app.root.display()))?;
    state.write_app(&AppRecord {
        name: app.app.clone(),
        root: app_root.clone(),
    })?;
    let db = Db::open(state.db_path())
        .with_context(|| format!("opening {}", state.db_path().display()))?;

    // Registry with the real authorizer: the builder is `vendor`, each agent `agent:<id>`.
    let vendor_secret = state::load_or_create_secret(&state.vendor_secret_path())?;
    let vendor_key = Arc::new(state::load_or_create_vendor_key(&state.vendor_key_path())?);
    let mut policy = AccessPolicy::new();
    policy.add_identity(Identity::Vendor, &vendor_secret);
    let listener = tokio::net::TcpListener::bind(args.registry_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.registry_addr))?;
    let addr = listener.local_addr()?;
    let host = addr.to_string();
    let mut auth = AuthConfig::new("ferry-dev", state.registry_root().join("auth"));
    auth.realm = format!("http://{host}/token");
    let access =
        Arc::new(AccessControl::open(auth, policy).context("opening the registry's signing key")?);
    let server = RegistryServer::builder(state.registry_root())
        .authorizer(access.clone())
        .extra_routes(token_router(access.clone()))
        .namespace("vendor")
        // As on ECR (the customer stack's repositories are IMMUTABLE): a synced tag never moves.
        .immutable_tags("installs/")
        .build()
        .with_context(|| format!("opening {}", state.registry_root().display()))?;
    let registry = server.spawn_on(listener)?;
    state.write_info(&DevInfo {
        registry: host.clone(),
        pid: std::process::id(),
    })?;

    // The IMS: builder over the vendor namespace, minter over the registry's grants.
    let mut creds = CredentialStore::new();
    creds.insert(
        &host,
        Some("vendor"),
        Credential::Basic {
            username: "vendor".into(),
            password: Secret::new(vendor_secret.as_str()),
        },
    );
    let bus = Arc::new(LocalBus::new(SqliteQueue::new(db.clone())));
    let builder = DevBuilder::new(state.clone(), host.clone(), creds, bus);
    let minter = LocalGrantMinter::new(access.clone(), host.clone());
    let ims = LocalIms::new(
        db.clone(),
        builder,
        minter,
        SystemClock,
        RandomIds,
        ImsOptions::default(),
        vendor_key.clone(),
    )
    .await
    .context("creating the IMS queues")?;
    let running_ims = ims.spawn();
    let store = ims.store().clone();

    // Seed: the app's components and N installs subscribed to all of them.
    for c in &app.components {
        store.put_component(c).await?;
    }
    let names: Vec<ComponentName> = app.components.iter().map(|c| c.name.clone()).collect();
    for n in 1..=args.installs {
        let id = InstallId::new(format!("dev-{n}"))?;
        state::provision_install(&state, &db, &id, &app.app, names.clone(), None, &host).await?;
    }

    let vendor = VendorTrust {
        registry: host.clone(),
        public_key: vendor_key.public_key_string(),
    };
    let agents = Agents::new(state.clone(), db.clone(), access.clone(), vendor);
    agents.refresh(&registry).await?;

    let started_ms = ferry_local::db::unix_ms();
    let mut requested = Vec::new();
    for c in &app.components {
        let id = ims
            .request_build(
                app.app.clone(),
                c.name.clone(),
                "dev".into(),
                "ferry dev".into(),
            )
            .await
            .with_context(|| format!("requesting a build of {}", c.name))?;
        requested.push(id);
    }

    let out = Output { json: args.json };
    out.banner(&state, &host, &app.app, &app_root, args.installs);

    let signal = CancellationToken::new();
    {
        let s = signal.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            s.cancel();
        });
    }
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
        if let Err(e) = agents.refresh(&registry).await {
            tracing::warn!(error = %format!("{e:#}"), "could not refresh the installs");
        }
        let snap = match Snapshot::take(&db, started_ms, &requested).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not read the store");
                continue;
            }
        };
        view.print_changes(&snap, &out);
        if snap.all_done() {
            if !announced {
                out.closing(&snap, &state, &host);
                announced = true;
            }
            if args.exit_when_synced {
                result = snap.verdict();
                break;
            }
        } else {
            announced = false;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            out.closing(&snap, &state, &host);
            result = Err(anyhow::anyhow!(
                "not everything was done within {}s: {}",
                args.timeout.unwrap_or(0),
                snap.pending_summary()
            ));
            break;
        }
    }

    // Clean shutdown: agents finish or release their job, workers stop, the registry stops.
    agents.shutdown().await;
    for (queue, r) in running_ims.shutdown().await {
        if let Err(e) = r {
            tracing::warn!(%queue, error = %e, "worker stopped with an error");
        }
    }
    registry.shutdown().await;
    let _ = std::fs::remove_file(state.info_path());
    result
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
// Builder: one InProcessBuilder per app root, so apps added with `ferry app add` build too.

#[derive(Clone)]
struct DevBuilder {
    state: StateDir,
    registry: String,
    credentials: CredentialStore,
    bus: Arc<LocalBus<SqliteQueue>>,
    per_app: Arc<Mutex<HashMap<AppName, InProcessBuilder<LocalBus<SqliteQueue>>>>>,
}

impl DevBuilder {
    fn new(
        state: StateDir,
        registry: String,
        credentials: CredentialStore,
        bus: Arc<LocalBus<SqliteQueue>>,
    ) -> DevBuilder {
        DevBuilder {
            state,
            registry,
            credentials,
            bus,
            per_app: Arc::default(),
        }
    }

    fn for_app(
        &self,
        app: &AppName,
    ) -> Result<InProcessBuilder<LocalBus<SqliteQueue>>, BuilderError> {
        let mut map = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(app) {
            return Ok(b.clone());
        }
        let rejected = |message: String| BuilderError::Rejected { message };
        let record = self
            .state
            .read_app(app)
            .map_err(|e| rejected(format!("{e:#}")))?
            .ok_or_else(|| {
                rejected(format!(
                    "app {app} has no source tree on this machine; run `ferry app add {app} --root DIR`"
                ))
            })?;
        let mut config = BuildConfig::new(self.registry.clone(), record.root)
            .with_prefix("vendor")
            .with_credentials(self.credentials.clone());
        config.work_dir = Some(self.state.work_dir());
        let artifact = ArtifactBuilder::new(config).map_err(|e| rejected(e.to_string()))?;
        let b = InProcessBuilder::new(artifact, self.bus.clone());
        map.insert(app.clone(), b.clone());
        Ok(b)
    }
}

impl Builder for DevBuilder {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        let b = self.for_app(&spec.component.app)?;
        b.start(spec).await
    }
}

// ---------------------------------------------------------------------------------------------
// Agents: one in-process ferry-agent per install that has a key here.

struct Agents {
    state: StateDir,
    db: Db,
    access: Arc<AccessControl>,
    /// The registry the agents pull from and write to, and the key their jobs are signed with.
    vendor: VendorTrust,
    running: tokio::sync::Mutex<BTreeMap<InstallId, tokio::task::JoinHandle<()>>>,
    /// Installs whose agent runs elsewhere (registered with --public-key), or broken ones.
    skipped: tokio::sync::Mutex<HashSet<InstallId>>,
    stop: CancellationToken,
}

impl Agents {
    fn new(state: StateDir, db: Db, access: Arc<AccessControl>, vendor: VendorTrust) -> Agents {
        Agents {
            state,
            db,
            access,
            vendor,
            running: Default::default(),
            skipped: Default::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Starts an agent for every install that has none yet (installs added by `ferry install
    /// add` in another process show up here).
    async fn refresh(&self, registry: &RunningRegistry) -> Result<()> {
        let installs = state::all_installs(&self.db).await?;
        let mut running = self.running.lock().await;
        let mut skipped = self.skipped.lock().await;
        for install in installs {
            if running.contains_key(&install.id) || skipped.contains(&install.id) {
                continue;
            }
            match self.start_one(&install, registry) {
                Ok(Some(handle)) => {
                    running.insert(install.id.clone(), handle);
                }
                Ok(None) => {
                    skipped.insert(install.id.clone());
                }
                Err(e) => {
                    tracing::error!(install = %install.id, error = %format!("{e:#}"), "cannot start the install's agent");
                    skipped.insert(install.id.clone());
                }
            }
        }
        Ok(())
    }

    fn start_one(
        &self,
        install: &Install,
        registry: &RunningRegistry,
    ) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let id = &install.id;
        let namespace = format!("installs/{id}");
        registry
            .storage()
            .add_namespace(&namespace)
            .with_context(|| format!("declaring namespace {namespace}"))?;
        let secret_path = self.state.agent_secret_path(id);
        if !secret_path.exists() {
            tracing::info!(install = %id, "no identity secret here; its agent runs elsewhere");
            return Ok(None);
        }
        let secret = state::read_secret(&secret_path)?;
        self.access.update_policy(|p| {
            p.add_identity(Identity::Agent(id.to_string()), &secret);
        });
        let key_path = self.state.agent_key_path(id);
        if !key_path.exists() {
            tracing::info!(install = %id, "no agent key here (registered with a public key); its agent runs elsewhere");
            return Ok(None);
        }
        let keypair = state::read_agent_key(&key_path)?;
        if keypair.public_key_string() != install.agent_public_key {
            bail!(
                "install {id}: the key in {} does not match the registered public key",
                key_path.display()
            );
        }
        let queue = Arc::new(SqliteQueue::new(self.db.clone()));
        let reporter = Arc::new(QueueReporter::new(
            queue.clone(),
            QueueName::new(SYNC_REPORTED_QUEUE)?,
        ));
        let mut config = AgentConfig::new(
            id.clone(),
            install.queue.clone(),
            self.vendor.clone(),
            self.vendor.registry.clone(),
            Secret::new(secret.as_str()),
        )
        .with_receive(ReceiveOptions::new(1, 20, 60)?);
        config.shutdown_grace = Duration::from_secs(10);
        let agent = Agent::new(config, queue, reporter, keypair);
        let stop = self.stop.child_token();
        let install_id = id.clone();
        tracing::info!(install = %id, "agent starting");
        Ok(Some(tokio::spawn(async move {
            if let Err(e) = agent.run(stop).await {
                tracing::error!(install = %install_id, error = %e, "agent stopped with an error");
            }
        })))
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        let mut running = self.running.lock().await;
        for (id, handle) in std::mem::take(&mut *running) {
            if let Err(e) = handle.await {
                tracing::warn!(install = %id, error = %e, "agent task failed");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status

/// The builds of this run (and any requested while it runs) with their syncs.
struct Snapshot {
    builds: Vec<Build>,
    syncs: BTreeMap<BuildId, Vec<SyncJob>>,
    /// Installs subscribed per (app, component) right now.
    expected: HashMap<(AppName, ComponentName), BTreeSet<InstallId>>,
    kinds: HashMap<(AppName, ComponentName), &'static str>,
}

impl Snapshot {
    async fn take(db: &Db, since_ms: u64, requested: &[BuildId]) -> Result<Snapshot> {
        let builds: Vec<Build> = state::all_builds(db)
            .await?
            .into_iter()
            .filter(|b| requested.contains(&b.id) || b.state.created_at >= since_ms)
            .collect();
        let ids: HashSet<&BuildId> = builds.iter().map(|b| &b.id).collect();
        let mut syncs: BTreeMap<BuildId, Vec<SyncJob>> = BTreeMap::new();
        for s in state::all_syncs(db).await? {
            if ids.contains(&s.build_id) {
                syncs.entry(s.build_id.clone()).or_default().push(s);
            }
        }
        let mut expected: HashMap<_, BTreeSet<InstallId>> = HashMap::new();
        for i in state::all_installs(db).await? {
            for c in &i.components {
                expected
                    .entry((i.app.clone(), c.clone()))
                    .or_default()
                    .insert(i.id.clone());
            }
        }
        let kinds = state::all_components(db)
            .await?
            .into_iter()
            .map(|c| ((c.app, c.name), c.kind.name()))
            .collect();
        Ok(Snapshot {
            builds,
            syncs,
            expected,
            kinds,
        })
    }

    fn syncs_of(&self, b: &BuildId) -> &[SyncJob] {
        self.syncs.get(b).map(Vec::as_slice).unwrap_or(&[])
    }

    fn expected_of(&self, b: &Build) -> usize {
        self.expected
            .get(&(b.app.clone(), b.component.clone()))
            .map_or(0, BTreeSet::len)
    }

    fn build_done(&self, b: &Build) -> bool {
        match b.status() {
            JobStatus::Succeeded => {
                let syncs = self.syncs_of(&b.id);
                syncs.len() >= self.expected_of(b) && syncs.iter().all(|s| s.status().is_terminal())
            }
            s => s.is_terminal(),
        }
    }

    fn all_done(&self) -> bool {
        !self.builds.is_empty() && self.builds.iter().all(|b| self.build_done(b))
    }

    /// Ok when every build and every sync succeeded; else names each failure and why.
    fn verdict(&self) -> Result<()> {
        let mut failures = Vec::new();
        for b in &self.builds {
            if b.status() != JobStatus::Succeeded {
                failures.push(format!(
                    "build {} of {} {}: {}",
                    b.id,
                    b.component,
                    b.status(),
                    error_text(&b.state.error)
                ));
                continue;
            }
            for s in self.syncs_of(&b.id) {
                if s.status() != JobStatus::Succeeded {
                    failures.push(format!(
                        "sync {} of {} to {} {}: {}",
                        s.id,
                        b.component,
                        s.install_id,
                        s.status(),
                        error_text(&s.state.error)
                    ));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("{} failed:\n  {}", failures.len(), failures.join("\n  "))
        }
    }

    fn pending_summary(&self) -> String {
        let pending: Vec<String> = self
            .builds
            .iter()
            .filter(|b| !self.build_done(b))
            .map(|b| format!("{} ({})", b.component, b.status()))
            .collect();
        format!("still pending: {}", pending.join(", "))
    }
}

fn error_text(e: &Option<ferry_core::state::JobError>) -> String {
    match e {
        Some(e) => format!("{} ({})", e.message, e.code),
        None => "no error recorded".into(),
    }
}

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
    fn banner(&self, state: &StateDir, host: &str, app: &AppName, root: &Path, installs: u32) {
        let db = state.db_path();
        if self.json {
            println!(
                "{}",
                json!({"event": "started", "registry": format!("http://{host}"),
                    "vendor_namespace": "vendor/", "install_namespace": "installs/<id>/",
                    "database": db, "state_dir": state.root(), "app": app, "app_root": root,
                    "installs": installs, "log": state.log_file()})
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
        let mut verified_installs: BTreeSet<&InstallId> = BTreeSet::new();
        let mut all_installs: BTreeSet<&InstallId> = BTreeSet::new();
        let mut failed = Vec::new();
        for b in &snap.builds {
            if b.status() != JobStatus::Succeeded {
                failed.push(b);
            }
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
        let synced = snap.verdict().is_ok();
        if self.json {
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
            return;
        }
        println!();
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
                println!("check it with skopeo (the secret stays in its 0600 file):");
                println!(
                    "  skopeo inspect --tls-verify=false --creds \"agent:{i}:$(cat {})\" docker://{host}/installs/{i}/{repo}@{}",
                    state.agent_secret_path(i).display(),
                    a.digest
                );
            }
        }
    }
}
