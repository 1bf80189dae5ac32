//! In-use records: the manifests of a repository that the install's deployer declared running
//! (`ferry-agent in-use mark REPO@DIGEST`). Retention keeps every one of them, and everything
//! they reference, whatever its keep-last window says.
//!
//! A record is an empty file `<root>/in-use/<repository>/<hex>`, beside the registry's storage
//! and not inside it: it is not a tag, so it never counts as a version in the keep-last window,
//! never collides with immutable tags, and marking or unmarking needs no delete permission on
//! manifests. At most [`MAX_IN_USE_PER_REPOSITORY`] records per repository.
//!
//! This module must never guess what is in use (only explicit marks count), never accept a
//! name that is not a validated repository and a sha256 digest (both become path components),
//! and never decide who may mark (the server authorizes first).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::storage::{create_private_dir, validate_repository};

/// In-use records one repository may hold; more is refused, so a client cannot fill the disk.
pub const MAX_IN_USE_PER_REPOSITORY: usize = 256;

/// Why an in-use record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum InUseError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{repository} already has {max} digests marked in use; unmark some \
         (ferry-agent in-use unmark REPO@DIGEST) before marking more"
    )]
    TooMany { repository: String, max: usize },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The in-use records of one registry root.
#[derive(Debug, Clone)]
pub struct InUseRecords {
    dir: PathBuf,
}

/// The hex of a `sha256:<64 hex>` digest (the storage's one rule), or a clear refusal.
fn digest_hex(digest: &str) -> Result<&str, InUseError> {
    crate::storage::digest_hex(digest)
        .map_err(|e| InUseError::Invalid(format!("{e}; give REPO@sha256:<64 lowercase hex>")))
}

impl InUseRecords {
    /// The records under `root` (the registry's storage root).
    pub fn new(root: &Path) -> InUseRecords {
        InUseRecords {
            dir: root.join("in-use"),
        }
    }

    fn repo_dir(&self, repository: &str) -> Result<PathBuf, InUseError> {
        validate_repository(repository).map_err(|e| InUseError::Invalid(e.to_string()))?;
        Ok(self.dir.join(repository))
    }

    /// Marks `digest` in use in `repository`. Returns whether it was not marked before.
    pub fn mark(&self, repository: &str, digest: &str) -> Result<bool, InUseError> {
        let hex = digest_hex(digest)?;
        let dir = self.repo_dir(repository)?;
        let path = dir.join(hex);
        if path.is_file() {
            return Ok(false);
        }
        if self.list(repository)?.len() >= MAX_IN_USE_PER_REPOSITORY {
            return Err(InUseError::TooMany {
                repository: repository.to_string(),
                max: MAX_IN_USE_PER_REPOSITORY,
            });
        }
        create_private_dir(&dir).map_err(|source| InUseError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let file = opts.open(&path).map_err(|source| InUseError::Io {
            what: "writing",
            path: path.clone(),
            source,
        })?;
        file.sync_all().map_err(|source| InUseError::Io {
            what: "writing",
            path,
            source,
        })?;
        Ok(true)
    }

    /// Removes the mark. Returns whether there was one.
    pub fn unmark(&self, repository: &str, digest: &str) -> Result<bool, InUseError> {
        let hex = digest_hex(digest)?;
        let path = self.repo_dir(repository)?.join(hex);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(InUseError::Io {
                what: "removing",
                path,
                source,
            }),
        }
    }

    /// The digests marked in use in `repository`, sorted.
    pub fn list(&self, repository: &str) -> Result<Vec<String>, InUseError> {
        let dir = self.repo_dir(repository)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(InUseError::Io {
                    what: "listing",
                    path: dir,
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| InUseError::Io {
                what: "listing",
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let digest = format!("sha256:{name}");
            // Only files named by a digest are records; anything else is ignored.
            if entry.file_type().is_ok_and(|t| t.is_file()) && digest_hex(&digest).is_ok() {
                out.push(digest);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn marks_are_explicit_idempotent_and_per_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = InUseRecords::new(dir.path());
        assert!(r.list("installs/a/app").expect("list").is_empty());
        assert!(r.mark("installs/a/app", D2).expect("mark"));
        assert!(!r.mark("installs/a/app", D2).expect("again"));
        assert!(r.mark("installs/a/app", D1).expect("mark"));
        assert_eq!(r.list("installs/a/app").expect("list"), [D1, D2]);
        assert!(r.list("installs/b/app").expect("other").is_empty());
        assert!(r.unmark("installs/a/app", D1).expect("unmark"));
        assert!(!r.unmark("installs/a/app", D1).expect("unmark again"));
        assert_eq!(r.list("installs/a/app").expect("list"), [D2]);
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = InUseRecords::new(dir.path());
        for repo in ["../x", "installs/a/../../b", "/abs", "Upper"] {
            assert!(
                matches!(r.mark(repo, D1), Err(InUseError::Invalid(_))),
                "{repo}"
            );
        }
        for digest in ["sha256:../../x", "sha512:11", "latest", &D1.to_uppercase()] {
            let e = r.mark("installs/a/app", digest).unwrap_err();
            assert!(e.to_string().contains("sha256:<64 lowercase hex>"), "{e}");
        }
    }

    #[test]
    fn the_number_of_records_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = InUseRecords::new(dir.path());
        for i in 0..MAX_IN_USE_PER_REPOSITORY {
            r.mark("installs/a/app", &format!("sha256:{i:064x}"))
                .expect("mark");
        }
        let e = r
            .mark("installs/a/app", &format!("sha256:{:064x}", 99_999))
            .unwrap_err();
        assert!(matches!(e, InUseError::TooMany { max, .. } if max == MAX_IN_USE_PER_REPOSITORY));
        assert!(e.to_string().contains("unmark"), "{e}");
        // Re-marking an existing record is still fine at the limit.
        assert!(!r
            .mark("installs/a/app", &format!("sha256:{:064x}", 0))
            .expect("re-mark"));
    }
}
