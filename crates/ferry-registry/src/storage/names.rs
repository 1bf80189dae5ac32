//! Name and digest rules: repository names, tags and sha256 digests as the registry accepts
//! them. Pure functions; they must never touch the disk.

use sha2::{Digest as _, Sha256};

use super::Result;
use crate::errors::StorageError;

const MAX_NAME_LEN: usize = 255;

/// Checks a repository name against the distribution-spec grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, max 255 chars.
/// This also keeps names safe as relative paths (no `..`, no leading `_`, no empty parts).
pub fn validate_repository(name: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(StorageError::NameInvalid {
            name: truncate(name, 80),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("names are at most 255 characters");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return invalid("a path component is empty (leading, trailing or double '/')");
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return invalid("each component must start and end with a lowercase letter or digit");
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric.
            let start = i;
            match b {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if i < bytes.len() && bytes[i] == b'_' {
                        i += 1;
                    }
                }
                b'-' => {
                    while i < bytes.len() && bytes[i] == b'-' {
                        i += 1;
                    }
                }
                _ => {
                    return invalid(
                        "only lowercase letters, digits, '.', '_', '__', '-' and '/' are allowed",
                    )
                }
            }
            if i >= bytes.len() || !alnum(bytes[i]) || i == start {
                return invalid(
                    "separators ('.', '_', '__', '-') must sit between letters or digits",
                );
            }
        }
    }
    Ok(())
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::TagInvalid {
            tag: truncate(tag, 140),
        })
    }
}

/// Parses `sha256:<64 lowercase hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    let invalid = |reason: &str| {
        Err(StorageError::DigestInvalid {
            digest: truncate(digest, 80),
            reason: reason.to_string(),
        })
    };
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return invalid("expected <algorithm>:<hex>, e.g. sha256:<64 hex digits>");
    };
    if algorithm != "sha256" {
        return invalid("only sha256 digests are supported");
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return invalid("a sha256 digest has exactly 64 lowercase hex digits");
    }
    Ok(hex)
}

/// Is this reference a digest (as opposed to a tag)?
pub fn is_digest(reference: &str) -> bool {
    reference.contains(':')
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

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

    #[test]
    fn repository_names() {
        for ok in ["vendor/app", "installs/acme/app/web", "a", "a.b_c__d--e/f0"] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(300);
        for bad in [
            "",
            "../etc",
            "Upper",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "_a",
            "a-",
            "a/..",
            long.as_str(),
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_and_tags() {
        let d = sha256_digest(b"x");
        assert!(digest_hex(&d).is_ok());
        assert!(digest_hex("sha256:ABC").is_err());
        assert!(digest_hex("sha512:00").is_err());
        assert!(validate_tag("v1.0_rc-1").is_ok());
        assert!(validate_tag(".hidden").is_err());
        assert!(validate_tag("a/b").is_err());
    }
}
