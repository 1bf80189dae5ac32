//! `SqliteQueue`: ferry-core's `Queue` on SQLite with SQS semantics, the local stand-in for SQS.
//!
//! Messages are rows. A receive claims up to 10 visible rows in one `BEGIN IMMEDIATE`
//! transaction (so two processes can never claim the same row), bumps their receive count,
//! hides them until `now + visibility` and gives each a fresh receipt handle; delete and
//! change-visibility match on that handle, so a stale one (the message was received again since)
//! changes nothing. A message that would be received more than `max_receive_count` times is moved
//! to the queue's dead-letter queue instead, with the reason and the last recorded error.
//! Long polls wait on an in-process `Notify` (woken by local sends) plus a slow DB poll (for
//! other processes' sends and expiring visibility). This module must never busy-loop, and never
//! hand the same message to two receivers while its visibility timeout holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore as _;
use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use ferry_core::id::QueueName;
use ferry_core::ports::{
    Batch, EntryFailure, MessageId, Queue, QueueError, ReceiptHandle, ReceiveOptions,
    ReceivedMessage, MAX_MESSAGE_BYTES, MAX_VISIBILITY_SECONDS,
};

use crate::db::{to_i64, to_u64, unix_ms, Db, DbError};

/// How often a long poll re-reads the database when nothing woke it.
pub const DB_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The SQS default `maxReceiveCount` we use for Ferry's queues.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// A queue's settings, as an SQS queue's attributes and redrive policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The visibility timeout consumers of this queue should use (SQS `VisibilityTimeout`).
    pub visibility_timeout: Duration,
    /// Receives allowed before redrive to `dlq` (SQS `maxReceiveCount`); ignored without a DLQ.
    pub max_receive_count: u32,
    /// The dead-letter queue; it must exist already.
    pub dlq: Option<QueueName>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
            dlq: None,
        }
    }
}

/// Message counts of one queue (SQS `ApproximateNumberOfMessages[NotVisible]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

impl QueueDepth {
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight
    }
}

/// A message sitting in a dead-letter queue, with why it got there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub message_id: MessageId,
    pub body: String,
    /// The queue it was redriven from.
    pub source_queue: String,
    /// Receives on the source queue before the redrive.
    pub receive_count: u32,
    pub reason: String,
    /// The last processing error a consumer recorded, if any.
    pub last_error: Option<String>,
    pub dead_lettered_at: u64,
}

/// SQS-like queues in one SQLite database (cheap to clone).
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    db: Db,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

fn queue_err(e: DbError) -> QueueError {
    match e {
        DbError::Invalid(message) => QueueError::Invalid { message },
        other => QueueError::Unavailable {
            message: other.to_string(),
        },
    }
}

fn entry_failure(e: &QueueError) -> EntryFailure {
    let (code, sender_fault) = match e {
        QueueError::Invalid { .. } => ("InvalidMessageContents", true),
        QueueError::InvalidReceiptHandle => ("ReceiptHandleIsInvalid", true),
        QueueError::NoSuchQueue { .. } => ("QueueDoesNotExist", true),
        QueueError::Unavailable { .. } => ("ServiceUnavailable", false),
    };
    EntryFailure {
        code: code.into(),
        message: e.to_string(),
        sender_fault,
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Inner results of one transaction: a port error or a database error.
enum TxError {
    Queue(QueueError),
    Db(DbError),
}

impl From<DbError> for TxError {
    fn from(e: DbError) -> Self {
        TxError::Db(e)
    }
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> Self {
        TxError::Db(DbError::Sqlite(e))
    }
}

struct QueueRow {
    max_receive_count: u32,
    dlq: Option<String>,
}

fn queue_row(tx: &Transaction<'_>, name: &str) -> Result<Option<QueueRow>, rusqlite::Error> {
    tx.query_row(
        "SELECT max_receive_count, dlq FROM queues WHERE name = ?1",
        [name],
        |r| {
            Ok(QueueRow {
                max_receive_count: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                dlq: r.get(1)?,
            })
        },
    )
    .optional()
}

fn require_queue(tx: &Transaction<'_>, name: &QueueName) -> Result<QueueRow, TxError> {
    queue_row(tx, name.as_str())?.ok_or_else(|| {
        TxError::Queue(QueueError::NoSuchQueue {
            queue: name.clone(),
        })
    })
}

fn check_body(body: &str) -> Result<(), QueueError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(QueueError::Invalid {
            message: format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}; send ids and digests, not payloads",
                body.len()
            ),
        });
    }
    Ok(())
}

