//! The upload endpoints: start (monolithic POST or session), PATCH chunks, PUT to commit,
//! status and cancel.
//!
//! It must never make a partial upload visible, and never buffer a blob in memory.

use axum::body::Body;
use axum::http::header::CONTENT_RANGE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::authz::{Action, Denied, Target};
use crate::errors::{ErrorCode, OciError};
use crate::storage::{digest_hex, validate_repository};

use super::request::{
    blocking, denied_response, header, oci, response_with, Ctx, Handled, Reject,
    DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID,
};

pub(super) fn upload_range(offset: u64) -> String {
    if offset == 0 {
        "0-0".to_string()
    } else {
        format!("0-{}", offset - 1)
    }
}

pub(super) fn session_response(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    response_with(
        status,
        vec![
            header("location", format!("/v2/{name}/blobs/uploads/{id}")),
            header("range", upload_range(offset)),
            header(DOCKER_UPLOAD_UUID, id),
            header("content-length", "0"),
        ],
        Body::empty(),
    )
}

pub(super) fn created_blob(name: &str, digest: &str) -> Response {
    response_with(
        StatusCode::CREATED,
        vec![
            header("location", format!("/v2/{name}/blobs/{digest}")),
            header(DOCKER_CONTENT_DIGEST, digest),
            header("content-length", "0"),
        ],
        Body::empty(),
    )
}

pub(super) async fn start_upload(ctx: &Ctx, name: &str, body: Body) -> Handled {
    let mount = match (ctx.query.get("mount"), ctx.query.get("from")) {
        (Some(digest), Some(from)) if validate_repository(from).is_ok() => Some((digest, from)),
        _ => None,
    };
    let principal = match ctx.verdict(name, Action::Push, &Target::Repository).await {
        Ok(principal) => principal,
        Err(Denied::Unauthorized {
            mut challenge,
            message,
        }) => {
            // Ask for pull on `from` in the same challenge (as the CNCF registry does), so a
            // client that follows it holds a token that can actually mount.
            if let Some((digest, from)) = mount {
                if let Err(Denied::Unauthorized { challenge: c, .. }) = ctx
                    .verdict(from, Action::Pull, &Target::Blob(digest.clone()))
                    .await
                {
                    challenge.merge_scope(&c);
                }
            }
            return Err(denied_response(Denied::Unauthorized { challenge, message }).into());
        }
        Err(denied) => return Err(denied_response(denied).into()),
    };
    // The namespace check, as every other handler gets it from `Ctx::authorize`.
    ctx.authorize_namespace(name)?;
    let storage = &ctx.app.storage;
    if let Some((digest, from)) = mount {
        digest_hex(digest).map_err(oci)?;
        // Mount only when the caller may pull the blob from `from`; otherwise fall back to a
        // normal upload session, as the spec allows.
        let may_pull = ctx
            .authorize(from, Action::Pull, Target::Blob(digest.clone()))
            .await
            .is_ok();
        if may_pull {
            let (s, repo, d, f) = (
                storage.clone(),
                name.to_string(),
                digest.clone(),
                from.clone(),
            );
            if blocking(move || s.mount_blob(&repo, &d, &f)).await? {
                return Ok(created_blob(name, digest));
            }
        }
    }
    if let Some(digest) = ctx.query.get("digest") {
        digest_hex(digest).map_err(oci)?;
        storage
            .put_blob(name, digest, body.into_data_stream())
            .await
            .map_err(oci)?;
        return Ok(created_blob(name, digest));
    }
    let id = storage
        .start_upload(name, &principal.subject)
        .await
        .map_err(oci)?;
    Ok(session_response(StatusCode::ACCEPTED, name, &id, 0))
}

/// The inclusive (start, end) from `Content-Range: <start>-<end>` (also accepts
/// `bytes <start>-<end>/*`). Only the syntax is checked here; whether the range fits the
/// session (start = offset, a length that does not overflow) is checked by storage
/// ([`crate::storage::range_len`]), which answers 416 with the session's current `Range`.
pub(super) fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, Reject> {
    let Some(value) = headers.get(CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || -> Reject {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            "Content-Range must be <start>-<end> in bytes, with end >= start",
        )
        .into_response()
        .into()
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let text = text.split('/').next().unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start = start.trim().parse::<u64>().map_err(|_| invalid())?;
    let end = end.trim().parse::<u64>().map_err(|_| invalid())?;
    Ok(Some((start, end)))
}

pub(super) async fn patch_upload(ctx: &Ctx, name: &str, id: &str, body: Body) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    let range = content_range(&ctx.headers)?;
    let status = ctx
        .app
        .storage
        .append_upload(name, id, range, body.into_data_stream())
        .await
        .map_err(oci)?;
    Ok(session_response(
        StatusCode::ACCEPTED,
        name,
        id,
        status.offset,
    ))
}

pub(super) async fn put_upload(ctx: &Ctx, name: &str, id: &str, body: Body) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    let Some(digest) = ctx.query.get("digest") else {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to finish an upload: PUT ...?digest=sha256:<hex>",
        )
        .into_response().into());
    };
    ctx.app
        .storage
        .finish_upload(name, id, digest, body.into_data_stream())
        .await
        .map_err(oci)?;
    Ok(created_blob(name, digest))
}

pub(super) async fn upload_status(ctx: &Ctx, name: &str, id: &str) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    let status = ctx.app.storage.upload_status(name, id).await.map_err(oci)?;
    Ok(session_response(
        StatusCode::NO_CONTENT,
        name,
        id,
        status.offset,
    ))
}

pub(super) async fn cancel_upload(ctx: &Ctx, name: &str, id: &str) -> Handled {
    ctx.authorize(name, Action::Push, Target::Repository)
        .await?;
    ctx.app.storage.cancel_upload(name, id).await.map_err(oci)?;
    Ok(response_with(
        StatusCode::NO_CONTENT,
        vec![header("content-length", "0")],
        Body::empty(),
    ))
}
