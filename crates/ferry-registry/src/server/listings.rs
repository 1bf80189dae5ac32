//! The listing endpoints: catalog, tags and referrers, with `n`/`last` pagination.
//!
//! It must never answer a referrers page larger than [`MAX_REFERRERS_PAGE_BYTES`].

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;

use crate::authz::{Action, Target};
use crate::errors::{ErrorCode, OciError};
use crate::limits::MAX_REFERRERS_PAGE_BYTES;
use crate::storage::OCI_INDEX;

use super::request::{blocking, header, response_with, Ctx, Handled, Reject, OCI_FILTERS_APPLIED};

/// Parses `n` and `last` for paginated listings.
pub(super) fn page(ctx: &Ctx) -> Result<(Option<usize>, Option<String>), Reject> {
    let n = match ctx.query.get("n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("n={v:?} is not a non-negative integer"),
            )
            .into_response()
        })?),
    };
    Ok((n, ctx.query.get("last").cloned()))
}

/// Applies `last`/`n` to a sorted list; returns the page and whether more remain.
pub(super) fn paginate(
    items: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, bool) {
    let start: Vec<String> = match last {
        Some(last) => items.into_iter().filter(|i| i.as_str() > last).collect(),
        None => items,
    };
    match n {
        Some(n) if start.len() > n => (start.into_iter().take(n).collect(), n > 0),
        _ => (start, false),
    }
}

pub(super) async fn catalog(ctx: &Ctx) -> Handled {
    ctx.authorize("", Action::Pull, Target::Catalog).await?;
    let (n, last) = page(ctx)?;
    let storage = ctx.app.storage.clone();
    let all = blocking(move || storage.list_repositories()).await?;
    let all: Vec<String> = all
        .into_iter()
        .filter(|r| ctx.app.storage.in_namespace(r))
        .collect();
    let (items, more) = paginate(all, n, last.as_deref());
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if more {
        if let (Some(n), Some(last)) = (n, items.last()) {
            headers.push(header(
                "link",
                format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""),
            ));
        }
    }
    let body = serde_json::json!({ "repositories": items }).to_string();
    Ok(response_with(StatusCode::OK, headers, Body::from(body)))
}

pub(super) async fn tags(ctx: &Ctx, name: &str) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Repository)
        .await?;
    let (n, last) = page(ctx)?;
    let storage = ctx.app.storage.clone();
    let repo = name.to_string();
    let all = blocking(move || storage.list_tags(&repo)).await?;
    let (items, more) = paginate(all, n, last.as_deref());
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if more {
        if let (Some(n), Some(last)) = (n, items.last()) {
            headers.push(header(
                "link",
                format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
            ));
        }
    }
    let body = serde_json::json!({ "name": name, "tags": items }).to_string();
    Ok(response_with(StatusCode::OK, headers, Body::from(body)))
}

pub(super) async fn referrers(ctx: &Ctx, name: &str, digest: &str) -> Handled {
    ctx.authorize(name, Action::Pull, Target::Referrers(digest.to_string()))
        .await?;
    let artifact_type = ctx.query.get("artifactType").cloned();
    let last = ctx.query.get("last").cloned();
    let storage = ctx.app.storage.clone();
    let (repo, d, filter) = (name.to_string(), digest.to_string(), artifact_type.clone());
    let (manifests, more) = blocking(move || {
        storage.referrers_page(
            &repo,
            &d,
            filter.as_deref(),
            last.as_deref(),
            MAX_REFERRERS_PAGE_BYTES,
        )
    })
    .await?;
    let next = manifests
        .last()
        .and_then(|m| m.get("digest"))
        .and_then(serde_json::Value::as_str)
        .filter(|_| more)
        .map(|last| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("last", last);
            if let Some(at) = &artifact_type {
                query.append_pair("artifactType", at);
            }
            format!(
                "</v2/{name}/referrers/{digest}?{}>; rel=\"next\"",
                query.finish()
            )
        });
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    })
    .to_string();
    let mut headers = vec![header("content-type", OCI_INDEX)];
    if artifact_type.is_some() {
        headers.push(header(OCI_FILTERS_APPLIED, "artifactType"));
    }
    if let Some(next) = next {
        headers.push(header("link", next));
    }
    Ok(response_with(StatusCode::OK, headers, Body::from(body)))
}
