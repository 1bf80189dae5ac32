//! The accept loop and per-connection serving: HTTP/1.1 on hyper with every connection
//! bounded in number and time, so no client can hold the registry hostage (ARCHITECTURE.md
//! invariant 11).
//!
//! - At most [`Limits::max_connections`] connections are served. When full, the connection
//!   that has been idle longest (between requests, or still sending its request head, which is
//!   what a slow-loris client does) is closed and its slot handed to the new one; if every
//!   connection is busy the new one gets a canned `503` and is closed at once. The accept loop
//!   never waits for a slot: waiting made every eviction cost a scheduler round trip, and a
//!   flood of half-open connections then queued real clients behind it.
//! - The request head must arrive within [`Limits::header_read_timeout`] (hyper's timer), and
//!   is at most [`Limits::max_header_bytes`].
//! - A connection with no request in progress is closed after [`Limits::idle_timeout`]; one
//!   whose client stops reading the response is closed after [`Limits::body_timeout`].
//! - The cap is lowered, with a warning, to what the open-file limit allows (two descriptors
//!   per connection, as a busy one may hold a blob or upload file, plus [`RESERVED_FDS`]).
//! - Running out of file descriptors (`EMFILE`/`ENFILE`) anyway never stops the server: it
//!   closes up to [`EMFILE_EVICTIONS`] idle connections, backs off (up to
//!   [`MAX_ACCEPT_BACKOFF`]) and keeps accepting.
//!
//! It must never block the accept loop on a client, and never let one connection's failure
//! end the server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::limits::Limits;

/// The first pause after `accept` fails for lack of file descriptors; doubled on each failure.
pub const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The longest pause after `accept` fails for lack of file descriptors.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Descriptors kept out of the connection budget: the listener, storage files, logs.
pub const RESERVED_FDS: u64 = 64;

/// Idle connections closed each time `accept` runs out of file descriptors.
pub const EMFILE_EVICTIONS: usize = 16;

/// After the shutdown signal, connections get this long to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections the kernel queues for `accept`. A flood of connects overflowing a short queue
/// makes every client behind it wait for a SYN retransmit (1 s); the kernel caps it at
/// `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Sent to a connection refused because every slot is busy.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 98\r\n\r\n{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"the registry is at its connection limit; retry\"}]}";

