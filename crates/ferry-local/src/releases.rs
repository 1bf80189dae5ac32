//! `SqliteStore` as ferry-core's `ReleaseStore`: releases and their targets in two tables
//! (schema migration 3 in `db.rs`), written conditionally on `version` like builds and syncs.
//!
//! A target's key column is `<release id>/<install id>` (neither id may hold a `/`), so one
//! install is a target of a release at most once. This module must never write a release or
//! a target unconditionally.

use rusqlite::params;

use ferry_core::domain::LineageRecord;
use ferry_core::id::{AppName, Digest, InstallId, ReleaseId};
use ferry_core::ports::{Page, PageRequest, StoreError, WriteError};
use ferry_core::release::{Release, ReleaseStore, ReleaseTarget};

use crate::db::{to_i64, DbError};
use crate::store::{
    conflict_or_ok, encode, get_body, insert_if_absent, paginate, query_bodies, read_cursor,
    store_err, update_if, CursorKey, SqliteStore,
};

/// Why an all-or-nothing batch wrote nothing.
enum AllOrNone {
    /// A target was not at its expected version.
    Stale,
    Db(DbError),
}

impl From<DbError> for AllOrNone {
    fn from(e: DbError) -> Self {
        AllOrNone::Db(e)
    }
}

const SELECT_RELEASE: &str = "SELECT body FROM releases WHERE id = ?1";
const SELECT_TARGET: &str = "SELECT body FROM release_targets WHERE key = ?1";

fn target_key(release: &ReleaseId, install: &InstallId) -> String {
    format!("{release}/{install}")
}

