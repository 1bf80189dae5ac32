//! Every bound the registry puts on what one client can consume (ARCHITECTURE.md invariant
//! 11): connections, header and body time, upload sessions, in-flight manifest bodies, the
//! depth of an index and the size of a referrers page.
//!
//! Each limit is a named constant holding its default, and the run-time ones are fields of
//! [`Limits`] so an operator can tune them (`ferry registry serve --max-connections ...`).
//! This module only describes limits; the code that enforces each one names the constant it
//! uses. It must never hold a limit that nothing enforces.

use std::time::Duration;

/// Connections served at once. Beyond it the oldest connection that is idle (between requests,
/// or still sending its request head) is closed to make room; when none is idle the new
/// connection gets a canned `503` and is closed. Keep it well below the process's open-file
/// limit: every busy connection may also hold a blob or upload file open.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// A client must send its whole request head (request line and headers) within this time.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A kept-alive connection with no request in progress is closed after this long. The header
/// timer also runs while a connection waits for its next request, so in practice an idle
/// connection is closed after the shorter of the two.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request body that delivers no byte for this long fails (the request is answered with an
/// error and any partial upload chunk rolled back); a response the client stops reading for
/// this long closes the connection.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head (request line plus headers) the server buffers.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Upload sessions (`POST .../blobs/uploads/` without a digest) one identity may hold open at
/// once. Beyond it: `429 TOOMANYREQUESTS` with `Retry-After`. Monolithic uploads
/// (`POST ?digest=`) hold no session and are not counted.
pub const DEFAULT_UPLOAD_SESSIONS_PER_IDENTITY: usize = 64;

/// An upload session with no request for this long is dropped and its file deleted.
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Bytes of manifest bodies buffered in memory across all requests at once. A manifest PUT
/// reserves its `Content-Length` (or each chunk as it arrives) from this budget, and from its
/// identity's share of it ([`crate::budget::MANIFEST_SHARE_DIVISOR`]), before it buffers;
/// when either is spent the PUT gets `429 TOOMANYREQUESTS` at once.
pub const DEFAULT_MANIFEST_MEMORY_BYTES: usize = 16 * 1024 * 1024;

/// After refusing a request without reading its body (401, 404, 416, ...), the server reads
/// and discards up to this many body bytes so the client can reuse the connection; a longer
/// body gets `Connection: close` instead.
pub const DEFAULT_DRAIN_BYTES: u64 = 1024 * 1024;

/// The longest a refused request's body is drained before the connection is closed instead.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// How deep indexes may nest: an image manifest has depth 0, an index of image manifests
/// depth 1, an index of such indexes depth 2, and so on. A manifest PUT deeper than this is
/// refused, and the reference walk behind grants, GC and retention follows exactly this many
/// levels, so everything the registry accepts is fully walked.
pub const MAX_INDEX_DEPTH: usize = 8;

/// Grant closures (repository, manifest digest) kept in memory so a sync's many requests do
/// not each walk the graph on disk. Least recently computed entries go first.
pub const CLOSURE_CACHE_ENTRIES: usize = 1024;

/// The largest referrers page (serialized descriptors) one response carries; more results are
/// paginated with a `Link: <...&last=<digest>>; rel="next"` header.
pub const MAX_REFERRERS_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The run-time limits of one registry server. `Limits::default()` holds the defaults above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// See [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// See [`DEFAULT_UPLOAD_SESSIONS_PER_IDENTITY`].
    pub upload_sessions_per_identity: usize,
    /// See [`DEFAULT_UPLOAD_IDLE_TIMEOUT`].
    pub upload_idle_timeout: Duration,
    /// See [`DEFAULT_MANIFEST_MEMORY_BYTES`].
    pub manifest_memory_bytes: usize,
    /// See [`DEFAULT_DRAIN_BYTES`].
    pub drain_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            upload_sessions_per_identity: DEFAULT_UPLOAD_SESSIONS_PER_IDENTITY,
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            manifest_memory_bytes: DEFAULT_MANIFEST_MEMORY_BYTES,
            drain_bytes: DEFAULT_DRAIN_BYTES,
        }
    }
}

impl Limits {
    /// How often idle upload sessions are looked for: a quarter of the idle timeout, between
    /// 1 s and 60 s, so a session outlives its timeout by at most a quarter of it.
    pub fn upload_sweep_interval(&self) -> Duration {
        (self.upload_idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// The limits with every zero (which would refuse everything or time out at once)
    /// replaced by its default, and the header buffer at least hyper's minimum of 8 KiB.
    pub fn sanitized(mut self) -> Self {
        let d = Limits::default();
        if self.max_connections == 0 {
            self.max_connections = d.max_connections;
        }
        for (value, default) in [
            (&mut self.header_read_timeout, d.header_read_timeout),
            (&mut self.idle_timeout, d.idle_timeout),
            (&mut self.body_timeout, d.body_timeout),
            (&mut self.upload_idle_timeout, d.upload_idle_timeout),
        ] {
            if value.is_zero() {
                *value = default;
            }
        }
        self.max_header_bytes = self.max_header_bytes.max(8 * 1024);
        if self.upload_sessions_per_identity == 0 {
            self.upload_sessions_per_identity = d.upload_sessions_per_identity;
        }
        // A budget smaller than one manifest would refuse every large manifest forever.
        self.manifest_memory_bytes = self
            .manifest_memory_bytes
            .max(crate::storage::MAX_MANIFEST_BYTES);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_fall_back_to_defaults_and_budgets_fit_one_manifest() {
        let l = Limits {
            max_connections: 0,
            idle_timeout: Duration::ZERO,
            manifest_memory_bytes: 1,
            max_header_bytes: 10,
            ..Limits::default()
        }
        .sanitized();
        assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(l.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(l.manifest_memory_bytes, crate::storage::MAX_MANIFEST_BYTES);
        assert_eq!(l.max_header_bytes, 8 * 1024);
        assert_eq!(
            Limits::default().upload_sweep_interval(),
            Duration::from_secs(60)
        );
        let short = Limits {
            upload_idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        assert_eq!(short.upload_sweep_interval(), Duration::from_secs(1));
    }
}
