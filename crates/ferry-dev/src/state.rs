//! The `ferry dev` state directory, shared by the dev system and the management commands that
//! run beside it: where the SQLite file, the registry root, the keys and the logs live, the app
//! records, install provisioning, and read-only listings of the store.
//!
//! Secrets (agent keys, identity secrets) exist only in 0600 files under `keys/`; this module
//! must never print, log or return them inside an error, and never overwrite an existing key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::domain::{Build, Component, Install, LineageRecord, RegistryTarget, SyncJob};
use ferry_core::id::{AppName, ComponentName, InstallId, QueueName};
use ferry_core::seal::AgentKeypair;
use ferry_core::trust::VendorKey;
use ferry_local::db::{Db, DbError};
use ferry_local::queue::{QueueConfig, SqliteQueue};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{bail, Context as _, DevError, Result};

/// Default state directory, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = ".ferry/dev";

/// Install queues allow more receives than the agent's own retry limit (5), so the agent
/// reports a failing job itself before the queue dead-letters it.
pub const INSTALL_QUEUE_MAX_RECEIVES: u32 = 10;
const INSTALL_QUEUE_VISIBILITY: Duration = Duration::from_secs(60);

/// Paths inside one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("ferry.db")
    }
    pub fn registry_root(&self) -> PathBuf {
        self.root.join("registry")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log_file(&self) -> PathBuf {
        self.logs_dir().join("ferry-dev.log")
    }
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }
    /// Written by a running `ferry dev`: where its registry listens.
    pub fn info_path(&self) -> PathBuf {
        self.root.join("dev.json")
    }
    pub fn vendor_secret_path(&self) -> PathBuf {
        self.keys_dir().join("vendor.secret")
    }
    /// The IMS's vendor key: signs job messages, keys sync ids (0600).
    pub fn vendor_key_path(&self) -> PathBuf {
        self.keys_dir().join("vendor.key")
    }
    pub fn agent_key_path(&self, install: &InstallId) -> PathBuf {
        self.keys_dir().join(format!("agent-{install}.key"))
    }
    pub fn agent_secret_path(&self, install: &InstallId) -> PathBuf {
        self.keys_dir().join(format!("agent-{install}.secret"))
    }
    /// The secret of `node:<install>`, the install's pull-only node identity (0600).
    pub fn node_secret_path(&self, install: &InstallId) -> PathBuf {
        self.keys_dir().join(format!("node-{install}.secret"))
    }

    /// Creates the directory tree (keys/ is 0700).
    pub fn create(&self) -> Result<()> {
        for d in [self.root.clone(), self.logs_dir(), self.work_dir()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let keys = self.keys_dir();
        std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", keys.display()))?;
        }
        Ok(())
    }

    /// Opens the database of a state dir that `ferry dev` already set up.
    pub fn open_existing(&self) -> Result<Db> {
        let path = self.db_path();
        if !path.is_file() {
            return Err(DevError::NoState {
                root: self.root.display().to_string(),
            });
        }
        Db::open(&path).with_context(|| format!("opening {}", path.display()))
    }

    pub fn read_info(&self) -> Option<DevInfo> {
        let text = std::fs::read_to_string(self.info_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_info(&self, info: &DevInfo) -> Result<()> {
        let text = serde_json::to_string_pretty(info)?;
        write_atomic(&self.info_path(), text.as_bytes())
    }
}

/// What a running `ferry dev` tells the management commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevInfo {
    /// `host:port` of the embedded registry.
    pub registry: String,
    pub pid: u32,
}

/// Writes through a temp file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Creates `path` with mode 0600 holding `contents`; fails if it exists.
fn create_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
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
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads an identity secret, or creates one (256 random bits, 0600) on first use.
pub fn load_or_create_secret(path: &Path) -> Result<Zeroizing<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = Zeroizing::new(s);
            let trimmed = s.trim();
            if trimmed.is_empty() {
                bail!(
                    "{} is empty; delete it to have a new secret generated",
                    path.display()
                );
            }
            return Ok(Zeroizing::new(trimmed.to_string()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = Zeroizing::new(format!(
        "{}{}",
        ferry_registry::token::random_id(),
        ferry_registry::token::random_id()
    ));
    create_secret_file(path, secret.as_bytes())?;
    Ok(secret)
}

/// Reads a secret that must exist.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    let s = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let t = s.trim();
    if t.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(Zeroizing::new(t.to_string()))
}

/// Reads the agent key at `path`, or generates one (0600) on first use.
pub fn load_or_create_agent_key(path: &Path) -> Result<AgentKeypair> {
    if path.exists() {
        return read_agent_key(path);
    }
    let kp = AgentKeypair::generate().context("generating an agent key")?;
    let text = kp.to_secret_string();
    create_secret_file(path, format!("{}\n", text.as_str()).as_bytes())?;
    Ok(kp)
}

/// The vendor key of this state dir, created (0600) on first use.
pub fn load_or_create_vendor_key(path: &Path) -> Result<VendorKey> {
    if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        return VendorKey::from_secret_string(text.trim())
            .with_context(|| format!("{} does not hold a vendor key", path.display()));
    }
    let key = VendorKey::generate().context("generating the vendor key")?;
    let text = key.to_secret_string();
    create_secret_file(path, format!("{}\n", text.as_str()).as_bytes())?;
    Ok(key)
}

