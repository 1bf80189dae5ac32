//! Private sources against real peers: an image in a docker-registry with htpasswd auth, a
//! classic chart repository behind Basic auth, a git repository over smart HTTP (`git
//! http-backend`) behind a token, and the credential read from Secrets Manager (moto) by the
//! `ferry-build` binary. Each build fails clearly without the named credential and succeeds
//! with it, and the secret is never in an error, a log line or the build's output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_build::{ArtifactBuilder, BuildConfig, BuildError, SourceCredentials};
use ferry_core::domain::{ChartSource, Component, ComponentKind, GitSource};
use ferry_core::id::{AppName, BuildId, ComponentName, Repository};
use ferry_core::ports::BuildSpec;
use ferry_oci::{
    ClientConfig, CopyEngine, CopyOptions, Credential, CredentialStore, LayoutRef, Reference,
    RegistryClient, RegistryRef, RepoRef, Secret,
};
use ferry_testkit::private_registry::{PrivateRegistry, PASSWORD, USER};

/// Everything a log line says, for checking the secret never reached one.
fn capture_logs() -> (ferry_testkit::Logs, tracing::subscriber::DefaultGuard) {
    let logs = ferry_testkit::Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, guard)
}

fn component(name: &str, kind: ComponentKind, credentials: Option<&str>) -> Component {
    Component {
        app: AppName::new("acme").unwrap(),
        name: ComponentName::new(name).unwrap(),
        kind,
        repository: Repository::new(format!("acme/{name}")).unwrap(),
        verify: None,
        credentials: credentials.map(str::to_string),
    }
}

fn spec(component: Component, build_id: &str) -> BuildSpec {
    BuildSpec {
        build_id: BuildId::new(build_id).unwrap(),
        component,
        source_ref: String::new(),
    }
}

