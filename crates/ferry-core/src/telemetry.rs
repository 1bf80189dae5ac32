//! Install telemetry: an agent's signed heartbeat, the record the store keeps per install
//! (last-seen and the heartbeat's fields), and the one rule for "stale".
//!
//! A heartbeat travels on the agent's existing report path (the report queue locally and on
//! AWS), so it needs no new permission. It is authenticated exactly like a report: it must
//! verify against the report key registered for the install it names, so install B's key can
//! never move install A's last-seen. `last_seen` is the IMS's own time of receipt, never the
//! agent's claim; the agent's `sent_at` must be within [`crate::Config::heartbeat_max_skew_ms`]
//! of it, which bounds how long a captured heartbeat stays replayable. One install's heartbeats
//! cause at most one store write per [`crate::Config::heartbeat_min_interval_ms`].
//!
//! This module must never trust an unauthenticated heartbeat, never write another install's
//! record, and never read a clock itself (`now` comes from the ports).

use serde::{Deserialize, Serialize};

use crate::event::InstallHeartbeat;
use crate::handlers::{HandlerError, Outcome, Ports, SecurityEvent};
use crate::id::InstallId;
use crate::ports::{Backend, Clock, JobStore};
use crate::trust::verify_heartbeat;

/// How often an agent sends a heartbeat unless configured otherwise (at most once a minute).
pub const DEFAULT_HEARTBEAT_EVERY_MS: u64 = 60_000;
/// An install whose agent was last seen longer ago than this is stale (15 minutes: fifteen
/// missed heartbeats).
pub const DEFAULT_STALE_AFTER_MS: u64 = 15 * 60_000;

/// What the store keeps about an install's agent: when the IMS last heard from it and what its
/// latest heartbeat said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallTelemetry {
    pub install_id: InstallId,
    /// When the IMS received the latest accepted heartbeat (IMS clock, unix ms).
    pub last_seen: u64,
    pub agent_version: String,
    /// When the agent last polled its queue (agent clock, unix ms).
    pub last_poll_at: Option<u64>,
    /// When the agent last finished a sync (agent clock, unix ms).
    pub last_sync_at: Option<u64>,
    /// The agent's own health line (free text, at most 512 characters).
    pub health: String,
    /// The agent's `sent_at` of that heartbeat.
    pub sent_at: u64,
}

/// Whether an install's agent is heard from: the one definition every view uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Heard from within the stale threshold.
    Live,
    /// Last heard from longer ago than the threshold.
    Stale,
    /// Never sent a heartbeat (not started yet, or an agent too old to send them).
    Never,
}

impl Liveness {
    /// `live`, `stale`, `never`.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Stale => "stale",
            Liveness::Never => "never",
        }
    }

    /// True unless the agent was heard from recently (stale or never seen).
    pub fn is_stale(self) -> bool {
        self != Liveness::Live
    }
}

/// The one rule for "stale": the agent was last seen more than `stale_after_ms` before `now`.
pub fn liveness(last_seen: Option<u64>, now: u64, stale_after_ms: u64) -> Liveness {
    match last_seen {
        None => Liveness::Never,
        Some(seen) if now.saturating_sub(seen) > stale_after_ms => Liveness::Stale,
        Some(_) => Liveness::Live,
    }
}

/// "3m ago", "2h ago", "4d ago", "now": how long before `now` a time was, for tables.
pub fn ago(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..=4 => "now".to_string(),
        5..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `install.heartbeat`: authenticates the heartbeat against the report key of the install it
/// names, checks its time against the IMS's clock, and records it (at most one write per
/// install per `heartbeat_min_interval_ms`). A heartbeat that does not authenticate changes
/// nothing, is counted as a security event and is not retried.
pub async fn handle_install_heartbeat<P: Backend>(
    ports: &Ports<P>,
    ev: &InstallHeartbeat,
) -> Result<Outcome, HandlerError> {
    let now = ports.clock.now_ms();
    let store = &ports.store;
    let refuse = |reason: String| Outcome::HeartbeatRefused {
        install_id: ev.install_id.clone(),
        reason,
    };
    let Some(install) = store.get_install(&ev.install_id).await? else {
        let reason = format!(
            "install.heartbeat claims install {}, which is not registered",
            ev.install_id
        );
        crate::handlers::security_event(store, now, SecurityEvent::ReportUnauthenticated, &reason)
            .await?;
        return Ok(refuse(reason));
    };
    if let Err(e) = verify_heartbeat(&install.agent_report_key, ev) {
        let reason = format!("install.heartbeat for install {}: {e}", ev.install_id);
        crate::handlers::security_event(store, now, SecurityEvent::ReportUnauthenticated, &reason)
            .await?;
        return Ok(refuse(reason));
    }
    let skew = now.abs_diff(ev.sent_at);
    if skew > ports.config.heartbeat_max_skew_ms {
        // Authenticated but too old (a replay) or from a clock far off: not counted as an
        // attack, but not recorded either.
        return Ok(refuse(format!(
            "install.heartbeat for install {} was sent at {} but received at {now} ({} s apart, \
             more than the {} s allowed); check the agent host's clock",
            ev.install_id,
            ev.sent_at,
            skew / 1000,
            ports.config.heartbeat_max_skew_ms / 1000
        )));
    }
    if let Some(prev) = store.get_telemetry(&ev.install_id).await? {
        if now.saturating_sub(prev.last_seen) < ports.config.heartbeat_min_interval_ms {
            return Ok(Outcome::HeartbeatRecorded {
                install_id: ev.install_id.clone(),
                last_seen: prev.last_seen,
            });
        }
    }
    let record = InstallTelemetry {
        install_id: ev.install_id.clone(),
        last_seen: now,
        agent_version: ev.agent_version.clone(),
        last_poll_at: ev.last_poll_at,
        last_sync_at: ev.last_sync_at,
        health: ev.health.clone(),
        sent_at: ev.sent_at,
    };
    let stored = store.record_heartbeat(&record).await?;
    tracing::debug!(install_id = %ev.install_id, last_seen = stored.last_seen, "heartbeat recorded");
    Ok(Outcome::HeartbeatRecorded {
        install_id: stored.install_id,
        last_seen: stored.last_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_is_one_rule() {
        assert_eq!(liveness(None, 10, 5), Liveness::Never);
        assert_eq!(liveness(Some(5), 10, 5), Liveness::Live);
        assert_eq!(liveness(Some(4), 10, 5), Liveness::Stale);
        assert!(Liveness::Never.is_stale() && !Liveness::Live.is_stale());
        assert_eq!(ago(0, 3_000), "now");
        assert_eq!(ago(0, 90_000), "90s ago");
        assert_eq!(ago(0, 600_000), "10m ago");
        assert_eq!(ago(0, 3 * 3_600_000), "3h ago");
    }
}
