//! `ferry release create|show|list|pause|resume|abort`: releases through ferry-core's release
//! port ([`ferry_core::rollout::Releases`]) on the selected context: a `ferry dev` state dir
//! (SQLite store and release queue; `ferry dev` runs the steps) or a deployed stack (DynamoDB
//! and the stack's release queue; its release function runs the steps).
//!
//! This file parses and prints; ferry-core decides. `show --watch` redraws a progress bar on a
//! terminal, or prints one JSON line per change with `--json`, until the release stops moving
//! (completed, halted, aborted). It must never print a secret (releases hold none).

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use ferry_core::id::{AppName, BuildId, InstallId, QueueName, ReleaseId};
use ferry_core::ports::IdGenerator as _;
use ferry_core::release::{
    estimate_completion, FailureBudget, Release, ReleasePolicy, ReleaseStatus, ReleaseTarget,
    StepPhase, TargetState,
};
use ferry_core::rollout::{ReleaseDesk, ReleaseRequest, Releases as _};
use ferry_local::bus::RELEASE_QUEUE;
use ferry_local::clock::{RandomIds, SystemClock};
use ferry_local::queue::SqliteQueue;
use ferry_local::store::SqliteStore;
use serde_json::json;

use crate::manage::StateArgs;
use crate::state::print_table;

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Release builds (one per component) to installs, in steps.
    Create(CreateArgs),
    /// A release: its steps, each install's state and errors.
    Show {
        id: String,
        /// Follow it until it stops moving (a progress bar on a terminal; JSON lines with --json).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        common: StateArgs,
    },
    /// The newest releases of an app.
    List {
        app: String,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Pause: the step in flight finishes, the next does not start.
    Pause {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Resume a paused release, or a halted one (its failed installs are retried).
    Resume {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Abort for good (syncs already enqueued still finish).
    Abort {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    app: String,
    /// A succeeded build id; repeat (or comma-separate) for one build per component.
    #[arg(long = "build", required = true, value_delimiter = ',')]
    builds: Vec<String>,
    /// Installs to release to (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "all",
        required_unless_present = "all"
    )]
    installs: Vec<String>,
    /// Every install subscribed to a released component.
    #[arg(long)]
    all: bool,
    /// Installs per step (1 to 1000).
    #[arg(long, default_value_t = 1000)]
    per_step: u32,
    /// Wait between steps: 30s, 10m, 2h.
    #[arg(long, default_value = "0s")]
    delay: String,
    /// Halt once this many installs failed: a count (1) or a percentage (5%).
    #[arg(long, default_value = "1")]
    max_failures: String,
    #[command(flatten)]
    common: StateArgs,
}

/// `30s`, `10m`, `2h` (or plain seconds) as milliseconds.
pub fn parse_delay(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("delay {s:?}: expected a number and a unit, e.g. 10m"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => bail!("delay {s:?}: unknown unit {other:?}; use s, m or h"),
    };
    n.checked_mul(ms)
        .filter(|v| *v <= 7 * 24 * 3_600_000)
        .with_context(|| format!("delay {s:?} is longer than a week"))
}

/// The release port of the selected context: the local state dir's, or the AWS stack's
/// (DynamoDB + the stack's release queue, drained by its release function).
pub(crate) enum AnyDesk {
    Local(ReleaseDesk<SqliteStore, SqliteQueue, SystemClock>),
    #[cfg(feature = "aws")]
    Aws(ReleaseDesk<ferry_aws::DynamoStore, ferry_aws::SqsQueue, SystemClock>),
}

/// Runs `$body` with `$d` bound to the context's release desk.
macro_rules! with_desk {
    ($desk:expr, $d:ident => $body:expr) => {
        match $desk {
            AnyDesk::Local($d) => $body,
            #[cfg(feature = "aws")]
            AnyDesk::Aws($d) => $body,
        }
    };
}

async fn desk(common: &StateArgs, ctx: Option<&str>) -> Result<AnyDesk> {
    match common.open(ctx).await? {
        crate::context::Backend::Local(m) => Ok(AnyDesk::Local(local_desk(m.state())?)),
        #[cfg(feature = "aws")]
        crate::context::Backend::Aws(m) => Ok(AnyDesk::Aws(m.release_desk()?)),
    }
}

/// The release desk of a local state dir (shared with `ferry console`).
pub(crate) fn local_desk(
    state: &crate::state::StateDir,
) -> Result<ReleaseDesk<SqliteStore, SqliteQueue, SystemClock>> {
    let db = state.open_existing()?;
    Ok(ReleaseDesk {
        store: SqliteStore::new(db.clone()),
        queue: SqliteQueue::new(db),
        clock: SystemClock,
        release_queue: QueueName::new(RELEASE_QUEUE)?,
        max_write_tries: ferry_core::Config::default().max_write_tries,
    })
}

fn release_id(id: &str) -> Result<ReleaseId> {
    ReleaseId::new(id).with_context(|| format!("release id {id:?}"))
}

pub async fn run(cmd: ReleaseCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        ReleaseCommand::Create(args) => create(args, ctx).await,
        ReleaseCommand::Show { id, watch, common } => {
            let id = release_id(&id)?;
            with_desk!(&desk(&common, ctx).await?, d => {
                if watch {
                    watch_release(d, &id, common.json).await
                } else {
                    let (release, targets) = d.show(&id).await?;
                    print_release(&release, &targets, common.json);
                    Ok(())
                }
            })
        }
        ReleaseCommand::List { app, common } => {
            let app = AppName::new(app.as_str()).with_context(|| format!("app name {app:?}"))?;
            let releases = with_desk!(&desk(&common, ctx).await?, d => d.list(&app).await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&releases)?);
            } else {
                let rows: Vec<Vec<String>> = releases.iter().map(summary_row).collect();
                print_table(&["ID", "STATUS", "STEP", "INSTALLS", "FAILED"], &rows);
            }
            Ok(())
        }
        ReleaseCommand::Pause { id, common } => {
            let id = release_id(&id)?;
            let r = with_desk!(&desk(&common, ctx).await?, d => d.pause(&id).await)?;
            print_summary(&r, common.json)
        }
        ReleaseCommand::Resume { id, common } => {
            let id = release_id(&id)?;
            let r = with_desk!(&desk(&common, ctx).await?, d => d.resume(&id).await)?;
            print_summary(&r, common.json)
        }
        ReleaseCommand::Abort { id, common } => {
            let id = release_id(&id)?;
            let r = with_desk!(&desk(&common, ctx).await?, d => d.abort(&id, "ferry release abort").await)?;
            print_summary(&r, common.json)
        }
    }
}

