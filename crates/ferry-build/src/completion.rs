//! A build's result as the event `ferry-build` prints and posts: [`completion_event`] makes the
//! `build.completed` (one definition, used by the binary and by tests that stand in for
//! CodeBuild), and [`post`] puts it on the vendor's Ferry bus under
//! `ferry_aws::builder::BUILD_SOURCE`, which only the build role may put.
//!
//! This module must never put a credential into the event, an error or a log line: the event
//! carries the build id, the outcome, the digest, the repository and the build's error text.

use ferry_aws::SdkConfig;
use ferry_core::event::{Event, Payload};
use ferry_core::id::BuildId;
use ferry_core::ports::BusError;

use crate::{BuildError, BuiltArtifact};

/// The environment variable that names the Ferry bus (the build project sets it).
pub const BUS_ENV: &str = ferry_aws::bus::BUS_ENV;

/// The `build.completed` event for a build's outcome.
pub fn completion_event(build_id: &BuildId, result: &Result<BuiltArtifact, BuildError>) -> Event {
    Event::new(Payload::BuildCompleted(BuiltArtifact::completed(
        build_id, result,
    )))
}

/// Why the completion did not reach the bus.
#[derive(Debug, thiserror::Error)]
#[error("could not post build.completed for {build_id} to the Ferry bus {bus}: {source}")]
pub struct PostError {
    pub build_id: String,
    pub bus: String,
    #[source]
    pub source: BusError,
}

/// Posts `event` to the Ferry bus `bus` with the credentials in `config` (in CodeBuild, the
/// build role's). Returns EventBridge's event id.
pub async fn post(config: &SdkConfig, bus: &str, event: &Event) -> Result<String, PostError> {
    ferry_aws::builder::post_completion(config, bus, event)
        .await
        .map_err(|source| PostError {
            build_id: event.job().id().to_string(),
            bus: bus.to_string(),
            source,
        })
}
