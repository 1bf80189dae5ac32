//! The one error type of ferry-spec.
//!
//! A [`SpecError`] says what kind of value was refused, echoes a bounded prefix of it, and
//! says why and what form was expected. It must never echo more than [`MAX_ECHO`] characters
//! of the input: values come from untrusted requests and end up in logs.

/// How many characters of a refused value an error echoes.
pub const MAX_ECHO: usize = 80;

/// Why a string was refused as a digest, a name, a tag, a platform or a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct SpecError {
    /// What the value was meant to be (`"digest"`, `"repository"`, `"tag"`, `"manifest"`, ...).
    pub kind: &'static str,
    /// The refused value, cut to [`MAX_ECHO`] characters.
    pub value: String,
    /// What is wrong with it and what form is expected.
    pub reason: String,
}

impl SpecError {
    /// A refusal of `value` as a `kind`, for `reason`. Cuts the echoed value.
    pub fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        SpecError {
            kind,
            value: value.chars().take(MAX_ECHO).collect(),
            reason: reason.into(),
        }
    }
}
