//! The assembly: one embedded registry (`vendor/` plus `installs/<id>/`, with the real token
//! authorizer), the IMS (SQLite store and queues, in-process bus, one worker per IMS queue),
//! the in-process builder pushing to `vendor/`, the local grant minter, and one agent per
//! install. [`DevSystem::start`] returns it running; callers (the `ferry dev` command, tests)
//! request builds, read [`Snapshot`]s and shut it down.
//!
//! This module must never print (the caller owns the terminal), never install a global logger,
//! and never put a secret into an error or a log line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::VendorTrust;
use ferry_build::AppFile;
use ferry_core::id::{AppName, BuildId, ComponentName, InstallId};
use ferry_core::ports::JobStore as _;
use ferry_local::bus::LocalBus;
use ferry_local::clock::{RandomIds, SystemClock};
use ferry_local::db::Db;
use ferry_local::minter::LocalGrantMinter;
use ferry_local::queue::SqliteQueue;
use ferry_local::store::SqliteStore;
use ferry_local::worker::{ImsOptions, LocalIms, RunningIms};
use ferry_oci::{Credential, CredentialStore, Secret};
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::{RegistryServer, RunningRegistry};

use crate::agents::Agents;
use crate::builder::DevBuilder;
use crate::error::{Context as _, DevError, Result};
use crate::state::{self, DevInfo, StateDir};
use crate::status::Snapshot;

/// How often [`DevSystem::wait_until_done`] looks at the store.
pub const POLL: Duration = Duration::from_millis(400);

/// What to start.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where everything is kept: SQLite file, registry root, keys (0600), logs.
    pub state_dir: PathBuf,
    /// The app to seed: a directory holding `ferry.json`.
    pub app_dir: PathBuf,
    /// Installs to create (`dev-1` … `dev-N`), each with its own agent.
    pub installs: u32,
    /// Registry listen address; port 0 picks a free port.
    pub registry_addr: SocketAddr,
    /// False (today's behaviour): every successful build is synced at once to every
    /// subscribed install. True: builds only record their artifact, and `ferry release create`
    /// decides which installs get it, in steps.
    pub manual_releases: bool,
}

/// The whole system on one machine, running.
pub struct DevSystem {
    state: StateDir,
    db: Db,
    host: String,
    app: AppName,
    app_root: PathBuf,
    components: Vec<ComponentName>,
    installs: u32,
    registry: RunningRegistry,
    /// Held while the system runs: `ferry registry gc` (or a second `ferry dev`) on this
    /// registry root is refused.
    _root_lock: ferry_registry::lock::RootLock,
    ims: LocalIms<DevBuilder, LocalGrantMinter>,
    workers: RunningIms,
    agents: Agents,
    started_ms: u64,
}