async fn create(args: CreateArgs, ctx: Option<&str>) -> Result<()> {
    let app =
        AppName::new(args.app.as_str()).with_context(|| format!("app name {:?}", args.app))?;
    let builds = args
        .builds
        .iter()
        .map(|b| BuildId::new(b.as_str()).with_context(|| format!("build id {b:?}")))
        .collect::<Result<Vec<_>>>()?;
    let installs = if args.all {
        None
    } else {
        Some(
            args.installs
                .iter()
                .map(|i| InstallId::new(i.as_str()).with_context(|| format!("install id {i:?}")))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let policy = ReleasePolicy {
        installs_per_step: args.per_step,
        delay_ms: parse_delay(&args.delay)?,
        max_failures: FailureBudget::parse(&args.max_failures)?,
    };
    let req = ReleaseRequest {
        id: ReleaseId::new(format!("r-{}", RandomIds.new_id()))?,
        app,
        builds,
        installs,
        policy,
        requested_by: "ferry release create".into(),
    };
    let release = with_desk!(&desk(&args.common, ctx).await?, d => d.create(&req).await)?;
    print_summary(&release, args.common.json)
}

fn summary_row(r: &Release) -> Vec<String> {
    vec![
        r.id.to_string(),
        r.status.to_string(),
        format!("{}/{}", (r.step + 1).min(r.steps), r.steps),
        r.total_installs.to_string(),
        r.failed_before.to_string(),
    ]
}

fn print_summary(r: &Release, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print_table(
            &["ID", "STATUS", "STEP", "INSTALLS", "FAILED"],
            &[summary_row(r)],
        );
        if let Some(reason) = &r.reason {
            println!("  {reason}");
        }
    }
    Ok(())
}

fn phase_text(r: &Release) -> String {
    match r.phase {
        StepPhase::Waiting { due_at } => format!("step {} due at {due_at} ms", r.step + 1),
        StepPhase::Syncing => format!("step {} syncing", r.step + 1),
        StepPhase::Done => format!("ended in step {}", r.step + 1),
    }
}

fn print_release(r: &Release, targets: &[ReleaseTarget], json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "release": r,
                "eta_ms": estimate_completion(r, targets, now_ms()),
                "targets": targets.iter().map(|t| target_json(r, t)).collect::<Vec<_>>(),
            })
        );
        return;
    }
    println!(
        "release {} of {}: {} ({}), {} installs in {} steps of {}, delay {} ms, max failures {}",
        r.id,
        r.app,
        r.status,
        phase_text(r),
        r.total_installs,
        r.steps,
        r.policy.installs_per_step,
        r.policy.delay_ms,
        r.policy.max_failures
    );
    for b in &r.builds {
        println!("  {} = build {} ({})", b.component, b.build_id, b.digest);
    }
    println!("  eta {}", eta_text(r, targets, now_ms()));
    if let Some(reason) = &r.reason {
        println!("  {reason}");
    }
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                (t.step + 1).to_string(),
                t.install_id.to_string(),
                t.state(r.round).as_str().to_string(),
                t.syncs
                    .iter()
                    .map(|s| s.bytes_copied)
                    .sum::<u64>()
                    .to_string(),
                t.error()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["STEP", "INSTALL", "STATE", "BYTES", "ERROR"], &rows);
}

