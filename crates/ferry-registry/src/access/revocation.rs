//! Revoked token ids (`jti`) and grant job ids, persisted so a restart keeps them.
//!
//! Each revocation is appended to a journal (`<file>.journal`, one JSON line each, fsynced)
//! before `revoke` returns; the snapshot file is rewritten atomically (temp file, fsync,
//! rename) only when the journal has grown past the snapshot (or 1,024 lines), then the
//! journal is emptied. So a revocation costs one line, not a rewrite of the whole list (which
//! made a 10,000-install fan-out quadratic in disk writes and memory). A revocation is kept
//! until every token it could match has expired, then pruned. This module must never forget a
//! revocation early, and never start with an empty list when the snapshot or the journal is
//! unreadable: failing closed is the point.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// The journal is compacted into the snapshot once it has more lines than this and than the
/// snapshot has entries (so each revocation costs amortized O(1) bytes written).
pub const COMPACT_AFTER_LINES: usize = 1024;

/// Why the revocation file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("revocation file {path} is corrupt ({message}); restore it from a backup, or delete it only if no grant issued in the last 15 minutes may still be in use")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
struct FileFormat {
    version: u32,
    /// id -> unix time after which the entry may be pruned.
    revoked: BTreeMap<String, u64>,
}

/// The snapshot as written (borrowing the entries: no copy of the list).
#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    revoked: &'a BTreeMap<String, u64>,
}

/// One journal line: `id` revoked until `until`.
#[derive(Serialize, Deserialize)]
struct JournalLine {
    id: String,
    until: u64,
}

#[derive(Debug)]
struct State {
    entries: BTreeMap<String, u64>,
    /// Lines in the journal since the last snapshot.
    journaled: usize,
}

/// The revocation list: ids mapped to when they may be forgotten.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    journal: PathBuf,
    state: RwLock<State>,
}

