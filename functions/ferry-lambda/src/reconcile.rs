//! The reconcile function's invocation: one pass of ferry-core's reconciler over the stack's
//! ports, answered with what it did. An EventBridge schedule invokes it (its event carries
//! nothing the pass needs, so the payload is ignored).
//!
//! Its deadlines come from the environment (`template.yaml` sets them):
//! `FERRY_RECONCILE_SYNC_DEADLINE_SECONDS`, `FERRY_RECONCILE_AGENT_GONE_SECONDS`,
//! `FERRY_RECONCILE_RELEASE_DEADLINE_SECONDS`, `FERRY_RECONCILE_MAX_SYNCS`; each unset one
//! keeps ferry-core's default. This module must never decide job state itself.

use ferry_core::reconcile::{reconcile, ReconcileConfig, ReconcileReport};
use lambda_runtime::{Error, LambdaEvent};

use crate::deps::{ConfigError, Deps};

pub const SYNC_DEADLINE_ENV: &str = "FERRY_RECONCILE_SYNC_DEADLINE_SECONDS";
pub const AGENT_GONE_ENV: &str = "FERRY_RECONCILE_AGENT_GONE_SECONDS";
pub const RELEASE_DEADLINE_ENV: &str = "FERRY_RECONCILE_RELEASE_DEADLINE_SECONDS";
pub const MAX_SYNCS_ENV: &str = "FERRY_RECONCILE_MAX_SYNCS";

/// The reconciler's deadlines, as read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSettings {
    pub config: ReconcileConfig,
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    min: u64,
) -> Result<Option<u64>, ConfigError> {
    let Some(v) = get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    match v.parse::<u64>() {
        Ok(n) if n >= min => Ok(Some(n)),
        _ => Err(ConfigError::Invalid {
            name,
            value: v.chars().take(40).collect(),
            reason: "expected a whole number, at least 1 (seconds, or syncs per pass)",
        }),
    }
}

impl ReconcileSettings {
    /// From the process environment.
    pub fn from_env() -> Result<ReconcileSettings, ConfigError> {
        ReconcileSettings::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any lookup (tests pass a map).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ReconcileSettings, ConfigError> {
        let mut config = ReconcileConfig::default();
        if let Some(s) = number(&get, SYNC_DEADLINE_ENV, 1)? {
            config.sync_deadline_ms = s.saturating_mul(1000);
        }
        if let Some(s) = number(&get, AGENT_GONE_ENV, 1)? {
            config.agent_gone_after_ms = s.saturating_mul(1000);
        }
        if let Some(s) = number(&get, RELEASE_DEADLINE_ENV, 1)? {
            config.release_deadline_ms = s.saturating_mul(1000);
        }
        if let Some(n) = number(&get, MAX_SYNCS_ENV, 1)? {
            config.max_syncs = u32::try_from(n).unwrap_or(u32::MAX);
        }
        Ok(ReconcileSettings { config })
    }
}

/// One reconciler pass; a failure is returned so the scheduled invocation is retried (every
/// action of a pass is idempotent).
pub async fn handle_reconcile(
    _event: LambdaEvent<serde_json::Value>,
    deps: &Deps,
    settings: &ReconcileSettings,
) -> Result<ReconcileReport, Error> {
    let report = reconcile(&deps.ports, &settings.config).await?;
    tracing::info!(
        redriven = report.redriven.len(),
        failed = report.failed.len(),
        releases = report.releases.len(),
        more = report.more,
        "reconcile pass done"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_parse_and_refuse_nonsense() {
        let none = ReconcileSettings::from_lookup(|_| None).unwrap();
        assert_eq!(none.config, ReconcileConfig::default());
        let set = ReconcileSettings::from_lookup(|n| match n {
            SYNC_DEADLINE_ENV => Some("600".into()),
            MAX_SYNCS_ENV => Some("50".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (set.config.sync_deadline_ms, set.config.max_syncs),
            (600_000, 50)
        );
        let e = ReconcileSettings::from_lookup(|n| (n == AGENT_GONE_ENV).then(|| "0".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(AGENT_GONE_ENV), "{e}");
    }
}
