//! `ferry-build`: runs one build (what CodeBuild runs in AWS), prints its `build.completed`
//! event as JSON on stdout and, with `--event-bus` (`FERRY_EVENT_BUS`, set by the build
//! project), posts that event to the vendor's Ferry bus: that post is how the IMS learns the
//! result on AWS.
//!
//! Thin: parse flags or environment, call the library, answer. Exit 0 when the build
//! succeeded (and was posted); 1 when it failed (the failed event is still printed and
//! posted, the error goes to stderr); 2 on bad input; 3 when the event could not be posted
//! (CodeBuild then reports the build FAILED, which marks it failed). It must never print a
//! credential.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_build::completion;
use ferry_build::{sources, ArtifactBuilder, BuildConfig, BuildError, SourceCredentials};
use ferry_core::domain::Component;
use ferry_core::id::BuildId;
use ferry_core::ports::BuildSpec;
use ferry_oci::{Credential, CredentialStore, Secret};

#[derive(Parser)]
#[command(
    name = "ferry-build",
    version,
    about = "Build one Ferry component and push it to the vendor registry"
)]
struct Args {
    /// The build id; also the tag the artifact gets.
    #[arg(long, env = "FERRY_BUILD_ID")]
    build_id: String,
    /// The component, as the JSON of a ferry-core Component.
    #[arg(long, env = "FERRY_COMPONENT")]
    component: String,
    /// The source ref (a git ref for sources; a tag or digest for `image` components).
    #[arg(long, env = "FERRY_SOURCE_REF", default_value = "")]
    source_ref: String,
    /// The vendor registry, host[:port].
    #[arg(long, env = "FERRY_VENDOR_REGISTRY")]
    vendor_registry: String,
    /// Repository prefix in the vendor registry (e.g. `vendor`).
    #[arg(long, env = "FERRY_REPOSITORY_PREFIX", default_value = "")]
    repository_prefix: String,
    /// Directory component paths are relative to (the source checkout).
    #[arg(long, env = "FERRY_APP_ROOT", default_value = ".")]
    app_root: PathBuf,
    /// Parent directory for temporary build files.
    #[arg(long, env = "FERRY_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Registry user; without it, credentials come from the docker config.
    #[arg(long, env = "FERRY_REGISTRY_USERNAME")]
    registry_username: Option<String>,
    /// Registry password (prefer the environment variable to the flag).
    #[arg(long, env = "FERRY_REGISTRY_PASSWORD", hide_env_values = true)]
    registry_password: Option<String>,
    /// Allow plain HTTP to registries that are not on loopback.
    #[arg(long, env = "FERRY_INSECURE")]
    insecure: bool,
    /// Post the build.completed event to this EventBridge bus (name or ARN) with the ambient
    /// AWS credentials (in CodeBuild, the build role). Without it the event is only printed.
    #[arg(long, env = "FERRY_EVENT_BUS")]
    event_bus: Option<String>,
    /// Read the credential a component names (`"credentials": NAME`) from the Secrets Manager
    /// secret `<prefix><NAME>` (the vendor stack sets `ferry/sources/`; only the build role may
    /// read those). Without it, from the local credentials file (`FERRY_CREDENTIALS_FILE`).
    #[arg(long, env = "FERRY_SOURCE_SECRET_PREFIX")]
    source_secret_prefix: Option<String>,
    /// The app root already is the checkout of the component's git source, at this commit
    /// (CodeBuild checked it out as a source override); the build does not fetch it again.
    #[arg(long, env = "FERRY_SOURCE_REVISION")]
    source_revision: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let event_bus = args.event_bus.clone().filter(|b| !b.trim().is_empty());
    let secret_prefix = args
        .source_secret_prefix
        .clone()
        .filter(|p| !p.trim().is_empty());
    let (builder, spec) = match setup(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ferry-build: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-build: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let builder = match &secret_prefix {
            Some(prefix) => with_secret_sources(builder, &spec, prefix).await?,
            None => builder,
        };
        builder.build(&spec).await
    });
    let event = completion::completion_event(&spec.build_id, &result);
    match event.to_json() {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("ferry-build: cannot encode the result: {e}"),
    }
    if let Some(bus) = event_bus {
        let posted = runtime.block_on(async {
            let config = ferry_aws::config::from_env().await;
            completion::post(&config, &bus, &event).await
        });
        match posted {
            Ok(id) => eprintln!(
                "ferry-build: build.completed for {} posted to {bus} (event {id})",
                spec.build_id
            ),
            Err(e) => {
                eprintln!("ferry-build: {e}");
                return ExitCode::from(3);
            }
        }
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-build: build {} failed: {e}", spec.build_id);
            ExitCode::from(1)
        }
    }
}

/// The builder with the credential the component names, read from Secrets Manager (the build
/// role's ambient credentials); the same builder when it names none. A failure here is the
/// build's failure (reported like any other), never the secret.
async fn with_secret_sources(
    builder: ArtifactBuilder,
    spec: &BuildSpec,
    prefix: &str,
) -> Result<ArtifactBuilder, BuildError> {
    let Some(name) = &spec.component.credentials else {
        return Ok(builder);
    };
    let config = ferry_aws::config::from_env().await;
    let component = spec.component.name.as_str();
    let credential = sources::from_secrets_manager(&config, prefix, component, name).await?;
    let sources = SourceCredentials::single(
        format!("the Secrets Manager secret {prefix}{name}"),
        name,
        credential,
    );
    ArtifactBuilder::new(builder.config().clone().with_sources(sources))
}

fn setup(args: Args) -> Result<(ArtifactBuilder, BuildSpec)> {
    let build_id = BuildId::new(args.build_id).context("FERRY_BUILD_ID / --build-id")?;
    let component: Component = serde_json::from_str(&args.component).context(
        "FERRY_COMPONENT / --component must be the JSON of a component, e.g. \
         {\"app\":\"shop\",\"name\":\"web\",\"kind\":\"image\",\"source\":\"…\",\"repository\":\"shop/web\"}",
    )?;
    let mut credentials = CredentialStore::load_default().context("reading the docker config")?;
    match (args.registry_username, args.registry_password) {
        (Some(username), Some(password)) => credentials.insert(
            &args.vendor_registry,
            None,
            Credential::Basic {
                username,
                password: Secret::new(password),
            },
        ),
        (None, None) => {}
        _ => anyhow::bail!(
            "set both FERRY_REGISTRY_USERNAME and FERRY_REGISTRY_PASSWORD, or neither"
        ),
    }
    let mut config = BuildConfig::new(args.vendor_registry, args.app_root)
        .with_prefix(args.repository_prefix)
        .with_credentials(credentials);
    config.insecure = args.insecure;
    config.work_dir = args.work_dir;
    config.checked_out = args.source_revision.filter(|r| !r.trim().is_empty());
    let builder = ArtifactBuilder::new(config)?;
    Ok((
        builder,
        BuildSpec {
            build_id,
            component,
            source_ref: args.source_ref,
        },
    ))
}
