//! `SqliteStore`: ferry-core's `JobStore` on SQLite, the local stand-in for the DynamoDB table.
//!
//! Each item is a JSON blob plus the key columns its queries need (see `db.rs` for the schema).
//! A conditional write is one `UPDATE … WHERE id = ? AND version = ? AND status = ?` inside a
//! `BEGIN IMMEDIATE` transaction; on 0 rows the same transaction reads the current item and
//! returns it in the `Conflict`, like DynamoDB's `ALL_OLD`. This module must never write
//! unconditionally over a build or sync, and never store a clear grant (only the domain types,
//! which hold at most a grant's expiry).

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use ferry_core::domain::{Build, Component, Install, LineageRecord, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, SyncId};
use ferry_core::ports::{
    Conflict, Cursor, IdempotencyClaim, JobStore, Page, PageRequest, StoreError, WriteError,
};
use ferry_core::state::Expected;
use ferry_core::telemetry::InstallTelemetry;

use crate::db::{to_i64, to_u64, Db, DbError};

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
// Cursors: "<query>:<json>", where the json repeats the query's parameters so a cursor from
// another query (or another component) is refused instead of silently restarting.

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CursorKey {
    /// The query's parameters.
    pub(crate) p: Vec<String>,
    /// created_at of the last item, for newest-first queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) t: Option<u64>,
    /// The id (or install id) of the last item.
    pub(crate) id: String,
}

pub(crate) fn make_cursor(query: &str, key: &CursorKey) -> Cursor {
    // Encoding a struct of strings and numbers cannot fail; an empty cursor would be refused.
    Cursor::new(format!(
        "{query}:{}",
        serde_json::to_string(key).unwrap_or_default()
    ))
}

pub(crate) fn read_cursor(
    query: &str,
    params: &[&str],
    page: &PageRequest,
) -> Result<Option<CursorKey>, DbError> {
    let Some(cursor) = &page.cursor else {
        return Ok(None);
    };
    let bad = || {
        DbError::Invalid(format!(
            "the cursor does not belong to this {query} query; pass back the `next` cursor of the same query, or start from the first page"
        ))
    };
    let json = cursor
        .as_str()
        .strip_prefix(query)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or_else(bad)?;
    let key: CursorKey = serde_json::from_str(json).map_err(|_| bad())?;
    if key.p.iter().map(String::as_str).ne(params.iter().copied()) {
        return Err(bad());
    }
    Ok(Some(key))
}

/// Turns `limit + 1` fetched rows into a page; `key_of` builds the cursor of the last item.
pub(crate) fn paginate<T>(
    query: &str,
    mut rows: Vec<T>,
    limit: u32,
    key_of: impl Fn(&T) -> CursorKey,
) -> Page<T> {
    let limit = limit as usize;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|last| make_cursor(query, &key_of(last)))
    } else {
        None
    };
    Page { items: rows, next }
}

pub(crate) fn query_bodies<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    what: &str,
) -> Result<Vec<T>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(decode(what, &row?)?);
    }
    Ok(out)
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

const SELECT_BUILD: &str = "SELECT body FROM builds WHERE id = ?1";
const SELECT_SYNC: &str = "SELECT body FROM syncs WHERE id = ?1";

impl JobStore for SqliteStore {
    async fn put_component(&self, component: &Component) -> Result<(), StoreError> {
        let c = component.clone();
        self.db
            .write(move |tx| {
                let key = format!("component {}/{}", c.app, c.name);
                tx.execute(
                    "INSERT INTO components (app, name, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (app, name) DO UPDATE SET body = excluded.body",
                    params![c.app.as_str(), c.name.as_str(), encode(&key, &c)?],
                )?;
                Ok(())
            })
            .await
            .map_err(store_err)
    }

    async fn get_component(
        &self,
        app: &AppName,
        name: &ComponentName,
    ) -> Result<Option<Component>, StoreError> {
        let (app, name) = (app.to_string(), name.to_string());
        self.db
            .call(move |conn| {
                let key = format!("component {app}/{name}");
                get_body(
                    conn,
                    "SELECT body FROM components WHERE app = ?1 AND name = ?2",
                    [&app, &name],
                    &key,
                )
            })
            .await
            .map_err(store_err)
    }

