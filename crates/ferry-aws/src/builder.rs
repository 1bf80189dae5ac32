//! `CodeBuildBuilder`: ferry-core's `Builder` on CodeBuild `StartBuild`; the completion that
//! `ferry-build` posts itself ([`post_completion`]); and the mapping of CodeBuild's "Build
//! State Change" events for builds that ended without one (failed, stopped, timed out).
//!
//! How a build's result gets back: `ferry-build` (the program the project runs) posts its own
//! `build.completed` to the Ferry bus with the build role's credentials, under
//! [`BUILD_SOURCE`]; only that role may put that source on the bus (the template's bus policy
//! and the role's conditioned `events:PutEvents`). CodeBuild's state change is used only for
//! FAILED, FAULT, STOPPED and TIMED_OUT, where `ferry-build` may not have run to the end. No
//! result is read from CodeBuild's `exported-environment-variables`, which AWS does not
//! document in that event.
//!
//! This module must never pass a secret as a PLAINTEXT variable: the overrides hold ids, the
//! component and the source ref; and never read an artifact digest from a state change.

#[cfg(any(feature = "codebuild", feature = "bus"))]
use aws_config::SdkConfig;
#[cfg(feature = "codebuild")]
use aws_sdk_codebuild::types::{
    EnvironmentVariable, EnvironmentVariableType, ProjectSource, ProjectSourceVersion, SourceType,
};
#[cfg(feature = "codebuild")]
use aws_sdk_codebuild::Client;
use serde::Deserialize;

#[cfg(feature = "bus")]
use ferry_core::event::BUILD_COMPLETED;
use ferry_core::event::{BuildCompleted, BuildOutcome};
use ferry_core::id::{BuildId, EventId};
#[cfg(feature = "codebuild")]
use ferry_core::ports::Builder;
#[cfg(feature = "bus")]
use ferry_core::ports::{Batch, BusError, EventBus as _};
use ferry_core::ports::{BuildSpec, BuilderError};
use ferry_core::{Event, Payload};

#[cfg(feature = "bus")]
use crate::bus::EventBridgeBus;
#[cfg(feature = "codebuild")]
use crate::error::describe;

pub const ENV_BUILD_ID: &str = "FERRY_BUILD_ID";
pub const ENV_APP: &str = "FERRY_APP";
pub const ENV_COMPONENT_NAME: &str = "FERRY_COMPONENT_NAME";
/// The whole component, as JSON (kind, source, repository).
pub const ENV_COMPONENT: &str = "FERRY_COMPONENT";
pub const ENV_SOURCE_REF: &str = "FERRY_SOURCE_REF";
pub const ENV_REPOSITORY: &str = "FERRY_REPOSITORY";
/// The secondary source a component's own git repository is checked out as; the buildspec
/// finds it at `$CODEBUILD_SRC_DIR_component`.
pub const SOURCE_IDENTIFIER: &str = "component";
/// The environment variable that names the CodeBuild project (set by the SAM template).
pub const PROJECT_ENV: &str = "FERRY_BUILD_PROJECT";
/// Every override [`environment`] sets, in its order (the buildspec and `ferry-build` read
/// these; tests check the buildspec names only these or the project's own variables).
pub const OVERRIDES: [&str; 6] = [
    ENV_BUILD_ID,
    ENV_APP,
    ENV_COMPONENT_NAME,
    ENV_COMPONENT,
    ENV_SOURCE_REF,
    ENV_REPOSITORY,
];
/// The `source` of the `build.completed` that `ferry-build` posts. Only the build role may put
/// it on the Ferry bus; the rule that feeds build-completed matches it.
pub const BUILD_SOURCE: &str = "ferry.build";
/// The CodeBuild `build-status` values the state-change rule forwards: the ends of a build
/// after which `ferry-build` may not have posted its completion. SUCCEEDED is not among them:
/// a build succeeds only after `ferry-build` posted (it exits non-zero when the post fails).
pub const CAUGHT_STATUSES: [&str; 4] = ["FAILED", "FAULT", "STOPPED", "TIMED_OUT"];

/// The builder port on CodeBuild (feature `codebuild`: only build-requested links the
/// CodeBuild client).
#[cfg(feature = "codebuild")]
#[derive(Clone, Debug)]
pub struct CodeBuildBuilder {
    client: Client,
    project: String,
}

