//! AWS mode: the same agent loop (copy, verify, report, then delete) over SQS, pushing to the
//! install's own ECR with the agent role's credentials. Only the transport differs from local
//! mode: `SqsQueue` for the job queue, a `QueueReporter` on the vendor's report queue, and
//! [`EcrPushAccess`] for the install registry.
//!
//! It must never log or put into an error the ECR password or the agent's private key, and
//! never hammer ECR for a login: a token whose expiry is already past (moto's fake token says
//! 2015) is kept for [`LOGIN_FALLBACK`] before the next GetAuthorizationToken.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use ferry_aws::agent::{AgentAwsError, InstallEcr, RepositoryProtections};
use ferry_aws::{SdkConfig, SqsQueue};
use ferry_core::id::{InstallId, QueueName};
use ferry_core::ports::ReceiveOptions;
use ferry_core::seal::AgentKeypair;
use ferry_oci::{Credential, Secret};

use crate::access::{AccessError, InstallAccess};
use crate::agent::Agent;
use crate::config::{AgentConfig, VendorTrust};
use crate::report::QueueReporter;

/// Refresh a login this long before ECR says it expires (ECR tokens last 12 h).
pub const LOGIN_MARGIN: Duration = Duration::from_secs(10 * 60);
/// How long a login is used when ECR's expiry is absent or already past.
pub const LOGIN_FALLBACK: Duration = Duration::from_secs(30 * 60);
/// Never refresh more often than this, whatever the expiry says.
pub const LOGIN_MIN_LIFE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error("{what} is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>): {url}")]
    QueueUrl { what: &'static str, url: String },
    #[error("reading the agent key: {0}")]
    Key(String),
    #[error("{0}")]
    Aws(#[from] AgentAwsError),
}

/// After how long a login that ECR says expires at `expires_at` (unix ms) is refreshed.
pub fn refresh_in(now_ms: u64, expires_at: Option<u64>) -> Duration {
    match expires_at {
        Some(e) if e > now_ms => {
            let left = Duration::from_millis(e - now_ms);
            let before = left.checked_sub(LOGIN_MARGIN).unwrap_or(left / 2);
            before.max(LOGIN_MIN_LIFE)
        }
        // Past or unknown: ECR (or moto) did not tell us anything useful.
        _ => LOGIN_FALLBACK,
    }
}

/// The system clock in unix ms (ferry-clock's, the one definition).
fn now_ms() -> u64 {
    ferry_clock::unix_ms()
}

struct CachedLogin {
    credential: Credential,
    refresh_at: Instant,
}

/// Push access to the install's ECR with the agent role's own login, cached until shortly
/// before it expires; repositories are made to exist before the first push into them.
pub struct EcrPushAccess {
    ecr: InstallEcr,
    login: tokio::sync::Mutex<Option<CachedLogin>>,
    ready: Mutex<HashSet<String>>,
    logins: std::sync::atomic::AtomicUsize,
}

impl EcrPushAccess {
    /// Push access with `protections` applied to every repository before its first push.
    pub fn new(config: &SdkConfig, protections: RepositoryProtections) -> EcrPushAccess {
        EcrPushAccess {
            ecr: InstallEcr::new(config).with_protections(protections),
            login: tokio::sync::Mutex::new(None),
            ready: Mutex::new(HashSet::new()),
            logins: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many GetAuthorizationToken calls were made (for tests and metrics).
    pub fn logins(&self) -> usize {
        self.logins.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn current(&self) -> Result<Credential, AccessError> {
        let mut slot = self.login.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.credential.clone());
        }
        let login = self.ecr.login().await.map_err(access_error)?;
        self.logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = refresh_in(now_ms(), login.expires_at);
        tracing::info!(
            refresh_in_s = wait.as_secs(),
            "logged in to the install registry with the agent role"
        );
        let credential = Credential::Basic {
            username: login.username.clone(),
            password: Secret::new(login.password.as_str()),
        };
        *slot = Some(CachedLogin {
            credential: credential.clone(),
            refresh_at: Instant::now() + wait,
        });
        Ok(credential)
    }
}

fn access_error(e: AgentAwsError) -> AccessError {
    AccessError {
        transient: matches!(e, AgentAwsError::Unavailable { .. }),
        message: e.to_string(),
    }
}

impl InstallAccess for EcrPushAccess {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, AccessError>> {
        Box::pin(self.current())
    }

    fn prepare_repository<'a>(
        &'a self,
        repository: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            let known = self
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(repository);
            if known {
                return Ok(());
            }
            self.ecr
                .ensure_repository(repository)
                .await
                .map_err(access_error)?;
            self.ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(repository.to_owned());
            Ok(())
        })
    }
}

/// The queue name in an SQS URL (its last path segment).
pub fn queue_name_from_url(what: &'static str, url: &str) -> Result<QueueName, AwsSetupError> {
    let bad = || AwsSetupError::QueueUrl {
        what,
        url: url.to_owned(),
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(bad());
    }
    let name = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .ok_or_else(bad)?;
    QueueName::new(name).map_err(|_| bad())
}