    async fn put_install(&self, install: &Install) -> Result<(), StoreError> {
        let i = install.clone();
        self.db
            .write(move |tx| {
                let key = format!("install {}", i.id);
                tx.execute(
                    "INSERT INTO installs (id, app, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET app = excluded.app, body = excluded.body",
                    params![i.id.as_str(), i.app.as_str(), encode(&key, &i)?],
                )?;
                // The subscription index is rebuilt with the item, in the same transaction.
                tx.execute(
                    "DELETE FROM install_components WHERE install_id = ?1",
                    [i.id.as_str()],
                )?;
                for c in &i.components {
                    tx.execute(
                        "INSERT OR IGNORE INTO install_components (app, component, install_id)
                         VALUES (?1, ?2, ?3)",
                        params![i.app.as_str(), c.as_str(), i.id.as_str()],
                    )?;
                }
                Ok(())
            })
            .await
            .map_err(store_err)
    }

    async fn get_install(&self, id: &InstallId) -> Result<Option<Install>, StoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| {
                let key = format!("install {id}");
                get_body(conn, "SELECT body FROM installs WHERE id = ?1", [&id], &key)
            })
            .await
            .map_err(store_err)
    }

    async fn create_build(&self, build: &Build) -> Result<(), WriteError<Build>> {
        let b = build.clone();
        let r = self
            .db
            .write(move |tx| {
                let id = b.id.to_string();
                insert_if_absent(
                    tx,
                    "INSERT INTO builds (id, app, component, status, version, created_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        b.app.as_str(),
                        b.component.as_str(),
                        b.status().as_str(),
                        to_i64(b.state.version),
                        to_i64(b.state.created_at),
                        encode(&id, &b)?
                    ],
                    SELECT_BUILD,
                    &id,
                )
            })
            .await;
        conflict_or_ok(r)
    }

    async fn get_build(&self, id: &BuildId) -> Result<Option<Build>, StoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| get_body(conn, SELECT_BUILD, [&id], &id))
            .await
            .map_err(store_err)
    }

    async fn update_build(
        &self,
        next: &Build,
        expected: Expected,
    ) -> Result<(), WriteError<Build>> {
        let b = next.clone();
        let r = self
            .db
            .write(move |tx| {
                let id = b.id.to_string();
                update_if(
                    tx,
                    "UPDATE builds SET app = ?1, component = ?2, status = ?3, version = ?4,
                            created_at = ?5, body = ?6
                     WHERE id = ?7 AND version = ?8 AND status = ?9",
                    params![
                        b.app.as_str(),
                        b.component.as_str(),
                        b.status().as_str(),
                        to_i64(b.state.version),
                        to_i64(b.state.created_at),
                        encode(&id, &b)?,
                        id,
                        to_i64(expected.version),
                        expected.status.as_str()
                    ],
                    SELECT_BUILD,
                    &id,
                )
            })
            .await;
        conflict_or_ok(r)
    }

    async fn create_sync(&self, sync: &SyncJob) -> Result<(), WriteError<SyncJob>> {
        let s = sync.clone();
        let r = self
            .db
            .write(move |tx| {
                let id = s.id.to_string();
                insert_if_absent(
                    tx,
                    "INSERT INTO syncs (id, build_id, install_id, status, version, created_at, body,
                                        updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        s.build_id.as_str(),
                        s.install_id.as_str(),
                        s.status().as_str(),
                        to_i64(s.state.version),
                        to_i64(s.state.created_at),
                        encode(&id, &s)?,
                        to_i64(s.state.updated_at)
                    ],
                    SELECT_SYNC,
                    &id,
                )
            })
            .await;
        conflict_or_ok(r)
    }

    async fn get_sync(&self, id: &SyncId) -> Result<Option<SyncJob>, StoreError> {
        let id = id.to_string();
        self.db
            .call(move |conn| get_body(conn, SELECT_SYNC, [&id], &id))
            .await
            .map_err(store_err)
    }

    async fn update_sync(
        &self,
        next: &SyncJob,
        expected: Expected,
    ) -> Result<(), WriteError<SyncJob>> {
        let s = next.clone();
        let r = self
            .db
            .write(move |tx| {
                let id = s.id.to_string();
                update_if(
                    tx,
                    "UPDATE syncs SET build_id = ?1, install_id = ?2, status = ?3, version = ?4,
                            created_at = ?5, body = ?6, updated_at = ?10
                     WHERE id = ?7 AND version = ?8 AND status = ?9",
                    params![
                        s.build_id.as_str(),
                        s.install_id.as_str(),
                        s.status().as_str(),
                        to_i64(s.state.version),
                        to_i64(s.state.created_at),
                        encode(&id, &s)?,
                        id,
                        to_i64(expected.version),
                        expected.status.as_str(),
                        to_i64(s.state.updated_at)
                    ],
                    SELECT_SYNC,
                    &id,
                )
            })
            .await;
        conflict_or_ok(r)
    }

    async fn record_lineage(&self, record: &LineageRecord) -> Result<LineageRecord, StoreError> {
        let rec = record.clone();
        self.db
            .write(move |tx| {
                let key = format!("lineage {} in {}", rec.digest, rec.install_id);
                tx.execute(
                    "INSERT INTO lineage (digest, install_id, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (digest, install_id) DO NOTHING",
                    params![
                        rec.digest.as_str(),
                        rec.install_id.as_str(),
                        encode(&key, &rec)?
                    ],
                )?;
                let stored: Option<LineageRecord> = get_body(
                    tx,
                    "SELECT body FROM lineage WHERE digest = ?1 AND install_id = ?2",
                    [rec.digest.as_str(), rec.install_id.as_str()],
                    &key,
                )?;
                stored.ok_or_else(|| DbError::Corrupt {
                    key,
                    message: "lineage record vanished inside its own transaction".into(),
                })
            })
            .await
            .map_err(store_err)
    }

    async fn idempotency_begin(
        &self,
        key: &str,
        now: u64,
        in_progress_until: u64,
        expires_at: u64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let key = key.to_string();
        self.db
            .write(move |tx| {
                let row: Option<(String, Option<String>, i64, i64)> = tx
                    .query_row(
                        "SELECT status, result, in_progress_until, expires_at
                         FROM idempotency WHERE key = ?1",
                        [&key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?;
                if let Some((status, result, until, expires)) = row {
                    // TTL is checked here, not trusted to a sweeper (DynamoDB TTL is lazy too).
                    let live = now < to_u64(expires);
                    if live && status == IDEM_COMPLETED {
                        return Ok(IdempotencyClaim::Completed {
                            result: result.unwrap_or_default(),
                        });
                    }
                    if live && status == IDEM_IN_PROGRESS && now < to_u64(until) {
                        return Ok(IdempotencyClaim::InProgress {
                            until: to_u64(until),
                        });
                    }
                }
                tx.execute(
                    "INSERT INTO idempotency (key, status, result, in_progress_until, expires_at)
                     VALUES (?1, ?2, NULL, ?3, ?4)
                     ON CONFLICT (key) DO UPDATE SET status = excluded.status, result = NULL,
                        in_progress_until = excluded.in_progress_until,
                        expires_at = excluded.expires_at",
                    params![
                        key,
                        IDEM_IN_PROGRESS,
                        to_i64(in_progress_until),
                        to_i64(expires_at)
                    ],
                )?;
                // Sweep records that are dead for everyone, so the table does not grow forever.
                tx.execute(
                    "DELETE FROM idempotency WHERE expires_at <= ?1",
                    [to_i64(now)],
                )?;
                Ok(IdempotencyClaim::Acquired)
            })
            .await
            .map_err(store_err)
    }

    async fn idempotency_complete(
        &self,
        key: &str,
        result: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let (key, result) = (key.to_string(), result.to_string());
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO idempotency (key, status, result, in_progress_until, expires_at)
                     VALUES (?1, ?2, ?3, 0, ?4)
                     ON CONFLICT (key) DO UPDATE SET status = excluded.status,
                        result = excluded.result, expires_at = excluded.expires_at",
                    params![key, IDEM_COMPLETED, result, to_i64(expires_at)],
                )?;
                Ok(())
            })
            .await
            .map_err(store_err)
    }

    async fn count_security_event(&self, kind: &str, now: u64) -> Result<u64, StoreError> {
        let kind = kind.to_string();
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO security_events (kind, count, last_at) VALUES (?1, 1, ?2)
                     ON CONFLICT (kind) DO UPDATE SET count = count + 1, last_at = excluded.last_at",
                    params![kind, to_i64(now)],
                )?;
                let n: i64 = tx.query_row(
                    "SELECT count FROM security_events WHERE kind = ?1",
                    [&kind],
                    |r| r.get(0),
                )?;
                Ok(to_u64(n))
            })
            .await
            .map_err(store_err)
    }

    async fn security_event_count(&self, kind: &str) -> Result<(u64, Option<u64>), StoreError> {
        let kind = kind.to_string();
        self.db
            .write(move |tx| {
                let row: Option<(i64, i64)> = tx
                    .query_row(
                        "SELECT count, last_at FROM security_events WHERE kind = ?1",
                        [&kind],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                Ok(row.map_or((0, None), |(n, at)| (to_u64(n), Some(to_u64(at)))))
            })
            .await
            .map_err(store_err)
    }

    async fn record_heartbeat(
        &self,
        telemetry: &InstallTelemetry,
    ) -> Result<InstallTelemetry, StoreError> {
        let t = telemetry.clone();
        self.db
            .write(move |tx| {
                let key = format!("telemetry of {}", t.install_id);
                // Last-seen only moves forward: an older heartbeat leaves the row alone.
                tx.execute(
                    "INSERT INTO install_telemetry (install_id, last_seen, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (install_id) DO UPDATE SET last_seen = excluded.last_seen,
                         body = excluded.body
                     WHERE excluded.last_seen >= install_telemetry.last_seen",
                    params![t.install_id.as_str(), to_i64(t.last_seen), encode(&key, &t)?],
                )?;
                get_body(
                    tx,
                    "SELECT body FROM install_telemetry WHERE install_id = ?1",
                    [t.install_id.as_str()],
                    &key,
                )?
                .ok_or_else(|| DbError::Invalid(format!("{key} vanished while it was written")))
            })
            .await
            .map_err(store_err)
    }

    async fn get_telemetry(
        &self,
        install: &InstallId,
    ) -> Result<Option<InstallTelemetry>, StoreError> {
        let id = install.to_string();
        self.db
            .call(move |conn| {
                get_body(
                    conn,
                    "SELECT body FROM install_telemetry WHERE install_id = ?1",
                    [&id],
                    &format!("telemetry of {id}"),
                )
            })
            .await
            .map_err(store_err)
    }

    async fn stale_syncs(
        &self,
        before: u64,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        const Q: &str = "stale_syncs";
        let (before, page) = (before, page.clone());
        self.db
            .call(move |conn| {
                let b = before.to_string();
                let after = read_cursor(Q, &[b.as_str()], &page)?;
                let (t, id) =
                    after.map_or((-1, String::new()), |k| (to_i64(k.t.unwrap_or(0)), k.id));
                let rows: Vec<SyncJob> = query_bodies(
                    conn,
                    "SELECT body FROM syncs
                     WHERE status IN ('queued', 'running') AND updated_at < ?1
                       AND (updated_at > ?2 OR (updated_at = ?2 AND id > ?3))
                     ORDER BY updated_at, id LIMIT ?4",
                    params![to_i64(before), t, id, i64::from(page.limit()) + 1],
                    Q,
                )?;
                Ok(paginate(Q, rows, page.limit(), |s| CursorKey {
                    p: vec![b.clone()],
                    t: Some(s.state.updated_at),
                    id: s.id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.db
            .write(move |tx| {
                // Only an in-progress record: a completed one must keep suppressing replays.
                tx.execute(
                    "DELETE FROM idempotency WHERE key = ?1 AND status = ?2",
                    [key.as_str(), IDEM_IN_PROGRESS],
                )?;
                Ok(())
            })
            .await
            .map_err(store_err)
    }

    async fn builds_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> Result<Page<Build>, StoreError> {
        const Q: &str = "builds_by_component";
        let (app, component, page) = (app.to_string(), component.to_string(), page.clone());
        self.db
            .call(move |conn| {
                let params_ = [app.as_str(), component.as_str()];
                let after = read_cursor(Q, &params_, &page)?;
                let limit = i64::from(page.limit()) + 1;
                let rows: Vec<Build> = match after {
                    None => query_bodies(
                        conn,
                        "SELECT body FROM builds WHERE app = ?1 AND component = ?2
                         ORDER BY created_at DESC, id DESC LIMIT ?3",
                        params![app, component, limit],
                        Q,
                    )?,
                    Some(k) => {
                        let t = to_i64(k.t.unwrap_or(u64::MAX));
                        query_bodies(
                            conn,
                            "SELECT body FROM builds WHERE app = ?1 AND component = ?2
                               AND (created_at < ?3 OR (created_at = ?3 AND id < ?4))
                             ORDER BY created_at DESC, id DESC LIMIT ?5",
                            params![app, component, t, k.id, limit],
                            Q,
                        )?
                    }
                };
                Ok(paginate(Q, rows, page.limit(), |b| CursorKey {
                    p: vec![app.clone(), component.clone()],
                    t: Some(b.state.created_at),
                    id: b.id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn syncs_by_install(
        &self,
        install: &InstallId,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        const Q: &str = "syncs_by_install";
        let (install, page) = (install.to_string(), page.clone());
        self.db
            .call(move |conn| {
                let after = read_cursor(Q, &[install.as_str()], &page)?;
                let limit = i64::from(page.limit()) + 1;
                let rows: Vec<SyncJob> = match after {
                    None => query_bodies(
                        conn,
                        "SELECT body FROM syncs WHERE install_id = ?1
                         ORDER BY created_at DESC, id DESC LIMIT ?2",
                        params![install, limit],
                        Q,
                    )?,
                    Some(k) => query_bodies(
                        conn,
                        "SELECT body FROM syncs WHERE install_id = ?1
                           AND (created_at < ?2 OR (created_at = ?2 AND id < ?3))
                         ORDER BY created_at DESC, id DESC LIMIT ?4",
                        params![install, to_i64(k.t.unwrap_or(u64::MAX)), k.id, limit],
                        Q,
                    )?,
                };
                Ok(paginate(Q, rows, page.limit(), |s| CursorKey {
                    p: vec![install.clone()],
                    t: Some(s.state.created_at),
                    id: s.id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn syncs_by_build(
        &self,
        build: &BuildId,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        const Q: &str = "syncs_by_build";
        let (build, page) = (build.to_string(), page.clone());
        self.db
            .call(move |conn| {
                let after = read_cursor(Q, &[build.as_str()], &page)?;
                let after_id = after.map(|k| k.id).unwrap_or_default();
                let rows: Vec<SyncJob> = query_bodies(
                    conn,
                    "SELECT body FROM syncs WHERE build_id = ?1 AND install_id > ?2
                     ORDER BY install_id LIMIT ?3",
                    params![build, after_id, i64::from(page.limit()) + 1],
                    Q,
                )?;
                Ok(paginate(Q, rows, page.limit(), |s| CursorKey {
                    p: vec![build.clone()],
                    t: None,
                    id: s.install_id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn installs_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> Result<Page<Install>, StoreError> {
        const Q: &str = "installs_by_component";
        let (app, component, page) = (app.to_string(), component.to_string(), page.clone());
        self.db
            .call(move |conn| {
                let after = read_cursor(Q, &[app.as_str(), component.as_str()], &page)?;
                let after_id = after.map(|k| k.id).unwrap_or_default();
                let rows: Vec<Install> = query_bodies(
                    conn,
                    "SELECT i.body FROM install_components s JOIN installs i ON i.id = s.install_id
                     WHERE s.app = ?1 AND s.component = ?2 AND s.install_id > ?3
                     ORDER BY s.install_id LIMIT ?4",
                    params![app, component, after_id, i64::from(page.limit()) + 1],
                    Q,
                )?;
                Ok(paginate(Q, rows, page.limit(), |i| CursorKey {
                    p: vec![app.clone(), component.clone()],
                    t: None,
                    id: i.id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn lineage_by_digest(
        &self,
        digest: &Digest,
        page: &PageRequest,
    ) -> Result<Page<LineageRecord>, StoreError> {
        const Q: &str = "lineage_by_digest";
        let (digest, page) = (digest.to_string(), page.clone());
        self.db
            .call(move |conn| {
                let after = read_cursor(Q, &[digest.as_str()], &page)?;
                let after_id = after.map(|k| k.id).unwrap_or_default();
                let rows: Vec<LineageRecord> = query_bodies(
                    conn,
                    "SELECT body FROM lineage WHERE digest = ?1 AND install_id > ?2
                     ORDER BY install_id LIMIT ?3",
                    params![digest, after_id, i64::from(page.limit()) + 1],
                    Q,
                )?;
                Ok(paginate(Q, rows, page.limit(), |r| CursorKey {
                    p: vec![digest.clone()],
                    t: None,
                    id: r.install_id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_name_their_query_and_parameters() {
        let key = CursorKey {
            p: vec!["shop".into(), "web".into()],
            t: Some(5),
            id: "b-1".into(),
        };
        let c = make_cursor("builds_by_component", &key);
        let page = PageRequest::after(3, c);
        assert_eq!(
            read_cursor("builds_by_component", &["shop", "web"], &page).unwrap(),
            Some(key)
        );
        let err = read_cursor("builds_by_component", &["shop", "api"], &page).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(read_cursor("syncs_by_build", &["shop", "web"], &page).is_err());
    }

    #[test]
    fn corrupt_rows_are_reported_as_corrupt() {
        let e = store_err(decode::<Build>("b-1", "{not json").unwrap_err());
        assert!(
            matches!(e, StoreError::Corrupt { ref key, .. } if key == "b-1"),
            "{e:?}"
        );
    }
}
