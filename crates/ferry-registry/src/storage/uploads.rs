//! Upload sessions: start, append (chunked, in order), finish with digest verification,
//! cancel, idle expiry, and monolithic puts. It must never keep a file open between requests,
//! never move a session forward before its chunk is on disk, and never commit unverified bytes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::files::private_file_options;
use super::names::{digest_hex, truncate};
use super::{mutex, random_id, Result, Storage, UploadStatus};
use crate::errors::StorageError;

/// An upload session between requests: where its bytes are and how far they are hashed. No
/// file handle is kept; each PATCH/PUT opens the file, cuts it back to `offset` (dropping
/// whatever an interrupted request left past it), appends, and closes it.
pub(super) struct UploadState {
    repository: String,
    path: PathBuf,
    hasher: Sha256,
    offset: u64,
    last_activity: std::time::Instant,
}

/// A registered upload session and the identity that opened it (for the per-identity cap).
pub(super) struct UploadEntry {
    owner: String,
    state: Arc<tokio::sync::Mutex<Option<UploadState>>>,
}

fn valid_upload_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl Storage {
    /// Starts an upload session for `owner` (the authenticated identity) and returns its id.
    /// An owner already holding [`Limits::upload_sessions_per_identity`] sessions is refused
    /// with [`StorageError::TooManyUploads`]. The session's file is created and closed again:
    /// nothing stays open between requests.
    pub async fn start_upload(&self, repository: &str, owner: &str) -> Result<String> {
        let id = random_id();
        let path = self.inner.root.join("uploads").join(&id);
        {
            // Counted and registered under one lock, so parallel POSTs cannot overshoot.
            let mut uploads = mutex(&self.inner.uploads);
            let held = uploads.values().filter(|e| e.owner == owner).count();
            if held >= self.inner.upload_sessions_per_identity {
                return Err(StorageError::TooManyUploads {
                    owner: truncate(owner, 80),
                    limit: self.inner.upload_sessions_per_identity,
                    retry_after_secs: self.inner.upload_idle_timeout.as_secs().max(1),
                });
            }
            let state = UploadState {
                repository: repository.to_string(),
                path: path.clone(),
                hasher: Sha256::new(),
                offset: 0,
                last_activity: std::time::Instant::now(),
            };
            uploads.insert(
                id.clone(),
                UploadEntry {
                    owner: owner.to_string(),
                    state: Arc::new(tokio::sync::Mutex::new(Some(state))),
                },
            );
        }
        let created = tokio::task::spawn_blocking({
            let path = path.clone();
            move || private_file_options().open(&path).map(drop)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        if let Err(e) = created {
            mutex(&self.inner.uploads).remove(&id);
            return Err(StorageError::io("creating an upload file", &path, e));
        }
        Ok(id)
    }

    fn session(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<Option<UploadState>>>> {
        if !valid_upload_id(id) {
            return Err(StorageError::UploadUnknown(truncate(id, 40)));
        }
        mutex(&self.inner.uploads)
            .get(id)
            .map(|e| e.state.clone())
            .ok_or_else(|| StorageError::UploadUnknown(id.to_string()))
    }

    /// How many upload sessions `owner` holds open.
    pub fn upload_sessions_of(&self, owner: &str) -> usize {
        mutex(&self.inner.uploads)
            .values()
            .filter(|e| e.owner == owner)
            .count()
    }

    /// Current offset of an upload session.
    pub async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        let session = self.session(id)?;
        let guard = session.lock().await;
        match guard.as_ref() {
            Some(state) if state.repository == repository => Ok(UploadStatus {
                offset: state.offset,
            }),
            _ => Err(StorageError::UploadUnknown(id.to_string())),
        }
    }

    /// Appends a chunk. `range` is the inclusive `Content-Range` (start, end): the start must
    /// equal the current offset and the body must be exactly that long. If the body fails
    /// midway or has the wrong length, the session stays where it was before this chunk.
    pub async fn append_upload<S, E>(
        &self,
        repository: &str,
        id: &str,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let session = self.session(id)?;
        let mut guard = session.lock().await;
        let state = match guard.as_mut() {
            Some(state) if state.repository == repository => state,
            _ => return Err(StorageError::UploadUnknown(id.to_string())),
        };
        let announced = match range {
            Some((start, end)) => {
                if start != state.offset {
                    return Err(StorageError::UploadOutOfOrder {
                        expected: state.offset,
                        got: start,
                    });
                }
                Some(range_len(start, end).ok_or(StorageError::RangeInvalid {
                    expected: state.offset,
                })?)
            }
            None => None,
        };
        state.last_activity = std::time::Instant::now();
        // Hash into a copy: the session only moves forward once the whole chunk is on disk.
        let mut hasher = state.hasher.clone();
        let mut file = open_upload_at(&state.path, state.offset).await?;
        let written = write_stream(&mut file, &mut hasher, body)
            .await
            .and_then(|n| match announced {
                Some(len) if n != len => Err(StorageError::UploadInvalid(format!(
                    "Content-Range announces {len} bytes but the body had {n}; resend the chunk"
                ))),
                _ => Ok(n),
            })
            .and_then(|n| {
                state.offset.checked_add(n).ok_or_else(|| {
                    StorageError::UploadInvalid("the upload would exceed 2^64 bytes".into())
                })
            });
        let flushed = match written {
            Ok(offset) => file
                .flush()
                .await
                .map(|()| offset)
                .map_err(|e| StorageError::io("writing an upload", &state.path, e)),
            Err(e) => Err(e),
        };
        match flushed {
            Ok(offset) => {
                state.hasher = hasher;
                state.offset = offset;
                state.last_activity = std::time::Instant::now();
                Ok(UploadStatus { offset })
            }
            Err(err) => {
                // Best effort: the next request cuts the file back to the offset anyway.
                let _ = file.set_len(state.offset).await;
                Err(err)
            }
        }
    }

    /// Finishes an upload: appends `body` (possibly empty), verifies `digest`, commits.
    /// On any failure the session is discarded and nothing becomes visible.
    pub async fn finish_upload<S, E>(
        &self,
        repository: &str,
        id: &str,
        digest: &str,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        digest_hex(digest)?;
        let session = self.session(id)?;
        let mut guard = session.lock().await;
        match guard.as_ref() {
            Some(state) if state.repository == repository => {}
            _ => return Err(StorageError::UploadUnknown(id.to_string())),
        }
        let Some(state) = guard.take() else {
            return Err(StorageError::UploadUnknown(id.to_string()));
        };
        mutex(&self.inner.uploads).remove(id);
        self.finish_state(state, digest, body).await
    }

    /// Appends `body` to a session taken out of the table, verifies and commits it; removes
    /// its file on failure.
    async fn finish_state<S, E>(&self, mut state: UploadState, digest: &str, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let hex = digest_hex(digest)?.to_string();
        let result = async {
            let mut file = open_upload_at(&state.path, state.offset).await?;
            let n = write_stream(&mut file, &mut state.hasher, body).await?;
            state.offset = state.offset.checked_add(n).ok_or_else(|| {
                StorageError::UploadInvalid("the upload would exceed 2^64 bytes".into())
            })?;
            let actual = hex::encode(state.hasher.clone().finalize());
            if actual != hex {
                return Err(StorageError::DigestMismatch {
                    expected: digest.to_string(),
                    actual: format!("sha256:{actual}"),
                });
            }
            file.flush()
                .await
                .map_err(|e| StorageError::io("flushing an upload", &state.path, e))?;
            file.sync_all()
                .await
                .map_err(|e| StorageError::io("syncing an upload", &state.path, e))?;
            drop(file);
            let storage = self.clone();
            let path = state.path.clone();
            let repo = state.repository.clone();
            tokio::task::spawn_blocking(move || storage.commit_blob(&repo, &path, &hex))
                .await
                .map_err(|e| StorageError::UploadInvalid(format!("commit task failed: {e}")))??;
            Ok(state.offset)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&state.path).await;
        }
        result
    }

    /// Cancels an upload session.
    pub async fn cancel_upload(&self, repository: &str, id: &str) -> Result<()> {
        let session = self.session(id)?;
        let mut guard = session.lock().await;
        match guard.as_ref() {
            Some(state) if state.repository == repository => {}
            _ => return Err(StorageError::UploadUnknown(id.to_string())),
        }
        if let Some(state) = guard.take() {
            mutex(&self.inner.uploads).remove(id);
            let _ = tokio::fs::remove_file(&state.path).await;
        }
        Ok(())
    }

    /// Drops upload sessions idle for longer than `idle` (clients that went away) and deletes
    /// their files. Sessions busy with a request are skipped. Returns how many were dropped.
    pub fn expire_uploads(&self, idle: Duration) -> usize {
        let sessions: Vec<(String, Arc<tokio::sync::Mutex<Option<UploadState>>>)> =
            mutex(&self.inner.uploads)
                .iter()
                .map(|(k, v)| (k.clone(), v.state.clone()))
                .collect();
        let mut dropped = 0;
        for (id, session) in sessions {
            let Ok(mut guard) = session.try_lock() else {
                continue;
            };
            let stale = guard
                .as_ref()
                .is_some_and(|s| s.last_activity.elapsed() >= idle);
            if stale {
                if let Some(state) = guard.take() {
                    mutex(&self.inner.uploads).remove(&id);
                    let _ = fs::remove_file(&state.path);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// [`Storage::expire_uploads`] with the configured [`Limits::upload_idle_timeout`].
    pub fn expire_idle_uploads(&self) -> usize {
        self.expire_uploads(self.inner.upload_idle_timeout)
    }

    /// Monolithic upload: the whole blob in one body, verified against `digest`. It holds no
    /// session between requests, so it does not count against the per-identity cap.
    pub async fn put_blob<S, E>(&self, repository: &str, digest: &str, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        digest_hex(digest)?;
        let path = self.inner.root.join("uploads").join(random_id());
        let state = UploadState {
            repository: repository.to_string(),
            path,
            hasher: Sha256::new(),
            offset: 0,
            last_activity: std::time::Instant::now(),
        };
        self.finish_state(state, digest, body).await
    }
}

async fn write_stream<S, E>(
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
    mut body: S,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StorageError::BodyInterrupted(e.to_string()))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| StorageError::io("writing an upload", PathBuf::from("uploads"), e))?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

/// The length of the inclusive byte range `start..=end`, or `None` when `end < start` or the
/// length does not fit in a u64 (`0-18446744073709551615`). Every client-supplied range goes
/// through here.
pub fn range_len(start: u64, end: u64) -> Option<u64> {
    end.checked_sub(start)?.checked_add(1)
}

/// Opens an upload file for writing at `offset`, cutting off anything past it (bytes an
/// interrupted request wrote but never committed). Creates the file (0600) only at offset 0:
/// a session whose file vanished cannot silently continue.
async fn open_upload_at(path: &Path, offset: u64) -> Result<tokio::fs::File> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(offset == 0);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts
        .open(path)
        .await
        .map_err(|e| StorageError::io("opening an upload file", path, e))?;
    file.set_len(offset)
        .await
        .map_err(|e| StorageError::io("truncating an upload file", path, e))?;
    tokio::io::AsyncSeekExt::seek(&mut file, io::SeekFrom::Start(offset))
        .await
        .map_err(|e| StorageError::io("seeking in an upload file", path, e))?;
    Ok(file)
}