impl DevSystem {
    /// Sets up the state dir, starts the registry, the IMS workers and one agent per install,
    /// and seeds the app's components and `installs` installs subscribed to all of them.
    /// Nothing is built until [`DevSystem::request_builds`].
    pub async fn start(options: DevOptions) -> Result<DevSystem> {
        let state = StateDir::new(&options.state_dir);
        state.create()?;
        let app_file = options.app_dir.join("ferry.json");
        let app = AppFile::load(&app_file)
            .with_context(|| format!("loading the app file {}", app_file.display()))?;
        let app_root = std::fs::canonicalize(&app.root)
            .with_context(|| format!("resolving {}", app.root.display()))?;
        let db = Db::open(state.db_path())
            .with_context(|| format!("opening {}", state.db_path().display()))?;
        let catalog = ferry_local::catalog::SqliteCatalog::new(db.clone());
        catalog
            .put_app(&ferry_core::manage::AppRecord {
                name: app.app.clone(),
                source: Some(app_root.display().to_string()),
            })
            .await?;

        // Registry with the real authorizer: the builder is `vendor`, each agent `agent:<id>`.
        let vendor_secret = state::load_or_create_secret(&state.vendor_secret_path())?;
        let vendor_key = Arc::new(state::load_or_create_vendor_key(&state.vendor_key_path())?);
        let vendor_registry = start_registry(&state, options.registry_addr, &vendor_secret).await?;

        // The IMS: builder over the vendor namespace, minter over the registry's grants.
        let ims = start_ims(
            &state,
            &db,
            catalog,
            &vendor_registry,
            &vendor_secret,
            vendor_key.clone(),
            options.manual_releases,
        )
        .await?;
        let workers = ims.spawn();
        let VendorRegistry {
            host,
            root_lock,
            access,
            registry,
        } = vendor_registry;

        // Seed: the app's components and N installs subscribed to all of them.
        for c in &app.components {
            ims.store().put_component(c).await?;
        }
        let components: Vec<ComponentName> =
            app.components.iter().map(|c| c.name.clone()).collect();
        for n in 1..=options.installs {
            let id = InstallId::new(format!("dev-{n}"))?;
            state::provision_install(&state, &db, &id, &app.app, components.clone(), None, &host)
                .await?;
        }

        let vendor = VendorTrust {
            registry: host.clone(),
            public_key: vendor_key.public_key_string(),
        };
        let agents = Agents::new(state.clone(), db.clone(), access, vendor);
        agents.refresh(&registry).await?;
        Ok(DevSystem {
            state,
            db,
            host,
            app: app.app,
            app_root,
            components,
            installs: options.installs,
            registry,
            _root_lock: root_lock,
            ims,
            workers,
            agents,
            started_ms: ferry_local::db::unix_ms(),
        })
    }

    /// Requests one build of each of the app's components (source ref `dev`).
    pub async fn request_builds(&self, requested_by: &str) -> Result<Vec<BuildId>> {
        let mut requested = Vec::new();
        for c in &self.components {
            let id = self
                .ims
                .request_build(
                    self.app.clone(),
                    c.clone(),
                    "dev".into(),
                    requested_by.into(),
                )
                .await
                .with_context(|| format!("requesting a build of {c}"))?;
            requested.push(id);
        }
        Ok(requested)
    }

    /// Starts an agent for every install that has none yet (installs added by another
    /// process appear here).
    pub async fn refresh_agents(&self) -> Result<()> {
        self.agents.refresh(&self.registry).await
    }

    /// The installs with an agent running in this process.
    pub async fn running_agents(&self) -> Vec<InstallId> {
        self.agents.running().await
    }

    /// The builds in `requested` or created since the system started, with their syncs.
    pub async fn snapshot(&self, requested: &[BuildId]) -> Result<Snapshot> {
        Snapshot::take(&self.db, self.started_ms, requested).await
    }

