//! `ferry console`: serves the vendor console (`ferry-console`) over the selected context,
//! reading through the management port and the release port, so it shows a `ferry dev` state
//! dir or a deployed stack with the operator's own credentials.
//!
//! This file adapts the ports' records to the console's views and parses flags; the console
//! crate serves. It must never put a secret into a view (the records it reads hold none).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use ferry_console::view::*;
use ferry_console::{ConsoleConfig, ConsoleSource, SourceError};
use ferry_core::id::{Digest, ReleaseId};
use ferry_core::manage::{BuildFilter, ManageError, Management as _};
use ferry_core::release::{Release, ReleaseStatus, ReleaseTarget, StepPhase};
use ferry_core::rollout::{ReleaseDesk, Releases as _};
use ferry_core::state::JobStatus;
use ferry_local::clock::SystemClock;
use ferry_local::queue::SqliteQueue;
use ferry_local::store::SqliteStore;

use crate::context::Backend;

/// An agent not heard from (heartbeat or report) for this long is stale
/// (`ferry_core::telemetry::liveness`, the one rule).
pub const STALE_AFTER: Duration =
    Duration::from_millis(ferry_core::telemetry::DEFAULT_STALE_AFTER_MS);

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// Where to listen. Loopback needs no token; any other address needs one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// A file holding the access token (at least 32 characters). Without it, a non-loopback
    /// address gets a generated token, printed once.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The `ferry dev` state directory (instead of the context).
    #[arg(long, env = "FERRY_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

type LocalDesk = ReleaseDesk<SqliteStore, SqliteQueue, SystemClock>;

/// The console's source: one backend of the management port, and the release desk where the
/// backend has releases (local).
pub struct BackendSource {
    backend: Backend,
    desk: Option<LocalDesk>,
}

impl BackendSource {
    pub fn new(backend: Backend) -> Result<BackendSource> {
        let desk = match &backend {
            Backend::Local(m) => Some(crate::release::local_desk(m.state())?),
            #[cfg(feature = "aws")]
            Backend::Aws(_) => None,
        };
        Ok(BackendSource { backend, desk })
    }

    fn desk(&self) -> Result<&LocalDesk, SourceError> {
        self.desk.as_ref().ok_or_else(|| {
            SourceError::NotFound(
                "releases are not available on an AWS context yet (the vendor stack has no \
                 release queue); use a local context"
                    .into(),
            )
        })
    }
}

macro_rules! port {
    ($self:expr, $m:ident => $body:expr) => {
        match &$self.backend {
            Backend::Local($m) => $body,
            #[cfg(feature = "aws")]
            Backend::Aws($m) => $body,
        }
    };
}

fn manage_err(e: ManageError) -> SourceError {
    match e {
        ManageError::NotFound { .. } => SourceError::NotFound(e.to_string()),
        ManageError::Invalid(_) | ManageError::Unsupported { .. } => {
            SourceError::Invalid(e.to_string())
        }
        _ => SourceError::Backend(e.to_string()),
    }
}

fn release_err(e: impl std::fmt::Display) -> SourceError {
    let text = e.to_string();
    if text.contains("no release") || text.contains("not found") || text.contains("unknown") {
        SourceError::NotFound(text)
    } else {
        SourceError::Invalid(text)
    }
}

/// The wall clock in unix ms (for "ago" and staleness in views).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn status_word(s: ReleaseStatus) -> String {
    s.to_string()
}

fn summary(r: &Release, targets: Option<&[ReleaseTarget]>) -> ReleaseSummary {
    let (mut ok, mut failed) = (0, r.failed_before);
    if let Some(ts) = targets {
        ok = ts
            .iter()
            .filter(|t| matches!(t.state(r.round).as_str(), "succeeded" | "current"))
            .count() as u32;
        failed = ts
            .iter()
            .filter(|t| t.state(r.round).as_str() == "failed")
            .count() as u32;
    }
    let status = match (r.status, r.phase) {
        (ReleaseStatus::Running, StepPhase::Waiting { .. }) => "waiting".to_string(),
        (s, _) => status_word(s),
    };
    ReleaseSummary {
        id: r.id.to_string(),
        app: r.app.to_string(),
        status,
        created: r.created_at,
        step: (r.step + 1).min(r.steps),
        steps: r.steps,
        targets: r.total_installs,
        succeeded: ok,
        failed,
    }
}