/// A credentials file (mode 0600) holding `entries` (name → JSON entry).
fn credentials_file(dir: &Path, entries: serde_json::Value) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("credentials.json");
    std::fs::write(
        &path,
        serde_json::json!({ "credentials": entries }).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn builder(env: &common::Env, sources: SourceCredentials) -> ArtifactBuilder {
    let mut config = BuildConfig::new(env.registry.host(), common::demo_root())
        .with_prefix(common::PREFIX)
        .with_sources(sources);
    config.work_dir = Some(env.dir.path().join("work"));
    ArtifactBuilder::new(config).unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    let basic = base64_basic(USER, PASSWORD);
    assert!(
        !text.contains(PASSWORD) && !text.contains(&basic),
        "the source secret leaked into {what}: {text}"
    );
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Pushes the demo's base image (`examples/demo/base-image:v1`) into the private registry as
/// `acme/private:v1`; returns its digest.
async fn push_private_image(reg: &PrivateRegistry) -> String {
    let mut creds = CredentialStore::new();
    creds.insert(
        &reg.addr,
        None,
        Credential::Basic {
            username: USER.into(),
            password: Secret::new(PASSWORD),
        },
    );
    let client = RegistryClient::new(ClientConfig {
        credentials: creds,
        ..ClientConfig::default()
    })
    .unwrap();
    let engine = CopyEngine::new(client, CopyOptions::default());
    let source = Reference::Layout(LayoutRef {
        dir: common::demo_root().join("base-image"),
        tag: Some("v1".into()),
        digest: None,
    });
    let dest = Reference::Registry(RegistryRef {
        repo: RepoRef::new(reg.addr.clone(), "acme/private"),
        tag: Some("v1".into()),
        digest: None,
    });
    let report = engine
        .copy(&source, &[dest], Arc::new(ferry_oci::progress::NoProgress))
        .await
        .unwrap();
    report.digest.unwrap().to_string()
}

#[tokio::test]
async fn a_private_image_builds_with_its_named_credential_only() {
    let reg = PrivateRegistry::start().await;
    let digest = push_private_image(&reg).await;
    let env = common::env().await;
    let dir = tempfile::tempdir().unwrap();
    let (logs, _guard) = capture_logs();
    let image = ComponentKind::Image {
        source: format!("{}/acme/private:v1", reg.addr),
    };

    // No credential named: the registry refuses, and the error says what to do.
    let anonymous = builder(&env, SourceCredentials::None);
    let err = anonymous
        .build(&spec(component("private", image.clone(), None), "p-1"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BuildError::Oci { .. }), "{err:?}");
    assert!(text.contains("401") || text.contains("auth"), "{text}");

    // A credential named but not in the file: the error names the file and the name.
    let file = credentials_file(
        dir.path(),
        serde_json::json!({"other": {"username": USER, "password": PASSWORD}}),
    );
    let from_file = builder(&env, SourceCredentials::File(file.clone()));
    let err = from_file
        .build(&spec(
            component("private", image.clone(), Some("acme")),
            "p-2",
        ))
        .await
        .unwrap_err();
    let missing = err.to_string();
    assert!(matches!(err, BuildError::Credentials { .. }), "{err:?}");
    assert!(
        missing.contains("\"acme\"") && missing.contains(&file.display().to_string()),
        "{missing}"
    );

    // The wrong password: refused by the registry, the secret not repeated.
    credentials_file(
        dir.path(),
        serde_json::json!({"acme": {"username": USER, "password": "not-the-password"}}),
    );
    let refused = from_file
        .build(&spec(
            component("private", image.clone(), Some("acme")),
            "p-3",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("401"), "{refused}");
    assert!(!refused.contains("not-the-password"), "{refused}");

    // The right one: the image lands in the vendor registry with its digest.
    credentials_file(
        dir.path(),
        serde_json::json!({"acme": {"username": USER, "password": PASSWORD}}),
    );
    let built = from_file
        .build(&spec(component("private", image, Some("acme")), "p-4"))
        .await
        .unwrap();
    assert_eq!(built.digest.as_str(), digest);
    assert_eq!(built.repository.as_str(), "vendor/acme/private");
    let pushed = env.manifest("vendor/acme/private", "p-4").await;
    assert_eq!(pushed.digest.to_string(), digest);

    for (what, text) in [
        ("the anonymous error", text),
        ("the missing-name error", missing),
        ("the refused error", refused),
        ("the build record", serde_json::to_string(&built).unwrap()),
        ("the log", logs.text()),
    ] {
        assert_no_secret(what, &text);
    }
    assert!(
        logs.text().contains("source credential resolved"),
        "the log says a credential was used (by name): {}",
        logs.text()
    );
}

// ---- a chart repository behind Basic auth -----------------------------------------------------

/// A classic chart repository (index.yaml + the demo chart's archive) that answers only
/// `Authorization: Basic USER:PASSWORD`; counts the requests that came without it.
struct AuthChartRepo {
    served: ferry_testkit::Served,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn auth_chart_repo() -> AuthChartRepo {
    let dir = tempfile::tempdir().unwrap();
    let chart = component(
        "chart",
        ComponentKind::helm_chart(ChartSource::Dir {
            path: "chart".into(),
        }),
        None,
    );
    let package =
        ferry_build::package_chart(&chart, &common::demo_root().join("chart"), dir.path()).unwrap();
    let archive = std::fs::read(&package.archive).unwrap();
    let hex = package
        .archive_digest
        .to_string()
        .trim_start_matches("sha256:")
        .to_string();
    let index = format!(
        "apiVersion: v1\nentries:\n  demo-chart:\n    - name: demo-chart\n      version: 0.1.0\n      \
         urls: [demo-chart-0.1.0.tgz]\n      digest: {hex}\n"
    );
    let want = format!("Basic {}", base64_basic(USER, PASSWORD));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let (index, archive, want, counter) = (
                index.clone(),
                archive.clone(),
                want.clone(),
                counter.clone(),
            );
            async move {
                use axum::http::StatusCode;
                use axum::response::IntoResponse;
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if auth != want {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return (
                        StatusCode::UNAUTHORIZED,
                        [("www-authenticate", "Basic realm=\"charts\"")],
                        Vec::new(),
                    )
                        .into_response();
                }
                match uri.path() {
                    "/charts/index.yaml" => index.into_bytes().into_response(),
                    "/charts/demo-chart-0.1.0.tgz" => archive.into_response(),
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        },
    );
    AuthChartRepo {
        served: ferry_testkit::Served::start(app).await,
        refused,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_chart_repository_behind_basic_auth_builds_with_its_named_credential() {
    let repo = auth_chart_repo().await;
    let env = common::env().await;
    let dir = tempfile::tempdir().unwrap();
    let (logs, _guard) = capture_logs();
    let url = format!("{}/charts", repo.served.endpoint());
    let kind = ComponentKind::helm_chart(ChartSource::Repo {
        url: url.clone(),
        chart: "demo-chart".into(),
        version: Some("0.1.0".into()),
    });

    let anonymous = builder(&env, SourceCredentials::None);
    let err = anonymous
        .build(&spec(component("charts", kind.clone(), None), "c-1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    assert!(
        err.contains("name a credential"),
        "the error says what to do: {err}"
    );
    assert!(repo.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let file = credentials_file(
        dir.path(),
        serde_json::json!({"charts": {"username": USER, "password": PASSWORD}}),
    );
    let with = builder(&env, SourceCredentials::File(file));
    let built = with
        .build(&spec(component("charts", kind, Some("charts")), "c-2"))
        .await
        .unwrap();
    let manifest = env.manifest_json("vendor/acme/charts", "c-2").await;
    assert_eq!(
        manifest["config"]["mediaType"],
        ferry_oci::media::HELM_CONFIG
    );
    assert_eq!(built.repository.as_str(), "vendor/acme/charts");
    assert_no_secret("the chart error", &err);
    assert_no_secret("the log", &logs.text());
}

// ---- git over smart HTTP with a token ---------------------------------------------------------

/// `git http-backend` behind a small CGI server that wants one Authorization header (the
/// server script is `tests/support/git_http.py`); it prints its port once it listens.
struct GitServer {
    child: tokio::process::Child,
    port: u16,
}

async fn git_server(root: &Path, want: &str) -> GitServer {
    use tokio::io::AsyncBufReadExt as _;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(root)
        .env("FERRY_TEST_WANT_AUTH", want)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the git test server printed {line:?} instead of its port"));
    GitServer { child, port }
}

fn sh_git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_private_git_repository_is_fetched_with_a_token_that_stays_off_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // A repository holding the demo's OpenTofu module, served bare.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    sh_git(&work, &["init", "-q", "-b", "main"]);
    let module = work.join("module");
    std::fs::create_dir_all(&module).unwrap();
    let mut f = std::fs::File::create(module.join("main.tf")).unwrap();
    writeln!(f, "output \"hello\" {{ value = \"private\" }}").unwrap();
    sh_git(&work, &["add", "."]);
    sh_git(&work, &["commit", "-q", "-m", "one"]);
    let commit = sh_git(&work, &["rev-parse", "HEAD"]);
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    sh_git(
        dir.path(),
        &["clone", "-q", "--bare", "work", "served/app.git"],
    );

    let token = "ghp-Token-5e6f7a8b";
    let want = format!("Basic {}", base64_basic("x-access-token", token));
    let server = git_server(&served, &want).await;
    let url = format!("http://127.0.0.1:{}/app.git", server.port);
    let kind = ComponentKind::OpentofuModule {
        dir: "module".into(),
        source: Some(GitSource {
            git: url.clone(),
            reference: Some("main".into()),
            path: None,
        }),
    };
    let env = common::env().await;
    let (logs, _guard) = capture_logs();

    let err = builder(&env, SourceCredentials::None)
        .build(&spec(component("module", kind.clone(), None), "g-1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("git fetch"), "{err}");

    let file = credentials_file(dir.path(), serde_json::json!({"git": {"token": token}}));
    let built = builder(&env, SourceCredentials::File(file))
        .build(&spec(component("module", kind, Some("git")), "g-2"))
        .await
        .unwrap();
    assert_eq!(built.revision.as_deref(), Some(commit.as_str()));
    let manifest = env.manifest_json("vendor/acme/module", "g-2").await;
    assert_eq!(
        manifest["annotations"][ferry_build::ANNOTATION_SOURCE],
        url.as_str(),
        "the recorded source is the plain URL"
    );
    for (what, text) in [
        ("the error", err),
        ("the log", logs.text()),
        ("the manifest", manifest.to_string()),
    ] {
        assert!(
            !text.contains(token) && !text.contains(&want),
            "the git token leaked into {what}: {text}"
        );
    }
    drop(server.child);
}

// ---- on AWS: the credential from Secrets Manager ----------------------------------------------

#[tokio::test]
async fn the_build_binary_reads_the_named_credential_from_secrets_manager() {
    let reg = PrivateRegistry::start().await;
    let digest = push_private_image(&reg).await;
    let env = common::env().await;
    let moto = ferry_testkit::Moto::start_within(std::time::Duration::from_secs(15)).await;
    let endpoint = moto.endpoint();
    let secret = serde_json::json!({"username": USER, "password": PASSWORD}).to_string();
    ferry_testkit::create_secret(&endpoint, "ferry/sources/acme", &secret).await;

    let run = |name: &str, build_id: &str| {
        let c = component(
            "private",
            ComponentKind::Image {
                source: format!("{}/acme/private:v1", reg.addr),
            },
            Some(name),
        );
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-build"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.dir.path())
            .env("DOCKER_CONFIG", "/nonexistent-ferry-test")
            .env("FERRY_BUILD_ID", build_id)
            .env("FERRY_COMPONENT", serde_json::to_string(&c).unwrap())
            .env("FERRY_VENDOR_REGISTRY", env.registry.host())
            .env("FERRY_REPOSITORY_PREFIX", common::PREFIX)
            .env("FERRY_APP_ROOT", common::demo_root())
            .env("FERRY_SOURCE_SECRET_PREFIX", "ferry/sources/")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", ferry_testkit::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "debug");
        cmd.output()
    };

    let out = run("acme", "sm-1").await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stderr}");
    let event = ferry_core::parse_event(&out.stdout).unwrap();
    let ferry_core::event::Payload::BuildCompleted(done) = event.payload else {
        panic!("{stdout}")
    };
    assert_eq!(done.digest.unwrap().as_str(), digest);
    assert_no_secret("stdout", &stdout);
    assert_no_secret("stderr (logs)", &stderr);

    // A name with no secret: the build fails (exit 1, a failed build.completed) and says which
    // secret to create.
    let out = run("nope", "sm-2").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let event = ferry_core::parse_event(&out.stdout).unwrap();
    let ferry_core::event::Payload::BuildCompleted(done) = event.payload else {
        panic!()
    };
    let error = done.error.unwrap();
    assert!(error.contains("ferry/sources/nope"), "{error}");
}
