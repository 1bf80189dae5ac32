//! Content digests: the one [`Digest`] type and the incremental [`DigestHasher`].
//!
//! Only `sha256:<64 lowercase hex>` is a digest here: it is what ECR, the embedded registry
//! and every artifact Ferry writes use, and syncs copy by digest, so a malformed one must be
//! refused before it reaches a registry. This module must never accept any other algorithm,
//! upper-case hex or a different length.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::SpecError;

const PREFIX: &str = "sha256:";

/// A content digest, `sha256:` and 64 lowercase hex characters. Serialises as that string;
/// deserialising validates it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Validates `s`: `sha256:` and 64 lowercase hex characters, nothing else. The error says
    /// which part is wrong.
    pub fn new(s: impl Into<String>) -> Result<Digest, SpecError> {
        let s = s.into();
        let Some(hex_part) = s.strip_prefix(PREFIX) else {
            return Err(SpecError::new(
                "digest",
                &s,
                "it must start with \"sha256:\" (Ferry copies by sha256 digest, never by tag; \
                 other algorithms are not supported)",
            ));
        };
        if hex_part.len() != 64 {
            return Err(SpecError::new(
                "digest",
                &s,
                format!(
                    "it must have 64 hex characters after \"sha256:\", found {}",
                    hex_part.len()
                ),
            ));
        }
        if !is_lower_hex(hex_part) {
            return Err(SpecError::new(
                "digest",
                &s,
                "the part after \"sha256:\" must be lowercase hex (0-9, a-f)",
            ));
        }
        Ok(Digest(s))
    }

    /// The digest of a byte slice (manifests, configs: small things; stream blobs through a
    /// [`DigestHasher`]).
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The digest as text (`sha256:<hex>`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The algorithm: always `sha256`.
    pub fn algorithm(&self) -> &str {
        "sha256"
    }
}

/// Whether `hex` is the part of a valid [`Digest`] after `sha256:` (64 lowercase hex), as blob
/// files are named on disk and in a bundle.
pub fn is_digest_hex(hex: &str) -> bool {
    hex.len() == 64 && is_lower_hex(hex)
}

/// A digest shortened for tables and pages, `sha256:` and its first 12 hex characters; any
/// other string (a tag, a shorter value) is shown whole. For people, never for lookups.
pub fn short_digest(d: &str) -> String {
    match d.strip_prefix(PREFIX) {
        Some(hex) if hex.len() > 12 && hex.is_char_boundary(12) => {
            format!("{PREFIX}{}", &hex[..12])
        }
        _ => d.to_string(),
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a valid [`Digest`].
pub fn is_digest(s: &str) -> bool {
    Digest::new(s).is_ok()
}

/// Whether a manifest reference (the `<reference>` of `/v2/<name>/manifests/<reference>`) is
/// meant as a digest rather than a tag. A tag can never contain `:`, so any `:` means a digest
/// was meant; whether it is a *valid* digest is [`Digest::new`]'s question, answered next.
pub fn is_digest_reference(reference: &str) -> bool {
    reference.contains(':')
}

impl FromStr for Digest {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        Digest::new(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        Digest::new(s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

/// Incremental sha256 over a stream, counting the bytes it saw.
#[derive(Clone, Default)]
pub struct DigestHasher {
    hasher: Sha256,
    len: u64,
}

impl DigestHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
    }

    /// How many bytes it has seen.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it has seen no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(self.hasher.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_digests_keep_the_prefix_and_twelve_characters() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&d), "sha256:abababababab");
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
        assert_eq!(short_digest("latest"), "latest");
        // Never panics on a multi-byte character at the cut.
        assert_eq!(short_digest("sha256:aéééééé"), "sha256:aéééééé");
    }

    #[test]
    fn accepts_sha256_only_and_says_why() {
        assert_eq!(Digest::new(D).expect("valid").hex().len(), 64);
        let upper = format!("sha256:{}", D["sha256:".len()..].to_uppercase());
        let err = Digest::new(upper).expect_err("upper case");
        assert!(err.to_string().contains("lowercase hex"), "{err}");
        let err = Digest::new("sha512:abc").expect_err("sha512");
        assert!(err.to_string().contains("sha256:"), "{err}");
        let err = Digest::new("sha256:abc").expect_err("short");
        assert!(err.to_string().contains("found 3"), "{err}");
        for bad in [
            "sha256:abc",
            "md5:00",
            "nocolon",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            let err = bad.parse::<Digest>().expect_err(bad).to_string();
            assert!(err.contains(bad), "error must name the input: {err}");
        }
    }

    #[test]
    fn digest_hex_is_the_part_after_the_prefix() {
        let hex = &D["sha256:".len()..];
        assert!(is_digest_hex(hex));
        assert!(
            !is_digest_hex(&hex.to_uppercase()),
            "upper-case hex is refused"
        );
        assert!(!is_digest_hex(&hex[1..]), "63 characters are refused");
        assert!(!is_digest_hex(D), "the prefix is not part of the hex");
    }

    #[test]
    fn hashing_matches_of_and_serde_validates() {
        let mut h = DigestHasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.len(), 11);
        assert_eq!(h.finish(), Digest::of(b"hello world"));
        let ok: Result<Digest, _> = serde_json::from_str(&format!("\"{D}\""));
        assert!(ok.is_ok());
        let bad: Result<Digest, _> = serde_json::from_str("\"sha256:zz\"");
        assert!(bad.is_err());
        assert!(is_digest(D) && !is_digest("latest") && !is_digest("sha256:ABC"));
        assert!(is_digest_reference("sha256:zz") && !is_digest_reference("v1.0"));
    }
}