impl ConsoleSource for BackendSource {
    async fn fleet(&self) -> Result<Fleet, SourceError> {
        let now = now_ms();
        let installs = port!(self, m => m.list_installs().await).map_err(manage_err)?;
        let mut rows = Vec::with_capacity(installs.len());
        for i in installs.iter().take(ferry_core::manage::MAX_LISTING) {
            let st = port!(self, m => m.install_status(&i.id).await).map_err(manage_err)?;
            // The one rule: no heartbeat or report within STALE_AFTER.
            let stale = st.liveness(now, STALE_AFTER.as_millis() as u64).is_stale();
            let mut components = Vec::new();
            for c in &i.components {
                let builds = port!(self, m => m.list_builds(&BuildFilter {
                    app: Some(i.app.clone()),
                    component: Some(c.clone()),
                }).await)
                .map_err(manage_err)?;
                let desired = builds
                    .items
                    .iter()
                    .find(|b| b.status() == JobStatus::Succeeded)
                    .and_then(|b| b.artifact.as_ref().map(|a| (b, a)));
                let current = desired.and_then(|(_, a)| {
                    st.holds
                        .iter()
                        .find(|h| h.repository == a.repository)
                        .map(|h| VersionRef {
                            build_id: h.build_id.to_string(),
                            digest: h.digest.to_string(),
                        })
                });
                components.push(ComponentVersions {
                    component: c.to_string(),
                    desired: desired.map(|(b, a)| VersionRef {
                        build_id: b.id.to_string(),
                        digest: a.digest.to_string(),
                    }),
                    current,
                });
            }
            rows.push(InstallRow {
                id: i.id.to_string(),
                app: i.app.to_string(),
                last_seen: st.last_seen,
                agent_version: st.telemetry.as_ref().map(|t| t.agent_version.clone()),
                health: st.telemetry.as_ref().map(|t| t.health.clone()),
                stale,
                components,
            });
        }
        Ok(Fleet {
            now,
            stale_after_ms: STALE_AFTER.as_millis() as u64,
            installs: rows,
        })
    }

    async fn releases(&self) -> Result<Vec<ReleaseSummary>, SourceError> {
        let Some(desk) = &self.desk else {
            return Ok(Vec::new());
        };
        let apps = port!(self, m => m.list_apps().await).map_err(manage_err)?;
        let mut out = Vec::new();
        for a in apps {
            for r in desk.list(&a.name).await.map_err(release_err)? {
                out.push(summary(&r, None));
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(out)
    }

    async fn release(&self, id: &str) -> Result<ReleaseDetail, SourceError> {
        let rid = ReleaseId::new(id).map_err(|e| SourceError::Invalid(e.to_string()))?;
        let (r, targets) = self.desk()?.show(&rid).await.map_err(release_err)?;
        let mut steps = Vec::new();
        for index in 0..r.steps {
            let in_step: Vec<&ReleaseTarget> = targets.iter().filter(|t| t.step == index).collect();
            let state = if index < r.step {
                "done"
            } else if index > r.step {
                "pending"
            } else {
                match (r.status, r.phase) {
                    (ReleaseStatus::Halted, _) => "halted",
                    (ReleaseStatus::Completed, _) => "done",
                    (_, StepPhase::Waiting { .. }) => "waiting",
                    (_, StepPhase::Syncing) => "running",
                    (_, StepPhase::Done) => "done",
                }
            };
            let started = in_step.iter().map(|t| t.updated_at).min();
            let finished = (state == "done")
                .then(|| in_step.iter().map(|t| t.updated_at).max())
                .flatten();
            steps.push(StepRow {
                index,
                state: state.into(),
                started: (state != "pending").then_some(started).flatten(),
                finished,
                targets: in_step
                    .iter()
                    .map(|t| TargetRow {
                        install: t.install_id.to_string(),
                        state: t.state(r.round).as_str().into(),
                        bytes_moved: t.syncs.iter().map(|s| s.bytes_copied).sum(),
                        bytes_total: None,
                        // Agents report bytes when a sync ends, not while it runs.
                        eta_secs: None,
                        error: t.error().map(|e| format!("{}: {}", e.code, e.message)),
                    })
                    .collect(),
            });
        }
        let actions = match r.status {
            ReleaseStatus::Running => vec![Action::Pause, Action::Abort],
            ReleaseStatus::Paused | ReleaseStatus::Halted => vec![Action::Resume, Action::Abort],
            _ => vec![],
        };
        Ok(ReleaseDetail {
            summary: summary(&r, Some(&targets)),
            builds: r
                .builds
                .iter()
                .map(|b| ReleasedBuild {
                    component: b.component.to_string(),
                    build_id: b.build_id.to_string(),
                    digest: Some(b.digest.to_string()),
                })
                .collect(),
            per_step: r.policy.installs_per_step,
            delay_secs: r.policy.delay_ms / 1000,
            max_failures: r.policy.max_failures.to_string(),
            halted_because: (r.status == ReleaseStatus::Halted)
                .then(|| r.reason.clone())
                .flatten(),
            steps,
            actions,
        })
    }

    async fn build(&self, id: &str) -> Result<BuildDetail, SourceError> {
        let builds =
            port!(self, m => m.list_builds(&BuildFilter::default()).await).map_err(manage_err)?;
        let b = builds
            .items
            .iter()
            .find(|b| b.id.as_str() == id)
            .ok_or_else(|| {
                SourceError::NotFound(format!(
                    "no build {id} among the newest builds; see ferry builds"
                ))
            })?;
        Ok(BuildDetail {
            id: b.id.to_string(),
            app: b.app.to_string(),
            component: b.component.to_string(),
            status: b.status().to_string(),
            source_ref: b.source_ref.clone(),
            revision: None,
            repository: b.artifact.as_ref().map(|a| a.repository.to_string()),
            digest: b.artifact.as_ref().map(|a| a.digest.to_string()),
            media_type: b.artifact.as_ref().map(|a| a.media_type.clone()),
            artifacts: b
                .artifact
                .iter()
                .map(|a| format!("{}@{}", a.repository, a.digest))
                .collect(),
            referrers: Vec::new(),
            logs: b.external_id.clone(),
            error: b
                .state
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message)),
            created: b.state.created_at,
        })
    }