fn insert_message(
    tx: &Transaction<'_>,
    queue: &QueueName,
    body: &str,
    now: u64,
) -> Result<MessageId, TxError> {
    insert_delayed(tx, queue, body, now, 0)
}

/// A message invisible until `now + delay_ms` (SQS `DelaySeconds`).
fn insert_delayed(
    tx: &Transaction<'_>,
    queue: &QueueName,
    body: &str,
    now: u64,
    delay_ms: u64,
) -> Result<MessageId, TxError> {
    check_body(body).map_err(TxError::Queue)?;
    let id = format!("m-{}", random_hex(16));
    tx.execute(
        "INSERT INTO messages (id, queue, body, sent_at, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            queue.as_str(),
            body,
            to_i64(now),
            to_i64(now.saturating_add(delay_ms))
        ],
    )?;
    Ok(MessageId(id))
}

impl SqliteQueue {
    pub fn new(db: Db) -> SqliteQueue {
        SqliteQueue {
            db,
            wakers: Arc::default(),
        }
    }

    pub fn open(path: impl AsRef<std::path::Path>) -> Result<SqliteQueue, DbError> {
        Ok(SqliteQueue::new(Db::open(path)?))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(queue.to_string()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        self.waker(queue).notify_waiters();
    }

    async fn run<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, TxError> + Send + 'static,
    {
        // A port error rolls the transaction back too: nothing half-done is committed.
        match self.db.write(f).await {
            Ok(v) => Ok(v),
            Err(TxError::Queue(e)) => Err(e),
            Err(TxError::Db(e)) => Err(queue_err(e)),
        }
    }

    /// Creates the queue, or updates its settings (idempotent, like SQS `CreateQueue`).
    pub async fn create_queue(
        &self,
        name: &QueueName,
        config: QueueConfig,
    ) -> Result<(), QueueError> {
        if config.dlq.as_ref() == Some(name) {
            return Err(QueueError::Invalid {
                message: format!("queue {name} cannot be its own dead-letter queue"),
            });
        }
        let secs = config.visibility_timeout.as_secs();
        if secs > u64::from(MAX_VISIBILITY_SECONDS) {
            return Err(QueueError::Invalid {
                message: format!(
                    "visibility timeout must be at most {MAX_VISIBILITY_SECONDS}s, got {secs}s"
                ),
            });
        }
        if config.max_receive_count == 0 {
            return Err(QueueError::Invalid {
                message: "max_receive_count must be at least 1".into(),
            });
        }
        let name = name.clone();
        self.run(move |tx| {
            if let Some(dlq) = &config.dlq {
                require_queue(tx, dlq)?;
            }
            tx.execute(
                "INSERT INTO queues (name, visibility_ms, max_receive_count, dlq)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET visibility_ms = excluded.visibility_ms,
                    max_receive_count = excluded.max_receive_count, dlq = excluded.dlq",
                params![
                    name.as_str(),
                    to_i64(config.visibility_timeout.as_millis() as u64),
                    i64::from(config.max_receive_count),
                    config.dlq.as_ref().map(QueueName::as_str)
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The queue's settings, or `NoSuchQueue`.
    pub async fn queue_config(&self, name: &QueueName) -> Result<QueueConfig, QueueError> {
        let name = name.clone();
        self.run(move |tx| {
            let row: Option<(i64, i64, Option<String>)> = tx
                .query_row(
                    "SELECT visibility_ms, max_receive_count, dlq FROM queues WHERE name = ?1",
                    [name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let (vis, max, dlq) = row.ok_or_else(|| {
                TxError::Queue(QueueError::NoSuchQueue {
                    queue: name.clone(),
                })
            })?;
            Ok(QueueConfig {
                visibility_timeout: Duration::from_millis(to_u64(vis)),
                max_receive_count: u32::try_from(max).unwrap_or(u32::MAX),
                dlq: dlq.and_then(|d| QueueName::new(d).ok()),
            })
        })
        .await
    }

    /// Visible and in-flight message counts.
    pub async fn approximate_depth(&self, name: &QueueName) -> Result<QueueDepth, QueueError> {
        let name = name.clone();
        let now = unix_ms();
        self.run(move |tx| {
            require_queue(tx, &name)?;
            let (visible, in_flight): (i64, i64) = tx.query_row(
                "SELECT COALESCE(SUM(visible_at <= ?2), 0), COALESCE(SUM(visible_at > ?2), 0)
                 FROM messages WHERE queue = ?1",
                params![name.as_str(), to_i64(now)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(QueueDepth {
                visible: to_u64(visible),
                in_flight: to_u64(in_flight),
            })
        })
        .await
    }

    /// The redriven messages now in dead-letter queue `dlq`, oldest first.
    pub async fn dlq_messages(&self, dlq: &QueueName) -> Result<Vec<DeadLetter>, QueueError> {
        let dlq = dlq.clone();
        self.run(move |tx| {
            require_queue(tx, &dlq)?;
            let mut stmt = tx.prepare(
                "SELECT id, body, dead_lettered_from, receive_count, dead_letter_reason,
                        last_error, dead_lettered_at
                 FROM messages WHERE queue = ?1 AND dead_lettered_from IS NOT NULL ORDER BY seq",
            )?;
            let rows = stmt.query_map([dlq.as_str()], |r| {
                Ok(DeadLetter {
                    message_id: MessageId(r.get(0)?),
                    body: r.get(1)?,
                    source_queue: r.get(2)?,
                    receive_count: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    reason: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    last_error: r.get(5)?,
                    dead_lettered_at: to_u64(r.get::<_, Option<i64>>(6)?.unwrap_or(0)),
                })
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?);
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a queue and its messages (SQS `DeleteQueue`), then its dead-letter queue if no
    /// other queue uses it. Deleting a missing queue is `NoSuchQueue`.
    pub async fn delete_queue(&self, name: &QueueName) -> Result<(), QueueError> {
        let name = name.clone();
        self.run(move |tx| {
            let row = require_queue(tx, &name)?;
            let users: i64 = tx.query_row(
                "SELECT COUNT(*) FROM queues WHERE dlq = ?1",
                [name.as_str()],
                |r| r.get(0),
            )?;
            if users > 0 {
                return Err(TxError::Queue(QueueError::Invalid {
                    message: format!("queue {name} is the dead-letter queue of another queue"),
                }));
            }
            tx.execute("DELETE FROM messages WHERE queue = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM queues WHERE name = ?1", [name.as_str()])?;
            if let Some(dlq) = row.dlq {
                let users: i64 =
                    tx.query_row("SELECT COUNT(*) FROM queues WHERE dlq = ?1", [&dlq], |r| {
                        r.get(0)
                    })?;
                if users == 0 {
                    tx.execute("DELETE FROM messages WHERE queue = ?1", [&dlq])?;
                    tx.execute("DELETE FROM queues WHERE name = ?1", [&dlq])?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Every queue that has a dead-letter queue, as (queue, dead-letter queue), by name.
    pub async fn queues_with_dlq(&self) -> Result<Vec<(QueueName, QueueName)>, QueueError> {
        self.run(move |tx| {
            let mut stmt =
                tx.prepare("SELECT name, dlq FROM queues WHERE dlq IS NOT NULL ORDER BY name")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (q, d) = row?;
                let bad = |e: ferry_core::id::IdError| TxError::Db(DbError::Invalid(e.to_string()));
                out.push((
                    QueueName::new(q).map_err(bad)?,
                    QueueName::new(d).map_err(bad)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Moves up to `max` dead letters of `dlq` back onto the queues they came from, visible at
    /// once with a fresh receive count (SQS `StartMessageMoveTask`). Returns how many moved.
    pub async fn redrive_dead_letters(
        &self,
        dlq: &QueueName,
        max: usize,
    ) -> Result<usize, QueueError> {
        let dlq = dlq.clone();
        let moved = self
            .run(move |tx| {
                require_queue(tx, &dlq)?;
                let now = to_i64(unix_ms());
                // Only to a source queue that still exists; others stay dead-lettered.
                let n = tx.execute(
                    "UPDATE messages SET queue = dead_lettered_from, visible_at = ?2,
                        receive_count = 0, receipt = NULL, dead_lettered_from = NULL,
                        dead_letter_reason = NULL, dead_lettered_at = NULL
                     WHERE seq IN (SELECT m.seq FROM messages m JOIN queues q
                                     ON q.name = m.dead_lettered_from
                                   WHERE m.queue = ?1 ORDER BY m.seq LIMIT ?3)",
                    params![dlq.as_str(), now, i64::try_from(max).unwrap_or(i64::MAX)],
                )?;
                Ok(n)
            })
            .await?;
        Ok(moved)
    }

    /// Records why processing a received message failed; shown with it if it is dead-lettered.
    /// A stale receipt is refused like for `delete`.
    pub async fn note_failure(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        error: &str,
    ) -> Result<(), QueueError> {
        let (queue, receipt) = (queue.clone(), receipt.0.clone());
        // Bounded: an error text is for humans, the row must stay small.
        let error: String = error.chars().take(4096).collect();
        self.run(move |tx| {
            let n = tx.execute(
                "UPDATE messages SET last_error = ?3 WHERE queue = ?1 AND receipt = ?2",
                params![queue.as_str(), receipt, error],
            )?;
            if n == 0 {
                require_queue(tx, &queue)?;
                return Err(TxError::Queue(QueueError::InvalidReceiptHandle));
            }
            Ok(())
        })
        .await
    }

    /// Like `receive`, but a long poll also ends early when `stop` turns true (never in the
    /// middle of a claim, so no message is claimed and then dropped).
    pub async fn receive_until(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
        mut stop: Option<watch::Receiver<bool>>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(u64::from(options.wait_seconds()));
        let waker = self.waker(queue.as_str());
        loop {
            // Register for a wake-up before looking, so a send in between is not missed.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (got, redriven) = self.claim(queue, options).await?;
            if let Some(dlq) = redriven {
                self.wake(&dlq);
            }
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            if stop.as_ref().is_some_and(|s| *s.borrow()) {
                return Ok(got);
            }
            let nap = DB_POLL_INTERVAL.min(deadline - now);
            match &mut stop {
                Some(s) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(nap) => {}
                        changed = s.changed() => {
                            // A dropped sender means nobody can ever ask to keep going.
                            if changed.is_err() {
                                return Ok(got);
                            }
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
            }
        }
    }

    /// One claim transaction. Returns the claimed messages and the DLQ name if any message was
    /// redriven (to wake its local receivers).
    async fn claim(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
    ) -> Result<(Vec<ReceivedMessage>, Option<String>), QueueError> {
        let queue = queue.clone();
        let max = options.max_messages() as usize;
        let visibility_ms = u64::from(options.visibility_seconds()) * 1000;
        self.run(move |tx| {
            let cfg = require_queue(tx, &queue)?;
            let now = unix_ms();
            let mut out: Vec<ReceivedMessage> = Vec::new();
            let mut redriven = None;
            let mut after_seq: i64 = 0;
            // Loops only when candidates were redriven instead of claimed; `seq > after_seq`
            // guarantees progress (a claim with visibility 0 stays "visible").
            while out.len() < max {
                let want = i64::try_from(max - out.len()).unwrap_or(10);
                let candidates: Vec<(i64, String, String, i64)> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT seq, id, body, receive_count FROM messages
                         WHERE queue = ?1 AND visible_at <= ?2 AND seq > ?3
                         ORDER BY seq LIMIT ?4",
                    )?;
                    let rows = stmt.query_map(
                        params![queue.as_str(), to_i64(now), after_seq, want],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )?;
                    rows.collect::<Result<_, _>>()?
                };
                if candidates.is_empty() {
                    break;
                }
                for (seq, id, body, count) in candidates {
                    after_seq = seq;
                    let count = u32::try_from(count).unwrap_or(u32::MAX);
                    if let Some(dlq) = &cfg.dlq {
                        if count >= cfg.max_receive_count {
                            let reason = format!(
                                "received {count} times from queue {queue} without being deleted \
                                 (max_receive_count {}); fix the cause, then resend the body",
                                cfg.max_receive_count
                            );
                            tx.execute(
                                "UPDATE messages SET queue = ?2, visible_at = ?3, receipt = NULL,
                                    dead_lettered_from = ?4, dead_letter_reason = ?5,
                                    dead_lettered_at = ?3
                                 WHERE seq = ?1",
                                params![seq, dlq, to_i64(now), queue.as_str(), reason],
                            )?;
                            tracing::warn!(queue = %queue, dlq = %dlq, message_id = %id, receive_count = count, "message redriven to the dead-letter queue");
                            redriven = Some(dlq.clone());
                            continue;
                        }
                    }
                    let receive_count = count.saturating_add(1);
                    let receipt = format!("{id}.{receive_count}.{}", random_hex(12));
                    tx.execute(
                        "UPDATE messages SET receive_count = ?2, visible_at = ?3, receipt = ?4
                         WHERE seq = ?1",
                        params![
                            seq,
                            i64::from(receive_count),
                            to_i64(now.saturating_add(visibility_ms)),
                            receipt
                        ],
                    )?;
                    out.push(ReceivedMessage {
                        message_id: MessageId(id),
                        receipt_handle: ReceiptHandle(receipt),
                        body,
                        receive_count,
                    });
                }
            }
            Ok((out, redriven))
        })
        .await
    }
}

impl Queue for SqliteQueue {
    async fn send(&self, queue: &QueueName, body: &str) -> Result<MessageId, QueueError> {
        check_body(body)?;
        let (q, body) = (queue.clone(), body.to_string());
        let id = self
            .run(move |tx| {
                require_queue(tx, &q)?;
                insert_message(tx, &q, &body, unix_ms())
            })
            .await?;
        self.wake(queue.as_str());
        Ok(id)
    }

    async fn send_delayed(
        &self,
        queue: &QueueName,
        body: &str,
        delay_seconds: u32,
    ) -> Result<MessageId, QueueError> {
        ferry_core::ports::check_delay(delay_seconds)?;
        check_body(body)?;
        let (q, body) = (queue.clone(), body.to_string());
        let delay_ms = u64::from(delay_seconds) * 1000;
        let id = self
            .run(move |tx| {
                require_queue(tx, &q)?;
                insert_delayed(tx, &q, &body, unix_ms(), delay_ms)
            })
            .await?;
        if delay_seconds == 0 {
            self.wake(queue.as_str());
        }
        Ok(id)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        bodies: &Batch<String>,
    ) -> Result<Vec<Result<MessageId, EntryFailure>>, QueueError> {
        let (q, bodies) = (queue.clone(), bodies.items().to_vec());
        let results = self
            .run(move |tx| {
                require_queue(tx, &q)?;
                let now = unix_ms();
                let mut out = Vec::with_capacity(bodies.len());
                for body in &bodies {
                    out.push(match insert_message(tx, &q, body, now) {
                        Ok(id) => Ok(id),
                        Err(TxError::Queue(e)) => Err(entry_failure(&e)),
                        Err(TxError::Db(e)) => return Err(TxError::Db(e)),
                    });
                }
                Ok(out)
            })
            .await?;
        self.wake(queue.as_str());
        Ok(results)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_until(queue, options, None).await
    }

    async fn delete(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<(), QueueError> {
        let (q, r) = (queue.clone(), receipt.0.clone());
        self.run(move |tx| delete_one(tx, &q, &r)).await
    }

    async fn delete_batch(
        &self,
        queue: &QueueName,
        receipts: &Batch<ReceiptHandle>,
    ) -> Result<Vec<Result<(), EntryFailure>>, QueueError> {
        let q = queue.clone();
        let receipts: Vec<String> = receipts.items().iter().map(|r| r.0.clone()).collect();
        self.run(move |tx| {
            require_queue(tx, &q)?;
            let mut out = Vec::with_capacity(receipts.len());
            for r in &receipts {
                out.push(match delete_one(tx, &q, r) {
                    Ok(()) => Ok(()),
                    Err(TxError::Queue(e)) => Err(entry_failure(&e)),
                    Err(TxError::Db(e)) => return Err(TxError::Db(e)),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        seconds: u32,
    ) -> Result<(), QueueError> {
        if seconds > MAX_VISIBILITY_SECONDS {
            return Err(QueueError::Invalid {
                message: format!(
                    "visibility timeout must be at most {MAX_VISIBILITY_SECONDS}s, got {seconds}s"
                ),
            });
        }
        let (q, r) = (queue.clone(), receipt.0.clone());
        self.run(move |tx| {
            let visible_at = unix_ms().saturating_add(u64::from(seconds) * 1000);
            let n = tx.execute(
                "UPDATE messages SET visible_at = ?3 WHERE queue = ?1 AND receipt = ?2",
                params![q.as_str(), r, to_i64(visible_at)],
            )?;
            if n == 0 {
                require_queue(tx, &q)?;
                return Err(TxError::Queue(QueueError::InvalidReceiptHandle));
            }
            Ok(())
        })
        .await?;
        if seconds == 0 {
            self.wake(queue.as_str());
        }
        Ok(())
    }
}

fn delete_one(tx: &Transaction<'_>, queue: &QueueName, receipt: &str) -> Result<(), TxError> {
    let n = tx.execute(
        "DELETE FROM messages WHERE queue = ?1 AND receipt = ?2",
        params![queue.as_str(), receipt],
    )?;
    if n == 0 {
        require_queue(tx, queue)?;
        return Err(TxError::Queue(QueueError::InvalidReceiptHandle));
    }
    Ok(())
}
