//! A fault-injecting reverse proxy in front of a registry: it streams requests and responses
//! both ways, logs every request, and on command answers the next N matching requests with an
//! error status (429, 503, with `Retry-After`) or corrupts blob bodies in flight.
//!
//! It must never buffer a body and never listen beyond 127.0.0.1.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;

use super::registry::LoggedRequest;
use super::server::BackgroundServer;

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds, if given) instead of forwarding.
    Status { code: u16, retry_after: Option<u32> },
    /// Forward, but flip the first byte of the response body.
    CorruptBody,
}

#[derive(Debug, Clone)]
struct Rule {
    method: Option<String>,
    path_contains: String,
    /// `None`: forever.
    remaining: Option<u32>,
    fault: Fault,
}

#[derive(Default)]
struct ProxyState {
    rules: Vec<Rule>,
    log: Vec<LoggedRequest>,
    faults_served: u64,
}

pub struct FaultProxy {
    state: Arc<Mutex<ProxyState>>,
    server: BackgroundServer,
}

struct Ctx {
    state: Arc<Mutex<ProxyState>>,
    upstream: String,
    client: reqwest::Client,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

impl FaultProxy {
    /// A proxy forwarding to `upstream` (`127.0.0.1:port`).
    pub fn start(upstream: &str) -> Self {
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            upstream: upstream.to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
        });
        let app = Router::new().fallback(forward).with_state(ctx);
        FaultProxy {
            state,
            server: BackgroundServer::start(app),
        }
    }

    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// Answer the next `n` requests (`None`: all) whose method is `method` (any if `None`)
    /// and whose path contains `path_contains` with `fault`.
    pub fn inject(&self, method: Option<&str>, path_contains: &str, n: Option<u32>, fault: Fault) {
        if let Ok(mut s) = self.state.lock() {
            s.rules.push(Rule {
                method: method.map(str::to_string),
                path_contains: path_contains.to_string(),
                remaining: n,
                fault,
            });
        }
    }

    pub fn clear_faults(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.rules.clear();
        }
    }

    /// How many requests were answered by a fault.
    pub fn faults_served(&self) -> u64 {
        self.state.lock().map(|s| s.faults_served).unwrap_or(0)
    }

    /// Every request seen, with the status the client got.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().map(|s| s.log.clone()).unwrap_or_default()
    }
}

fn take_fault(state: &Mutex<ProxyState>, method: &str, path: &str) -> Option<Fault> {
    let mut s = state.lock().ok()?;
    let rule = s.rules.iter_mut().find(|r| {
        r.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&r.path_contains)
            && r.remaining != Some(0)
    })?;
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
    }
    let fault = rule.fault.clone();
    if matches!(fault, Fault::Status { .. }) {
        s.faults_served += 1;
    }
    Some(fault)
}

fn log(state: &Mutex<ProxyState>, method: &str, path: &str, status: u16) {
    if let Ok(mut s) = state.lock() {
        s.log.push(LoggedRequest {
            method: method.to_string(),
            path: path.to_string(),
            status,
        });
    }
}

async fn forward(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let path = req.uri().path().to_string();
    let fault = take_fault(&ctx.state, &method, &path);
    if let Some(Fault::Status { code, retry_after }) = fault {
        log(&ctx.state, &method, &path, code);
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = (
            status,
            [("content-type", "application/json")],
            format!(r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected fault {code}"}}]}}"#),
        )
            .into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        return resp;
    }
    let corrupt = matches!(fault, Some(Fault::CorruptBody));

    let (parts, body) = req.into_parts();
    let url = format!("http://{}{}", ctx.upstream, path_q);
    let mut out = ctx.client.request(parts.method.clone(), &url);
    for (name, value) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let has_body = parts.headers.contains_key("content-length")
        || parts.headers.contains_key("transfer-encoding");
    if has_body {
        out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let upstream = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            log(&ctx.state, &method, &path, 502);
            return (
                StatusCode::BAD_GATEWAY,
                format!("proxy: upstream failed: {e}"),
            )
                .into_response();
        }
    };
    let status = upstream.status();
    log(&ctx.state, &method, &path, status.as_u16());
    let mut builder = Response::builder().status(status);
    for (name, value) in upstream.headers().iter() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let value = if name == HeaderName::from_static("location") {
            // The Host header was forwarded, but rewrite absolute upstream URLs anyway.
            match value.to_str() {
                Ok(v) => HeaderValue::from_str(&v.replace(&ctx.upstream, &host_of(&parts.headers)))
                    .unwrap_or_else(|_| value.clone()),
                Err(_) => value.clone(),
            }
        } else {
            value.clone()
        };
        builder = builder.header(name, value);
    }
    let mut flipped = !corrupt;
    let stream = upstream.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if !flipped && !chunk.is_empty() {
            flipped = true;
            let mut v = chunk.to_vec();
            v[0] ^= 0xff;
            return Ok::<Bytes, std::io::Error>(Bytes::from(v));
        }
        Ok(chunk)
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

fn host_of(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
