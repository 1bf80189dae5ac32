//! The release Lambda function: the release queue's `release.step` timers (one page of a
//! step's syncs each) and `release.synced` events (a release sync ended), through ferry-core's
//! rollout handlers.
//!
//! Thin on purpose: all logic is in ferry-core and ferry-lambda. This binary must never do
//! more than build the clients once and hand each batch to `handle_sqs_batch`.

use ferry_lambda::{handle_sqs_batch, service_fn, Deps, Error, Kind};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_lambda::init_logging();
    let deps = Deps::from_env().await?;
    lambda_runtime::run(service_fn(|ev| handle_sqs_batch(ev, &deps, Kind::Release))).await
}
