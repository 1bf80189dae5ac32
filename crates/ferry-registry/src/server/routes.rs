//! Routing: the `/v2/` base endpoint, parsing a `/v2/<name>/...` path from the right, and
//! dispatching each route and method to its handler.
//!
//! It must never touch storage before the repository name is validated.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::authz::Authorizer;
use crate::errors::{ErrorCode, OciError};
use crate::storage::validate_repository;

use super::blobs::{delete_blob, get_blob};
use super::listings::{catalog, referrers, tags};
use super::manifests::{delete_manifest, get_manifest, put_manifest};
use super::request::{authorization, denied_response, AppState, Ctx};
use super::retention;
use super::uploads::{cancel_upload, patch_upload, put_upload, start_upload, upload_status};

pub(super) async fn api_version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

pub(super) async fn unknown_endpoint(uri: Uri) -> Response {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        format!(
            "no registry endpoint at {}; see the OCI distribution-spec for the API",
            truncate_path(uri.path())
        ),
    )
    .into_response()
}

pub(super) fn truncate_path(path: &str) -> String {
    let mut end = path.len().min(200);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}
pub(super) async fn base(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return unsupported_method(&method);
    }
    match app.authorizer.authorize_base(authorization(&headers)) {
        Ok(_) => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], "{}").into_response(),
        Err(denied) => denied_response(denied),
    }
}

pub(super) fn unsupported_method(method: &Method) -> Response {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("method {method} is not supported on this endpoint"),
    )
    .into_response()
}

/// A parsed `/v2/...` path. Names may have many components, so paths are parsed from the
/// right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Catalog,
    Tags(String),
    Manifest(String, String),
    UploadStart(String),
    Upload(String, String),
    Blob(String, String),
    Referrers(String, String),
    /// `<name>/_ferry/in-use/<digest>`: mark (PUT) or unmark (DELETE), agent only.
    InUse(String, String),
    /// `<name>/_ferry/in-use`: list the marks (GET).
    InUseList(String),
    /// `<name>/_ferry/retention?keep_last=N`: apply retention (POST), agent only.
    Retention(String),
}

pub(super) fn parse_route(rest: &str) -> Option<Route> {
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    let name = |k: usize| parts[..n - k].join("/");
    if n >= 3 && parts[n - 2] == "tags" && parts[n - 1] == "list" {
        return Some(Route::Tags(name(2)));
    }
    if n >= 3 && parts[n - 2] == "blobs" && parts[n - 1] == "uploads" {
        return Some(Route::UploadStart(name(2)));
    }
    if n >= 4 && parts[n - 3] == "blobs" && parts[n - 2] == "uploads" {
        return Some(if parts[n - 1].is_empty() {
            Route::UploadStart(name(3))
        } else {
            Route::Upload(name(3), parts[n - 1].to_string())
        });
    }
    // `_ferry` is not a valid repository component, so these never shadow a repository.
    if n >= 3 && parts[n - 2] == "_ferry" {
        match parts[n - 1] {
            "retention" => return Some(Route::Retention(name(2))),
            "in-use" => return Some(Route::InUseList(name(2))),
            _ => {}
        }
    }
    if n >= 4 && parts[n - 3] == "_ferry" && parts[n - 2] == "in-use" && !parts[n - 1].is_empty() {
        return Some(Route::InUse(name(3), parts[n - 1].to_string()));
    }
    if n >= 3 && !parts[n - 1].is_empty() {
        let last = parts[n - 1].to_string();
        match parts[n - 2] {
            "manifests" => return Some(Route::Manifest(name(2), last)),
            "blobs" => return Some(Route::Blob(name(2), last)),
            "referrers" => return Some(Route::Referrers(name(2), last)),
            _ => {}
        }
    }
    None
}

pub(super) fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}
pub(super) async fn dispatch(
    State(app): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(route) = parse_route(&rest) else {
        return OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!(
                "no registry endpoint at /v2/{}; expected /v2/<name>/(manifests|blobs|tags|referrers|_ferry)/...",
                truncate_path(&rest)
            ),
        )
        .into_response();
    };
    let name = match &route {
        Route::Catalog => None,
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Blob(n, _)
        | Route::Referrers(n, _)
        | Route::InUse(n, _)
        | Route::InUseList(n)
        | Route::Retention(n) => Some(n.as_str()),
    };
    if let Some(name) = name {
        if let Err(e) = validate_repository(name) {
            return OciError::from(e).into_response();
        }
    }
    let ctx = Ctx {
        app,
        headers,
        query: query_params(query.as_deref()),
    };
    tracing::debug!(%method, path = %truncate_path(&rest), "registry request");
    let result = match (route, &method) {
        (Route::Catalog, &Method::GET) => catalog(&ctx).await,
        (Route::Tags(name), &Method::GET) => tags(&ctx, &name).await,
        (Route::Manifest(name, reference), m) if m == Method::GET || m == Method::HEAD => {
            get_manifest(&ctx, &name, &reference, m == Method::HEAD).await
        }
        (Route::Manifest(name, reference), &Method::PUT) => {
            put_manifest(&ctx, &name, &reference, body).await
        }
        (Route::Manifest(name, reference), &Method::DELETE) => {
            delete_manifest(&ctx, &name, &reference).await
        }
        (Route::Blob(name, digest), m) if m == Method::GET || m == Method::HEAD => {
            get_blob(&ctx, &name, &digest, m == Method::HEAD).await
        }
        (Route::Blob(name, digest), &Method::DELETE) => delete_blob(&ctx, &name, &digest).await,
        (Route::UploadStart(name), &Method::POST) => start_upload(&ctx, &name, body).await,
        (Route::Upload(name, id), &Method::PATCH) => patch_upload(&ctx, &name, &id, body).await,
        (Route::Upload(name, id), &Method::PUT) => put_upload(&ctx, &name, &id, body).await,
        (Route::Upload(name, id), &Method::GET) => upload_status(&ctx, &name, &id).await,
        (Route::Upload(name, id), &Method::DELETE) => cancel_upload(&ctx, &name, &id).await,
        (Route::Referrers(name, digest), &Method::GET) => referrers(&ctx, &name, &digest).await,
        (Route::InUse(name, digest), &Method::PUT) => {
            retention::mark(&ctx, &name, &digest, true).await
        }
        (Route::InUse(name, digest), &Method::DELETE) => {
            retention::mark(&ctx, &name, &digest, false).await
        }
        (Route::InUseList(name), &Method::GET) => retention::list(&ctx, &name).await,
        (Route::Retention(name), &Method::POST) => retention::apply(&ctx, &name).await,
        _ => Ok(unsupported_method(&method)),
    };
    result.unwrap_or_else(|reject| *reject.0)
}
