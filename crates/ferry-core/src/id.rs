//! Validated identifiers: names, job ids, repositories and digests.
//!
//! Every value that crosses a trust boundary (an event, a store item, a queue message) is one of
//! these newtypes, so a malformed id is rejected once, at parse time, with a message that says
//! what is wrong. [`Digest`] and [`Repository`] (and the error, [`IdError`]) are the OCI
//! vocabulary's, defined once in `ferry-spec` and re-exported here; this module must never
//! define a second digest or repository rule.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why a string was refused as an identifier (ferry-spec's error, under its old name here).
pub use ferry_spec::SpecError as IdError;
/// A content digest and a repository name: defined once in ferry-spec.
pub use ferry_spec::{Digest, Repository};

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

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ids_reject_bad_characters_and_lengths() {
        assert!(BuildId::new("b-1.x_y").is_ok());
        assert!(BuildId::new("").is_err());
        assert!(BuildId::new("-x").is_err());
        assert!(BuildId::new("a/b").unwrap_err().to_string().contains("'/'"));
        assert!(BuildId::new("a".repeat(129)).is_err());
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
