//! The dev system's `Builder` port: one ferry-build `InProcessBuilder` per app root, so apps
//! added later with `ferry app add` build too. Each pushes to the registry's `vendor/`
//! namespace with the vendor credential and announces `build.completed` on the local bus.
//!
//! This module must never build an app whose source tree this machine does not know (that is
//! a clear `BuilderError::Rejected`), and never put the vendor credential into an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_build::{ArtifactBuilder, BuildConfig, InProcessBuilder};
use ferry_core::id::AppName;
use ferry_core::ports::{BuildSpec, Builder, BuilderError};
use ferry_local::bus::LocalBus;
use ferry_local::catalog::SqliteCatalog;
use ferry_local::queue::SqliteQueue;
use ferry_oci::CredentialStore;

use crate::state::StateDir;

/// The in-process builder of one dev system.
#[derive(Clone)]
pub struct DevBuilder {
    state: StateDir,
    catalog: SqliteCatalog,
    registry: String,
    credentials: CredentialStore,
    bus: Arc<LocalBus<SqliteQueue>>,
    per_app: Arc<Mutex<HashMap<AppName, InProcessBuilder<LocalBus<SqliteQueue>>>>>,
}

impl DevBuilder {
    /// Builds push to `registry` (`host:port`) with `credentials`; completions go to `bus`.
    /// App source roots come from the app records in `catalog`.
    pub fn new(
        state: StateDir,
        catalog: SqliteCatalog,
        registry: String,
        credentials: CredentialStore,
        bus: Arc<LocalBus<SqliteQueue>>,
    ) -> DevBuilder {
        DevBuilder {
            state,
            catalog,
            registry,
            credentials,
            bus,
            per_app: Arc::default(),
        }
    }

    async fn for_app(
        &self,
        app: &AppName,
    ) -> Result<InProcessBuilder<LocalBus<SqliteQueue>>, BuilderError> {
        if let Some(b) = self
            .per_app
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
        {
            return Ok(b.clone());
        }
        let rejected = |message: String| BuilderError::Rejected { message };
        let no_tree = || {
            rejected(format!(
                "app {app} has no source tree on this machine; run `ferry app add {app} --root DIR`"
            ))
        };
        let record = self
            .catalog
            .get_app(app)
            .await
            .map_err(|e| BuilderError::Unavailable {
                message: e.to_string(),
            })?
            .ok_or_else(no_tree)?;
        let root = record.source.ok_or_else(no_tree)?;
        let mut config = BuildConfig::new(self.registry.clone(), std::path::PathBuf::from(root))
            .with_prefix("vendor")
            .with_credentials(self.credentials.clone());
        config.work_dir = Some(self.state.work_dir());
        let artifact = ArtifactBuilder::new(config).map_err(|e| rejected(e.to_string()))?;
        let b = InProcessBuilder::new(artifact, self.bus.clone());
        self.per_app
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(app.clone(), b.clone());
        Ok(b)
    }
}

impl Builder for DevBuilder {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        let b = self.for_app(&spec.component.app).await?;
        b.start(spec).await
    }
}
