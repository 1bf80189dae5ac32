//! `GET /token`: the distribution token endpoint. Takes HTTP Basic identity credentials and
//! `scope=repository:<name>:<actions>` parameters, answers with a short-lived signed token for
//! the intersection of what was asked and what the policy allows.
//!
//! It must never log or echo the credentials or the token it issues, and never issue a token
//! to a request whose credentials do not check out (there is no anonymous token).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use super::identity::Identity;
use super::{AccessControl, RequestedScope};
use crate::token::rfc3339;

/// Scope parameters beyond this many are refused: no legitimate client needs more.
const MAX_SCOPES: usize = 64;

/// A router with `GET /token`, to merge into the registry's router.
pub fn token_router(access: Arc<AccessControl>) -> Router {
    Router::new()
        .route("/token", get(token_handler))
        .with_state(access)
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message}]});
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn unauthorized(message: &str) -> Response {
    let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry-registry\""),
    );
    resp
}

/// `(user, secret)` from a `Basic` Authorization header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    // Basic splits at the first colon, but per-install names are `agent:<install>` and
    // `node:<install>`; install ids never contain a colon, so for them the split is at the
    // second one. Clients that split `--creds agent:a:secret` at the first colon re-join it
    // the same way on the wire.
    let prefixed = Identity::INSTALL_PREFIXES
        .iter()
        .find_map(|p| text.strip_prefix(p).map(|rest| (p.len(), rest)));
    let split_at = match prefixed {
        Some((len, rest)) => len + rest.find(':')?,
        None => text.find(':')?,
    };
    let (user, secret) = (&text[..split_at], &text[split_at + 1..]);
    Some((user.to_string(), secret.to_string()))
}

async fn token_handler(
    State(access): State<Arc<AccessControl>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let mut scopes = Vec::new();
    let mut service = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            // A scope parameter may itself hold several space-separated scopes.
            "scope" => scopes.extend(v.split_whitespace().map(str::to_string)),
            "service" => service = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(service) = service {
        if service != access.service() {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                &format!(
                    "unknown service; this registry's token endpoint serves service={}",
                    access.service()
                ),
            );
        }
    }
    if scopes.len() > MAX_SCOPES {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            &format!("too many scopes; ask for at most {MAX_SCOPES} per token"),
        );
    }
    let Some((user, secret)) = basic_credentials(&headers) else {
        return unauthorized(
            "send HTTP Basic credentials <identity>:<secret> (identity is vendor, agent:<install>, node:<install> or admin)",
        );
    };
    let Some(identity) = access.authenticate(&user, &secret) else {
        tracing::info!("token request refused: bad credentials");
        return unauthorized(
            "unknown identity or wrong secret; check the credentials configured for this registry",
        );
    };
    // Unparseable scopes are left out, like scopes the identity may not have.
    let requested: Vec<RequestedScope> = scopes
        .iter()
        .filter_map(|s| RequestedScope::parse(s))
        .collect();
    let issued = match access.issue(&identity, &requested) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "could not sign a token");
            return oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "could not sign a token; see the registry log",
            );
        }
    };
    tracing::info!(subject = %identity, jti = %issued.jti, "token issued");
    let body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_at - issued.issued_at,
        "issued_at": rfc3339(issued.issued_at),
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
