//! SDK configuration: one place that decides the HTTP client, retries and timeouts of every
//! AWS client Ferry builds.
//!
//! Everything else comes from the environment (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`
//! so tests and `ferry dev` reach moto). This module must never read or log credentials itself.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// The region type, so callers can pick one without depending on an SDK crate.
pub use aws_config::Region;

/// Attempts per call (first try + retries), in the SDK's standard retry mode.
pub const MAX_ATTEMPTS: u32 = 4;
/// First retry backoff; the SDK doubles it with full jitter up to `MAX_BACKOFF`.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of one call: far above a healthy DynamoDB/SQS latency, well under Lambda's
/// (derived from the function timeout by [`ferry_core::timing`]).
pub const ATTEMPT_TIMEOUT: Duration = ferry_core::timing::SDK_ATTEMPT_TIMEOUT;
/// A whole call, retries and backoff included: a third of the function timeout
/// ([`ferry_core::timing`]), so a handler hears how a call ended before Lambda stops it.
pub const OPERATION_TIMEOUT: Duration = ferry_core::timing::SDK_OPERATION_TIMEOUT;
/// A long-poll receive gets its wait plus this much before the SDK gives up on it.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(5);

/// The retry policy Ferry uses everywhere.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// The timeouts Ferry uses for every call except SQS long polls (see [`long_poll_timeouts`]).
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Timeouts for an emulator slower than AWS (benchmarks on moto at fleet size): each attempt
/// and the whole call may take `limit`, with no retry budget beyond it. Never for AWS itself,
/// where [`timeout_config`]'s bounds keep a call inside its Lambda invocation.
pub fn slow_emulator_timeouts(limit: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(limit)
        .operation_timeout(limit)
        .build()
}

/// Timeouts for a receive that may legitimately hang for `wait` seconds.
pub fn long_poll_timeouts(wait_seconds: u32) -> TimeoutConfig {
    let budget = Duration::from_secs(u64::from(wait_seconds)) + LONG_POLL_SLACK;
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(budget)
        // Retries of a long poll may each wait again.
        .operation_timeout(budget * MAX_ATTEMPTS)
        .build()
}

/// A config loader from the environment with Ferry's HTTP client, retries and timeouts.
/// Callers may still override the endpoint, region or credentials (tests do).
pub fn loader() -> ConfigLoader {
    // rustls over ring: ring is already in the workspace, so no second crypto library to build.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry_config())
        .timeout_config(timeout_config())
}

/// The SDK config from the environment, as Lambda functions and the CLI use it.
pub async fn from_env() -> SdkConfig {
    loader().load().await
}