/// Error codes that say the request itself can never start a build.
#[cfg(feature = "codebuild")]
const REJECTED_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "InvalidInputException",
    "ValidationException",
    "OAuthProviderException",
];

#[cfg(feature = "codebuild")]
impl CodeBuildBuilder {
    pub fn new(config: &SdkConfig, project: impl Into<String>) -> CodeBuildBuilder {
        CodeBuildBuilder::from_client(Client::new(config), project)
    }

    pub fn from_client(client: Client, project: impl Into<String>) -> CodeBuildBuilder {
        CodeBuildBuilder {
            client,
            project: project.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(feature = "codebuild")]
fn plain(name: &str, value: &str) -> Result<EnvironmentVariable, BuilderError> {
    EnvironmentVariable::builder()
        .name(name)
        .value(value)
        .r#type(EnvironmentVariableType::Plaintext)
        .build()
        .map_err(|e| BuilderError::Rejected {
            message: format!("bad environment variable {name}: {e}"),
        })
}

/// The environment overrides of one build, in a stable order.
pub fn environment(spec: &BuildSpec) -> Result<Vec<(&'static str, String)>, BuilderError> {
    let component = serde_json::to_string(&spec.component).map_err(|e| BuilderError::Rejected {
        message: format!("component does not encode: {e}"),
    })?;
    Ok(vec![
        (ENV_BUILD_ID, spec.build_id.to_string()),
        (ENV_APP, spec.component.app.to_string()),
        (ENV_COMPONENT_NAME, spec.component.name.to_string()),
        (ENV_COMPONENT, component),
        (ENV_SOURCE_REF, spec.source_ref.clone()),
        (ENV_REPOSITORY, spec.component.repository.to_string()),
    ])
}

/// A component's own git repository as a CodeBuild secondary source override: the source
/// type for its host, its URL, and the ref to build (the request's, else the component's).
/// `None` for components without a git source, and for hosts CodeBuild has no source type for
/// (those `ferry-build` checks out itself with the git CLI inside the build), and for
/// components that name a credential: `ferry-build` fetches those itself with the named
/// secret, since CodeBuild would use its own account-wide source credential instead.
#[cfg(feature = "codebuild")]
pub fn source_override(spec: &BuildSpec) -> Option<(SourceType, String, String)> {
    if spec.component.credentials.is_some() {
        return None;
    }
    let git = spec.component.kind.git_source()?;
    let url = git.git.trim();
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()?
        .rsplit('@')
        .next()?
        .to_ascii_lowercase();
    let kind = match host.as_str() {
        "github.com" => SourceType::Github,
        "bitbucket.org" => SourceType::Bitbucket,
        "gitlab.com" => SourceType::Gitlab,
        h if h.starts_with("git-codecommit.") && h.ends_with(".amazonaws.com") => {
            SourceType::Codecommit
        }
        _ => return None,
    };
    if !url.starts_with("https://") {
        // CodeBuild clones these over HTTPS with its own source credentials.
        return None;
    }
    Some((
        kind,
        url.to_string(),
        git.effective_ref(&spec.source_ref).to_string(),
    ))
}

#[cfg(feature = "codebuild")]
fn rejected(what: &str) -> impl FnOnce(aws_sdk_codebuild::error::BuildError) -> BuilderError + '_ {
    move |e| BuilderError::Rejected {
        message: format!("bad {what}: {e}"),
    }
}

#[cfg(feature = "codebuild")]
impl Builder for CodeBuildBuilder {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        let mut req = self
            .client
            .start_build()
            .project_name(&self.project)
            // CodeBuild honours a token for 5 minutes: a handler retried within that window
            // gets the same build back instead of a second one.
            .idempotency_token(spec.build_id.as_str());
        for (name, value) in environment(spec)? {
            req = req.environment_variables_override(plain(name, &value)?);
        }
        if let Some((kind, location, version)) = source_override(spec) {
            req = req
                .secondary_sources_override(
                    ProjectSource::builder()
                        .r#type(kind)
                        .location(location)
                        .source_identifier(SOURCE_IDENTIFIER)
                        .git_clone_depth(1)
                        .build()
                        .map_err(rejected("git source override"))?,
                )
                .secondary_sources_version_override(
                    ProjectSourceVersion::builder()
                        .source_identifier(SOURCE_IDENTIFIER)
                        .source_version(version)
                        .build()
                        .map_err(rejected("git source version"))?,
                );
        }
        let out = req.send().await.map_err(|e| {
            let f = describe("CodeBuild", "StartBuild", &e);
            if !f.transient
                && f.code
                    .as_deref()
                    .is_some_and(|c| REJECTED_CODES.contains(&c))
            {
                BuilderError::Rejected { message: f.message }
            } else {
                BuilderError::Unavailable { message: f.message }
            }
        })?;
        out.build_value
            .and_then(|b| b.id)
            .ok_or_else(|| BuilderError::Unavailable {
                message: "CodeBuild StartBuild answered without a build id".into(),
            })
    }
}

