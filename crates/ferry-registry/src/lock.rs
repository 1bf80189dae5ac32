//! The storage root's lock file, so `ferry registry serve` and `ferry registry gc` (or two of
//! either) never run on one root at once.
//!
//! Opening storage deletes leftover upload files, and GC sweeps blobs that a running server
//! may be about to reference; both are only safe with the root to oneself. The lock is an
//! exclusive `flock` on `<root>/registry.lock`, held for the life of [`RootLock`] and released
//! by the kernel when the process dies (no stale lock after a crash). The file also records the
//! holder's pid, for the error message. This module must never wait for the lock: a second
//! process is refused at once with an error that names the file and what to do.

use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The lock file's name under the storage root.
pub const LOCK_FILE: &str = "registry.lock";

/// Why a root could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("registry root {root} is in use by another process{holder} (lock file {lock}); stop that `ferry registry serve` or `gc` first, then retry")]
    Held {
        root: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot lock registry root {root} ({lock}): {source}")]
    Io {
        root: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive hold on a storage root; released on drop.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
    path: PathBuf,
}

impl RootLock {
    /// Takes the root's lock (creating the root, mode 0700, if needed), or refuses at once
    /// with [`LockError::Held`] when another process holds it.
    pub fn acquire(root: &Path) -> Result<RootLock, LockError> {
        let lock = root.join(LOCK_FILE);
        let io = |source| LockError::Io {
            root: root.to_path_buf(),
            lock: lock.clone(),
            source,
        };
        crate::storage::create_private_dir(root).map_err(io)?;
        let mut opts = fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut file = opts.open(&lock).map_err(io)?;
        #[cfg(unix)]
        if let Err(e) =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    root: root.to_path_buf(),
                    lock: lock.clone(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            return Err(io(e.into()));
        }
        // Ours now: record who holds it.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(RootLock {
            _file: file,
            path: lock,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let first = RootLock::acquire(&root).expect("first lock");
        let err = RootLock::acquire(&root).expect_err("second lock must fail");
        let msg = err.to_string();
        assert!(msg.contains("registry.lock"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        RootLock::acquire(&root).expect("free again after drop");
    }
}