/// Serves `router` on `listener` until `signal` completes, then lets open requests finish
/// (up to [`SHUTDOWN_GRACE`]).
pub(crate) async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: Arc<Limits>,
    signal: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let tracker = Arc::new(Tracker::default());
    let slots = Arc::new(Semaphore::new(connection_cap(limits.max_connections)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        tokio::select! {
            () = &mut signal => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = MIN_ACCEPT_BACKOFF;
                    let Some(slot) = admit(&slots, &tracker) else {
                        let _ = stream.try_write(REFUSAL);
                        continue;
                    };
                    let conn = tracker.register(slot);
                    connections.spawn(serve_connection(
                        stream,
                        router.clone(),
                        limits.clone(),
                        conn,
                        stop_rx.clone(),
                        tracker.clone(),
                    ));
                }
                Err(e) if out_of_descriptors(&e) => {
                    tracing::warn!(error = %e, "out of file descriptors; closing an idle connection and backing off");
                    for _ in 0..EMFILE_EVICTIONS {
                        if tracker.evict_oldest_idle().is_none() {
                            break;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
                // ECONNABORTED and friends concern one client only.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}

/// `requested`, or less when the open-file limit cannot hold that many connections.
fn connection_cap(requested: usize) -> usize {
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(soft) = limit.current {
            let fits = usize::try_from(soft.saturating_sub(RESERVED_FDS) / 2)
                .unwrap_or(usize::MAX)
                .max(1);
            if fits < requested {
                tracing::warn!(
                    requested,
                    serving = fits,
                    open_file_limit = soft,
                    "the open-file limit cannot hold max-connections; serving fewer (raise `ulimit -n` for more)"
                );
                return fits;
            }
        }
    }
    requested
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): the process or the system is out of file descriptors.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// A free slot, or the slot of the longest-idle connection, which is told to close; `None`
/// when every connection is busy.
fn admit(slots: &Arc<Semaphore>, tracker: &Tracker) -> Option<OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) => tracker.evict_oldest_idle(),
    }
}

/// The open connections, for eviction.
struct Tracker {
    /// The one clock every connection's activity is measured on, so they compare.
    epoch: Instant,
    next_id: AtomicU64,
    connections: Mutex<std::collections::HashMap<u64, Arc<ConnState>>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<ConnState>>> {
        // A plain map; a panic elsewhere cannot leave it inconsistent.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, slot: OwnedSemaphorePermit) -> Arc<ConnState> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(id, self.epoch, slot));
        self.lock().insert(id, state.clone());
        state
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Tells the connection idle the longest (no request in progress) to close, and takes
    /// its slot; `None` if no connection is idle. The victim's socket closes as soon as its
    /// task runs, so the open connections exceed the cap only by evictions in flight.
    fn evict_oldest_idle(&self) -> Option<OwnedSemaphorePermit> {
        let connections = self.lock();
        let victim = connections
            .values()
            .filter(|c| c.busy.load(Ordering::SeqCst) == 0 && !c.evicted.load(Ordering::SeqCst))
            .min_by_key(|c| c.last_activity_ms())?;
        victim.evicted.store(true, Ordering::SeqCst);
        victim.evict.notify_one();
        let slot = victim.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        slot
    }
}

/// What the accept loop and the watchdog know about one connection.
struct ConnState {
    id: u64,
    /// The tracker's epoch (shared by every connection).
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte moved or request begun or ended.
    last_activity: AtomicU64,
    /// Requests in progress, counting a response whose body is still being sent.
    busy: AtomicUsize,
    /// A response body is being sent (the client must keep reading it).
    responding: AtomicBool,
    evicted: AtomicBool,
    evict: tokio::sync::Notify,
    /// The connection's place under the cap; taken by whoever evicts it.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl ConnState {
    fn new(id: u64, epoch: Instant, slot: OwnedSemaphorePermit) -> Self {
        let state = ConnState {
            id,
            epoch,
            last_activity: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            responding: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            slot: Mutex::new(Some(slot)),
        };
        state.touch();
        state
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    fn last_activity_ms(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    fn quiet_for(&self) -> Duration {
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_activity_ms()))
    }

    /// Should the watchdog close this connection?
    fn expired(&self, limits: &Limits) -> bool {
        let quiet = self.quiet_for();
        if self.busy.load(Ordering::SeqCst) == 0 {
            return quiet > limits.idle_timeout;
        }
        // A request still being handled is bounded by the body timeout on its reads; here
        // only a client that stopped reading its response is cut off.
        self.responding.load(Ordering::SeqCst) && quiet > limits.body_timeout
    }
}

/// Serves one connection until it ends, is evicted, goes quiet past its limits, or the
/// server shuts down (then it finishes its current request first).
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Arc<Limits>,
    state: Arc<ConnState>,
    mut stop: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
) {
    let _ = stream.set_nodelay(true);
    state.touch();
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        state: state.clone(),
    });
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        let state = service_state.clone();
        async move {
            state.busy.fetch_add(1, Ordering::SeqCst);
            state.touch();
            let guard = BusyGuard(state.clone());
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            state.responding.store(true, Ordering::SeqCst);
            state.touch();
            Ok::<_, Infallible>(response.map(|body| Body::new(GuardedBody { body, guard })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    if *stop.borrow() {
        draining = true;
        conn.as_mut().graceful_shutdown();
    }
    let check_every = (limits.idle_timeout.min(limits.body_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(check_every);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = state.evict.notified() => break,
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = watchdog.tick() => {
                if state.expired(&limits) {
                    break;
                }
            }
        }
    }
    tracker.remove(state.id);
    // Dropping the state (last Arc) gives its slot back, unless an eviction took it.
}

/// Ends a request's busy period when the response body is done (or dropped).
struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.responding.store(false, Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A response body that keeps its connection marked busy until it is sent.
struct GuardedBody {
    body: Body,
    guard: BusyGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_ready() {
            this.guard.0.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting every byte moved so the watchdog can tell a quiet connection.
struct TrackedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.touch();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
