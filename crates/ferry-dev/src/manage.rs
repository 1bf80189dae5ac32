//! The management port on a `ferry dev` state directory: apps, components and installs in the
//! SQLite store, install queues (with dead-letter queues) in the SQLite queues, build requests
//! on the local bus. Safe to use from another process while `ferry dev` runs (the database is
//! cross-process safe), which is how the `ferry` management commands use it.
//!
//! Agent keys and identity secrets live only in 0600 files under `keys/`; this module must
//! never return one (registrations carry public keys and file paths only) or put one into an
//! error.

use std::collections::BTreeMap;

use ferry_core::domain::{Build, Component, Install, LineageRecord, RegistryTarget, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, QueueName};
use ferry_core::manage::{
    self, AppRecord, BuildFilter, DeadLetter, InstallRegistration, InstallStatus, Listing,
    ManageError, Management, Registration, Removal, SyncFilter, MAX_DEAD_LETTERS,
};
use ferry_core::ports::{JobStore as _, QueueError};
use ferry_core::release_port::ReleaseDesk;
use ferry_local::bus::{LocalBus, RELEASE_QUEUE};
use ferry_local::catalog::SqliteCatalog;
use ferry_local::clock::{RandomIds, SystemClock};
use ferry_local::db::Db;
use ferry_local::queue::SqliteQueue;
use ferry_local::store::SqliteStore;

use crate::state::{self, AgentPublicKeys, StateDir};

/// The local backend of the management port.
#[derive(Debug, Clone)]
pub struct LocalManagement {
    state: StateDir,
    store: SqliteStore,
    queue: SqliteQueue,
    catalog: SqliteCatalog,
}

fn queue_err(e: QueueError) -> ManageError {
    match e {
        QueueError::NoSuchQueue { queue } => ManageError::NotFound {
            what: "queue",
            name: queue.to_string(),
            known: Vec::new(),
            hint: "see `ferry dlq list`".into(),
        },
        other => ManageError::Backend(other.to_string()),
    }
}

fn dev_err(e: crate::DevError) -> ManageError {
    ManageError::Backend(e.to_string())
}

impl LocalManagement {
    /// The management port of the state dir `state`, whose database `ferry dev` set up.
    pub fn open(state: &StateDir) -> crate::Result<LocalManagement> {
        let db = state.open_existing()?;
        Ok(LocalManagement::new(state.clone(), db))
    }

    /// Over an open database of `state`.
    pub fn new(state: StateDir, db: Db) -> LocalManagement {
        LocalManagement {
            store: SqliteStore::new(db.clone()),
            queue: SqliteQueue::new(db.clone()),
            catalog: SqliteCatalog::new(db),
            state,
        }
    }

    /// The state dir.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The job store (for tests and the dev system).
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// The queues (for tests and the dev system).
    pub fn queue(&self) -> &SqliteQueue {
        &self.queue
    }

    /// The release port of this state dir: its store, its queues and the release queue the
    /// running `ferry dev`'s worker drains (`ferry receipts import` tells releases through it).
    pub fn release_desk(
        &self,
    ) -> crate::Result<ReleaseDesk<SqliteStore, SqliteQueue, SystemClock>> {
        let release_queue = QueueName::new(RELEASE_QUEUE)
            .map_err(|e| crate::DevError::Failed(format!("release queue {RELEASE_QUEUE}: {e}")))?;
        Ok(ReleaseDesk {
            store: self.store.clone(),
            queue: self.queue.clone(),
            clock: SystemClock,
            release_queue,
            max_write_tries: ferry_core::Config::default().max_write_tries,
        })
    }