fn journal_path(path: &Path) -> PathBuf {
    let mut p: OsString = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

impl RevocationList {
    /// Opens (or starts) the list stored at `path` (and its journal beside it).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, RevocationError> {
        let path = path.into();
        let mut entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: FileFormat =
                    serde_json::from_slice(&bytes).map_err(|e| RevocationError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if f.version != 1 {
                    return Err(RevocationError::Corrupt {
                        path,
                        message: format!("unknown version {}", f.version),
                    });
                }
                f.revoked
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RevocationError::Io { path, source }),
        };
        let journal = journal_path(&path);
        let journaled = replay(&journal, &mut entries)?;
        Ok(RevocationList {
            path,
            journal,
            state: RwLock::new(State { entries, journaled }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `id` is revoked. Entries past their keep-until time no longer match anything
    /// live, so they are ignored whether pruned or not.
    pub fn is_revoked(&self, id: &str) -> bool {
        // A poisoned lock means a writer panicked mid-update: refuse rather than guess.
        match self.state.read() {
            Ok(s) => s.entries.contains_key(id),
            Err(_) => true,
        }
    }

    /// Revokes `id` until `keep_until` and persists it (a journal line, fsynced) before
    /// returning: once this returns `Ok`, a restart still refuses `id`. Compacts the journal
    /// into the snapshot, pruning entries past `now`, when it has grown long.
    pub fn revoke(&self, id: &str, keep_until: u64, now: u64) -> Result<(), RevocationError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let until = state
            .entries
            .get(id)
            .map_or(keep_until, |u| (*u).max(keep_until));
        self.append(&JournalLine {
            id: id.to_string(),
            until,
        })?;
        state.entries.insert(id.to_string(), until);
        state.journaled += 1;
        if state.journaled > COMPACT_AFTER_LINES.max(state.entries.len()) {
            state.entries.retain(|_, until| *until >= now);
            self.write(&state.entries)?;
            state.journaled = 0;
        }
        Ok(())
    }

    /// Drops entries whose keep-until time is before `now`. Returns how many were dropped.
    pub fn prune(&self, now: u64) -> Result<usize, RevocationError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut next = state.entries.clone();
        next.retain(|_, until| *until >= now);
        let dropped = state.entries.len() - next.len();
        if dropped > 0 {
            self.write(&next)?;
            state.entries = next;
            state.journaled = 0;
        }
        Ok(dropped)
    }

    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.entries.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> RevocationError {
        let path = path.to_path_buf();
        move |source| RevocationError::Io {
            path: path.clone(),
            source,
        }
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    /// Appends one line to the journal and fsyncs it (and the directory when the journal is
    /// new, so the file itself survives a crash).
    fn append(&self, line: &JournalLine) -> Result<(), RevocationError> {
        let io = self.io(&self.journal);
        let dir = self.dir();
        crate::storage::create_private_dir(dir).map_err(&io)?;
        let mut text = serde_json::to_vec(line).map_err(|e| RevocationError::Corrupt {
            path: self.journal.clone(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&self.journal).map_err(&io)?;
        let new = f.metadata().map_err(&io)?.len() == 0;
        f.write_all(&text).map_err(&io)?;
        f.sync_data().map_err(&io)?;
        if new {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Rewrites the snapshot atomically with `entries`, then empties the journal (whose lines
    /// the snapshot now holds; a crash in between only replays them again).
    fn write(&self, entries: &BTreeMap<String, u64>) -> Result<(), RevocationError> {
        let io = self.io(&self.path);
        let dir = self.dir();
        crate::storage::create_private_dir(dir).map_err(&io)?;
        let body = serde_json::to_vec_pretty(&FileRef {
            version: 1,
            revoked: entries,
        })
        .map_err(|e| RevocationError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(&io)?;
        tmp.write_all(&body).map_err(&io)?;
        tmp.as_file().sync_all().map_err(&io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        // fsync the directory so the rename itself survives a crash.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        match std::fs::OpenOptions::new().write(true).open(&self.journal) {
            Ok(f) => {
                let jio = self.io(&self.journal);
                f.set_len(0).map_err(&jio)?;
                f.sync_all().map_err(&jio)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&self.journal)(e)),
        }
        Ok(())
    }
}

/// Applies the journal's lines to `entries` (the later deadline wins); returns how many. A
/// last line without its newline is an append a crash cut short (its `revoke` never returned
/// `Ok`): it is cut off so the next append starts on a clean line. Any other bad line is
/// corruption (fail closed).
fn replay(journal: &Path, entries: &mut BTreeMap<String, u64>) -> Result<usize, RevocationError> {
    let io = |source| RevocationError::Io {
        path: journal.to_path_buf(),
        source,
    };
    let bytes = match std::fs::read(journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut lines = 0;
    for line in bytes[..complete].split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let l: JournalLine =
            serde_json::from_slice(line).map_err(|e| RevocationError::Corrupt {
                path: journal.to_path_buf(),
                message: format!("line {}: {e}", lines + 1),
            })?;
        let until = entries.entry(l.id).or_insert(l.until);
        *until = (*until).max(l.until);
        lines += 1;
    }
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(journal)
            .map_err(io)?;
        f.set_len(complete as u64).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_survive_reopen_and_prune_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/revocations.json");
        let list = RevocationList::open(&path).unwrap();
        assert!(!list.is_revoked("job-1"));
        list.revoke("job-1", 2_000, 1_000).unwrap();
        list.revoke("jti-2", 1_500, 1_000).unwrap();
        assert!(list.is_revoked("job-1"));

        let reopened = RevocationList::open(&path).unwrap();
        assert!(reopened.is_revoked("job-1"));
        assert!(reopened.is_revoked("jti-2"));
        assert!(!reopened.is_revoked("job-3"));

        assert_eq!(reopened.prune(1_600).unwrap(), 1);
        assert!(!reopened.is_revoked("jti-2"));
        assert!(reopened.is_revoked("job-1"));
        assert_eq!(RevocationList::open(&path).unwrap().len(), 1);
    }

    #[test]
    fn revoking_twice_keeps_the_later_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let list = RevocationList::open(dir.path().join("r.json")).unwrap();
        list.revoke("a", 2_000, 0).unwrap();
        list.revoke("a", 1_000, 0).unwrap();
        assert_eq!(list.prune(1_500).unwrap(), 0);
        assert!(list.is_revoked("a"));
    }

    #[test]
    fn corrupt_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            RevocationList::open(&path),
            Err(RevocationError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_journal_survives_reopen_a_torn_tail_is_cut_and_compaction_bounds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let list = RevocationList::open(&path).unwrap();
        for i in 0..10 {
            list.revoke(&format!("job-{i}"), 2_000, 1_000).unwrap();
        }
        drop(list);
        // A crash in the middle of an append leaves a line without its newline.
        let journal = journal_path(&path);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        f.write_all(b"{\"id\":\"job-torn\",\"un").unwrap();
        drop(f);
        let list = RevocationList::open(&path).unwrap();
        assert_eq!(list.len(), 10);
        assert!(list.is_revoked("job-9"));
        assert!(!list.is_revoked("job-torn"));
        list.revoke("job-10", 2_000, 1_000).unwrap();
        assert!(RevocationList::open(&path).unwrap().is_revoked("job-10"));

        // Many revocations: the journal is folded into the snapshot, so it stays short.
        for i in 0..3 * COMPACT_AFTER_LINES {
            list.revoke(&format!("bulk-{i}"), 2_000, 1_000).unwrap();
        }
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(
            lines <= COMPACT_AFTER_LINES.max(list.len()),
            "{lines} journal lines"
        );
        let reopened = RevocationList::open(&path).unwrap();
        assert_eq!(reopened.len(), list.len());
        assert!(reopened.is_revoked("bulk-0") && reopened.is_revoked("job-0"));
    }

    #[test]
    fn a_corrupt_journal_line_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(journal_path(&path), b"not json\n").unwrap();
        assert!(matches!(
            RevocationList::open(&path),
            Err(RevocationError::Corrupt { .. })
        ));
    }
}
