//! `ferry component`: list components, and add one (its kind, source, repository, git source
//! and signature policy). It must never accept a component its own check refuses.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferry_core::domain::{
    ChartSource, Component, ComponentKind, GitSource, KeyRequirement, VerifyPolicy,
};
use ferry_core::id::Repository;
use ferry_core::manage::Management as _;
use serde_json::json;

use super::{app_name, component_name, StateArgs};
use crate::context::Backend;
use crate::state::print_table;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Image,
    DockerBuild,
    HelmChart,
    OpentofuModule,
}

#[derive(Subcommand, Debug)]
pub enum ComponentCommand {
    /// Add (or replace) a component of an app.
    Add {
        app: String,
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// image: the image to copy (a reference, or oci:DIR[:tag] under the app root).
        #[arg(long, visible_alias = "image", value_name = "REF")]
        source: Option<String>,
        /// docker-build: the build context directory (`--context` is the global context).
        #[arg(long)]
        build_context: Option<String>,
        /// docker-build: the Dockerfile, relative to the context.
        #[arg(long, default_value = "Dockerfile")]
        dockerfile: String,
        /// helm-chart: the chart directory; opentofu-module: the module directory.
        #[arg(long)]
        dir: Option<String>,
        /// Vendor repository (default <app>/<name>).
        #[arg(long)]
        repository: Option<String>,
        /// Also subscribe every existing install of the app to it.
        #[arg(long)]
        subscribe_all: bool,
        #[command(flatten)]
        extras: Box<ComponentExtras>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// List components (of one app, or all).
    List {
        app: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
}

/// A component's own git source and its signature policy.
#[derive(Args, Debug, Default)]
pub struct ComponentExtras {
    /// docker-build, helm-chart (directory), opentofu-module: the component's own git
    /// repository (https, ssh, git or file URL); its paths are then relative to it.
    #[arg(long)]
    git: Option<String>,
    /// With --git: the ref to build by default (a branch, tag or commit; `ferry build request
    /// --ref` overrides it). Default: the repository's HEAD.
    #[arg(long, requires = "git")]
    git_ref: Option<String>,
    /// With --git: the directory inside the repository that the component's paths are
    /// relative to.
    #[arg(long, requires = "git")]
    git_path: Option<String>,
    /// image: a cosign public key file (PEM, ECDSA P-256, `cosign.pub`) whose signature the
    /// image must carry before it is imported and before any install takes it. Repeatable.
    #[arg(long = "verify-key", value_name = "FILE")]
    verify_keys: Vec<PathBuf>,
    /// With --verify-key: whether a signature by any one key suffices, or every key must sign.
    #[arg(long, value_enum, default_value = "any", requires = "verify_keys")]
    verify_require: Require,
    /// The credential the build reads the private source with (image registry, chart
    /// repository, https git): its name only. The secret is in the builder's credentials file
    /// (~/.config/ferry/credentials.json, mode 0600) locally, and in the Secrets Manager secret
    /// ferry/sources/NAME on AWS. See docs/design/build.md.
    #[arg(long, value_name = "NAME")]
    credentials: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default)]
pub enum Require {
    #[default]
    Any,
    All,
}

impl ComponentExtras {
    fn git_source(&self) -> Option<GitSource> {
        self.git.as_ref().map(|url| GitSource {
            git: url.clone(),
            reference: self.git_ref.clone(),
            path: self.git_path.clone(),
        })
    }

    /// The policy from the key files, each checked to be a key cosign verifies with.
    fn policy(&self) -> Result<Option<VerifyPolicy>> {
        if self.verify_keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(self.verify_keys.len());
        for path in &self.verify_keys {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("--verify-key {}: cannot read it", path.display()))?;
            if meta.len() > ferry_core::domain::MAX_POLICY_KEY_BYTES as u64 {
                bail!(
                    "--verify-key {}: {} bytes is not a public key file (cosign.pub is under 1 KiB)",
                    path.display(),
                    meta.len()
                );
            }
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--verify-key {}: cannot read it", path.display()))?;
            ferry_oci::cosign::PublicKey::from_pem(&pem)
                .with_context(|| format!("--verify-key {}", path.display()))?;
            keys.push(pem);
        }
        Ok(Some(VerifyPolicy {
            keys,
            require: match self.verify_require {
                Require::Any => KeyRequirement::Any,
                Require::All => KeyRequirement::All,
            },
        }))
    }
}

