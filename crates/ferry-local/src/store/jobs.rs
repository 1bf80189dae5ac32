//! `impl JobStore for SqliteStore`: components, installs, builds, syncs, lineage,
//! idempotency, security events, telemetry and the paginated queries, one SQL statement or
//! transaction each. It must never write a build or sync unconditionally.

use ferry_core::domain::{Build, Component, Install, LineageRecord, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, SyncId};
use ferry_core::ports::{IdempotencyClaim, JobStore, Page, PageRequest, StoreError, WriteError};
use ferry_core::state::Expected;
use ferry_core::telemetry::InstallTelemetry;
use rusqlite::{params, OptionalExtension};

use super::{
    conflict_or_ok, encode, get_body, insert_if_absent, paginate, query_bodies, read_cursor,
    store_err, update_if, CursorKey, SqliteStore, IDEM_COMPLETED, IDEM_IN_PROGRESS,
};
use crate::db::{to_i64, to_u64, DbError};

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
