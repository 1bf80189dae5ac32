//! `ferry install`: add (local), register (any backend), list, show and remove installs. It
//! must never print a secret: identity secrets and agent keys stay in 0600 files that are only
//! named.

use anyhow::{bail, Result};
use clap::Subcommand;
use ferry_core::domain::{Component, RegistryTarget};
use ferry_core::id::InstallId;
use ferry_core::manage::Management as _;
use ferry_core::manage::{InstallRegistration, Registration};
use serde_json::json;

use super::{app_name, component_names, install_id, time, StateArgs};
use crate::context::Backend;
use crate::state::{print_table, short_digest};

#[derive(Subcommand, Debug)]
pub enum InstallCommand {
    /// Local only: add an install whose agent `ferry dev` runs (its key is generated into a
    /// 0600 file), or, with both keys, one whose agent runs elsewhere.
    Add {
        id: String,
        #[arg(long)]
        app: String,
        /// Components it receives (comma separated; default: every component of the app).
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        /// The agent's public key (ferry-x25519-pub:…) when the agent runs elsewhere.
        #[arg(long, requires = "report_key")]
        public_key: Option<String>,
        /// The agent's report key (ferry-agent-ed25519:…): only reports signed with it count.
        #[arg(long, requires = "public_key")]
        report_key: Option<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Register a customer's install: its queue (with a dead-letter queue, admitting only its
    /// agent), its record and subscriptions. Running it again changes nothing, or updates.
    Register {
        id: String,
        #[arg(long)]
        app: String,
        /// The agent's public key (ferry-x25519-pub:…, from `ferry-agent keygen`).
        #[arg(long)]
        public_key: String,
        /// The agent's report key (ferry-agent-ed25519:…, from `ferry-agent keygen`).
        #[arg(long)]
        report_key: String,
        /// The IAM role the agent runs as (AWS: the only principal its queue admits).
        #[arg(long)]
        agent_role_arn: Option<String>,
        /// The install's registry, HOST[/NAMESPACE] (default namespace installs/<id>).
        #[arg(long)]
        registry: Option<String>,
        /// Components it receives (comma separated; default: every component of the app).
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        #[command(flatten)]
        common: StateArgs,
    },
    /// List installs.
    List {
        #[command(flatten)]
        common: StateArgs,
    },
    /// One install: its settings, last sync, last report and what it holds.
    Show {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
    /// Remove an install: delete its queue and stop fan-out to it (its lineage stays).
    Remove {
        id: String,
        #[command(flatten)]
        common: StateArgs,
    },
}

/// `HOST[/NAMESPACE]` → a registry target (namespace `installs/<id>` by default).
fn registry_target(text: &str, id: &InstallId) -> Result<RegistryTarget> {
    let (endpoint, namespace) = match text.split_once('/') {
        Some((h, ns)) => (h, ns.trim_matches('/').to_string()),
        None => (text, format!("installs/{id}")),
    };
    if endpoint.is_empty() || namespace.is_empty() {
        bail!("--registry {text:?}: want HOST[/NAMESPACE], e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ferry");
    }
    Ok(RegistryTarget {
        endpoint: endpoint.to_string(),
        namespace,
    })
}

fn print_registration(r: &Registration, json_out: bool, extra: serde_json::Value) -> Result<()> {
    if json_out {
        let mut v = json!({
            "install": r.install,
            "outcome": r.outcome,
            "agent_settings": r.agent_settings,
        });
        if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        println!("{v}");
        return Ok(());
    }
    let i = &r.install;
    let comps: Vec<&str> = i.components.iter().map(|c| c.as_str()).collect();
    println!(
        "install {} {}: app {}, components {}",
        i.id,
        match r.outcome {
            ferry_core::manage::RegistrationOutcome::Created => "registered",
            ferry_core::manage::RegistrationOutcome::Updated => "updated",
            ferry_core::manage::RegistrationOutcome::Unchanged => "unchanged (already registered)",
        },
        i.app,
        comps.join(", ")
    );
    println!("  queue            {}", i.queue);
    println!(
        "  registry         {}/{}",
        i.registry.endpoint, i.registry.namespace
    );
    println!("  public key       {}", i.agent_public_key);
    println!("  report key       {}", i.agent_report_key);
    println!("  agent settings (pass to ferry-agent):");
    for (k, v) in &r.agent_settings {
        println!("    --{k} {v}");
    }
    Ok(())
}

pub async fn install(cmd: InstallCommand, ctx: Option<&str>) -> Result<()> {
    match cmd {
        InstallCommand::Add {
            id,
            app,
            components,
            public_key,
            report_key,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let Backend::Local(m) = &backend else {
                bail!("`ferry install add` is for a local state dir; on AWS the customer runs `ferry-agent keygen` and you run `ferry install register ID --app A --public-key K --report-key R --agent-role-arn ARN --registry R`");
            };
            let id = install_id(&id)?;
            let external = public_key.is_some();
            let registration =
                local_registration(m, &id, &app, &components, public_key, report_key)?;
            let r = m.register_install(&registration).await?;
            print_added(m.state(), &r, &id, external, common.json);
        }
        InstallCommand::Register {
            id,
            app,
            public_key,
            report_key,
            agent_role_arn,
            registry,
            components,
            common,
        } => {
            let backend = common.open(ctx).await?;
            let id = install_id(&id)?;
            let registry = registry
                .as_deref()
                .map(|r| registry_target(r, &id))
                .transpose()?;
            let registration = InstallRegistration {
                id,
                app: app_name(&app)?,
                components: component_names(&components)?,
                agent_public_key: public_key,
                agent_report_key: report_key,
                agent_role_arn,
                registry,
            };
            let r = with_backend!(&backend, m => m.register_install(&registration).await)?;
            print_registration(&r, common.json, json!({}))?;
        }
        InstallCommand::List { common } => {
            list(&common, ctx).await?;
        }
        InstallCommand::Show { id, common } => {
            show(&id, &common, ctx).await?;
        }
        InstallCommand::Remove { id, common } => {
            let backend = common.open(ctx).await?;
            let id = install_id(&id)?;
            let removed = with_backend!(&backend, m => m.remove_install(&id).await)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!(
                    "install {} removed: queue {} deleted, no more syncs; its lineage stays (`ferry lineage`)",
                    removed.install, removed.queue_deleted
                );
            }
        }
    }
    Ok(())
}

/// The registration `install add` makes: the given agent keys, or ones `ferry dev` generates
/// for the install (into 0600 files).
fn local_registration(
    m: &ferry_dev::manage::LocalManagement,
    id: &InstallId,
    app: &str,
    components: &[String],
    public_key: Option<String>,
    report_key: Option<String>,
) -> Result<InstallRegistration> {
    let keys = match (public_key, report_key) {
        (Some(public_key), Some(report_key)) => ferry_dev::state::AgentPublicKeys {
            public_key,
            report_key,
        },
        _ => m.dev_agent_keys(id)?,
    };
    Ok(InstallRegistration {
        id: id.clone(),
        app: app_name(app)?,
        components: component_names(components)?,
        agent_public_key: keys.public_key,
        agent_report_key: keys.report_key,
        agent_role_arn: None,
        registry: None,
    })
}

/// What `install add` prints: the new install, where its identity secret and agent key are
/// (named, never shown), and how to run an agent that runs elsewhere.
fn print_added(
    state: &ferry_dev::state::StateDir,
    r: &Registration,
    id: &InstallId,
    external: bool,
    json_out: bool,
) {
    let vendor_public_key = r
        .agent_settings
        .get("vendor-public-key")
        .cloned()
        .unwrap_or_default();
    let vendor_registry = r
        .agent_settings
        .get("vendor-registry")
        .cloned()
        .unwrap_or_default();
    if json_out {
        println!(
            "{}",
            json!({"install": r.install, "outcome": r.outcome,
                "identity": format!("agent:{id}"),
                "identity_secret_file": state.agent_secret_path(id),
                "agent_key_file": if external { None } else { Some(state.agent_key_path(id)) },
                "vendor_registry": vendor_registry, "vendor_public_key": vendor_public_key})
        );
    } else {
        let comps: Vec<&str> = r.install.components.iter().map(|c| c.as_str()).collect();
        println!(
            "install {id} added: app {}, components {}",
            r.install.app,
            comps.join(", ")
        );
        println!("  queue            {}", r.install.queue);
        println!("  public key       {}", r.install.agent_public_key);
        println!("  report key       {}", r.install.agent_report_key);
        println!(
            "  identity         agent:{id}, secret in {} (0600)",
            state.agent_secret_path(id).display()
        );
        if external {
            println!("  agent            runs elsewhere (its key was given); run it with");
            println!("                   --vendor-registry {vendor_registry} --vendor-public-key {vendor_public_key}");
        } else {
            println!(
                "  agent key        {} (0600); a running `ferry dev` starts its agent",
                state.agent_key_path(id).display()
            );
        }
    }
}

/// `install list`: every install with its liveness, as a table or JSON.
async fn list(common: &StateArgs, ctx: Option<&str>) -> Result<()> {
    let backend = common.open(ctx).await?;
    let installs = with_backend!(&backend, m => m.list_installs().await)?;
    let now = crate::console::now_ms();
    let stale_after = crate::console::STALE_AFTER.as_millis() as u64;
    let mut statuses = Vec::with_capacity(installs.len());
    for i in &installs {
        statuses.push(with_backend!(&backend, m => m.install_status(&i.id).await)?);
    }
    if common.json {
        let rows: Vec<serde_json::Value> = statuses
            .iter()
            .map(|st| {
                let mut v = serde_json::to_value(&st.install).unwrap_or_default();
                v["last_seen"] = json!(st.last_seen);
                v["liveness"] = json!(st.liveness(now, stale_after).as_str());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let rows: Vec<Vec<String>> = statuses
            .iter()
            .map(|st| {
                let i = &st.install;
                let comps: Vec<&str> = i.components.iter().map(|c| c.as_str()).collect();
                let liveness = st.liveness(now, stale_after);
                vec![
                    i.id.to_string(),
                    i.app.to_string(),
                    comps.join(","),
                    if liveness.is_stale() { "STALE" } else { "" }.to_string(),
                    st.last_seen
                        .map(|t| ferry_core::telemetry::ago(t, now))
                        .unwrap_or_else(|| "never".into()),
                    i.queue.to_string(),
                    format!("{}/{}", i.registry.endpoint, i.registry.namespace),
                ]
            })
            .collect();
        print_table(
            &[
                "INSTALL",
                "APP",
                "COMPONENTS",
                "STALE",
                "LAST SEEN",
                "QUEUE",
                "REGISTRY",
            ],
            &rows,
        );
    }
    Ok(())
}

/// `install show`: the install's status, versions (desired vs current) and how its nodes pull.
async fn show(id: &str, common: &StateArgs, ctx: Option<&str>) -> Result<()> {
    let backend = common.open(ctx).await?;
    let id = install_id(id)?;
    let st = with_backend!(&backend, m => m.install_status(&id).await)?;
    let versions = with_backend!(&backend, m => {
        ferry_core::release_port::install_versions(m.store(), &st.install, &st.holds).await
    })?;
    let comps = with_backend!(&backend, m => m.list_components(Some(&st.install.app)).await)?;
    let signatures = verified_signatures(&comps, &st.holds);
    if common.json {
        let mut out = serde_json::to_value(&st)?;
        out["versions"] = serde_json::to_value(&versions)?;
        out["signatures_verified"] = serde_json::to_value(&signatures)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let i = &st.install;
    print_status(&st);
    print_versions(&versions);
    for v in &signatures {
        println!(
            "  signature        {} {}: verified (key {}) at the build and by its agent",
            v.component,
            short_digest(v.digest.as_str()),
            v.keys.join(", ")
        );
    }
    print_node_pull(&backend, &id, &i.registry.endpoint);
    Ok(())
}

/// The install's registry, liveness, last heartbeat, last sync and what it holds.
fn print_status(st: &ferry_core::manage::InstallStatus) {
    let i = &st.install;
    let comps: Vec<&str> = i.components.iter().map(|c| c.as_str()).collect();
    println!("install {}", i.id);
    println!("  app              {}", i.app);
    println!("  components       {}", comps.join(", "));
    println!("  queue            {}", i.queue);
    println!(
        "  registry         {}/{}",
        i.registry.endpoint, i.registry.namespace
    );
    let now = crate::console::now_ms();
    let liveness = st.liveness(now, crate::console::STALE_AFTER.as_millis() as u64);
    println!(
        "  last seen        {}{}",
        st.last_seen
            .map(|t| format!("{} ({})", time(t), ferry_core::telemetry::ago(t, now)))
            .unwrap_or_else(|| "never".into()),
        if liveness.is_stale() { "  STALE" } else { "" }
    );
    match &st.telemetry {
        Some(t) => {
            println!("  agent version    {}", t.agent_version);
            println!(
                "  last poll        {}",
                t.last_poll_at.map(time).unwrap_or_else(|| "never".into())
            );
            println!(
                "  last agent sync  {}",
                t.last_sync_at
                    .map(time)
                    .unwrap_or_else(|| "none yet".into())
            );
            println!("  health           {}", t.health);
        }
        None => println!("  heartbeat        none received"),
    }
    match &st.last_sync {
        Some(s) => println!(
            "  last sync        {} {} {} ({})",
            s.id,
            s.repository,
            short_digest(s.digest.as_str()),
            s.status()
        ),
        None => println!("  last sync        none"),
    }
    if st.holds.is_empty() {
        println!("  holds            nothing yet");
    } else {
        let rows: Vec<Vec<String>> = st
            .holds
            .iter()
            .map(|h| {
                vec![
                    h.repository.to_string(),
                    h.digest.to_string(),
                    time(h.since),
                    h.build_id.to_string(),
                ]
            })
            .collect();
        println!("  holds:");
        print_table(&["REPOSITORY", "DIGEST", "SINCE", "BUILD"], &rows);
    }
}

/// One row per component: the desired build (the newest release naming the install) and the
/// current one (what its agent verified).
fn print_versions(versions: &[ferry_core::release_port::ComponentVersions]) {
    // Desired (the newest release naming the install) vs current (what its agent verified).
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let desired = v.desired.as_ref().map_or_else(
                || "no release yet".to_string(),
                |d| {
                    format!(
                        "{} {} ({} in {})",
                        d.build_id,
                        short_digest(d.digest.as_str()),
                        d.state.as_str(),
                        d.release_id
                    )
                },
            );
            let current = v.current.as_ref().map_or_else(
                || "nothing".to_string(),
                |c| format!("{} {}", c.build_id, short_digest(c.digest.as_str())),
            );
            let in_sync = if v.in_sync { "yes" } else { "no" };
            vec![
                v.component.to_string(),
                desired,
                current,
                in_sync.to_string(),
            ]
        })
        .collect();
    println!("  versions:");
    print_table(&["COMPONENT", "DESIRED", "CURRENT", "IN SYNC"], &rows);
}

/// How the install's nodes pull: a pull-only identity whose secret stays in its file.
fn print_node_pull(backend: &Backend, id: &InstallId, endpoint: &str) {
    // How the install's nodes pull: a pull-only identity whose secret stays in its file.
    match backend {
        Backend::Local(m) => match ferry_dev::state::node_pull_recipe(m.state(), id, endpoint) {
            Ok(recipe) => {
                println!("  nodes pull with:");
                for line in recipe.render().lines() {
                    println!("    {line}");
                }
            }
            Err(e) => println!("  nodes pull with  (no node identity: {e:#})"),
        },
        #[cfg(feature = "aws")]
        Backend::Aws(_) => println!(
            "  nodes pull with  the customer stack's PullPrincipalArns (docs/install-side.md)"
        ),
    }
}

// ---- install show: verified signatures (issue 13) ---------------------------------------------

/// A component the install holds whose signature policy it passed.
#[derive(Debug, serde::Serialize)]
struct SignatureVerified {
    component: ferry_core::id::ComponentName,
    digest: ferry_core::id::Digest,
    /// Ids of the policy's keys (`ferry_oci::cosign::PublicKey::id`).
    keys: Vec<String>,
}

/// For each component with a verification policy that the install holds: its digest passed
/// that policy, since the build verifies before importing and the agent verifies again before
/// it tags anything into the install (a failure ends the sync `policy_failed`, holding nothing).
/// Holds name the vendor repository (`vendor/<component repository>` locally).
fn verified_signatures(
    components: &[Component],
    holds: &[ferry_core::manage::Held],
) -> Vec<SignatureVerified> {
    components
        .iter()
        .filter_map(|c| {
            let policy = c.verify.as_ref()?;
            let held = holds.iter().find(|h| h.is_of(&c.repository))?;
            let keys = policy.keys.iter().map(|pem| {
                ferry_oci::cosign::PublicKey::from_pem(pem)
                    .map_or_else(|_| "(unreadable key)".to_string(), |k| k.id().to_string())
            });
            Some(SignatureVerified {
                component: c.name.clone(),
                digest: held.digest.clone(),
                keys: keys.collect(),
            })
        })
        .collect()
}
