//! The agent supervisor: one in-process ferry-agent per install whose keys live in this state
//! directory. Installs registered with only a public key (`ferry install add --public-key`)
//! run their agent elsewhere and are skipped.
//!
//! It must never start a second agent for an install, never start one whose key file does not
//! match the install's registered public key, and never log a secret.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_agent::{Agent, AgentConfig, QueueReporter, VendorTrust, SYNC_REPORTED_QUEUE};
use ferry_core::domain::Install;
use ferry_core::id::{InstallId, QueueName};
use ferry_core::ports::ReceiveOptions;
use ferry_local::db::Db;
use ferry_local::queue::SqliteQueue;
use ferry_oci::Secret;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::AccessControl;
use ferry_registry::server::RunningRegistry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{bail, Context as _, Result};
use crate::state::{self, StateDir};

/// The running agents of one dev system.
pub(crate) struct Agents {
    state: StateDir,
    db: Db,
    access: Arc<AccessControl>,
    /// The registry the agents pull from and write to, and the key their jobs are signed with.
    vendor: VendorTrust,
    running: tokio::sync::Mutex<BTreeMap<InstallId, JoinHandle<()>>>,
    /// Installs whose agent runs elsewhere (registered with --public-key), or broken ones.
    skipped: tokio::sync::Mutex<HashSet<InstallId>>,
    stop: CancellationToken,
}

impl Agents {
    pub(crate) fn new(
        state: StateDir,
        db: Db,
        access: Arc<AccessControl>,
        vendor: VendorTrust,
    ) -> Agents {
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
    pub(crate) async fn refresh(&self, registry: &RunningRegistry) -> Result<()> {
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
                    tracing::error!(install = %install.id, error = %e, "cannot start the install's agent");
                    skipped.insert(install.id.clone());
                }
            }
        }
        Ok(())
    }

    /// The installs with an agent running here.
    pub(crate) async fn running(&self) -> Vec<InstallId> {
        self.running.lock().await.keys().cloned().collect()
    }

    fn start_one(
        &self,
        install: &Install,
        registry: &RunningRegistry,
    ) -> Result<Option<JoinHandle<()>>> {
        let id = &install.id;
        let namespace = format!("installs/{id}");
        registry
            .storage()
            .add_namespace(&namespace)
            .with_context(|| format!("declaring namespace {namespace}"))?;
        // The nodes' pull-only identity exists wherever the agent runs: nodes pull from this
        // registry. Created here too for installs provisioned before node identities existed.
        let node_secret = state::load_or_create_secret(&self.state.node_secret_path(id))?;
        self.access.update_policy(|p| {
            p.add_identity(Identity::Node(id.to_string()), &node_secret);
        });
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
        config.keep_last = Some(ferry_agent::DEFAULT_KEEP_LAST);
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

    /// Stops every agent: each finishes or releases its job within its grace period.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        let mut running = self.running.lock().await;
        for (id, handle) in std::mem::take(&mut *running) {
            if let Err(e) = handle.await {
                tracing::warn!(install = %id, error = %e, "agent task failed");
            }
        }
    }
}
