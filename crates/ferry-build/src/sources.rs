//! Private sources: the named credential a component's build uses to read its own source (the
//! image's registry, the chart repository, the git repository).
//!
//! A component names a credential (`"credentials": "acme-registry"`); the secret lives where the
//! builder runs, never in the component record:
//! - **locally**, in a JSON credentials file (`$FERRY_CREDENTIALS_FILE`, else
//!   `$FERRY_CONFIG_DIR/credentials.json`, else `$XDG_CONFIG_HOME/ferry/credentials.json`, else
//!   `~/.config/ferry/credentials.json`) that only its owner may read (mode 0600);
//! - **on AWS**, in the Secrets Manager secret `<prefix><name>` (prefix `ferry/sources/`), which
//!   only the build role may read.
//!
//! Each entry is `{"username": U, "password": P}` or `{"token": T}` (optionally with a
//! `username`). Components that name no credential still get the docker `config.json` entry
//! of their registry's host (ferry-oci's [`ferry_oci::CredentialStore`]).
//!
//! This module must never put a secret into an error, a log line or a `Debug`: parse errors
//! give a line and column, never the text; [`SourceCredential`] prints redacted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ferry_oci::{Credential, Secret};

use crate::error::BuildError;

/// The environment variable naming the credentials file.
pub const ENV_CREDENTIALS_FILE: &str = "FERRY_CREDENTIALS_FILE";
/// The Secrets Manager name prefix of source credentials on AWS (the build role may read only
/// secrets under it).
pub const SECRET_PREFIX: &str = "ferry/sources/";
/// The git user name sent with a token that names no user (GitHub's convention; GitLab and
/// Gitea accept any user name with a token).
pub const TOKEN_USERNAME: &str = "x-access-token";
/// The largest credentials file or secret read.
const MAX_CREDENTIALS_BYTES: u64 = 1024 * 1024;

/// One named credential: a user and password, or a token.
#[derive(Clone, PartialEq, Eq)]
pub enum SourceCredential {
    /// Sent as HTTP Basic (registries, chart repositories, git over https).
    Basic { username: String, password: Secret },
    /// A token: Bearer for registries and chart repositories; Basic with
    /// [`TOKEN_USERNAME`] for git over https.
    Token(Secret),
}

impl std::fmt::Debug for SourceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceCredential::Basic { username, .. } => {
                write!(f, "Basic({username:?}, <redacted>)")
            }
            SourceCredential::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl SourceCredential {
    /// The registry credential ferry-oci sends.
    pub fn registry(&self) -> Credential {
        match self {
            SourceCredential::Basic { username, password } => Credential::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            SourceCredential::Token(t) => Credential::Bearer(t.clone()),
        }
    }

    /// The `Authorization` header value for a chart repository.
    pub(crate) fn http_authorization(&self) -> Secret {
        match self {
            SourceCredential::Basic { username, password } => {
                Secret::new(format!("Basic {}", basic(username, password.expose())))
            }
            SourceCredential::Token(t) => Secret::new(format!("Bearer {}", t.expose())),
        }
    }

    /// The `Authorization` header value git sends over https (always Basic: git servers take a
    /// token as the password).
    pub(crate) fn git_authorization(&self) -> Secret {
        let (user, secret) = match self {
            SourceCredential::Basic { username, password } => (username.as_str(), password),
            SourceCredential::Token(t) => (TOKEN_USERNAME, t),
        };
        Secret::new(format!("Basic {}", basic(user, secret.expose())))
    }

    /// Every form of the secret that could reach a wire or a message, for scrubbing and for
    /// tests that check it never did.
    pub fn secret_forms(&self) -> Vec<String> {
        let mut out = vec![];
        match self {
            SourceCredential::Basic { username, password } => {
                out.push(password.expose().to_string());
                out.push(basic(username, password.expose()));
            }
            SourceCredential::Token(t) => {
                out.push(t.expose().to_string());
                out.push(basic(TOKEN_USERNAME, t.expose()));
            }
        }
        out
    }
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// One entry as the file or the secret spells it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

impl RawEntry {
    fn into_credential(self) -> Result<SourceCredential, &'static str> {
        let username = self.username.filter(|u| !u.is_empty());
        match (
            username,
            self.password.filter(|p| !p.is_empty()),
            self.token.filter(|t| !t.is_empty()),
        ) {
            (Some(username), Some(password), None) => Ok(SourceCredential::Basic {
                username,
                password: Secret::new(password),
            }),
            (Some(username), None, Some(token)) => Ok(SourceCredential::Basic {
                username,
                password: Secret::new(token),
            }),
            (None, None, Some(token)) => Ok(SourceCredential::Token(Secret::new(token))),
            (_, Some(_), Some(_)) => Err("it sets both \"password\" and \"token\"; keep one"),
            (None, Some(_), None) => Err("it has a \"password\" but no \"username\""),
            (_, None, None) => {
                Err("it needs {\"username\", \"password\"} or {\"token\"} (non-empty)")
            }
        }
    }
}

