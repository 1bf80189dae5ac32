//! `CodeBuildBuilder`: ferry-core's `Builder` on CodeBuild `StartBuild`, and the mapping of
//! CodeBuild's "Build State Change" events to Ferry's `build.completed`.
//!
//! The project runs `ferry-build`, which reads the `FERRY_*` environment overrides set here and,
//! on success, exports `FERRY_ARTIFACT_DIGEST` (and `FERRY_ARTIFACT_MEDIA_TYPE`) through the
//! buildspec's `env.exported-variables`, so the digest arrives in the state-change event's
//! `additional-information.exported-environment-variables`. This module must never pass a
//! secret as a PLAINTEXT variable: the overrides hold ids, the component and the source ref.

#[cfg(feature = "codebuild")]
use aws_config::SdkConfig;
#[cfg(feature = "codebuild")]
use aws_sdk_codebuild::types::{EnvironmentVariable, EnvironmentVariableType};
#[cfg(feature = "codebuild")]
use aws_sdk_codebuild::Client;
use serde::Deserialize;

use ferry_core::event::{BuildCompleted, BuildOutcome};
use ferry_core::id::{BuildId, Digest, EventId, Repository};
#[cfg(feature = "codebuild")]
use ferry_core::ports::Builder;
use ferry_core::ports::{BuildSpec, BuilderError};
use ferry_core::{Event, Payload};

#[cfg(feature = "codebuild")]
use crate::error::describe;

pub const ENV_BUILD_ID: &str = "FERRY_BUILD_ID";
pub const ENV_APP: &str = "FERRY_APP";
pub const ENV_COMPONENT_NAME: &str = "FERRY_COMPONENT_NAME";
/// The whole component, as JSON (kind, source, repository).
pub const ENV_COMPONENT: &str = "FERRY_COMPONENT";
pub const ENV_SOURCE_REF: &str = "FERRY_SOURCE_REF";
pub const ENV_REPOSITORY: &str = "FERRY_REPOSITORY";
/// Exported by `ferry-build` on success: the artifact's digest in the vendor registry.
pub const ENV_ARTIFACT_DIGEST: &str = "FERRY_ARTIFACT_DIGEST";
/// Exported by `ferry-build` on success (optional): the artifact's media type.
pub const ENV_ARTIFACT_MEDIA_TYPE: &str = "FERRY_ARTIFACT_MEDIA_TYPE";
/// The environment variable that names the CodeBuild project (set by the SAM template).
pub const PROJECT_ENV: &str = "FERRY_BUILD_PROJECT";

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

// ---- state-change events ------------------------------------------------------------------

/// CodeBuild's "Build State Change" EventBridge event, as much of it as Ferry reads. Every
/// field is optional: IN_PROGRESS events lack several, and AWS adds fields over time.
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
    #[serde(rename = "exported-environment-variables", default)]
    pub exported_environment_variables: Vec<NameValue>,
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

    /// A variable the build exported, else one it was started with.
    fn var(&self, name: &str) -> Option<&str> {
        let info = self.info()?;
        find(&info.exported_environment_variables, name).or_else(|| {
            info.environment
                .as_ref()
                .and_then(|e| find(&e.environment_variables, name))
        })
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
        match failed {
            Some(p) => format!(
                "CodeBuild build {status} in phase {} ({}): {}",
                p.phase_type.as_deref().unwrap_or("?"),
                p.phase_status.as_deref().unwrap_or("?"),
                p.phase_context.join("; ")
            ),
            None => format!("CodeBuild build {status}"),
        }
    }

    /// `build.completed` for a finished build; `None` while it is still running.
    pub fn to_build_completed(&self) -> Result<Option<Event>, StateChangeError> {
        let status = self
            .detail
            .as_ref()
            .and_then(|d| d.build_status.as_deref())
            .ok_or(StateChangeError::Missing("detail.build-status"))?;
        let outcome = match status {
            "SUCCEEDED" => BuildOutcome::Succeeded,
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
        let mut done = BuildCompleted {
            build_id,
            status: outcome,
            digest: None,
            repository: None,
            media_type: None,
            error: None,
        };
        match outcome {
            BuildOutcome::Succeeded => match self.var(ENV_ARTIFACT_DIGEST) {
                Some(d) => {
                    let digest = Digest::new(d).map_err(|e| StateChangeError::Invalid {
                        field: ENV_ARTIFACT_DIGEST,
                        reason: e.to_string(),
                    })?;
                    let repo = self
                        .var(ENV_REPOSITORY)
                        .ok_or(StateChangeError::Missing("the FERRY_REPOSITORY variable"))?;
                    let repo = Repository::new(repo).map_err(|e| StateChangeError::Invalid {
                        field: ENV_REPOSITORY,
                        reason: e.to_string(),
                    })?;
                    done.digest = Some(digest);
                    done.repository = Some(repo);
                    done.media_type = self.var(ENV_ARTIFACT_MEDIA_TYPE).map(str::to_owned);
                }
                // A green build that named no artifact cannot be synced: record it as failed.
                None => {
                    done.status = BuildOutcome::Failed;
                    done.error = Some(format!(
                        "CodeBuild build succeeded but did not export {ENV_ARTIFACT_DIGEST}; \
                         add it to the buildspec's env.exported-variables"
                    ));
                }
            },
            BuildOutcome::Failed => done.error = Some(self.failure_reason(status)),
            BuildOutcome::Cancelled => done.error = Some("CodeBuild build was stopped".into()),
        }
        let payload = Payload::BuildCompleted(done);
        // EventBridge keeps the id across redeliveries, so a replay dedupes on it.
        Ok(Some(match self.id.as_deref().map(EventId::new) {
            Some(Ok(id)) => Event::with_id(id, payload),
            _ => Event::new(payload),
        }))
    }
}