impl ReleaseStore for SqliteStore {
    async fn create_release(&self, release: &Release) -> Result<(), WriteError<Release>> {
        let r = release.clone();
        let out = self
            .db()
            .write(move |tx| {
                let id = r.id.to_string();
                insert_if_absent(
                    tx,
                    "INSERT INTO releases (id, app, version, created_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        r.app.as_str(),
                        to_i64(r.version),
                        to_i64(r.created_at),
                        encode(&id, &r)?
                    ],
                    SELECT_RELEASE,
                    &id,
                )
            })
            .await;
        conflict_or_ok(out)
    }

    async fn get_release(&self, id: &ReleaseId) -> Result<Option<Release>, StoreError> {
        let id = id.to_string();
        self.db()
            .call(move |conn| get_body(conn, SELECT_RELEASE, [&id], &id))
            .await
            .map_err(store_err)
    }

    async fn update_release(
        &self,
        next: &Release,
        expected: u64,
    ) -> Result<(), WriteError<Release>> {
        let r = next.clone();
        let out = self
            .db()
            .write(move |tx| {
                let id = r.id.to_string();
                update_if(
                    tx,
                    "UPDATE releases SET version = ?1, body = ?2 WHERE id = ?3 AND version = ?4",
                    params![to_i64(r.version), encode(&id, &r)?, id, to_i64(expected)],
                    SELECT_RELEASE,
                    &id,
                )
            })
            .await;
        conflict_or_ok(out)
    }

    async fn releases_by_app(
        &self,
        app: &AppName,
        page: &PageRequest,
    ) -> Result<Page<Release>, StoreError> {
        const Q: &str = "releases_by_app";
        let (app, page) = (app.to_string(), page.clone());
        self.db()
            .call(move |conn| {
                let after = read_cursor(Q, &[app.as_str()], &page)?;
                let limit = i64::from(page.limit()) + 1;
                let rows: Vec<Release> = match after {
                    None => query_bodies(
                        conn,
                        "SELECT body FROM releases WHERE app = ?1
                         ORDER BY created_at DESC, id DESC LIMIT ?2",
                        params![app, limit],
                        Q,
                    )?,
                    Some(k) => query_bodies(
                        conn,
                        "SELECT body FROM releases WHERE app = ?1
                           AND (created_at < ?2 OR (created_at = ?2 AND id < ?3))
                         ORDER BY created_at DESC, id DESC LIMIT ?4",
                        params![app, to_i64(k.t.unwrap_or(u64::MAX)), k.id, limit],
                        Q,
                    )?,
                };
                Ok(paginate(Q, rows, page.limit(), |r| CursorKey {
                    p: vec![app.clone()],
                    t: Some(r.created_at),
                    id: r.id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn create_target(&self, target: &ReleaseTarget) -> Result<(), WriteError<ReleaseTarget>> {
        let t = target.clone();
        let out = self
            .db()
            .write(move |tx| {
                let key = target_key(&t.release_id, &t.install_id);
                insert_if_absent(
                    tx,
                    "INSERT INTO release_targets (key, release_id, install_id, step, version, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (key) DO NOTHING",
                    params![
                        key,
                        t.release_id.as_str(),
                        t.install_id.as_str(),
                        i64::from(t.step),
                        to_i64(t.version),
                        encode(&key, &t)?
                    ],
                    SELECT_TARGET,
                    &key,
                )
            })
            .await;
        conflict_or_ok(out)
    }

    async fn get_target(
        &self,
        release: &ReleaseId,
        install: &InstallId,
    ) -> Result<Option<ReleaseTarget>, StoreError> {
        let key = target_key(release, install);
        self.db()
            .call(move |conn| get_body(conn, SELECT_TARGET, [&key], &key))
            .await
            .map_err(store_err)
    }

    async fn update_target(
        &self,
        next: &ReleaseTarget,
        expected: u64,
    ) -> Result<(), WriteError<ReleaseTarget>> {
        let t = next.clone();
        let out = self
            .db()
            .write(move |tx| {
                let key = target_key(&t.release_id, &t.install_id);
                update_if(
                    tx,
                    "UPDATE release_targets SET version = ?1, body = ?2
                     WHERE key = ?3 AND version = ?4",
                    params![to_i64(t.version), encode(&key, &t)?, key, to_i64(expected)],
                    SELECT_TARGET,
                    &key,
                )
            })
            .await;
        conflict_or_ok(out)
    }

    /// One transaction: every target at its expected version is written, or none is.
    async fn update_targets(&self, writes: &[(ReleaseTarget, u64)]) -> Result<bool, StoreError> {
        let writes = writes.to_vec();
        let out: Result<(), AllOrNone> = self
            .db()
            .write(move |tx| {
                for (t, expected) in &writes {
                    let key = target_key(&t.release_id, &t.install_id);
                    let n = tx
                        .execute(
                            "UPDATE release_targets SET version = ?1, body = ?2
                             WHERE key = ?3 AND version = ?4",
                            params![to_i64(t.version), encode(&key, t)?, key, to_i64(*expected)],
                        )
                        .map_err(DbError::from)?;
                    if n != 1 {
                        // Dropping the transaction uncommitted rolls back the earlier writes.
                        return Err(AllOrNone::Stale);
                    }
                }
                Ok(())
            })
            .await;
        match out {
            Ok(()) => Ok(true),
            Err(AllOrNone::Stale) => Ok(false),
            Err(AllOrNone::Db(e)) => Err(store_err(e)),
        }
    }

    async fn targets_by_step(
        &self,
        release: &ReleaseId,
        step: u32,
        page: &PageRequest,
    ) -> Result<Page<ReleaseTarget>, StoreError> {
        const Q: &str = "targets_by_step";
        let (release, step_s, page) = (release.to_string(), step.to_string(), page.clone());
        self.db()
            .call(move |conn| {
                let after = read_cursor(Q, &[release.as_str(), step_s.as_str()], &page)?;
                let after_id = after.map(|k| k.id).unwrap_or_default();
                let rows: Vec<ReleaseTarget> = query_bodies(
                    conn,
                    "SELECT body FROM release_targets
                     WHERE release_id = ?1 AND step = ?2 AND install_id > ?3
                     ORDER BY install_id LIMIT ?4",
                    params![
                        release,
                        i64::from(step),
                        after_id,
                        i64::from(page.limit()) + 1
                    ],
                    Q,
                )?;
                Ok(paginate(Q, rows, page.limit(), |t| CursorKey {
                    p: vec![release.clone(), step_s.clone()],
                    t: None,
                    id: t.install_id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn running_releases(&self, page: &PageRequest) -> Result<Page<Release>, StoreError> {
        const Q: &str = "running_releases";
        let page = page.clone();
        self.db()
            .call(move |conn| {
                let after = read_cursor(Q, &[], &page)?;
                let after_id = after.map(|k| k.id).unwrap_or_default();
                // Releases are few (each is a vendor decision): the status is read from the
                // body rather than kept in its own indexed column.
                let rows: Vec<Release> = query_bodies(
                    conn,
                    "SELECT body FROM releases
                     WHERE json_extract(body, '$.status') = 'running' AND id > ?1
                     ORDER BY id LIMIT ?2",
                    params![after_id, i64::from(page.limit()) + 1],
                    Q,
                )?;
                Ok(paginate(Q, rows, page.limit(), |r| CursorKey {
                    p: vec![],
                    t: None,
                    id: r.id.to_string(),
                }))
            })
            .await
            .map_err(store_err)
    }

    async fn get_lineage(
        &self,
        digest: &Digest,
        install: &InstallId,
    ) -> Result<Option<LineageRecord>, StoreError> {
        let (digest, install) = (digest.to_string(), install.to_string());
        self.db()
            .call(move |conn| {
                let key = format!("lineage {digest}/{install}");
                get_body(
                    conn,
                    "SELECT body FROM lineage WHERE digest = ?1 AND install_id = ?2",
                    [&digest, &install],
                    &key,
                )
            })
            .await
            .map_err(store_err)
    }
}
