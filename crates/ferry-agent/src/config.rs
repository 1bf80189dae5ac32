//! The agent's settings: who it is, where it pulls from and writes to, and its queue timings.
//!
//! This module must never print the identity secret: it is a [`Secret`], redacted in `Debug`.

use std::time::Duration;

use ferry_core::id::{IdError, InstallId, QueueName, Repository};
use ferry_core::ports::ReceiveOptions;
use ferry_oci::Secret;

/// Whom the agent trusts, both required: the one vendor registry it pulls from (never a host
/// named in a message or a grant) and the vendor's public key that every job it acts on must
/// be signed with (`ferry_core::trust::verify_job`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorTrust {
    /// The vendor registry host (`host[:port]`).
    pub registry: String,
    /// `ferry-vendor-ed25519:…`, as the vendor publishes it.
    pub public_key: String,
}

/// The embedded registry's vendor namespace, which `ferry dev` builds into.
pub const DEFAULT_VENDOR_PREFIX: &str = "vendor";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub install_id: InstallId,
    /// The install's job queue.
    pub queue: QueueName,
    pub vendor: VendorTrust,
    /// The install registry host (`host[:port]`).
    pub install_registry: String,
    /// Repository prefix in the install registry, `installs/<id>` by default.
    pub install_namespace: String,
    /// Repository prefix of the vendor registry (`vendor` under `ferry dev`, the vendor
    /// stack's `RepositoryPrefix` on AWS); replaced by `install_namespace` on the way in.
    pub vendor_prefix: String,
    /// The secret of identity `agent:<install-id>` on the install registry.
    pub identity_secret: Secret,
    /// Long poll and visibility timeout of each receive.
    pub receive: ReceiveOptions,
    /// How often a running job's visibility is extended (a third of the timeout by default).
    pub heartbeat_every: Duration,
    /// How long a job may keep running after shutdown was asked before it is released.
    pub shutdown_grace: Duration,
    /// Pause after an empty receive that came back at once (a queue without long polling).
    pub idle_backoff: Duration,
    /// A transiently failing job is retried on redelivery until this many receives, then
    /// reported failed.
    pub max_receives: u32,
    /// Also tag the copy `sha256-<hex>` (written last, once everything is verified).
    pub tag_with_digest: bool,
    /// Retention after each successful sync, on the embedded registry's endpoint: keep the N
    /// most recently synced versions of the repository, plus everything marked in use
    /// (`ferry-agent in-use mark`) and everything those reference. `None`: the registry's own
    /// policy does it (on ECR, the lifecycle policy the customer stack sets).
    pub keep_last: Option<usize>,
    /// At most one install heartbeat (version, last poll, last sync, health) per this long,
    /// sent on the report path after a poll; `None` sends none.
    pub telemetry_every: Option<Duration>,
}

/// The keep-last window `ferry dev` and `ferry-agent run --keep-last` use unless told otherwise.
pub const DEFAULT_KEEP_LAST: usize = 20;

impl AgentConfig {
    /// Defaults: receive 1 message, 20 s long poll, 60 s visibility, heartbeat every 20 s,
    /// 30 s shutdown grace.
    pub fn new(
        install_id: InstallId,
        queue: QueueName,
        vendor: VendorTrust,
        install_registry: impl Into<String>,
        identity_secret: Secret,
    ) -> AgentConfig {
        let receive = match ReceiveOptions::new(1, 20, 60) {
            Ok(r) => r,
            Err(_) => {
                unreachable!("1 message, 20 s wait and 60 s visibility are within the SQS limits")
            }
        };
        AgentConfig {
            install_namespace: format!("installs/{install_id}"),
            vendor_prefix: DEFAULT_VENDOR_PREFIX.to_owned(),
            install_id,
            queue,
            vendor,
            install_registry: install_registry.into(),
            identity_secret,
            receive,
            heartbeat_every: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
            idle_backoff: Duration::from_millis(500),
            max_receives: 5,
            tag_with_digest: true,
            keep_last: None,
            telemetry_every: Some(Duration::from_millis(
                ferry_core::telemetry::DEFAULT_HEARTBEAT_EVERY_MS,
            )),
        }
    }

    /// Sets the receive options and a heartbeat of a third of their visibility timeout.
    pub fn with_receive(mut self, receive: ReceiveOptions) -> AgentConfig {
        self.receive = receive;
        let third = u64::from(receive.visibility_seconds()) * 1000 / 3;
        self.heartbeat_every = Duration::from_millis(third.max(100));
        self
    }

    /// The identity name on the install registry.
    pub fn identity(&self) -> String {
        format!("agent:{}", self.install_id)
    }

    /// Where a vendor repository lands: ferry-core's one rule, [`Repository::in_install`]
    /// (`<vendor prefix>/<path>` → `<install namespace>/<path>`).
    pub fn destination_repository(&self, repository: &Repository) -> Result<String, IdError> {
        repository
            .in_install(&self.vendor_prefix, &self.install_namespace)
            .map(|r| r.as_str().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_drops_the_vendor_prefix_and_secret_stays_hidden() {
        let c = AgentConfig::new(
            InstallId::new("a").unwrap(),
            QueueName::new("install-a").unwrap(),
            VendorTrust {
                registry: "127.0.0.1:2".into(),
                public_key: "ferry-vendor-ed25519:x".into(),
            },
            "127.0.0.1:1",
            Secret::new("Identity-Secret-42"),
        );
        assert_eq!(
            c.destination_repository(&Repository::new("vendor/demo/app").unwrap())
                .unwrap(),
            "installs/a/demo/app"
        );
        let mut ecr = c.clone();
        ecr.vendor_prefix = "ferry".into();
        ecr.install_namespace = "ferry".into();
        assert_eq!(
            ecr.destination_repository(&Repository::new("ferry/demo/web").unwrap())
                .unwrap(),
            "ferry/demo/web"
        );
        assert!(ecr
            .destination_repository(&Repository::new("vendor/demo/web").unwrap())
            .is_err());
        assert_eq!(c.identity(), "agent:a");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("Identity-Secret-42"), "{dbg}");
    }
}