pub async fn component(cmd: ComponentCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        ComponentCommand::List { app, common } => list(app.as_deref(), &common, ctx).await,
        ComponentCommand::Add {
            app,
            name,
            kind,
            source,
            build_context,
            dockerfile,
            dir,
            repository,
            subscribe_all,
            extras,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let app = app_name(&app)?;
            let cname = component_name(&name)?;
            let kind = component_kind(kind, source, build_context, dockerfile, dir, &extras)?;
            let repo_text = repository.unwrap_or_else(|| format!("{app}/{cname}").to_lowercase());
            let repository = Repository::new(repo_text.as_str())
                .with_context(|| format!("repository {repo_text:?}; pass a valid --repository"))?;
            if extras.git.is_some() && matches!(kind, ComponentKind::Image { .. }) {
                bail!("--git is for components built from files; an image's --source names its registry");
            }
            let component = Component {
                app: app.clone(),
                name: cname.clone(),
                kind,
                repository,
                verify: extras.policy()?,
                credentials: extras.credentials.clone(),
            };
            component.check().map_err(anyhow::Error::msg)?;
            let subscribed =
                with_backend!(&backend, m => m.put_component(&component, subscribe_all).await)?;
            if common.json {
                println!(
                    "{}",
                    json!({"component": component, "subscribed": subscribed})
                );
            } else {
                println!(
                    "component {app}/{cname} ({}) → vendor/{}",
                    component.kind.name(),
                    component.repository
                );
                if !subscribed.is_empty() {
                    let ids: Vec<&str> = subscribed.iter().map(|i| i.as_str()).collect();
                    println!("subscribed: {}", ids.join(", "));
                }
            }
            Ok(())
        }
    }
}

/// `component list`: the components (of one app, or all), as a table or JSON.
async fn list(app: Option<&str>, common: &StateArgs, ctx: Option<&str>) -> Result<()> {
    let backend = common.open(ctx).await?;
    let app = app.map(app_name).transpose()?;
    let comps = with_backend!(&backend, m => m.list_components(app.as_ref()).await)?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&comps)?);
    } else {
        let rows: Vec<Vec<String>> = comps
            .iter()
            .map(|c| {
                vec![
                    format!("{}/{}", c.app, c.name),
                    c.kind.name().to_string(),
                    c.repository.to_string(),
                ]
            })
            .collect();
        print_table(&["COMPONENT", "KIND", "REPOSITORY"], &rows);
    }
    Ok(())
}

/// The component's kind from the flags; each kind names the flag it needs when it is missing.
fn component_kind(
    kind: Kind,
    source: Option<String>,
    context: Option<String>,
    dockerfile: String,
    dir: Option<String>,
    extras: &ComponentExtras,
) -> Result<ComponentKind> {
    let need = |v: Option<String>, flag: &str| {
        v.ok_or_else(|| anyhow::anyhow!("a {kind:?} component needs {flag}"))
    };
    Ok(match kind {
        Kind::Image => ComponentKind::Image {
            source: need(source, "--source")?,
        },
        Kind::DockerBuild => ComponentKind::DockerBuild {
            context: need(context, "--build-context")?,
            dockerfile,
            source: extras.git_source(),
        },
        Kind::HelmChart => ComponentKind::HelmChart {
            chart: ChartSource::Dir {
                path: need(dir, "--dir")?,
            },
            images: vec![],
            discover_images: false,
            values: None,
            source: extras.git_source(),
        },
        Kind::OpentofuModule => ComponentKind::OpentofuModule {
            dir: need(dir, "--dir")?,
            source: extras.git_source(),
        },
    })
}
