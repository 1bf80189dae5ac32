//! The manifest endpoints: GET/HEAD, PUT (bounded by the manifest budget) and DELETE.
//!
//! It must never buffer more manifest bytes than the budget allows, and never accept a
//! manifest whose references are missing (storage refuses it).

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use bytes::BytesMut;
use futures::StreamExt;

use crate::authz::{Action, Target};
use crate::budget::BudgetExceeded;
use crate::errors::{ErrorCode, OciError, StorageError};
use crate::storage::MAX_MANIFEST_BYTES;

use super::request::{
    blocking, header, oci, response_with, Ctx, Handled, Reject, DOCKER_CONTENT_DIGEST, OCI_SUBJECT,
};

pub(super) async fn get_manifest(ctx: &Ctx, name: &str, reference: &str, head: bool) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Manifest(reference.to_string()))
        .await?;
    let storage = ctx.app.storage.clone();
    let (repo, r) = (name.to_string(), reference.to_string());
    let manifest = blocking(move || storage.get_manifest(&repo, &r)).await?;
    let headers = vec![
        header("content-type", &manifest.media_type),
        header(DOCKER_CONTENT_DIGEST, &manifest.digest),
        header("etag", format!("\"{}\"", manifest.digest)),
        header("content-length", manifest.body.len().to_string()),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.body)
    };
    Ok(response_with(StatusCode::OK, headers, body))
}

pub(super) async fn put_manifest(ctx: &Ctx, name: &str, reference: &str, body: Body) -> Handled {
    let principal = ctx
        .authorize(name, Action::Push, Target::Manifest(reference.to_string()))
        .await?;
    let too_large = |size: usize| {
        oci(StorageError::ManifestTooLarge {
            size,
            limit: MAX_MANIFEST_BYTES,
        })
    };
    let declared = ctx
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared {
        if len > MAX_MANIFEST_BYTES {
            return Err(too_large(len).into());
        }
    }
    // Every byte buffered is first reserved from the manifest budget: the declared length up
    // front (so a stalled body cannot grow past it), else chunk by chunk.
    let mut reserved = ctx
        .app
        .manifest_budget
        .reserve(&principal.subject, declared.unwrap_or(0))
        .map_err(budget_exceeded)?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            oci(StorageError::ManifestInvalid(format!(
                "the request body failed mid-transfer: {e}"
            )))
        })?;
        let total = buf.len().saturating_add(chunk.len());
        if total > MAX_MANIFEST_BYTES {
            return Err(too_large(total).into());
        }
        if declared.is_none() {
            reserved.grow(chunk.len()).map_err(budget_exceeded)?;
        }
        buf.extend_from_slice(&chunk);
    }
    let content_type = ctx
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let storage = ctx.app.storage.clone();
    let (repo, r) = (name.to_string(), reference.to_string());
    let body = buf.freeze();
    let put =
        blocking(move || storage.put_manifest(&repo, &r, content_type.as_deref(), &body)).await?;
    // The body is stored (or refused); its bytes go back to the budget.
    drop(reserved);
    let mut headers = vec![
        header("location", format!("/v2/{name}/manifests/{}", put.digest)),
        header(DOCKER_CONTENT_DIGEST, &put.digest),
        header("content-length", "0"),
    ];
    if let Some(subject) = &put.subject {
        headers.push(header(OCI_SUBJECT, subject));
    }
    Ok(response_with(StatusCode::CREATED, headers, Body::empty()))
}

/// A manifest that does not fit the budget is refused at once with 429: waiting would let
/// stalled bodies queue up behind each other.
pub(super) fn budget_exceeded(e: BudgetExceeded) -> Reject {
    OciError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyRequests,
        e.to_string(),
    )
    .with_header(RETRY_AFTER, "1")
    .into_response()
    .into()
}

pub(super) async fn delete_manifest(ctx: &Ctx, name: &str, reference: &str) -> Handled {
    ctx.authorize(
        name,
        Action::Delete,
        Target::Manifest(reference.to_string()),
    )
    .await?;
    let storage = ctx.app.storage.clone();
    let (repo, r) = (name.to_string(), reference.to_string());
    blocking(move || storage.delete_manifest(&repo, &r)).await?;
    Ok(response_with(
        StatusCode::ACCEPTED,
        vec![header("content-length", "0")],
        Body::empty(),
    ))
}