    async fn lineage(&self, digest: &str) -> Result<Lineage, SourceError> {
        let d = Digest::new(digest).map_err(|e| SourceError::Invalid(e.to_string()))?;
        let records = port!(self, m => m.lineage(&d).await).map_err(manage_err)?;
        Ok(Lineage {
            digest: d.to_string(),
            entries: records
                .into_iter()
                .map(|l| LineageRow {
                    install: l.install_id.to_string(),
                    repository: l.repository.to_string(),
                    build_id: l.build_id.to_string(),
                    since: l.since,
                })
                .collect(),
        })
    }

    async fn act(
        &self,
        release: &str,
        action: Action,
        by: &str,
    ) -> Result<ReleaseSummary, SourceError> {
        let rid = ReleaseId::new(release).map_err(|e| SourceError::Invalid(e.to_string()))?;
        let desk = self.desk()?;
        let r = match action {
            Action::Pause => desk.pause(&rid).await,
            Action::Resume => desk.resume(&rid).await,
            Action::Abort => desk.abort(&rid, &format!("console:{by}")).await,
        }
        .map_err(release_err)?;
        Ok(summary(&r, None))
    }
}

/// Runs `ferry console` until Ctrl-C.
pub async fn run(args: ConsoleArgs, ctx: Option<&str>) -> Result<()> {
    let backend = crate::context::open(ctx, args.state_dir.as_deref()).await?;
    let source = BackendSource::new(backend)?;
    let mut config = ConsoleConfig::new(args.addr);
    let mut printed_token = None;
    if let Some(file) = &args.token_file {
        let t = std::fs::read_to_string(file)
            .with_context(|| format!("reading the console token from {}", file.display()))?;
        config.token = Some(t.trim().to_string());
    } else if !args.addr.ip().is_loopback() {
        let t = ferry_console::generate_token();
        printed_token = Some(t.clone());
        config.token = Some(t);
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let local = listener.local_addr()?;
    match &printed_token {
        Some(t) => {
            println!("ferry console: http://{local}/login?token={t}  (the token is shown once)")
        }
        None => println!("ferry console: http://{local}/"),
    }
    ferry_console::serve(listener, source, &config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