/// Where the agent's private key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    /// A Secrets Manager secret (ARN or name) holding the key file's text.
    SecretArn(String),
}

/// Reads the agent's key pair; the key text is zeroized once parsed.
pub async fn load_keypair(
    config: &SdkConfig,
    source: &KeySource,
) -> Result<AgentKeypair, AwsSetupError> {
    let text = match source {
        KeySource::File(path) => zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| AwsSetupError::Key(format!("{}: {e}", path.display())))?,
        ),
        KeySource::SecretArn(arn) => ferry_aws::agent::read_secret_string(config, arn).await?,
    };
    AgentKeypair::from_secret_string(&text).map_err(|e| AwsSetupError::Key(e.to_string()))
}

/// What AWS mode needs beyond the SDK config and the key.
#[derive(Debug, Clone)]
pub struct AwsAgentOptions {
    pub install_id: InstallId,
    /// The install's inbound queue (in the vendor account).
    pub queue_url: String,
    /// The vendor's sync-reported queue.
    pub report_queue_url: String,
    /// The install's ECR host (`<account>.dkr.ecr.<region>.amazonaws.com`).
    pub install_registry: String,
    /// Repository prefix in the install registry (`installs/<id>` when `None`).
    pub install_namespace: Option<String>,
    /// The vendor registry's repository prefix (the vendor stack's `RepositoryPrefix`), which
    /// the install namespace replaces ([`ferry_core::id::Repository::in_install`]).
    pub vendor_prefix: String,
    /// Policy and lifecycle applied to every repository the agent writes.
    pub protections: RepositoryProtections,
    /// The vendor registry and the vendor key jobs must be signed with.
    pub vendor: VendorTrust,
    pub receive: ReceiveOptions,
    /// How long a running job may finish after shutdown was asked.
    pub shutdown_grace: Duration,
}

pub type AwsAgent = Agent<SqsQueue, QueueReporter<SqsQueue>>;

/// The agent over SQS and ECR, with `config`'s credentials (the agent role in production).
pub fn aws_agent(
    config: &SdkConfig,
    options: AwsAgentOptions,
    keypair: AgentKeypair,
) -> Result<(AwsAgent, Arc<EcrPushAccess>), AwsSetupError> {
    let queue_name = queue_name_from_url("the agent queue", &options.queue_url)?;
    let report_name = queue_name_from_url("the report queue", &options.report_queue_url)?;
    // Both queues are known by URL: they live in the vendor account, out of GetQueueUrl's reach.
    let queue = Arc::new(
        SqsQueue::new(config)
            .with_url(queue_name.clone(), options.queue_url.clone())
            .with_url(report_name.clone(), options.report_queue_url.clone()),
    );
    // No identity secret in AWS mode: pushes use the role's ECR login (EcrPushAccess).
    let mut agent_config = AgentConfig::new(
        options.install_id,
        queue_name,
        options.vendor,
        options.install_registry,
        Secret::new(""),
    )
    .with_receive(options.receive);
    agent_config.shutdown_grace = options.shutdown_grace;
    if let Some(ns) = options.install_namespace {
        agent_config.install_namespace = ns;
    }
    agent_config.vendor_prefix = options.vendor_prefix;
    let access = Arc::new(EcrPushAccess::new(config, options.protections));
    let reporter = Arc::new(QueueReporter::new(queue.clone(), report_name));
    let agent =
        Agent::new(agent_config, queue, reporter, keypair).with_install_access(access.clone());
    Ok((agent, access))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_past_or_missing_expiry_waits_the_fallback_and_never_spins() {
        let now = 1_700_000_000_000;
        // moto: 2015.
        assert_eq!(refresh_in(now, Some(1_420_070_400_000)), LOGIN_FALLBACK);
        assert_eq!(refresh_in(now, None), LOGIN_FALLBACK);
        // ECR: 12 h ahead → refresh 10 min before.
        let twelve_h = 12 * 3_600_000;
        assert_eq!(
            refresh_in(now, Some(now + twelve_h)),
            Duration::from_millis(twelve_h) - LOGIN_MARGIN
        );
        // Almost expired: never less than a minute.
        assert_eq!(refresh_in(now, Some(now + 1_000)), LOGIN_MIN_LIFE);
    }

    #[test]
    fn queue_names_come_from_urls() {
        let n = queue_name_from_url(
            "q",
            "https://sqs.eu-west-1.amazonaws.com/111122223333/ferry-install-a",
        )
        .unwrap();
        assert_eq!(n.as_str(), "ferry-install-a");
        assert!(queue_name_from_url("q", "ferry-install-a").is_err());
        let e = queue_name_from_url("the report queue", "https://sqs.x/1/bad name").unwrap_err();
        assert!(e.to_string().contains("the report queue"), "{e}");
    }
}
