//! OCI error bodies (`{"errors":[{"code","message","detail"}]}`) and the storage error type.
//!
//! Every refusal the server sends goes through [`OciError`], so clients always get a
//! distribution-spec error code and a message saying what was wrong and what to do. Messages
//! must never contain a credential.

use std::path::PathBuf;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Distribution-spec error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    TagInvalid,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::TagInvalid => "TAG_INVALID",
        }
    }
}

/// One OCI error response: status, code, message, optional detail and extra headers.
#[derive(Debug, Clone)]
pub struct OciError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<Value>,
    pub headers: Vec<(HeaderName, String)>,
}

impl OciError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut entry = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(detail) = &self.detail {
            entry["detail"] = detail.clone();
        }
        json!({ "errors": [entry] })
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            // A header value we built ourselves could only fail on control characters; drop it
            // rather than fail the whole error response.
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// What can go wrong in [`crate::storage::Storage`].
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O failed while {context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid repository name {name:?}: {reason}")]
    NameInvalid { name: String, reason: String },
    #[error("repository {0:?} is not known to this registry")]
    NameUnknown(String),
    #[error("invalid tag {tag:?}: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    TagInvalid { tag: String },
    #[error("invalid digest {digest:?}: {reason}")]
    DigestInvalid { digest: String, reason: String },
    #[error("content does not match digest: client said {expected}, content hashes to {actual}; re-send the exact bytes")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {0} is not in this repository; upload it (or mount it) first")]
    BlobUnknown(String),
    #[error("manifest {reference} is not in repository {repository}")]
    ManifestUnknown {
        repository: String,
        reference: String,
    },
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest references {digest}, which is not in repository {repository}; push every blob and child manifest before the manifest")]
    ManifestBlobUnknown { repository: String, digest: String },
    #[error("manifest body is {size} bytes or more; the limit is {limit} bytes")]
    ManifestTooLarge { size: usize, limit: usize },
    #[error("tag {tag} in {repository} is immutable and already points at {existing}; push under a new tag or by digest")]
    TagImmutable {
        repository: String,
        tag: String,
        existing: String,
    },
    #[error("upload session {0} is unknown (finished, cancelled, or lost on restart); start a new upload")]
    UploadUnknown(String),
    #[error("chunk starts at byte {got} but the upload is at byte {expected}; resume from byte {expected}")]
    UploadOutOfOrder { expected: u64, got: u64 },
    #[error("upload is invalid: {0}")]
    UploadInvalid(String),
    #[error("Content-Range must be <start>-<end> in bytes with end >= start and a length that fits in 64 bits; the upload is at byte {expected}, resume from there")]
    RangeInvalid { expected: u64 },
    #[error("{owner} already holds {limit} open upload sessions, the most one identity may; finish or cancel (DELETE) one, or retry after {retry_after_secs} s when idle ones have expired")]
    TooManyUploads {
        owner: String,
        limit: usize,
        retry_after_secs: u64,
    },
    #[error("request body failed mid-transfer: {0}")]
    BodyInterrupted(String),
    #[error("corrupt metadata at {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl StorageError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

impl From<StorageError> for OciError {
    fn from(err: StorageError) -> Self {
        let message = err.to_string();
        let (status, code) = match &err {
            StorageError::Io { .. } | StorageError::Corrupt { .. } => {
                // Internal detail (paths) is logged, not sent.
                tracing::error!(error = %err, "registry storage failure");
                return OciError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unsupported,
                    "internal storage error; retry, and check the registry's log if it persists",
                );
            }
            StorageError::NameInvalid { .. } => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            StorageError::NameUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            StorageError::TagInvalid { .. } => (StatusCode::BAD_REQUEST, ErrorCode::TagInvalid),
            StorageError::DigestInvalid { .. } | StorageError::DigestMismatch { .. } => {
                (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
            }
            StorageError::BlobUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown),
            StorageError::ManifestUnknown { .. } => {
                (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
            }
            StorageError::ManifestInvalid(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid)
            }
            StorageError::ManifestBlobUnknown { digest, .. } => {
                return OciError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestBlobUnknown,
                    message,
                )
                .with_detail(json!({ "digest": digest }));
            }
            StorageError::ManifestTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
            }
            StorageError::TagImmutable { .. } => (StatusCode::CONFLICT, ErrorCode::TagInvalid),
            StorageError::UploadUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
            StorageError::TooManyUploads {
                retry_after_secs, ..
            } => {
                return OciError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::TooManyRequests,
                    message,
                )
                .with_header(
                    axum::http::header::RETRY_AFTER,
                    retry_after_secs.to_string(),
                );
            }
            StorageError::UploadOutOfOrder { expected, .. }
            | StorageError::RangeInvalid { expected } => {
                let range = if *expected == 0 {
                    "0-0".to_string()
                } else {
                    format!("0-{}", expected - 1)
                };
                return OciError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::BlobUploadInvalid,
                    message,
                )
                .with_header(axum::http::header::RANGE, range);
            }
            StorageError::UploadInvalid(_) | StorageError::BodyInterrupted(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid)
            }
        };
        OciError::new(status, code, message)
    }
}
