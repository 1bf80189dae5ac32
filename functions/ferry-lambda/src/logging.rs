//! Structured JSON logs: one JSON object per line on stdout, which Lambda (log format JSON)
//! forwards to CloudWatch as is. Span fields (`message_id`, `job_id`, the event type) travel
//! in `spans`, so every line of a record's handling names the record and its job.
//!
//! This module must never emit ANSI colour codes, and never be initialised twice.

use std::sync::Once;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The level used when `RUST_LOG` is unset or unreadable.
pub const DEFAULT_FILTER: &str = "info";

/// The functions' subscriber, writing to `writer` (stdout in Lambda, a buffer in tests).
pub fn json_subscriber<W>(writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(true)
        .flatten_event(true)
        .with_target(true)
        .with_writer(writer)
        .finish()
}

static INIT: Once = Once::new();

/// Installs the JSON subscriber as the global default, once per process; later calls (and a
/// subscriber someone else installed first) leave it as it is.
pub fn init_logging() {
    INIT.call_once(|| {
        // Err only if a global subscriber exists already; keeping that one is what we want.
        let _ = tracing::subscriber::set_global_default(json_subscriber(std::io::stdout));
    });
}
