//! What every handler shares: the application state, the per-request context (authorization
//! and the namespace check), refusals, response building and blocking storage calls.
//!
//! It must never echo or log an `Authorization` header, and never run storage or a graph walk
//! on an async worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::authz::{Action, Authorizer, Denied, Principal, Target};
use crate::budget::ManifestBudget;
use crate::errors::{ErrorCode, OciError, StorageError};
use crate::in_use::InUseRecords;
use crate::storage::Storage;

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) storage: Storage,
    pub(super) authorizer: Arc<dyn Authorizer>,
    /// Bytes of manifest bodies buffered ([`Limits::manifest_memory_bytes`]).
    pub(super) manifest_budget: Arc<ManifestBudget>,
    /// Deployers' in-use marks, kept by retention.
    pub(super) in_use: InUseRecords,
    /// Held by retention and by marking, so a mark is never missed by a retention in progress.
    pub(super) retention_lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) retention_grace: Duration,
}

pub(super) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
pub(super) const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";
pub(super) const OCI_SUBJECT: &str = "oci-subject";
pub(super) const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
pub(super) fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
}

pub(super) fn denied_response(denied: Denied) -> Response {
    match denied {
        Denied::Unauthorized { challenge, message } => {
            OciError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
                .with_header(WWW_AUTHENTICATE, challenge.header_value())
                .into_response()
        }
        Denied::Forbidden { message } => {
            OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message).into_response()
        }
        Denied::TooManyRequests {
            retry_after_secs,
            message,
        } => OciError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            message,
        )
        .with_header(RETRY_AFTER, retry_after_secs.to_string())
        .into_response(),
    }
}

/// Per-request context after routing and validation.
pub(super) struct Ctx {
    pub(super) app: AppState,
    pub(super) headers: HeaderMap,
    pub(super) query: HashMap<String, String>,
}

impl Ctx {
    /// The authorizer's verdict. It runs on a blocking thread: for a grant it may walk the
    /// manifest graph on disk (cached per grant, but the first request walks).
    pub(super) async fn verdict(
        &self,
        repository: &str,
        action: Action,
        target: &Target,
    ) -> Result<Principal, Denied> {
        let authorizer = self.app.authorizer.clone();
        let storage = self.app.storage.clone();
        let header = authorization(&self.headers).map(str::to_string);
        let (repository, target) = (repository.to_string(), target.clone());
        tokio::task::spawn_blocking(move || {
            authorizer.authorize(header.as_deref(), &repository, action, &target, &storage)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Denied::Forbidden {
                message: "internal error while checking access; retry".to_string(),
            })
        })
    }

    /// Authorizes, then checks the namespace. Returns the refusal response on failure.
    pub(super) async fn authorize(
        &self,
        repository: &str,
        action: Action,
        target: Target,
    ) -> Result<Principal, Reject> {
        let principal = self
            .verdict(repository, action, &target)
            .await
            .map_err(denied_response)?;
        if target != Target::Catalog {
            self.authorize_namespace(repository)?;
        }
        Ok(principal)
    }

    /// After authorization: a repository outside every namespace is `NAME_UNKNOWN`.
    pub(super) fn authorize_namespace(&self, repository: &str) -> Result<(), Reject> {
        if !self.app.storage.in_namespace(repository) {
            return Err(OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                format!(
                    "repository {repository} is outside every namespace this registry serves; use vendor/... or installs/<install>/..."
                ),
            )
            .into_response().into());
        }
        Ok(())
    }
}
/// A refusal on its way out; boxed because a `Response` is large.
pub(super) struct Reject(pub(super) Box<Response>);

impl From<Response> for Reject {
    fn from(response: Response) -> Self {
        Reject(Box::new(response))
    }
}

pub(super) type Handled = Result<Response, Reject>;

pub(super) fn oci(err: StorageError) -> Response {
    OciError::from(err).into_response()
}

/// Runs blocking storage work off the async threads.
pub(super) async fn blocking<T, F>(f: F) -> Result<T, Reject>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| oci(e).into()),
        Err(_) => Err(OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unsupported,
            "internal error while handling the request; retry",
        )
        .into_response()
        .into()),
    }
}

pub(super) fn header(name: &'static str, value: impl AsRef<str>) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value.as_ref()).unwrap_or_else(|_| HeaderValue::from_static("")),
    )
}

pub(super) fn response_with(
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}
