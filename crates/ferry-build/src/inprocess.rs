//! The in-process builder: ferry-core's `Builder` port for local runs (`ferry dev`), standing
//! in for CodeBuild. `start` spawns the build on the tokio runtime and returns at once; when the
//! build ends, one `build.completed` event goes to the event bus.
//!
//! Starts are idempotent per build id, like CodeBuild's idempotency token: a second start of a
//! running or finished build returns the same external id and builds nothing. This module must
//! never publish two `build.completed` events for one build id from one builder, and never put
//! a credential into an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::event::{BuildCompleted, Event, Payload};
use ferry_core::id::{BuildId, EventId};
use ferry_core::ports::{Batch, BuildSpec, Builder, BuilderError, BusError, EventBus};
use tokio::sync::watch;

use crate::{ArtifactBuilder, BuiltArtifact};

/// Publishing a build.completed is retried this many times on transient bus errors.
const PUBLISH_ATTEMPTS: u32 = 5;

/// Builds in-process and announces each result on the event bus `E`.
pub struct InProcessBuilder<E> {
    builder: ArtifactBuilder,
    bus: Arc<E>,
    /// Every build started here, with its outcome once known (`None` while running).
    builds: Arc<Mutex<HashMap<BuildId, watch::Receiver<Option<BuildCompleted>>>>>,
}

// By hand: a derive would require `E: Clone`, but only the `Arc` is cloned.
impl<E> Clone for InProcessBuilder<E> {
    fn clone(&self) -> Self {
        InProcessBuilder {
            builder: self.builder.clone(),
            bus: self.bus.clone(),
            builds: self.builds.clone(),
        }
    }
}

impl<E> std::fmt::Debug for InProcessBuilder<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBuilder")
            .field("builder", &self.builder)
            .finish_non_exhaustive()
    }
}

impl<E: EventBus + 'static> InProcessBuilder<E> {
    /// Builds with `builder`; each result goes to `bus` as one `build.completed`.
    pub fn new(builder: ArtifactBuilder, bus: Arc<E>) -> InProcessBuilder<E> {
        InProcessBuilder {
            builder,
            bus,
            builds: Arc::default(),
        }
    }

    /// The id `start` returns for a build.
    pub fn external_id(build_id: &BuildId) -> String {
        format!("local-{build_id}")
    }

    /// Waits for a build started here to finish and returns what was published; `None` if
    /// this builder never started it.
    pub async fn wait(&self, build_id: &BuildId) -> Option<BuildCompleted> {
        let mut rx = self
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(build_id)
            .cloned()?;
        let done = rx.wait_for(Option::is_some).await.ok()?;
        done.clone()
    }
}

impl<E: EventBus + 'static> Builder for InProcessBuilder<E> {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        let external = Self::external_id(&spec.build_id);
        let tx = {
            let mut builds = self.builds.lock().unwrap_or_else(|p| p.into_inner());
            if builds.contains_key(&spec.build_id) {
                tracing::debug!(build_id = %spec.build_id, "build already started; not starting again");
                return Ok(external);
            }
            let (tx, rx) = watch::channel(None);
            builds.insert(spec.build_id.clone(), rx);
            tx
        };
        let builder = self.builder.clone();
        let bus = self.bus.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let result = builder.build(&spec).await;
            let completed = BuiltArtifact::completed(&spec.build_id, &result);
            publish(bus.as_ref(), &completed).await;
            tx.send_replace(Some(completed));
        });
        Ok(external)
    }
}

/// Publishes one build.completed, retrying transient failures with backoff. The event id is
/// derived from the build id so a consumer sees a republished event as a replay.
async fn publish<E: EventBus>(bus: &E, completed: &BuildCompleted) {
    let payload = Payload::BuildCompleted(completed.clone());
    let event = match EventId::new(format!("{}.completed", completed.build_id)) {
        Ok(id) => Event::with_id(id, payload),
        Err(_) => Event::new(payload),
    };
    let batch = match Batch::new(vec![event]) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot batch build.completed");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let failure = match bus.put_events(&batch).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => return,
                Some(Err(f)) if f.sender_fault => {
                    tracing::error!(build_id = %completed.build_id, error = %f,
                        "event bus refused build.completed");
                    return;
                }
                Some(Err(f)) => f.to_string(),
                None => "the bus returned no result".to_string(),
            },
            Err(BusError::Invalid { message }) => {
                tracing::error!(build_id = %completed.build_id, error = %message,
                    "event bus refused build.completed");
                return;
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(build_id = %completed.build_id, attempt, error = %failure,
            "publishing build.completed failed; retrying");
        if attempt < PUBLISH_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!(build_id = %completed.build_id,
        "build.completed was not published; the build stays running until it is restarted");
}
