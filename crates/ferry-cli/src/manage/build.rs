//! `ferry build request` and `ferry builds`: request a build, list builds. It must never print
//! a secret.

use anyhow::Result;
use clap::{Args, Subcommand};
use ferry_core::manage::BuildFilter;
use ferry_core::manage::Management as _;
use serde_json::json;

use super::{app_name, component_name, StateArgs};
use crate::context::Backend;
use crate::state::print_table;

#[derive(Subcommand, Debug)]
pub enum BuildCommand {
    /// Request a build of a component (posts build.requested).
    Request {
        app: String,
        component: String,
        /// The source ref to build: for a component with its own git repository, the branch,
        /// tag or commit (overriding the component's ref); for an image without a tag, the tag.
        /// Default: the component's own (its git ref, the image's tag as written).
        #[arg(long = "ref")]
        source_ref: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
}

#[derive(Args, Debug)]
pub struct BuildsArgs {
    /// Only builds of this app.
    #[arg(long)]
    app: Option<String>,
    /// Only builds of this component.
    #[arg(long)]
    component: Option<String>,
    #[command(flatten)]
    common: StateArgs,
}

pub async fn build(cmd: BuildCommand, ctx: Option<&str>) -> Result<()> {
    let BuildCommand::Request {
        app,
        component,
        source_ref,
        common,
    } = cmd;
    let source_ref = source_ref.unwrap_or_default();
    let backend = common.open(ctx).await?;
    let (a, c) = (app_name(&app)?, component_name(&component)?);
    let id = with_backend!(&backend, m => m.request_build(&a, &c, &source_ref, "ferry build request").await)?;
    if common.json {
        println!(
            "{}",
            json!({"build_id": id, "app": app, "component": component, "source_ref": source_ref})
        );
    } else {
        let at = if source_ref.is_empty() {
            "its default ref"
        } else {
            source_ref.as_str()
        };
        println!("build {id} requested: {app}/{component} at {at}");
        println!("watch it with `ferry builds --component {component}`");
    }
    Ok(())
}

pub async fn builds(args: BuildsArgs, ctx: Option<&str>) -> Result<()> {
    let backend = args.common.open(ctx).await?;
    let filter = BuildFilter {
        app: args.app.as_deref().map(app_name).transpose()?,
        component: args.component.as_deref().map(component_name).transpose()?,
    };
    let listing = with_backend!(&backend, m => m.list_builds(&filter).await)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&listing.items)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listing
        .items
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                format!("{}/{}", b.app, b.component),
                b.source_ref.clone(),
                b.status().to_string(),
                b.artifact
                    .as_ref()
                    .map(|a| a.digest.to_string())
                    .or_else(|| b.state.error.as_ref().map(|e| e.message.clone()))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &["BUILD", "COMPONENT", "REF", "STATUS", "DIGEST / ERROR"],
        &rows,
    );
    if listing.truncated {
        println!("(the newest {} only; filter with --component)", rows.len());
    }
    Ok(())
}
