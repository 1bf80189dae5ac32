//! Validated identifiers: names, job ids, repositories and digests.
//!
//! Every value that crosses a trust boundary (an event, a store item, a queue message) is one of
//! these newtypes, so a malformed id is rejected once, at parse time, with a message that says
//! what is wrong. This module must never accept a digest that is not `sha256:<64 lowercase hex>`:
//! syncs copy by digest, and a bad one must not reach a registry.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub reason: String,
}

impl IdError {
    fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        // Cap the echoed value: ids come from untrusted input and end up in logs.
        let value: String = value.chars().take(80).collect();
        IdError {
            kind,
            value,
            reason: reason.into(),
        }
    }
}

const MAX_ID_LEN: usize = 128;

fn check_id(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::new(kind, s, "it is empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::new(
            kind,
            s,
            format!("it is longer than {MAX_ID_LEN} characters"),
        ));
    }
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Err(IdError::new(
            kind,
            s,
            "it must start with a letter or a digit",
        ));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(IdError::new(
            kind,
            s,
            format!("character {bad:?} is not allowed; use letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this id is called in error messages.
            pub const KIND: &'static str = $kind;

            /// Validates `s` against this id's grammar.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id($kind, &s)?;
                Ok($name(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A vendor product.
    AppName,
    "app name"
);
id_type!(
    /// One component of an app, unique within the app.
    ComponentName,
    "component name"
);
id_type!(
    /// One build attempt.
    BuildId,
    "build id"
);
id_type!(
    /// One customer deployment of an app.
    InstallId,
    "install id"
);
id_type!(
    /// One sync job: one digest into one install.
    SyncId,
    "sync id"
);
id_type!(
    /// One release: builds rolled out to a target set of installs in steps.
    ReleaseId,
    "release id"
);
id_type!(
    /// The producer's id of an event; replays carry the same id.
    EventId,
    "event id"
);
id_type!(
    /// A queue, as named in the backend (an SQS queue name, a SQLite queue row).
    QueueName,
    "queue name"
);

/// Short stable hash used to derive ids, so a replayed event derives the same id.
fn derive_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length prefix: ("ab","c") and ("a","bc") must not collide.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

impl BuildId {
    /// The build id for a request that did not name one, derived from the request's identity.
    pub fn derived_from(idempotency_key: &str) -> BuildId {
        BuildId(format!("b-{}", derive_hex(&["build", idempotency_key])))
    }
}

impl SyncId {
    /// Wraps an id derived by [`crate::trust::VendorKey::sync_id`] (`s-` + 32 hex characters,
    /// always valid).
    pub(crate) fn from_derived(id: String) -> SyncId {
        SyncId(id)
    }
}

/// A content digest. Only sha256 is accepted: it is what ECR and the embedded registry use.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Validates `s`: `sha256:` and 64 lowercase hex characters, nothing else.
    pub fn new(s: impl Into<String>) -> Result<Digest, IdError> {
        let s = s.into();
        let Some(hex_part) = s.strip_prefix("sha256:") else {
            return Err(IdError::new(
                "digest",
                &s,
                "it must start with \"sha256:\" (Ferry copies by sha256 digest, never by tag)",
            ));
        };
        if hex_part.len() != 64 {
            return Err(IdError::new(
                "digest",
                &s,
                format!(
                    "it must have 64 hex characters after \"sha256:\", found {}",
                    hex_part.len()
                ),
            ));
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdError::new(
                "digest",
                &s,
                "the part after \"sha256:\" must be lowercase hex (0-9, a-f)",
            ));
        }
        Ok(Digest(s))
    }

    /// The digest as text (`sha256:<hex>`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl TryFrom<String> for Digest {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Digest::new(s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
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

/// An OCI repository name (path within a registry), per the distribution-spec grammar:
/// lowercase components of `[a-z0-9]` joined by `.`, `_`, `__` or dashes, separated by `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Repository(String);

impl Repository {
    /// Validates `s` against the OCI repository name grammar.
    pub fn new(s: impl Into<String>) -> Result<Repository, IdError> {
        let s = s.into();
        if s.is_empty() || s.len() > 255 {
            return Err(IdError::new(
                "repository",
                &s,
                "it must have 1 to 255 characters",
            ));
        }
        for part in s.split('/') {
            check_repo_component(&s, part)?;
        }
        Ok(Repository(s))
    }

    /// The repository name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_repo_component(whole: &str, part: &str) -> Result<(), IdError> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = part.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(IdError::new(
            "repository",
            whole,
            "it has an empty path component (leading, trailing or doubled '/')",
        ));
    };
    if !alnum(first) || !alnum(last) {
        return Err(IdError::new(
            "repository",
            whole,
            format!("path component {part:?} must start and end with a lowercase letter or digit"),
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-"; it must be followed by alnum.
        let run_end = bytes[i..]
            .iter()
            .position(|c| alnum(*c))
            .map_or(bytes.len(), |p| i + p);
        let sep = &part[i..run_end];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return Err(IdError::new(
                "repository",
                whole,
                format!(
                    "separator {sep:?} in {part:?} is not allowed; use lowercase letters, digits, \
                     '.', '_', '__' or '-'"
                ),
            ));
        }
        i = run_end;
    }
    Ok(())
}

impl TryFrom<String> for Repository {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Repository::new(s)
    }
}

impl From<Repository> for String {
    fn from(r: Repository) -> String {
        r.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repository({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_accepts_sha256_only() {
        assert_eq!(Digest::new(D).unwrap().hex().len(), 64);
        let upper = format!("sha256:{}", D["sha256:".len()..].to_uppercase());
        let err = Digest::new(upper).unwrap_err();
        assert!(err.to_string().contains("lowercase hex"), "{err}");
        let err = Digest::new("sha512:abc").unwrap_err();
        assert!(err.to_string().contains("sha256:"), "{err}");
        let err = Digest::new("sha256:abc").unwrap_err();
        assert!(err.to_string().contains("found 3"), "{err}");
    }

    #[test]
    fn ids_reject_bad_characters_and_lengths() {
        assert!(BuildId::new("b-1.x_y").is_ok());
        assert!(BuildId::new("").is_err());
        assert!(BuildId::new("-x").is_err());
        assert!(BuildId::new("a/b").unwrap_err().to_string().contains("'/'"));
        assert!(BuildId::new("a".repeat(129)).is_err());
    }

    #[test]
    fn repository_grammar() {
        for ok in ["shop/web", "a", "a.b/c__d/e--f", "team-1/app_x"] {
            assert!(Repository::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Shop/web", "a//b", "/a", "a/", "a___b", "a.-b", "-a"] {
            assert!(Repository::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(BuildId::derived_from("k"), BuildId::derived_from("k"));
        assert_ne!(BuildId::derived_from("k"), BuildId::derived_from("k2"));
    }

    #[test]
    fn serde_validates() {
        let ok: Result<Digest, _> = serde_json::from_str(&format!("\"{D}\""));
        assert!(ok.is_ok());
        let bad: Result<Digest, _> = serde_json::from_str("\"sha256:zz\"");
        assert!(bad.is_err());
    }
}