    /// The registry installs sync into by default: the one the running `ferry dev` serves.
    pub fn dev_registry(&self) -> String {
        self.state
            .read_info()
            .map(|i| i.registry)
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// Local only: the key of an agent `ferry dev` runs itself, generated (0600) on first use.
    /// Returns its public halves for [`Management::register_install`].
    pub fn dev_agent_keys(&self, id: &InstallId) -> crate::Result<AgentPublicKeys> {
        let kp = state::load_or_create_agent_key(&self.state.agent_key_path(id))?;
        Ok(AgentPublicKeys {
            public_key: kp.public_key_string(),
            report_key: kp.report_key().public_key_string(),
        })
    }

    async fn require_app(&self, app: &AppName) -> Result<AppRecord, ManageError> {
        match self.catalog.get_app(app).await? {
            Some(a) => Ok(a),
            None => Err(manage::unknown_app(app, &self.catalog.apps().await?)),
        }
    }

    fn dlq_of(&self, queue: &str) -> Result<QueueName, ManageError> {
        QueueName::new(format!("{queue}-dlq"))
            .map_err(|e| ManageError::Invalid(format!("queue name {queue:?}: {e}")))
    }

    async fn require_dlq(&self, queue: &str) -> Result<QueueName, ManageError> {
        let known = self.dead_letter_queues().await?;
        if !known.iter().any(|q| q == queue) {
            return Err(ManageError::NotFound {
                what: "queue",
                name: queue.to_string(),
                known,
                hint: "give a queue that has a dead-letter queue".into(),
            });
        }
        self.dlq_of(queue)
    }
}

impl Management for LocalManagement {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn put_app(&self, app: &AppRecord) -> Result<(), ManageError> {
        Ok(self.catalog.put_app(app).await?)
    }

    async fn list_apps(&self) -> Result<Vec<AppRecord>, ManageError> {
        Ok(self.catalog.apps().await?)
    }

    async fn put_component(
        &self,
        component: &Component,
        subscribe_all: bool,
    ) -> Result<Vec<InstallId>, ManageError> {
        self.require_app(&component.app).await?;
        self.store.put_component(component).await?;
        if !subscribe_all {
            return Ok(Vec::new());
        }
        let (changed, subscribed) =
            manage::subscribe_all(self.catalog.installs().await?, component);
        for i in &changed {
            self.store.put_install(i).await?;
        }
        Ok(subscribed)
    }

    async fn list_components(&self, app: Option<&AppName>) -> Result<Vec<Component>, ManageError> {
        let mut all = self.catalog.components().await?;
        if let Some(a) = app {
            all.retain(|c| &c.app == a);
        }
        Ok(all)
    }

    async fn register_install(&self, r: &InstallRegistration) -> Result<Registration, ManageError> {
        if !ferry_registry::access::identity::valid_install_id(r.id.as_str()) {
            return Err(ManageError::Invalid(format!(
                "install id {} is not valid (lowercase letters, digits, single . _ -)",
                r.id
            )));
        }
        self.require_app(&r.app).await?;
        let components =
            manage::resolve_components(&r.app, &r.components, &self.catalog.components().await?)?;
        manage::check_agent_keys(r)?;
        let queue_name = state::install_queue(&r.id).map_err(dev_err)?;
        let previous = self.store.get_install(&r.id).await?;
        let registry = match (&r.registry, &previous) {
            (Some(t), _) => t.clone(),
            // Re-registering without a registry keeps the one it has.
            (None, Some(p)) => p.registry.clone(),
            (None, None) => RegistryTarget {
                endpoint: self.dev_registry(),
                namespace: format!("installs/{}", r.id),
            },
        };
        let install = Install {
            id: r.id.clone(),
            app: r.app.clone(),
            registry,
            agent_public_key: r.agent_public_key.clone(),
            agent_report_key: r.agent_report_key.clone(),
            queue: queue_name.clone(),
            components,
        };
        let outcome = manage::outcome(previous.as_ref(), &install);
        state::create_install_queue(&self.queue, &queue_name)
            .await
            .map_err(dev_err)?;
        state::load_or_create_secret(&self.state.agent_secret_path(&r.id)).map_err(dev_err)?;
        // The nodes' pull-only identity comes with every install (its secret never printed).
        state::load_or_create_secret(&self.state.node_secret_path(&r.id)).map_err(dev_err)?;
        if outcome != manage::RegistrationOutcome::Unchanged {
            self.store.put_install(&install).await?;
        }
        let vendor_public_key = state::load_or_create_vendor_key(&self.state.vendor_key_path())
            .map_err(dev_err)?
            .public_key_string();
        let mut agent_settings = BTreeMap::new();
        agent_settings.insert("queue".into(), queue_name.to_string());
        agent_settings.insert("vendor-registry".into(), self.dev_registry());
        agent_settings.insert("vendor-public-key".into(), vendor_public_key);
        agent_settings.insert("install".into(), r.id.to_string());
        agent_settings.insert(
            "identity-secret-file".into(),
            self.state.agent_secret_path(&r.id).display().to_string(),
        );
        agent_settings.insert(
            "queue-db".into(),
            self.state.db_path().display().to_string(),
        );
        agent_settings.insert("install-registry".into(), install.registry.endpoint.clone());
        agent_settings.insert(
            "install-namespace".into(),
            install.registry.namespace.clone(),
        );
        Ok(Registration {
            install,
            outcome,
            agent_settings,
        })
    }

