//! Small-file helpers: JSON metadata reads, hex-named directory listings, private file and
//! directory modes, mtime refresh and parent-directory fsync. It must never create a file or
//! directory readable by anyone but the registry's user.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;

use super::Result;
use crate::errors::StorageError;

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| StorageError::io("reading metadata", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(super) fn list_hex_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing a directory", dir, e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| ferry_spec::is_digest_hex(n))
        .collect())
}

/// Options that create a file readable and writable by the registry's user only.
pub(super) fn private_file_options() -> fs::OpenOptions {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts
}

/// Creates `path` and its missing parents with mode 0700 (registry state is for the registry's
/// user only). The one way every part of the registry creates a directory.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// [`create_private_dir`] with a storage error.
pub(super) fn create_storage_dir(path: &Path) -> Result<()> {
    create_private_dir(path).map_err(|e| StorageError::io("creating a directory", path, e))
}

/// Sets an existing directory's mode to 0700.
pub(super) fn set_private_dir_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| StorageError::io("making the storage root private", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Refreshes a file's mtime (GC grace starts again). Best effort.
pub(super) fn touch(path: &Path) {
    if let Ok(file) = fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// fsyncs a file's directory so the rename itself survives a crash. Best effort.
pub(super) fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}