fn now_ms() -> u64 {
    crate::console::now_ms()
}

/// "in 12m (at 2026-…Z)", "done", or why there is no estimate yet.
fn eta_text(r: &Release, targets: &[ReleaseTarget], now: u64) -> String {
    match estimate_completion(r, targets, now) {
        Some(at) => format!(
            "in {} (at {})",
            ferry_core::telemetry::ago(now, at).trim_end_matches(" ago"),
            ferry_registry::token::rfc3339(at / 1000)
        ),
        None if r.status == ReleaseStatus::Completed => "done".to_string(),
        None if r.status == ReleaseStatus::Running => "after the first step ends".to_string(),
        None => format!("none while {}", r.status),
    }
}

fn target_json(r: &Release, t: &ReleaseTarget) -> serde_json::Value {
    json!({
        "install": t.install_id,
        "step": t.step + 1,
        "state": t.state(r.round).as_str(),
        "syncs": t.syncs,
    })
}

async fn watch_release<R: ferry_core::rollout::Releases>(
    desk: &R,
    id: &ReleaseId,
    json: bool,
) -> Result<()> {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} installs  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last = String::new();
    loop {
        let (release, targets) = desk.show(id).await?;
        let done = targets
            .iter()
            .filter(|t| {
                matches!(
                    t.state(release.round),
                    TargetState::Succeeded | TargetState::Current | TargetState::Failed
                )
            })
            .count();
        let failed = targets
            .iter()
            .filter(|t| t.state(release.round) == TargetState::Failed)
            .count();
        let line = json!({
            "release": release.id, "status": release.status, "step": release.step + 1,
            "steps": release.steps, "done": done, "failed": failed,
            "installs": targets.len(),
            "eta_ms": estimate_completion(&release, &targets, now_ms()),
        })
        .to_string();
        if let Some(b) = &bar {
            b.set_length(targets.len() as u64);
            b.set_position(done as u64);
            b.set_message(format!(
                "{} ({}), {failed} failed, eta {}",
                release.status,
                phase_text(&release),
                eta_text(&release, &targets, now_ms())
            ));
        } else if line != last {
            println!("{line}");
            last = line;
        }
        let stopped = matches!(
            release.status,
            ReleaseStatus::Completed | ReleaseStatus::Halted | ReleaseStatus::Aborted
        );
        if stopped {
            if let Some(b) = &bar {
                b.finish();
                print_release(&release, &targets, false);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_with_units() {
        assert_eq!(parse_delay("10m").unwrap(), 600_000);
        assert_eq!(parse_delay("30s").unwrap(), 30_000);
        assert_eq!(parse_delay("2h").unwrap(), 7_200_000);
        assert_eq!(parse_delay("5").unwrap(), 5_000);
        for bad in ["", "m", "10d", "9999h"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
    }
}
