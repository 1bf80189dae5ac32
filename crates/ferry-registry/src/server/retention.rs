//! Ferry's retention endpoints on an install repository, called by the install's agent:
//!
//! - `PUT|DELETE /v2/<name>/_ferry/in-use/<digest>`: mark or unmark a manifest in use
//!   (`ferry-agent in-use mark|unmark`); the manifest must be in the repository to be marked.
//! - `GET /v2/<name>/_ferry/in-use`: the marks, `{"repository", "in_use": [...]}`.
//! - `POST /v2/<name>/_ferry/retention?keep_last=N`: keep the N most recently written tags,
//!   every digest marked in use, everything those reference and their referrers; remove other
//!   tags, unlink other manifests, then collect unreferenced blobs older than the registry's
//!   retention grace. Answers what it did as JSON. A second run with nothing new changes
//!   nothing.
//!
//! Only an agent may call them: the caller needs push on the repository (which only
//! `agent:<install>` has in `installs/<install>/`) and must be an `agent:` identity (the vendor
//! and the admin may push in the vendor namespace but never run retention). With auth off (no
//! authorizer) everything is allowed, as for the rest of the registry. These handlers must
//! never delete a digest marked in use, and never run while a mark is being written.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::request::{blocking, header, response_with, Ctx, Handled};
use crate::access::{Action, Target};
use crate::errors::{ErrorCode, OciError};
use crate::in_use::InUseError;

/// The largest `keep_last` accepted: far beyond any real window, small enough to mean a typo.
pub const MAX_KEEP_LAST: usize = 10_000;

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    response_with(
        status,
        vec![header("content-type", "application/json")],
        Body::from(value.to_string()),
    )
}

fn in_use_error(e: InUseError) -> Response {
    let (status, code) = match &e {
        InUseError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
        InUseError::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests),
        InUseError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported),
    };
    OciError::new(status, code, e.to_string()).into_response()
}

/// Push on the repository as an agent: only an install's agent gets through. (`anonymous`
/// gets push only from an authorizer that allows everything, i.e. auth off.)
async fn authorize_agent(ctx: &Ctx, name: &str) -> Result<(), super::request::Reject> {
    let principal = ctx
        .authorize(name, Action::Push, Target::Repository)
        .await?;
    let agent = principal.subject.starts_with("agent:") || principal.subject == "anonymous";
    if !agent {
        return Err(OciError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            format!(
                "{} may not run retention on {name}: retention is run by the install's agent on its own repositories",
                principal.subject
            ),
        )
        .into_response()
        .into());
    }
    Ok(())
}

/// `PUT` (mark) or `DELETE` (unmark) `/v2/<name>/_ferry/in-use/<digest>`.
pub(super) async fn mark(ctx: &Ctx, name: &str, digest: &str, mark: bool) -> Handled {
    authorize_agent(ctx, name).await?;
    // A digest, not a tag: a mark names exactly one manifest, whatever tags do later.
    if let Err(e) = crate::storage::digest_hex(digest) {
        return Err(in_use_error(InUseError::Invalid(format!(
            "{e}; mark REPO@sha256:<64 lowercase hex>"
        )))
        .into());
    }
    let _held = ctx.app.retention_lock.lock().await;
    if mark {
        // Only what the repository holds can be in use here; anything else is a typo.
        let storage = ctx.app.storage.clone();
        let (repo, d) = (name.to_string(), digest.to_string());
        blocking(move || storage.get_manifest(&repo, &d).map(|_| ())).await?;
    }
    let records = ctx.app.in_use.clone();
    let (repo, d) = (name.to_string(), digest.to_string());
    let changed = tokio::task::spawn_blocking(move || {
        if mark {
            records.mark(&repo, &d)
        } else {
            records.unmark(&repo, &d)
        }
    })
    .await
    .map_err(|_| {
        OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unsupported,
            "internal error while writing the in-use record; retry",
        )
        .into_response()
    })?
    .map_err(in_use_error)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "repository": name,
            "digest": digest,
            "in_use": mark,
            "changed": changed,
        }),
    ))
}

/// `GET /v2/<name>/_ferry/in-use`: readable by whoever may pull the repository.
pub(super) async fn list(ctx: &Ctx, name: &str) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Repository)
        .await?;
    let marks = ctx.app.in_use.list(name).map_err(in_use_error)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "repository": name, "in_use": marks }),
    ))
}

/// `POST /v2/<name>/_ferry/retention?keep_last=N`.
pub(super) async fn apply(ctx: &Ctx, name: &str) -> Handled {
    authorize_agent(ctx, name).await?;
    let keep_last = match ctx.query.get("keep_last").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if (1..=MAX_KEEP_LAST).contains(&n) => n,
        other => {
            let given = match other {
                None => "nothing".to_string(),
                Some(_) => format!(
                    "{:?}",
                    ctx.query.get("keep_last").cloned().unwrap_or_default()
                ),
            };
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!(
                    "keep_last must be a whole number from 1 to {MAX_KEEP_LAST} (got {given}); \
                     e.g. POST /v2/{name}/_ferry/retention?keep_last=20"
                ),
            )
            .into_response()
            .into());
        }
    };
    let _held = ctx.app.retention_lock.lock().await;
    let in_use = ctx.app.in_use.list(name).map_err(in_use_error)?;
    let storage = ctx.app.storage.clone();
    let grace = ctx.app.retention_grace;
    let repo = name.to_string();
    let marked = in_use.clone();
    let report = blocking(move || storage.retain(&repo, keep_last, &marked, grace)).await?;
    tracing::info!(
        repository = name,
        keep_last,
        in_use = in_use.len(),
        tags_removed = report.tags_removed.len(),
        manifests_unlinked = report.manifests_unlinked.len(),
        blobs_removed = report.gc.blobs_removed,
        "retention applied"
    );
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "repository": name,
            "keep_last": keep_last,
            "in_use": in_use,
            "tags_kept": report.tags_kept,
            "tags_removed": report.tags_removed,
            "manifests_unlinked": report.manifests_unlinked,
            "blobs_removed": report.gc.blobs_removed,
            "bytes_freed": report.gc.bytes_freed,
        }),
    ))
}
