//! The reconcile Lambda function: one reconciler pass (ferry-core's `reconcile`) per
//! invocation of its EventBridge schedule.
//!
//! Thin on purpose: all logic is in ferry-core and ferry-lambda. This binary must never do
//! more than build the clients once and hand each invocation to `handle_reconcile`.

use ferry_lambda::{handle_reconcile, service_fn, Deps, Error, ReconcileSettings};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_lambda::init_logging();
    let deps = Deps::from_env().await?;
    let settings = ReconcileSettings::from_env()?;
    lambda_runtime::run(service_fn(|ev| handle_reconcile(ev, &deps, &settings))).await
}
