//! The SQLite database shared by the store and the queues: opening, pragmas, schema migrations
//! and running blocking calls off the async runtime.
//!
//! One file may be open in several processes at once (`ferry dev` and separate agents), so the
//! file is in WAL mode with a busy timeout, and every write runs in a `BEGIN IMMEDIATE`
//! transaction (a deferred one that upgrades from read to write can fail at once with BUSY).
//! This module must never run SQLite on an async worker thread, and never hold the connection
//! lock across an await.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

/// How long a writer waits for another process's write lock before reporting `Unavailable`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied so far.
/// Never edit a shipped entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: job store and queues.
    r#"
    CREATE TABLE components (
        app TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (app, name)
    );
    CREATE TABLE installs (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, body TEXT NOT NULL
    );
    CREATE TABLE install_components (
        app TEXT NOT NULL, component TEXT NOT NULL,
        install_id TEXT NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
        PRIMARY KEY (app, component, install_id)
    );
    CREATE INDEX install_components_by_install ON install_components (install_id);
    CREATE TABLE builds (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, component TEXT NOT NULL,
        status TEXT NOT NULL, version INTEGER NOT NULL, created_at INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX builds_by_component ON builds (app, component, created_at DESC, id DESC);
    CREATE TABLE syncs (
        id TEXT PRIMARY KEY, build_id TEXT NOT NULL, install_id TEXT NOT NULL,
        status TEXT NOT NULL, version INTEGER NOT NULL, created_at INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX syncs_by_install ON syncs (install_id, created_at DESC, id DESC);
    CREATE INDEX syncs_by_build ON syncs (build_id, install_id);
    CREATE TABLE lineage (
        digest TEXT NOT NULL, install_id TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (digest, install_id)
    );
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY, status TEXT NOT NULL, result TEXT,
        in_progress_until INTEGER NOT NULL, expires_at INTEGER NOT NULL
    );
    CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);

    CREATE TABLE queues (
        name TEXT PRIMARY KEY, visibility_ms INTEGER NOT NULL,
        max_receive_count INTEGER NOT NULL, dlq TEXT REFERENCES queues (name)
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL REFERENCES queues (name),
        body TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        visible_at INTEGER NOT NULL,
        receive_count INTEGER NOT NULL DEFAULT 0,
        receipt TEXT UNIQUE,
        last_error TEXT,
        dead_lettered_from TEXT,
        dead_letter_reason TEXT,
        dead_lettered_at INTEGER
    );
    CREATE INDEX messages_visible ON messages (queue, visible_at, seq);
    "#,
    // 2: counters of refused, unauthenticated input (a fixed set of kinds, never sender data).
    r#"
    CREATE TABLE security_events (
        kind TEXT PRIMARY KEY, count INTEGER NOT NULL, last_at INTEGER NOT NULL
    );
    "#,
    // 3: apps, as records (the management port's `put_app`).
    r#"
    CREATE TABLE apps (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    "#,
    // 4: releases and their targets (one row per install of a release).
    r#"
    CREATE TABLE releases (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, version INTEGER NOT NULL,
        created_at INTEGER NOT NULL, body TEXT NOT NULL
    );
    CREATE INDEX releases_by_app ON releases (app, created_at DESC, id DESC);
    CREATE TABLE release_targets (
        key TEXT PRIMARY KEY, release_id TEXT NOT NULL, install_id TEXT NOT NULL,
        step INTEGER NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL
    );
    CREATE INDEX release_targets_by_step ON release_targets (release_id, step, install_id);
    "#,
    // 5: the reconciler's view of open syncs (by last change), and install telemetry.
    r#"
    ALTER TABLE syncs ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
    UPDATE syncs SET updated_at = COALESCE(json_extract(body, '$.state.updated_at'), created_at);
    CREATE INDEX syncs_open ON syncs (updated_at, id) WHERE status IN ('queued', 'running');
    CREATE TABLE install_telemetry (
        install_id TEXT PRIMARY KEY,
        last_seen INTEGER NOT NULL, body TEXT NOT NULL
    );
    "#,
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored item {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error(
        "database {path} has schema version {found}, newer than this Ferry understands ({supported}); upgrade Ferry"
    )]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("database call was cancelled or panicked: {0}")]
    Task(String),
    #[error("{0}")]
    Invalid(String),
}

impl DbError {
    /// True for lock contention and I/O trouble that a retry may get past.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure
            ),
            DbError::Task(_) => true,
            _ => false,
        }
    }
}

struct Inner {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

/// A handle to one database (cheap to clone). One connection per handle per process; other
/// processes open their own.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Db, DbError> {
        let path = path.as_ref();
        let conn = Connection::open(path)?;
        Db::init(conn, Some(path.to_path_buf()))
    }

    /// A private in-memory database (one process, one handle), for tests.
    pub fn open_in_memory() -> Result<Db, DbError> {
        Db::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<Db, DbError> {
        // busy_timeout first: the journal-mode switch itself may meet another process's lock.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // journal_mode answers with a row, so it is queried rather than executed.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        migrate(&mut conn, path.as_deref())?;
        Ok(Db {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
            }),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic in another call cannot leave SQLite half-written (transactions roll back on
        // drop), so a poisoned lock is safe to reuse.
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection on the blocking pool.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock();
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction on the blocking pool; commits on `Ok`
    /// and rolls back on `Err` (the transaction is dropped uncommitted).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| E::from(DbError::Sqlite(e)))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| E::from(DbError::Sqlite(e)))?;
            Ok(out)
        })
        .await
    }
}

fn migrate(conn: &mut Connection, path: Option<&Path>) -> Result<(), DbError> {
    let supported = MIGRATIONS.len() as i64;
    // IMMEDIATE: two processes opening a fresh file at once must not both migrate.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > supported {
        return Err(DbError::TooNew {
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            found,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Unix time in milliseconds from the system clock (queues need wall time shared by processes).
pub use ferry_clock::unix_ms;

/// SQLite integers are i64; our times and versions are u64 well below i64::MAX.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_applied_once_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        let db = Db::open(&path).unwrap();
        drop(db);
        // Reopening does not re-run migration 1 (it would fail on CREATE TABLE).
        let db = Db::open(&path).unwrap();
        let conn = db.lock();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Db::open(&path).unwrap_err();
        assert!(err.to_string().contains("upgrade Ferry"), "{err}");
    }
}