    async fn list_installs(&self) -> Result<Vec<Install>, ManageError> {
        Ok(self.catalog.installs().await?)
    }

    async fn install_status(&self, id: &InstallId) -> Result<InstallStatus, ManageError> {
        let Some(install) = self.store.get_install(id).await? else {
            return Err(manage::unknown_install(id, &self.catalog.installs().await?));
        };
        manage::install_status_via(&self.store, install).await
    }

    async fn remove_install(&self, id: &InstallId) -> Result<Removal, ManageError> {
        let Some(install) = self.store.get_install(id).await? else {
            return Err(manage::unknown_install(id, &self.catalog.installs().await?));
        };
        // Record first: once it is gone nothing fans out to the queue, then the queue goes.
        self.catalog.delete_install(id).await?;
        match self.queue.delete_queue(&install.queue).await {
            Ok(()) | Err(QueueError::NoSuchQueue { .. }) => {}
            Err(e) => return Err(queue_err(e)),
        }
        Ok(Removal {
            install: id.clone(),
            queue_deleted: install.queue.to_string(),
            lineage_kept: true,
        })
    }

    async fn request_build(
        &self,
        app: &AppName,
        component: &ComponentName,
        source_ref: &str,
        requested_by: &str,
    ) -> Result<BuildId, ManageError> {
        if self.store.get_component(app, component).await?.is_none() {
            return Err(manage::unknown_component(
                app,
                component,
                &self.catalog.components().await?,
            ));
        }
        let bus = LocalBus::new(self.queue.clone());
        ferry_core::handlers::request_build(
            &bus,
            &RandomIds,
            app.clone(),
            component.clone(),
            source_ref.to_string(),
            requested_by.to_string(),
        )
        .await
        .map_err(|e| {
            ManageError::Backend(format!(
                "publishing build.requested (is this the state dir `ferry dev` uses?): {e}"
            ))
        })
    }

    async fn list_builds(&self, filter: &BuildFilter) -> Result<Listing<Build>, ManageError> {
        let comps = self.catalog.components().await?;
        if let (Some(app), Some(c)) = (&filter.app, &filter.component) {
            if !comps.iter().any(|k| &k.app == app && &k.name == c) {
                return Err(manage::unknown_component(app, c, &comps));
            }
        }
        manage::list_builds_via(&self.store, &comps, filter).await
    }

    async fn list_syncs(&self, filter: &SyncFilter) -> Result<Listing<SyncJob>, ManageError> {
        let installs: Vec<InstallId> = self
            .catalog
            .installs()
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        manage::list_syncs_via(&self.store, &installs, filter).await
    }

    async fn lineage(&self, digest: &Digest) -> Result<Vec<LineageRecord>, ManageError> {
        manage::lineage_via(&self.store, digest).await
    }

    async fn dead_letter_queues(&self) -> Result<Vec<String>, ManageError> {
        Ok(self
            .queue
            .queues_with_dlq()
            .await
            .map_err(queue_err)?
            .into_iter()
            .map(|(q, _)| q.to_string())
            .collect())
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, ManageError> {
        let dlq = self.require_dlq(queue).await?;
        let mut out = Vec::new();
        for m in self
            .queue
            .dlq_messages(&dlq)
            .await
            .map_err(queue_err)?
            .into_iter()
            .take(MAX_DEAD_LETTERS)
        {
            out.push(
                manage::describe_dead_letter(
                    &self.store,
                    m.message_id.0,
                    &m.body,
                    Some(m.receive_count),
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn redrive(&self, queue: &str) -> Result<usize, ManageError> {
        let dlq = self.require_dlq(queue).await?;
        self.queue
            .redrive_dead_letters(&dlq, MAX_DEAD_LETTERS)
            .await
            .map_err(queue_err)
    }
}
