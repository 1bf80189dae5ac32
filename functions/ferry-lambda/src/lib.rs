//! Shared plumbing of Ferry's Lambda functions (build-requested, build-completed,
//! sync-requested, sync-reported, release, and the scheduled reconcile): the AWS ports built
//! once from the environment ([`Deps`]),
//! one SQS batch handled record by record with partial failures ([`handle_sqs_batch`]), and
//! structured JSON logs ([`logging`]).
//!
//! The IMS logic itself lives in ferry-core; this crate only parses, dispatches and answers.
//! It must never let one bad record fail the batch, never decide job state itself, and never
//! name an AWS SDK type (those stay in ferry-aws).

mod absent;
pub mod deps;
pub mod logging;
pub mod reconcile;
pub mod sqs;

pub use deps::{AwsOverrides, AwsPorts, ConfigError, Deps, RandomIds, Settings, SystemClock};
pub use logging::init_logging;
pub use reconcile::{handle_reconcile, ReconcileSettings};
pub use sqs::{
    handle_sqs_batch, process_records, process_records_until, Kind, RecordError, RecordFailure,
};

// Re-exported so the function crates need no direct dependency on these.
pub use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
pub use lambda_runtime::{service_fn, Context, Error, LambdaEvent};
