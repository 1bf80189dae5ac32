//! `SqliteStore`: ferry-core's `JobStore` on SQLite, the local stand-in for the DynamoDB table.
//!
//! Each item is a JSON blob plus the key columns its queries need (see `db.rs` for the schema).
//! A conditional write is one `UPDATE … WHERE id = ? AND version = ? AND status = ?` inside a
//! `BEGIN IMMEDIATE` transaction; on 0 rows the same transaction reads the current item and
//! returns it in the `Conflict`, like DynamoDB's `ALL_OLD`. This module must never write
//! unconditionally over a build or sync, and never store a clear grant (only the domain types,
//! which hold at most a grant's expiry).

use ferry_core::ports::{Conflict, StoreError, WriteError};
use rusqlite::{Connection, OptionalExtension, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{Db, DbError};

mod jobs;
mod pagination;
#[cfg(test)]
mod tests;

pub(crate) use pagination::{paginate, query_bodies, read_cursor, CursorKey};

const IDEM_IN_PROGRESS: &str = "in_progress";
const IDEM_COMPLETED: &str = "completed";

/// The job store over one SQLite database (cheap to clone).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub fn new(db: Db) -> SqliteStore {
        SqliteStore { db }
    }

    /// Opens (creating) `path` with its own connection.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<SqliteStore, DbError> {
        Ok(SqliteStore::new(Db::open(path)?))
    }

    pub fn open_in_memory() -> Result<SqliteStore, DbError> {
        Ok(SqliteStore::new(Db::open_in_memory()?))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every build, sync and lineage record as one JSON document with stable ordering, for
    /// tests and `ferry` status dumps (the store holds no secrets).
    pub async fn export_json(&self) -> Result<String, StoreError> {
        self.db
            .call(|conn| {
                let dump = serde_json::json!({
                    "builds": all_bodies(conn, "SELECT body FROM builds ORDER BY id")?,
                    "syncs": all_bodies(conn, "SELECT body FROM syncs ORDER BY id")?,
                    "lineage": all_bodies(conn, "SELECT body FROM lineage ORDER BY digest, install_id")?,
                });
                Ok(dump.to_string())
            })
            .await
            .map_err(store_err)
    }
}

fn all_bodies(conn: &Connection, sql: &str) -> Result<Vec<serde_json::Value>, DbError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let body = row?;
        out.push(decode::<serde_json::Value>("export", &body)?);
    }
    Ok(out)
}

pub(crate) fn store_err(e: DbError) -> StoreError {
    match e {
        DbError::Corrupt { key, message } => StoreError::Corrupt { key, message },
        DbError::Invalid(message) => StoreError::Invalid { message },
        other => StoreError::Unavailable {
            message: other.to_string(),
        },
    }
}

pub(crate) fn write_err<T: std::fmt::Debug>(e: DbError) -> WriteError<T> {
    WriteError::Store(store_err(e))
}

pub(crate) fn encode<T: Serialize>(key: &str, item: &T) -> Result<String, DbError> {
    serde_json::to_string(item).map_err(|e| DbError::Corrupt {
        key: key.to_string(),
        message: format!("cannot encode: {e}"),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, body: &str) -> Result<T, DbError> {
    serde_json::from_str(body).map_err(|e| DbError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn get_body<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    key: &str,
) -> Result<Option<T>, DbError> {
    let body: Option<String> = conn.query_row(sql, params, |r| r.get(0)).optional()?;
    body.map(|b| decode(key, &b)).transpose()
}

// ---------------------------------------------------------------------------------------------
// Conditional writes shared by builds and syncs

/// Inserts unless the id exists; on conflict returns the stored item.
pub(crate) fn insert_if_absent<T: DeserializeOwned>(
    tx: &Transaction<'_>,
    insert: &str,
    params: impl rusqlite::Params,
    select: &str,
    id: &str,
) -> Result<Option<Conflict<T>>, DbError> {
    if tx.execute(insert, params)? == 1 {
        return Ok(None);
    }
    let current = get_body(tx, select, [id], id)?;
    Ok(Some(Conflict { current }))
}

/// Updates when (status, version) match; on 0 rows returns the item as it is now.
pub(crate) fn update_if<T: DeserializeOwned>(
    tx: &Transaction<'_>,
    update: &str,
    params: impl rusqlite::Params,
    select: &str,
    id: &str,
) -> Result<Option<Conflict<T>>, DbError> {
    if tx.execute(update, params)? == 1 {
        return Ok(None);
    }
    let current = get_body(tx, select, [id], id)?;
    Ok(Some(Conflict { current }))
}

pub(crate) fn conflict_or_ok<T: std::fmt::Debug>(
    r: Result<Option<Conflict<T>>, DbError>,
) -> Result<(), WriteError<T>> {
    match r {
        Ok(None) => Ok(()),
        Ok(Some(c)) => Err(WriteError::Conflict(c)),
        Err(e) => Err(write_err(e)),
    }
}