    /// Polls until every build is done (see [`Snapshot::all_done`]), starting agents for new
    /// installs on the way; a [`DevError`] naming what is pending after `timeout`.
    pub async fn wait_until_done(
        &self,
        requested: &[BuildId],
        timeout: Duration,
    ) -> Result<Snapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(e) = self.refresh_agents().await {
                tracing::warn!(error = %e, "could not refresh the installs");
            }
            let snap = self.snapshot(requested).await?;
            if snap.all_done() {
                return Ok(snap);
            }
            if Instant::now() >= deadline {
                return Err(DevError::Failed(format!(
                    "not everything was done within {}s: {}",
                    timeout.as_secs(),
                    snap.pending_summary()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// `host:port` of the embedded registry.
    pub fn registry_host(&self) -> &str {
        &self.host
    }

    /// The seeded app and its source tree.
    pub fn app(&self) -> (&AppName, &Path) {
        (&self.app, &self.app_root)
    }

    /// How many installs were seeded.
    pub fn installs(&self) -> u32 {
        self.installs
    }

    /// The store (read it; the handlers write it).
    pub fn store(&self) -> &SqliteStore {
        self.ims.store()
    }

    /// Clean shutdown: agents finish or release their job, workers stop, the registry stops,
    /// and the state dir forgets this process.
    pub async fn shutdown(self) {
        self.agents.shutdown().await;
        for (queue, r) in self.workers.shutdown().await {
            if let Err(e) = r {
                tracing::warn!(%queue, error = %e, "worker stopped with an error");
            }
        }
        self.registry.shutdown().await;
        let _ = std::fs::remove_file(self.state.info_path());
    }
}

/// The embedded registry, running, and what the rest of the system needs of it.
struct VendorRegistry {
    host: String,
    root_lock: ferry_registry::lock::RootLock,
    access: Arc<AccessControl>,
    registry: RunningRegistry,
}

/// Starts the registry on `addr` with the real authorizer (the builder is `vendor`, each agent
/// `agent:<id>`), holding its root's lock, and records its address in the state dir.
async fn start_registry(
    state: &StateDir,
    addr: SocketAddr,
    vendor_secret: &str,
) -> Result<VendorRegistry> {
    let mut policy = AccessPolicy::new();
    policy.add_identity(Identity::Vendor, vendor_secret);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let host = listener.local_addr()?.to_string();
    std::fs::create_dir_all(state.registry_root())
        .with_context(|| format!("creating {}", state.registry_root().display()))?;
    let root_lock = ferry_registry::lock::RootLock::acquire(&state.registry_root())
        .context("another process (ferry dev, or ferry registry serve|gc) holds this registry")?;
    let mut auth = AuthConfig::new("ferry-dev", state.registry_root().join("auth"));
    auth.realm = format!("http://{host}/token");
    let access =
        Arc::new(AccessControl::open(auth, policy).context("opening the registry's signing key")?);
    let server = RegistryServer::builder(state.registry_root())
        .authorizer(access.clone())
        .extra_routes(token_router(access.clone()))
        .namespace("vendor")
        // As on ECR (the customer stack's repositories are IMMUTABLE): a synced tag never
        // moves.
        .immutable_tags("installs/")
        .build()
        .with_context(|| format!("opening {}", state.registry_root().display()))?;
    let registry = server.spawn_on(listener).context("starting the registry")?;
    state.write_info(&DevInfo {
        registry: host.clone(),
        pid: std::process::id(),
    })?;
    Ok(VendorRegistry {
        host,
        root_lock,
        access,
        registry,
    })
}

/// The IMS over the state dir's database: the builder pushes to `vendor/` as the vendor
/// identity, the minter mints grants on the registry's access control; with
/// `manual_releases` builds are not fanned out.
async fn start_ims(
    state: &StateDir,
    db: &Db,
    catalog: ferry_local::catalog::SqliteCatalog,
    registry: &VendorRegistry,
    vendor_secret: &str,
    vendor_key: Arc<ferry_core::trust::VendorKey>,
    manual_releases: bool,
) -> Result<LocalIms<DevBuilder, LocalGrantMinter>> {
    let host = registry.host.as_str();
    let mut creds = CredentialStore::new();
    creds.insert(
        host,
        Some("vendor"),
        Credential::Basic {
            username: "vendor".into(),
            password: Secret::new(vendor_secret),
        },
    );
    let bus = Arc::new(LocalBus::new(SqliteQueue::new(db.clone())));
    let builder = DevBuilder::new(state.clone(), catalog, host.to_string(), creds, bus);
    let minter = LocalGrantMinter::new(registry.access.clone(), host.to_string());
    LocalIms::new(
        db.clone(),
        builder,
        minter,
        SystemClock,
        RandomIds,
        ImsOptions {
            handlers: ferry_core::Config {
                fan_out_on_build: !manual_releases,
                ..ferry_core::Config::default()
            },
            ..ImsOptions::default()
        },
        vendor_key,
    )
    .await
    .context("creating the IMS queues")
}
