//! Turning SDK errors into something a port error can carry: transient or not, plus a message
//! that names the service, the operation and the AWS error code.
//!
//! This module must never put request or response bodies into a message: only AWS's own error
//! code and message, which carry no Ferry secret.

use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// AWS error codes that mean "slow down" or "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "LimitExceededException",
];

/// What went wrong with one SDK call, reduced to what the ports need.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub transient: bool,
    pub code: Option<String>,
    pub message: String,
}

pub(crate) fn describe<E, R>(
    service: &str,
    operation: &str,
    err: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    let code = err.code().map(str::to_owned);
    let (transient, detail) = match err {
        SdkError::ServiceError(_) => {
            let transient = code
                .as_deref()
                .is_some_and(|c| TRANSIENT_CODES.contains(&c));
            let detail = match (&code, err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                _ => DisplayErrorContext(err).to_string(),
            };
            (transient, detail)
        }
        SdkError::TimeoutError(_) => (true, "timed out (after retries)".to_owned()),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (true, DisplayErrorContext(err).to_string())
        }
        _ => (false, DisplayErrorContext(err).to_string()),
    };
    Failure {
        transient,
        code,
        message: format!("{service} {operation}: {detail}"),
    }
}
