//! The blob endpoints: GET/HEAD with byte ranges, streamed from disk, and DELETE.
//!
//! It must never buffer a blob in memory.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::header::{CONTENT_RANGE, RANGE};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::authz::{Action, Target};
use crate::errors::{ErrorCode, OciError, StorageError};

use super::request::{blocking, header, oci, response_with, Ctx, Handled, DOCKER_CONTENT_DIGEST};

/// A parsed `Range: bytes=...` request against a blob of `size` bytes.
pub(super) enum ByteRange {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

pub(super) fn parse_range(value: Option<&str>, size: u64) -> ByteRange {
    let Some(value) = value else {
        return ByteRange::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    // Multiple ranges are not supported; serve the whole blob as RFC 9110 allows.
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        // Suffix: the last `b` bytes.
        match b.parse::<u64>() {
            Ok(0) | Err(_) => return ByteRange::Unsatisfiable,
            Ok(suffix) => (size.saturating_sub(suffix), size.saturating_sub(1)),
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return ByteRange::Full;
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(end) => end.min(size.saturating_sub(1)),
                Err(_) => return ByteRange::Full,
            }
        };
        (start, end)
    };
    if size == 0 || parsed.0 >= size || parsed.0 > parsed.1 {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Partial(parsed.0, parsed.1)
}

pub(super) async fn get_blob(ctx: &Ctx, name: &str, digest: &str, head: bool) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Blob(digest.to_string()))
        .await?;
    let (mut file, size) = ctx.app.storage.open_blob(name, digest).await.map_err(oci)?;
    let range = parse_range(ctx.headers.get(RANGE).and_then(|v| v.to_str().ok()), size);
    let mut headers = vec![
        header("content-type", "application/octet-stream"),
        header(DOCKER_CONTENT_DIGEST, digest),
        header("etag", format!("\"{digest}\"")),
        header("accept-ranges", "bytes"),
    ];
    let (status, start, len) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size),
        ByteRange::Partial(a, b) => {
            headers.push(header("content-range", format!("bytes {a}-{b}/{size}")));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        ByteRange::Unsatisfiable => {
            return Err(OciError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUnknown,
                format!("requested range is outside the blob's {size} bytes"),
            )
            .with_header(CONTENT_RANGE, format!("bytes */{size}"))
            .into_response()
            .into())
        }
    };
    headers.push(header("content-length", len.to_string()));
    if head {
        return Ok(response_with(status, headers, Body::empty()));
    }
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| {
                oci(StorageError::Io {
                    context: "seeking in a blob",
                    path: PathBuf::from(digest),
                    source: e,
                })
            })?;
    }
    let stream = ReaderStream::new(file.take(len));
    Ok(response_with(status, headers, Body::from_stream(stream)))
}

pub(super) async fn delete_blob(ctx: &Ctx, name: &str, digest: &str) -> Handled {
    ctx.authorize(name, Action::Delete, Target::Blob(digest.to_string()))
        .await?;
    let storage = ctx.app.storage.clone();
    let (repo, d) = (name.to_string(), digest.to_string());
    blocking(move || storage.delete_blob(&repo, &d)).await?;
    Ok(response_with(
        StatusCode::ACCEPTED,
        vec![header("content-length", "0")],
        Body::empty(),
    ))
}
