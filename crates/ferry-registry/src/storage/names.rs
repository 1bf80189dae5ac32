//! Name and digest rules as the registry's storage applies them: ferry-spec's rules (the one
//! definition), with refusals turned into the registry's [`StorageError`] variants (and so the
//! distribution-spec error codes). Pure functions; they must never touch the disk.

use ferry_spec::Digest;

use super::Result;
use crate::errors::StorageError;

/// Checks a repository name against the distribution-spec grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, max 255 chars.
/// This also keeps names safe as relative paths (no `..`, no leading `_`, no empty parts).
pub fn validate_repository(name: &str) -> Result<()> {
    ferry_spec::check_repository(name).map_err(|e| StorageError::NameInvalid {
        name: truncate(name, 80),
        reason: e.reason,
    })
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<()> {
    if ferry_spec::valid_tag(tag) {
        Ok(())
    } else {
        Err(StorageError::TagInvalid {
            tag: truncate(tag, 140),
        })
    }
}

/// Parses `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let parsed = Digest::new(digest).map_err(|e| StorageError::DigestInvalid {
        digest: truncate(digest, 80),
        reason: e.reason,
    })?;
    Ok(&digest[digest.len() - parsed.hex().len()..])
}

/// The `sha256:<hex>` digest of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// `s` cut to at most `max` bytes (on a character boundary), with `...` when cut: refused
/// names and tags are echoed in errors, bounded.
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules are ferry-spec's (tested there); here: each refusal is the right variant.
    #[test]
    fn refusals_map_to_registry_errors() {
        assert!(validate_repository("vendor/app").is_ok());
        assert!(matches!(
            validate_repository("../etc"),
            Err(StorageError::NameInvalid { .. })
        ));
        assert!(matches!(
            validate_tag(".hidden"),
            Err(StorageError::TagInvalid { .. })
        ));
        let d = sha256_digest(b"x");
        assert_eq!(digest_hex(&d).ok(), Some(&d[7..]));
        assert!(matches!(
            digest_hex("sha512:00"),
            Err(StorageError::DigestInvalid { .. })
        ));
        let long = "x".repeat(500);
        match validate_tag(&long) {
            Err(StorageError::TagInvalid { tag }) => assert!(tag.len() < 150),
            other => panic!("{other:?}"),
        }
    }
}
