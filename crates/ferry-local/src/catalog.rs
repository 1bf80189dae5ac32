//! The catalog views of the SQLite store that the management port needs beyond the `JobStore`
//! port: apps (their own table), whole-table listings of components and installs, and removing
//! an install (its subscriptions go with it; its syncs and lineage stay).
//!
//! The `JobStore` port answers per-key and per-index queries only, as DynamoDB does; these are
//! the catalog reads both backends keep small (apps, components and installs are a vendor's
//! catalog, not its job history). This module must never touch builds, syncs or lineage.

use ferry_core::domain::{Component, Install};
use ferry_core::id::{AppName, InstallId};
use ferry_core::manage::AppRecord;
use ferry_core::ports::StoreError;
use serde::de::DeserializeOwned;

use crate::db::{Db, DbError};

fn store_err(e: DbError) -> StoreError {
    match e {
        DbError::Corrupt { key, message } => StoreError::Corrupt { key, message },
        DbError::Invalid(message) => StoreError::Invalid { message },
        other => StoreError::Unavailable {
            message: other.to_string(),
        },
    }
}

/// The catalog of one SQLite database (cheap to clone).
#[derive(Debug, Clone)]
pub struct SqliteCatalog {
    db: Db,
}

impl SqliteCatalog {
    pub fn new(db: Db) -> SqliteCatalog {
        SqliteCatalog { db }
    }

    async fn bodies<T: DeserializeOwned + Send + 'static>(
        &self,
        sql: &'static str,
        arg: Option<String>,
    ) -> Result<Vec<T>, StoreError> {
        let rows: Vec<(String, String)> = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare(sql).map_err(DbError::from)?;
                let mut rows = match &arg {
                    Some(a) => stmt.query([a]),
                    None => stmt.query([]),
                }
                .map_err(DbError::from)?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(DbError::from)? {
                    out.push((
                        r.get::<_, String>(0).map_err(DbError::from)?,
                        r.get::<_, String>(1).map_err(DbError::from)?,
                    ));
                }
                Ok::<_, DbError>(out)
            })
            .await
            .map_err(store_err)?;
        rows.into_iter()
            .map(|(key, body)| {
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    key,
                    message: format!("does not decode: {e}"),
                })
            })
            .collect()
    }

    /// Adds or replaces an app.
    pub async fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(app).map_err(|e| StoreError::Invalid {
            message: format!("cannot encode app {}: {e}", app.name),
        })?;
        let name = app.name.to_string();
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO apps (name, body) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                    [&name, &body],
                )
                .map_err(DbError::from)?;
                Ok::<_, DbError>(())
            })
            .await
            .map_err(store_err)
    }

    /// One app, if it exists.
    pub async fn get_app(&self, app: &AppName) -> Result<Option<AppRecord>, StoreError> {
        Ok(self
            .bodies(
                "SELECT name, body FROM apps WHERE name = ?1",
                Some(app.to_string()),
            )
            .await?
            .pop())
    }

    /// Every app, by name.
    pub async fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.bodies("SELECT name, body FROM apps ORDER BY name", None)
            .await
    }

    /// Every component, by app then name.
    pub async fn components(&self) -> Result<Vec<Component>, StoreError> {
        self.bodies(
            "SELECT app || '/' || name, body FROM components ORDER BY app, name",
            None,
        )
        .await
    }

    /// Every install, by id.
    pub async fn installs(&self) -> Result<Vec<Install>, StoreError> {
        self.bodies("SELECT id, body FROM installs ORDER BY id", None)
            .await
    }

    /// Deletes an install's record and subscriptions; returns whether it existed.
    pub async fn delete_install(&self, id: &InstallId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.db
            .write(move |tx| {
                tx.execute(
                    "DELETE FROM install_components WHERE install_id = ?1",
                    [&id],
                )
                .map_err(DbError::from)?;
                tx.execute("DELETE FROM install_telemetry WHERE install_id = ?1", [&id])
                    .map_err(DbError::from)?;
                let n = tx
                    .execute("DELETE FROM installs WHERE id = ?1", [&id])
                    .map_err(DbError::from)?;
                Ok::<_, DbError>(n > 0)
            })
            .await
            .map_err(store_err)
    }
}
