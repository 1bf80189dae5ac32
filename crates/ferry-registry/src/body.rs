//! Request bodies under the registry's limits: a body that stalls longer than
//! [`Limits::body_timeout`] fails, and a body a handler refused without reading is drained (up
//! to [`Limits::drain_bytes`]) so the client can reuse its connection, or else the response
//! says `Connection: close`.
//!
//! Without the drain, a 401/404/416 sent before the body was read left the body on the wire
//! and hyper closed the connection without warning; a client reusing it got EOF on its next
//! request. This layer must never read an unbounded body, never wait on a client longer than
//! the limits allow, and never change a response other than adding `Connection: close`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, EXPECT};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::limits::{Limits, DRAIN_TIME};

/// Why a request body failed: the client stopped sending it.
#[derive(Debug, thiserror::Error)]
#[error("no request body byte arrived for {} s; send the body without pausing", .0.as_secs())]
pub struct BodyTimeout(pub Duration);

/// A body whose every frame must arrive within `timeout` of the previous one (or of the
/// first poll).
struct TimedBody {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    finished: bool,
    failed: bool,
}

impl TimedBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            sleep: None,
            armed: false,
            finished: false,
            failed: false,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.finished || this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                let fresh = this.sleep.is_none();
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                // The clock restarts after every frame, not at every poll.
                if !fresh && !this.armed {
                    sleep.as_mut().reset(deadline);
                }
                this.armed = true;
                if sleep.as_mut().poll(cx).is_ready() {
                    this.failed = true;
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || (!self.failed && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The handler's view of the body. The body itself stays in the shared slot, so whatever the
/// handler did not read is still there for [`guard_request_body`] to drain.
struct SharedBody(Arc<Mutex<Option<TimedBody>>>);

impl SharedBody {
    fn with<T>(&self, f: impl FnOnce(&mut Option<TimedBody>) -> T) -> T {
        // Only ever locked for one poll; a panic mid-poll leaves nothing half-done.
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.with(|body| match body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.with(|body| body.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        self.with(|body| body.as_ref().map(|b| b.size_hint()).unwrap_or_default())
    }
}

/// The middleware: applies the body timeout, and after the handler drains what it left
/// unread (or marks the response `Connection: close`).
pub(crate) async fn guard_request_body(
    State(limits): State<Arc<Limits>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // A client waiting for `100 Continue` has not sent its body; draining would invite it.
    let expects_continue = parts
        .headers
        .get(EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let slot = Arc::new(Mutex::new(Some(TimedBody::new(body, limits.body_timeout))));
    let request = Request::from_parts(parts, Body::new(SharedBody(slot.clone())));
    let mut response = next.run(request).await;
    let leftover = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rest) = leftover {
        if !rest.is_end_stream() {
            let drained = !expects_continue && drain(rest, limits.drain_bytes).await;
            if !drained {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
    }
    response
}

/// Reads and discards the rest of `body`: `true` when it ended within `max_bytes` and
/// [`DRAIN_TIME`], so the connection can carry the next request.
async fn drain(mut body: TimedBody, max_bytes: u64) -> bool {
    if body.failed || body.size_hint().lower() > max_bytes {
        return false;
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut read = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len() as u64);
                    if read > max_bytes {
                        return false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}