// ---- ferry-build's own completion ---------------------------------------------------------

/// Entry attempts for one completion (the SDK already retries the call itself).
#[cfg(feature = "bus")]
const POST_ATTEMPTS: u32 = 3;

/// Posts `event` (a `build.completed`, as `ferry-build` prints it) to the Ferry bus `bus` under
/// [`BUILD_SOURCE`], with the credentials in `config` (in CodeBuild: the build role). Returns
/// EventBridge's event id. A retryable entry failure (throttling, internal) is tried again, up
/// to 3 times in all, 200 ms then 400 ms apart.
#[cfg(feature = "bus")]
pub async fn post_completion(
    config: &SdkConfig,
    bus: &str,
    event: &Event,
) -> Result<String, BusError> {
    if event.event_type() != BUILD_COMPLETED {
        return Err(BusError::Invalid {
            message: format!(
                "ferry-build posts only build.completed under {BUILD_SOURCE}, not {}",
                event.event_type()
            ),
        });
    }
    let bus = EventBridgeBus::new(config, bus).with_source(BUILD_SOURCE);
    let batch = Batch::new(vec![event.clone()]).map_err(|e| BusError::Invalid {
        message: e.to_string(),
    })?;
    let mut attempt = 1;
    loop {
        let results = bus.put_events(&batch).await?;
        match results.into_iter().next() {
            Some(Ok(id)) => return Ok(id),
            Some(Err(f)) if !f.sender_fault && attempt < POST_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(200 << (attempt - 1))).await;
                attempt += 1;
            }
            Some(Err(f)) if f.sender_fault => {
                return Err(BusError::Invalid {
                    message: format!(
                        "EventBridge refused the build.completed on bus {}: {} ({}); check the \
                         bus name (FERRY_EVENT_BUS) and that the build role may put source {BUILD_SOURCE}",
                        bus.bus(),
                        f.message,
                        f.code
                    ),
                })
            }
            Some(Err(f)) => {
                return Err(BusError::Unavailable {
                    message: format!(
                        "EventBridge did not take the build.completed after {POST_ATTEMPTS} tries: {} ({})",
                        f.message, f.code
                    ),
                })
            }
            None => {
                return Err(BusError::Unavailable {
                    message: "EventBridge PutEvents answered no entry".into(),
                })
            }
        }
    }
}

// ---- state-change events ------------------------------------------------------------------

