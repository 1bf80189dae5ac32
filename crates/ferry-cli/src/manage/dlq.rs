//! `ferry dlq`: list the dead letters of a queue (with the error each job recorded) and
//! redrive them. It only parses and prints: it must never touch a queue itself (the management
//! port reads and redrives).

use anyhow::Result;
use clap::Subcommand;
use ferry_core::manage::Management as _;
use serde_json::json;

use super::StateArgs;
use crate::context::Backend;
use crate::state::print_table;

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// The dead letters of QUEUE with the error each job recorded; without QUEUE, the queues
    /// that have a dead-letter queue.
    List {
        queue: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Send the dead letters of QUEUE back onto it.
    Redrive {
        queue: String,
        #[command(flatten)]
        common: StateArgs,
    },
}

pub async fn dlq(cmd: DlqCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        DlqCommand::List {
            queue: None,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let queues = with_backend!(&backend, m => m.dead_letter_queues().await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&queues)?);
            } else {
                let rows: Vec<Vec<String>> = queues.iter().map(|q| vec![q.clone()]).collect();
                print_table(&["QUEUE (has a dead-letter queue)"], &rows);
            }
        }
        DlqCommand::List {
            queue: Some(queue),
            common,
        } => {
            let backend = common.open(ctx).await?;
            let dead = with_backend!(&backend, m => m.dead_letters(&queue).await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
                return Ok(());
            }
            if dead.is_empty() {
                println!("no dead letters in {queue}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = dead
                .iter()
                .map(|d| {
                    vec![
                        d.message_id.clone(),
                        d.job.clone().unwrap_or_else(|| "-".into()),
                        d.job_status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.receive_count
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.job_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["MESSAGE", "JOB", "STATUS", "RECEIVES", "ERROR"], &rows);
            println!("send them back with `ferry dlq redrive {queue}`");
        }
        DlqCommand::Redrive { queue, common } => {
            let backend = common.open(ctx).await?;
            let n = with_backend!(&backend, m => m.redrive(&queue).await)?;
            if common.json {
                println!("{}", json!({"queue": queue, "redriven": n}));
            } else {
                println!("{n} dead letters sent back to {queue}");
            }
        }
    }
    Ok(())
}
