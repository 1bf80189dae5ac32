//! The install agent's AWS calls, made with the agent's own role (the default credential
//! chain in the customer account): an ECR login for pushing to the install registry, the
//! install repositories a push needs, and the agent's private key from Secrets Manager (read
//! by the agent; written once by `ferry-agent keygen --secret-arn` with the customer's own
//! credentials).
//!
//! This module must never log, return in an error or `Debug` the ECR password or the secret
//! value: both live in zeroizing buffers and both responses are marked sensitive, so the SDK's
//! TRACE body logging prints "REDACTED".

use std::fmt;

use aws_config::SdkConfig;
#[cfg(feature = "ecr")]
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
};
use zeroize::Zeroizing;

use crate::error::describe;
#[cfg(feature = "ecr")]
use crate::minter::split_basic;
use crate::minter::RedactResponseBody;
#[cfg(feature = "ecr")]
use crate::token_vault::TokenVault;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentAwsError {
    /// Worth another try later (throttling, a network error, a 5xx).
    #[error("{message}")]
    Unavailable { message: String },
    /// Will not get better by retrying (access denied, a missing secret, a bad token).
    #[error("{message}")]
    Refused { message: String },
}

fn from_failure(f: crate::error::Failure) -> AgentAwsError {
    if f.transient {
        AgentAwsError::Unavailable { message: f.message }
    } else {
        AgentAwsError::Refused { message: f.message }
    }
}

/// A push credential for the install's own registry.
pub struct EcrLogin {
    /// The registry host ECR named (`<account>.dkr.ecr.<region>.amazonaws.com`), if any.
    pub registry: Option<String>,
    pub username: String,
    pub password: Zeroizing<String>,
    /// Unix milliseconds, as ECR reported it (moto reports a fixed date in the past).
    pub expires_at: Option<u64>,
}

impl fmt::Debug for EcrLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrLogin")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The protections the install stack gives its own repository, which the agent applies to
/// every repository it writes (the stack passes them as `FERRY_REPOSITORY_POLICY` and
/// `FERRY_LIFECYCLE_POLICY`; tests/deploy checks both texts equal the stack's repository's).
/// Immutable tags, scan on push and AES256 encryption are always set on creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryProtections {
    /// Repository policy JSON (`SetRepositoryPolicy`); `None` leaves ECR's default.
    pub policy: Option<String>,
    /// Lifecycle policy JSON (`PutLifecyclePolicy`); `None` sets none.
    pub lifecycle: Option<String>,
}

/// ECR with the agent's own role: login and the install repositories.
#[derive(Clone, Debug)]
#[cfg(feature = "ecr")]
pub struct InstallEcr {
    base: SdkConfig,
    client: aws_sdk_ecr::Client,
    protections: RepositoryProtections,
}