/// The credentials file: `{"credentials": {NAME: ENTRY, …}}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    credentials: BTreeMap<String, serde_json::Value>,
}

/// Where a builder finds the credentials components name.
#[derive(Clone, Default)]
pub enum SourceCredentials {
    /// No credentials anywhere: a component that names one fails its build.
    #[default]
    None,
    /// A credentials file, read (and its mode checked) by each build that names a credential,
    /// so edits apply without a restart.
    File(PathBuf),
    /// Credentials already read (the one the AWS build fetched from Secrets Manager, tests).
    Fixed {
        /// Where they came from, for the error when a name is missing.
        origin: String,
        entries: BTreeMap<String, SourceCredential>,
    },
}

impl std::fmt::Debug for SourceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceCredentials::None => f.write_str("SourceCredentials::None"),
            SourceCredentials::File(p) => write!(f, "SourceCredentials::File({})", p.display()),
            SourceCredentials::Fixed { origin, entries } => {
                let names: Vec<&String> = entries.keys().collect();
                write!(f, "SourceCredentials::Fixed({origin}, {names:?})")
            }
        }
    }
}

impl SourceCredentials {
    /// The local credentials file (see the module docs for the lookup order); `None` when no
    /// home directory is known.
    pub fn local_default() -> SourceCredentials {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let path = env(ENV_CREDENTIALS_FILE)
            .or_else(|| env("FERRY_CONFIG_DIR").map(|d| d.join("credentials.json")))
            .or_else(|| env("XDG_CONFIG_HOME").map(|d| d.join("ferry/credentials.json")))
            .or_else(|| env("HOME").map(|d| d.join(".config/ferry/credentials.json")));
        path.map_or(SourceCredentials::None, SourceCredentials::File)
    }

    /// One credential under `name`; `origin` says where it came from.
    pub fn single(
        origin: impl Into<String>,
        name: &str,
        credential: SourceCredential,
    ) -> SourceCredentials {
        SourceCredentials::Fixed {
            origin: origin.into(),
            entries: BTreeMap::from([(name.to_string(), credential)]),
        }
    }

    /// The credential `name`, for `component`: a clear error when it is missing, when the file
    /// is readable by others, or when the entry is malformed.
    pub fn resolve(&self, component: &str, name: &str) -> Result<SourceCredential, BuildError> {
        let fail = |reason: String| BuildError::Credentials {
            component: component.to_string(),
            name: name.to_string(),
            reason,
        };
        match self {
            SourceCredentials::None => Err(fail(
                "this builder has no credentials file or secret store; create \
                 ~/.config/ferry/credentials.json (mode 0600) or set FERRY_CREDENTIALS_FILE"
                    .into(),
            )),
            SourceCredentials::Fixed { origin, entries } => entries
                .get(name)
                .cloned()
                .ok_or_else(|| fail(format!("{origin} does not hold it; add it there"))),
            SourceCredentials::File(path) => {
                let mut entries = read_file(path).map_err(fail)?;
                let raw = entries.remove(name).ok_or_else(|| {
                    fail(format!(
                        "{} has no entry {name:?} under \"credentials\"; add \
                         {{\"username\": …, \"password\": …}} or {{\"token\": …}} for it",
                        path.display()
                    ))
                })?;
                parse_entry(raw, &format!("{} entry {name:?}", path.display())).map_err(fail)
            }
        }
    }
}

/// Parses one entry (a file's or a secret's JSON value). Errors never quote the value.
fn parse_entry(value: serde_json::Value, origin: &str) -> Result<SourceCredential, String> {
    let raw: RawEntry = serde_json::from_value(value).map_err(|e| {
        // serde names unknown fields (names are not secret) but may quote values: keep only
        // the field part of its message.
        let msg = e.to_string();
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(|f| format!("unknown field {f:?} (use username, password or token)"))
            .unwrap_or_else(|| "each of username, password, token must be a string".into());
        format!("{origin}: {field}")
    })?;
    raw.into_credential().map_err(|e| format!("{origin}: {e}"))
}

