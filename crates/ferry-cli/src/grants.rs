//! `ferry grants revoke-all`: the incident kill switch. Every grant issued before now stops
//! working; grants minted afterwards (the next attempt of each sync) work as usual.
//!
//! - AWS (`--role`): IAM's "revoke older sessions" policy on the vendor stack's pull role
//!   (`ferry_aws::grants`), so every ECR token minted from an older session is refused by ECR.
//! - Local (`--state-dir`): the embedded registry of a `ferry dev` state dir refuses every grant
//!   token issued before now (`AccessControl::revoke_grants_issued_before`), persisted, and a
//!   running registry picks it up on its next grant check.
//!
//! This module only parses and prints; it must never print a credential.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum GrantsCommand {
    /// Revoke every grant issued before now (an incident kill switch).
    RevokeAll(RevokeAllArgs),
}

#[derive(clap::Args, Debug)]
pub struct RevokeAllArgs {
    /// AWS: the vendor stack's pull role (its `PullRoleArn` output, or the role's name). The
    /// caller's AWS credentials need iam:PutRolePolicy on it.
    #[arg(long, conflicts_with = "state_dir")]
    role: Option<String>,
    /// AWS region (default: the AWS environment's).
    #[arg(long, requires = "role")]
    region: Option<String>,
    /// Local: the `ferry dev` state dir whose embedded registry issued the grants.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub async fn run(cmd: GrantsCommand) -> Result<()> {
    let GrantsCommand::RevokeAll(args) = cmd;
    let now = now_ms();
    match (args.role, args.state_dir) {
        (Some(role), None) => revoke_aws(&role, args.region, now).await,
        (None, Some(dir)) => {
            let state = crate::state::StateDir::new(&dir);
            let auth = state.registry_root().join("auth");
            ferry_registry::access::revoke_grants_issued_before(&auth, now / 1000)
                .with_context(|| format!("revoking the grants of {}", auth.display()))?;
            println!(
                "every grant the registry of {} issued before now is refused; new grants work",
                dir.display()
            );
            Ok(())
        }
        _ => bail!(
            "say where the grants were issued: --role <PullRoleArn> (AWS) or --state-dir DIR \
             (a ferry dev state dir)"
        ),
    }
}

#[cfg(feature = "aws")]
async fn revoke_aws(role: &str, region: Option<String>, now: u64) -> Result<()> {
    let mut loader = ferry_aws::config::loader();
    if let Some(r) = region {
        loader = loader.region(ferry_aws::config::Region::new(r));
    }
    let config = loader.load().await;
    let name = ferry_aws::grants::revoke_grants_issued_before(&config, role, now).await?;
    println!(
        "every grant minted from role {name} before now is refused by ECR \
         (inline policy {}); new grants work",
        ferry_aws::grants::REVOKE_POLICY_NAME
    );
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn revoke_aws(_role: &str, _region: Option<String>, _now: u64) -> Result<()> {
    bail!("this ferry was built without the `aws` feature; rebuild with --features aws")
}