#[cfg(feature = "ecr")]
impl InstallEcr {
    pub fn new(config: &SdkConfig) -> InstallEcr {
        InstallEcr {
            base: config.clone(),
            client: aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(config)
                    .interceptor(RedactResponseBody)
                    .build(),
            ),
            protections: RepositoryProtections::default(),
        }
    }

    /// Applies `protections` to every repository [`InstallEcr::ensure_repository`] prepares.
    pub fn with_protections(mut self, protections: RepositoryProtections) -> InstallEcr {
        self.protections = protections;
        self
    }

    /// ECR GetAuthorizationToken, split into a Basic credential.
    pub async fn login(&self) -> Result<EcrLogin, AgentAwsError> {
        // A client per login: its connector moves the token into this call's vault.
        let vault = TokenVault::default();
        let client = aws_sdk_ecr::Client::from_conf(
            {
                let mut b =
                    aws_sdk_ecr::config::Builder::from(&self.base).interceptor(RedactResponseBody);
                if let Some(c) = self.base.http_client() {
                    b = b.http_client(vault.http_client(c));
                }
                b
            }
            .build(),
        );
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| from_failure(describe("ECR", "GetAuthorizationToken", &e)))?;
        let Some(mut data) = out.authorization_data.and_then(|d| d.into_iter().next()) else {
            return Err(AgentAwsError::Unavailable {
                message: "ECR GetAuthorizationToken answered without authorization data".into(),
            });
        };
        let token = match vault.take() {
            Some(t) => t,
            None => Zeroizing::new(data.authorization_token.take().unwrap_or_default()),
        };
        let (username, password) = split_basic(&token).ok_or_else(|| AgentAwsError::Refused {
            message: "ECR GetAuthorizationToken answered a token that is not base64 of \
                      `user:password`"
                .into(),
        })?;
        let registry = data.proxy_endpoint.as_deref().map(|p| {
            p.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        });
        let expires_at = data
            .expires_at
            .as_ref()
            .and_then(|t| u64::try_from(t.to_millis().ok()?).ok());
        Ok(EcrLogin {
            registry,
            username,
            password,
            expires_at,
        })
    }

    /// Makes sure `name` exists and carries the install's protections before a push:
    /// DescribeRepositories, CreateRepository (immutable tags, scan on push, AES256) only when
    /// it is missing, then the repository policy and the lifecycle policy, every time (both
    /// calls are idempotent, so a repository created by a run that died between the calls, or
    /// before the protections were configured, gets them too). The caller remembers which
    /// repositories are done, so this runs once per repository and process.
    pub async fn ensure_repository(&self, name: &str) -> Result<(), AgentAwsError> {
        let described = self
            .client
            .describe_repositories()
            .repository_names(name)
            .send()
            .await;
        match described {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_repository_not_found_exception()) =>
            {
                self.create_repository(name).await?
            }
            Err(e) => return Err(from_failure(describe("ECR", "DescribeRepositories", &e))),
        }
        self.protect(name).await
    }

    async fn create_repository(&self, name: &str) -> Result<(), AgentAwsError> {
        let encryption = EncryptionConfiguration::builder()
            .encryption_type(EncryptionType::Aes256)
            .build()
            .map_err(|e| AgentAwsError::Refused {
                message: format!("ECR encryption configuration: {e}"),
            })?;
        let created = self
            .client
            .create_repository()
            .repository_name(name)
            .image_tag_mutability(ImageTagMutability::Immutable)
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(true)
                    .build(),
            )
            .encryption_configuration(encryption)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(repository = name, "created the install repository");
                Ok(())
            }
            // Another agent task won the race.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_repository_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => {
                let mut err = from_failure(describe("ECR", "CreateRepository", &e));
                if let AgentAwsError::Refused { message } = &mut err {
                    message.push_str(&format!(
                        "; repository {name} does not exist and the agent could not create it: \
                         allow the agent role ecr:CreateRepository on <namespace>/* (the install \
                         stack does)"
                    ));
                }
                Err(err)
            }
        }
    }

    /// Puts the repository policy and the lifecycle policy on `name`.
    async fn protect(&self, name: &str) -> Result<(), AgentAwsError> {
        let hint = |mut err: AgentAwsError, what: &str| {
            if let AgentAwsError::Refused { message } = &mut err {
                message.push_str(&format!(
                    "; the agent applies the install's {what} to every repository it writes \
                     ({name}): allow the agent role that call on <namespace>/* (the install \
                     stack does), and check the policy text"
                ));
            }
            err
        };
        if let Some(policy) = &self.protections.policy {
            self.client
                .set_repository_policy()
                .repository_name(name)
                .policy_text(policy)
                .send()
                .await
                .map_err(|e| {
                    hint(
                        from_failure(describe("ECR", "SetRepositoryPolicy", &e)),
                        "repository policy",
                    )
                })?;
        }
        if let Some(lifecycle) = &self.protections.lifecycle {
            self.client
                .put_lifecycle_policy()
                .repository_name(name)
                .lifecycle_policy_text(lifecycle)
                .send()
                .await
                .map_err(|e| {
                    hint(
                        from_failure(describe("ECR", "PutLifecyclePolicy", &e)),
                        "lifecycle policy",
                    )
                })?;
        }
        Ok(())
    }
}

/// Reads a Secrets Manager secret's string (the agent's key file text).
pub async fn read_secret_string(
    config: &SdkConfig,
    secret_id: &str,
) -> Result<Zeroizing<String>, AgentAwsError> {
    let client = aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(config)
            .interceptor(RedactResponseBody)
            .build(),
    );
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| from_failure(describe("Secrets Manager", "GetSecretValue", &e)))?;
    match out.secret_string {
        Some(s) => Ok(Zeroizing::new(s)),
        None => Err(AgentAwsError::Refused {
            message: format!(
                "secret {secret_id} has no string value; put an agent key into it with \
                 `ferry-agent keygen --secret-arn {secret_id}`"
            ),
        }),
    }
}

/// Writes `text` (an agent key file's text) as the new current value of the Secrets Manager
/// secret `secret_id` (the customer stack's `AgentKeySecretArn`) and returns the new version
/// id. The customer stack creates that secret with a random placeholder, its only version; a
/// secret with more than one version already holds a key put after creation, and is refused
/// unless `rotate` (a second keygen must not silently replace the key a running agent uses).
///
/// The value never appears in an error, a log line or a `Debug`: it is sent once and dropped.
pub async fn put_secret_string(
    config: &SdkConfig,
    secret_id: &str,
    text: &Zeroizing<String>,
    rotate: bool,
) -> Result<String, AgentAwsError> {
    let client = aws_sdk_secretsmanager::Client::new(config);
    let described = client
        .describe_secret()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| from_failure(describe("Secrets Manager", "DescribeSecret", &e)))?;
    let versions = described
        .version_ids_to_stages
        .as_ref()
        .map_or(0, |v| v.len());
    if versions > 1 && !rotate {
        return Err(AgentAwsError::Refused {
            message: format!(
                "secret {secret_id} already holds a key put after the stack created it \
                 ({versions} versions); pass --rotate to replace it, then re-register the \
                 install with the new public keys (`ferry install register`)"
            ),
        });
    }
    let out = client
        .put_secret_value()
        .secret_id(secret_id)
        .secret_string(text.as_str())
        .send()
        .await
        .map_err(|e| from_failure(describe("Secrets Manager", "PutSecretValue", &e)))?;
    out.version_id.ok_or_else(|| AgentAwsError::Unavailable {
        message: format!("Secrets Manager PutSecretValue on {secret_id} answered no version id"),
    })
}