pub fn read_agent_key(path: &Path) -> Result<AgentKeypair> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    AgentKeypair::from_secret_string(text.trim())
        .with_context(|| format!("{} does not hold an agent key", path.display()))
}

/// The two public keys of an agent that runs elsewhere (`ferry-agent keygen` prints both).
#[derive(Debug, Clone)]
pub struct AgentPublicKeys {
    pub public_key: String,
    pub report_key: String,
}

/// The queue of an install's agent.
pub fn install_queue(id: &InstallId) -> Result<QueueName> {
    Ok(QueueName::new(format!("install-{id}"))?)
}

/// Creates (idempotently) an install's queue and its dead-letter queue.
pub async fn create_install_queue(queue: &SqliteQueue, name: &QueueName) -> Result<()> {
    let dlq = QueueName::new(format!("{name}-dlq"))?;
    queue
        .create_queue(
            &dlq,
            QueueConfig {
                visibility_timeout: INSTALL_QUEUE_VISIBILITY,
                ..QueueConfig::default()
            },
        )
        .await?;
    queue
        .create_queue(
            name,
            QueueConfig {
                visibility_timeout: INSTALL_QUEUE_VISIBILITY,
                max_receive_count: INSTALL_QUEUE_MAX_RECEIVES,
                dlq: Some(dlq),
            },
        )
        .await?;
    Ok(())
}

/// Registers an install through the management port: its queue, its agent's and its nodes'
/// identity secrets (0600), its agent key (generated unless `keys` is given; the agent then
/// runs elsewhere) and its store record, in `registry` (`host:port`). Idempotent.
pub async fn provision_install(
    state: &StateDir,
    db: &Db,
    id: &InstallId,
    app: &AppName,
    components: Vec<ComponentName>,
    keys: Option<AgentPublicKeys>,
    registry: &str,
) -> Result<Install> {
    use ferry_core::manage::{InstallRegistration, Management as _};
    let manage = crate::manage::LocalManagement::new(state.clone(), db.clone());
    let keys = match keys {
        Some(k) => k,
        None => manage.dev_agent_keys(id)?,
    };
    let registration = InstallRegistration {
        id: id.clone(),
        app: app.clone(),
        components,
        agent_public_key: keys.public_key,
        agent_report_key: keys.report_key,
        agent_role_arn: None,
        registry: Some(RegistryTarget {
            endpoint: registry.to_string(),
            namespace: format!("installs/{id}"),
        }),
    };
    Ok(manage
        .register_install(&registration)
        .await
        .map_err(|e| DevError::Failed(e.to_string()))?
        .install)
}

// ---------------------------------------------------------------------------------------------
// Listings: the store's port answers per-key queries; these views need whole tables.

fn bodies<T: DeserializeOwned + Send + 'static>(
    db: &Db,
    sql: &'static str,
    arg: Option<String>,
) -> impl std::future::Future<Output = Result<Vec<T>>> + Send {
    let db = db.clone();
    async move {
        let rows: Vec<String> = db
            .call(move |conn| {
                let mut stmt = conn.prepare(sql)?;
                let mut out = Vec::new();
                let mut rows = match &arg {
                    Some(a) => stmt.query([a])?,
                    None => stmt.query([])?,
                };
                while let Some(r) = rows.next()? {
                    out.push(r.get::<_, String>(0)?);
                }
                Ok::<_, DbError>(out)
            })
            .await?;
        rows.iter()
            .map(|b| serde_json::from_str(b).context("a stored record does not decode"))
            .collect()
    }
}

/// Every component, by app then name.
pub async fn all_components(db: &Db) -> Result<Vec<Component>> {
    Ok(ferry_local::catalog::SqliteCatalog::new(db.clone())
        .components()
        .await?)
}

/// Every install, by id.
pub async fn all_installs(db: &Db) -> Result<Vec<Install>> {
    Ok(ferry_local::catalog::SqliteCatalog::new(db.clone())
        .installs()
        .await?)
}

/// Oldest first.
pub async fn all_builds(db: &Db) -> Result<Vec<Build>> {
    bodies(db, "SELECT body FROM builds ORDER BY created_at, id", None).await
}

/// Oldest first.
pub async fn all_syncs(db: &Db) -> Result<Vec<SyncJob>> {
    bodies(db, "SELECT body FROM syncs ORDER BY created_at, id", None).await
}

pub async fn lineage_of(db: &Db, digest: &str) -> Result<Vec<LineageRecord>> {
    bodies(
        db,
        "SELECT body FROM lineage WHERE digest = ?1 ORDER BY install_id",
        Some(digest.to_string()),
    )
    .await
}

/// How `install`'s nodes pull from `registry` (`host[:port]`, the install's registry endpoint)
/// with their pull-only identity `node:<install>`: the recipe `ferry install show` prints. The
/// secret stays in its 0600 file; the recipe only names the file. Fails if the install was
/// never provisioned here (no secret file).
pub fn node_pull_recipe(
    state: &StateDir,
    install: &InstallId,
    registry: &str,
) -> Result<ferry_registry::access::node::NodePullRecipe> {
    let file = state.node_secret_path(install);
    if !file.is_file() {
        bail!(
            "install {install} has no node identity in {} (no {}); run `ferry install add` \
             for it, or start `ferry dev` on this state dir once to create it",
            state.root.display(),
            file.display()
        );
    }
    ferry_registry::access::node::NodePullRecipe::new(registry, install.as_str(), &file)
        .with_context(|| format!("the recipe for install {install}"))
}
