//! The one error type of ferry-oci.
//!
//! Every variant names what was being done (the [`Step`]), to what (a reference or digest) and,
//! for registry answers, the HTTP status, so a failure can be acted on without a debugger.
//! It must never carry a credential, token or Authorization header.

use crate::digest::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What Ferry was doing when something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Ping,
    Auth,
    GetManifest,
    HeadManifest,
    PutManifest,
    HeadBlob,
    GetBlob,
    StartUpload,
    PutBlob,
    MountBlob,
    ListTags,
    Referrers,
    ReadLayout,
    WriteLayout,
    /// Ferry's in-use marks and retention on the embedded registry.
    Retention,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Step::Ping => "ping registry",
            Step::Auth => "authenticate",
            Step::GetManifest => "get manifest",
            Step::HeadManifest => "head manifest",
            Step::PutManifest => "put manifest",
            Step::HeadBlob => "check blob",
            Step::GetBlob => "get blob",
            Step::StartUpload => "start upload",
            Step::PutBlob => "upload blob",
            Step::MountBlob => "mount blob",
            Step::ListTags => "list tags",
            Step::Referrers => "list referrers",
            Step::ReadLayout => "read OCI layout",
            Step::WriteLayout => "write OCI layout",
            Step::Retention => "apply retention",
        };
        f.write_str(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },

    /// The registry answered with an unexpected status. `message` is the OCI error body's
    /// code and message when there was one.
    #[error("{step} {target}: registry answered HTTP {status}: {message}")]
    Registry {
        step: Step,
        target: String,
        status: u16,
        message: String,
    },

    #[error("{step} {target}: {source}")]
    Transport {
        step: Step,
        target: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{step} {target}: authentication failed: {reason}")]
    Auth {
        step: Step,
        target: String,
        reason: String,
    },

    /// Content did not hash to the digest it was addressed by. Nothing was committed.
    #[error(
        "digest mismatch for {expected}: the content hashed to {actual}; nothing was committed"
    )]
    DigestMismatch { expected: Digest, actual: Digest },

    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}; nothing was committed")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    #[error("{target}: invalid manifest: {reason}")]
    InvalidManifest { target: String, reason: String },

    #[error("{target}: not found ({step})")]
    NotFound { step: Step, target: String },

    #[error("{step} {path}: {source}")]
    Io {
        step: Step,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Config(String),
}

impl Error {
    /// Whether retrying the same request may succeed (429, 5xx, connection trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { status, .. } => *status == 429 || (500..600).contains(status),
            Error::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_body()
                    || source.is_request()
            }
            _ => false,
        }
    }
}

/// A refusal from the shared vocabulary (ferry-spec) becomes the matching variant here, so
/// `?` on a digest, platform or manifest parse keeps the error this crate always gave.
impl From<ferry_spec::SpecError> for Error {
    fn from(e: ferry_spec::SpecError) -> Self {
        match e.kind {
            "digest" => Error::InvalidDigest {
                input: e.value,
                reason: e.reason,
            },
            "manifest" => Error::InvalidManifest {
                target: e.value,
                reason: e.reason,
            },
            "platform" => Error::Config(e.to_string()),
            kind => Error::InvalidReference {
                reason: format!("invalid {kind}: {}", e.reason),
                input: e.value,
            },
        }
    }
}