/// A secret's string (Secrets Manager) as one credential.
pub fn parse_secret(text: &str, origin: &str) -> Result<SourceCredential, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| {
        format!(
            "{origin} is not JSON; store {{\"username\": …, \"password\": …}} or {{\"token\": …}}"
        )
    })?;
    parse_entry(value, origin)
}

/// Reads the credentials file after checking only its owner can read it.
fn read_file(path: &Path) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "the credentials file {shown} does not exist; create it (mode 0600) with \
             {{\"credentials\": {{NAME: {{\"username\": …, \"password\": …}}}}}}"
        ),
        _ => format!("cannot read the credentials file {shown}: {e}"),
    })?;
    check_private(path, &meta)?;
    if meta.len() > MAX_CREDENTIALS_BYTES {
        return Err(format!(
            "the credentials file {shown} is larger than {MAX_CREDENTIALS_BYTES} bytes"
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let raw: RawFile = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "the credentials file {shown} is not valid (line {}, column {}); it holds \
             {{\"credentials\": {{NAME: {{\"username\": …, \"password\": …}} or {{\"token\": …}}}}}}",
            e.line(),
            e.column()
        )
    })?;
    Ok(raw.credentials)
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the credentials file {} is readable by others (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// Reads the credential `name` from the Secrets Manager secret `<prefix><name>` with the
/// ambient AWS credentials (in CodeBuild, the build role: the only role allowed to).
pub async fn from_secrets_manager(
    config: &ferry_aws::SdkConfig,
    prefix: &str,
    component: &str,
    name: &str,
) -> Result<SourceCredential, BuildError> {
    let fail = |reason: String| BuildError::Credentials {
        component: component.to_string(),
        name: name.to_string(),
        reason,
    };
    ferry_core::domain::check_credential_name(name).map_err(fail)?;
    let secret_id = format!("{prefix}{name}");
    let text = ferry_aws::agent::read_secret_string(config, &secret_id)
        .await
        .map_err(|e| {
            fail(format!(
                "cannot read the Secrets Manager secret {secret_id}: {e}; create it with \
                 {{\"username\": …, \"password\": …}} or {{\"token\": …}}"
            ))
        })?;
    if text.len() as u64 > MAX_CREDENTIALS_BYTES {
        return Err(fail(format!("the secret {secret_id} is too large")));
    }
    parse_secret(&text, &format!("the secret {secret_id}")).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, mode: u32, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join("credentials.json");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_private_file_resolves_names_and_a_shared_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"credentials": {
            "acme": {"username": "alice", "password": "pw-hunter2"},
            "gh": {"token": "tok-hunter2"},
            "bad": {"username": "bob", "passwd": "x-hunter2"},
            "half": {"password": "y-hunter2"}}}"#;
        let path = write(dir.path(), 0o600, text);
        let store = SourceCredentials::File(path.clone());
        assert_eq!(
            store.resolve("web", "acme").unwrap(),
            SourceCredential::Basic {
                username: "alice".into(),
                password: Secret::new("pw-hunter2")
            }
        );
        assert_eq!(
            store.resolve("web", "gh").unwrap(),
            SourceCredential::Token(Secret::new("tok-hunter2"))
        );
        for (name, want) in [
            ("missing", "has no entry \"missing\""),
            ("bad", "unknown field \"passwd\""),
            ("half", "no \"username\""),
        ] {
            let err = store.resolve("web", name).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains("component web"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        write(dir.path(), 0o644, text);
        let err = store.resolve("web", "acme").unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        write(
            dir.path(),
            0o600,
            r#"{"credentials": {"acme": {"password": "z-hunter2" "#,
        );
        let err = store.resolve("web", "acme").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn credentials_never_print_and_map_to_each_protocol() {
        let c = SourceCredential::Basic {
            username: "alice".into(),
            password: Secret::new("pw-hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.http_authorization().expose(),
            format!("Basic {}", basic("alice", "pw-hunter2"))
        );
        let t = SourceCredential::Token(Secret::new("tok"));
        assert_eq!(t.http_authorization().expose(), "Bearer tok");
        assert_eq!(
            t.git_authorization().expose(),
            format!("Basic {}", basic(TOKEN_USERNAME, "tok"))
        );
        assert!(matches!(t.registry(), Credential::Bearer(_)));
        let store = SourceCredentials::single("test", "acme", c);
        assert!(!format!("{store:?}").contains("hunter2"));
        let err = parse_secret("not json hunter2", "the secret s").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_secret(r#"{"username": 7, "password": "hunter2"}"#, "s").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
