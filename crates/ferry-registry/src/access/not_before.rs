//! "Every grant issued before T is refused": the embedded registry's incident kill switch,
//! moved forward by `ferry grants revoke-all --state-dir`, possibly from another process than
//! the one serving.
//!
//! The moment lives in its own small file (`grants-not-before`, unix seconds) beside the
//! revocation list, so another process can move it without rewriting the list the server owns.
//! The server re-reads it whenever the file's modification time changes (one `stat` per grant
//! check). It only ever moves forward. This module must never fail open: a file that exists but
//! cannot be read or parsed refuses every grant until it is fixed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The file's name in the auth state dir.
pub const FILE_NAME: &str = "grants-not-before";

/// The cached moment, and the file's modification time it was read at.
#[derive(Debug)]
pub struct GrantsNotBefore {
    path: PathBuf,
    cached: Mutex<Option<(SystemTime, u64)>>,
}

impl GrantsNotBefore {
    pub fn new(state_dir: &Path) -> GrantsNotBefore {
        GrantsNotBefore {
            path: state_dir.join(FILE_NAME),
            cached: Mutex::new(None),
        }
    }

    /// Unix seconds before which every grant is refused: 0 when the file does not exist,
    /// `u64::MAX` (refuse all) when it exists but cannot be read.
    pub fn get(&self) -> u64 {
        let modified = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(_) => return u64::MAX,
        };
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, value)) = *cached {
            if at == modified {
                return value;
            }
        }
        let value = read(&self.path).unwrap_or(u64::MAX);
        *cached = Some((modified, value));
        value
    }
}

fn read(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Refuses, from now on, every grant issued before `unix_secs` by the registry whose auth
/// state dir is `state_dir`. Never moves the moment backward. Atomic (temp file, fsync, rename).
pub fn revoke_grants_issued_before(state_dir: &Path, unix_secs: u64) -> std::io::Result<u64> {
    crate::storage::create_private_dir(state_dir)?;
    let path = state_dir.join(FILE_NAME);
    let current = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = current.max(unix_secs);
    let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
    tmp.write_all(format!("{next}\n").as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_zero_moves_forward_only_and_garbage_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let nb = GrantsNotBefore::new(dir.path());
        assert_eq!(nb.get(), 0);
        assert_eq!(revoke_grants_issued_before(dir.path(), 100).unwrap(), 100);
        assert_eq!(nb.get(), 100);
        assert_eq!(
            revoke_grants_issued_before(dir.path(), 50).unwrap(),
            100,
            "never backward"
        );
        std::fs::write(dir.path().join(FILE_NAME), "not a number").unwrap();
        // A different length or a later write changes the mtime; force a re-read either way.
        *nb.cached.lock().unwrap() = None;
        assert_eq!(nb.get(), u64::MAX, "an unreadable file refuses every grant");
    }
}