/// CodeBuild's "Build State Change" EventBridge event, as much of it as Ferry reads (fields of
/// AWS's published sample only). Every field is optional: IN_PROGRESS events lack several,
/// and AWS adds fields over time.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CodeBuildStateChange {
    pub id: Option<String>,
    #[serde(rename = "detail-type")]
    pub detail_type: Option<String>,
    pub source: Option<String>,
    pub detail: Option<StateChangeDetail>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateChangeDetail {
    #[serde(rename = "build-status")]
    pub build_status: Option<String>,
    #[serde(rename = "project-name")]
    pub project_name: Option<String>,
    #[serde(rename = "build-id")]
    pub build_id: Option<String>,
    #[serde(rename = "current-phase")]
    pub current_phase: Option<String>,
    #[serde(rename = "additional-information")]
    pub additional_information: Option<AdditionalInformation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdditionalInformation {
    pub environment: Option<BuildEnvironment>,
    #[serde(default)]
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BuildEnvironment {
    #[serde(rename = "environment-variables", default)]
    pub environment_variables: Vec<NameValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NameValue {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Phase {
    #[serde(rename = "phase-type")]
    pub phase_type: Option<String>,
    #[serde(rename = "phase-status")]
    pub phase_status: Option<String>,
    #[serde(rename = "phase-context", default)]
    pub phase_context: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateChangeError {
    #[error("not a CodeBuild state change: {0}; expected source aws.codebuild, detail-type \"CodeBuild Build State Change\"")]
    NotAStateChange(String),
    #[error("CodeBuild state change lacks {0}: was the build started by Ferry (FERRY_BUILD_ID override)?")]
    Missing(&'static str),
    #[error("CodeBuild state change has a bad {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn find<'a>(vars: &'a [NameValue], name: &str) -> Option<&'a str> {
    vars.iter()
        .find(|v| v.name.as_deref() == Some(name))
        .and_then(|v| v.value.as_deref())
        .filter(|v| !v.is_empty())
}

impl CodeBuildStateChange {
    pub fn parse(bytes: &[u8]) -> Result<CodeBuildStateChange, StateChangeError> {
        let ev: CodeBuildStateChange = serde_json::from_slice(bytes)
            .map_err(|e| StateChangeError::NotAStateChange(e.to_string()))?;
        if ev.source.as_deref().is_some_and(|s| s != "aws.codebuild") {
            return Err(StateChangeError::NotAStateChange(format!(
                "source is {:?}",
                ev.source.as_deref().unwrap_or_default()
            )));
        }
        Ok(ev)
    }

    fn info(&self) -> Option<&AdditionalInformation> {
        self.detail.as_ref()?.additional_information.as_ref()
    }

    /// A variable the build was started with (the overrides build-requested set).
    fn var(&self, name: &str) -> Option<&str> {
        self.info()?
            .environment
            .as_ref()
            .and_then(|e| find(&e.environment_variables, name))
    }

    /// The failed phase and its context, for the build's error message.
    fn failure_reason(&self, status: &str) -> String {
        let failed = self.info().and_then(|i| {
            i.phases.iter().find(|p| {
                p.phase_status
                    .as_deref()
                    .is_some_and(|s| s != "SUCCEEDED" && !s.is_empty())
            })
        });
        let what = match status {
            "TIMED_OUT" => "timed out (the project's TimeoutInMinutes)".to_string(),
            other => other.to_string(),
        };
        match failed {
            Some(p) => format!(
                "CodeBuild build {what} in phase {} ({}): {}; see the build's log",
                p.phase_type.as_deref().unwrap_or("?"),
                p.phase_status.as_deref().unwrap_or("?"),
                p.phase_context.join("; ")
            ),
            None => format!("CodeBuild build {what}; see the build's log"),
        }
    }

    /// `build.completed` for a build that ended without `ferry-build`'s own completion
    /// (FAILED, FAULT, TIMED_OUT: failed with the phase and reason; STOPPED: cancelled).
    /// `None` for SUCCEEDED (ferry-build posted the result) and while the build runs.
    ///
    /// A build that already finished is not changed by this event: the build-completed
    /// function treats a conflict with a recorded result as a no-op for state changes.
    pub fn to_build_completed(&self) -> Result<Option<Event>, StateChangeError> {
        let status = self
            .detail
            .as_ref()
            .and_then(|d| d.build_status.as_deref())
            .ok_or(StateChangeError::Missing("detail.build-status"))?;
        let outcome = match status {
            "FAILED" | "FAULT" | "TIMED_OUT" => BuildOutcome::Failed,
            "STOPPED" => BuildOutcome::Cancelled,
            _ => return Ok(None),
        };
        let build_id = self
            .var(ENV_BUILD_ID)
            .ok_or(StateChangeError::Missing("the FERRY_BUILD_ID variable"))?;
        let build_id = BuildId::new(build_id).map_err(|e| StateChangeError::Invalid {
            field: ENV_BUILD_ID,
            reason: e.to_string(),
        })?;
        let error = match outcome {
            BuildOutcome::Cancelled => "CodeBuild build was stopped".to_string(),
            _ => self.failure_reason(status),
        };
        let payload = Payload::BuildCompleted(BuildCompleted {
            build_id,
            status: outcome,
            digest: None,
            repository: None,
            media_type: None,
            error: Some(error),
            revision: None,
        });
        // EventBridge keeps the id across redeliveries, so a replay dedupes on it.
        Ok(Some(match self.id.as_deref().map(EventId::new) {
            Some(Ok(id)) => Event::with_id(id, payload),
            _ => Event::new(payload),
        }))
    }
}
