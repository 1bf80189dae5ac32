//! How an install's nodes (the cluster's container runtime) pull from the embedded registry
//! with their own pull-only identity, `node:<install>`: the recipe `ferry install show` prints.
//!
//! A recipe names the identity, the registry, the repository prefix the identity may read and
//! the 0600 file that holds its secret. Every command it renders reads the secret from that
//! file when it runs (`$(cat FILE)`), so the recipe itself can be printed, logged or pasted into
//! a ticket. This module must never read the secret file or put a secret into anything it
//! returns; it does not decide what the identity may do (that is [`super::AccessPolicy`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::identity::{valid_install_id, Identity};

/// Why a recipe could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipeError {
    #[error("{0:?} is not a valid install id (lowercase letters, digits, single . _ -)")]
    InstallId(String),
    #[error(
        "{0:?} is not a registry host; give host[:port] with no scheme, path or spaces \
         (e.g. 127.0.0.1:5000)"
    )]
    Registry(String),
}

/// The pull-only identity of one install's nodes and where its secret lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePullRecipe {
    /// The wire name: `node:<install>`.
    pub identity: String,
    /// `host[:port]` of the install registry.
    pub registry: String,
    /// The only repositories the identity may read: `installs/<install>/…`.
    pub repository_prefix: String,
    /// The 0600 file holding the secret.
    pub secret_file: PathBuf,
    /// Plain HTTP: the registry listens on loopback without TLS (`ferry dev`).
    pub plain_http: bool,
}

impl NodePullRecipe {
    /// The recipe for `install`'s nodes pulling from `registry` (`host[:port]`) with the secret
    /// in `secret_file`. A loopback registry is taken to be plain HTTP, as `ferry dev` serves it.
    pub fn new(
        registry: &str,
        install: &str,
        secret_file: &Path,
    ) -> Result<NodePullRecipe, RecipeError> {
        if !valid_install_id(install) {
            return Err(RecipeError::InstallId(install.to_string()));
        }
        let host_ok = !registry.is_empty()
            && registry.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !host_ok {
            return Err(RecipeError::Registry(registry.to_string()));
        }
        Ok(NodePullRecipe {
            identity: Identity::Node(install.to_string()).name(),
            registry: registry.to_string(),
            repository_prefix: format!("installs/{install}/"),
            secret_file: secret_file.to_path_buf(),
            plain_http: is_loopback(registry),
        })
    }

    /// `"node:<install>:$(cat '<file>')"`: the `user:secret` pair, read from the file when the
    /// shell runs the line.
    pub fn creds_expr(&self) -> String {
        format!(
            "\"{}:$(cat {})\"",
            self.identity,
            shell_quote(&self.secret_file.to_string_lossy())
        )
    }

    /// `skopeo` flags that pull as the node identity.
    pub fn skopeo_flags(&self) -> String {
        let tls = if self.plain_http {
            " --src-tls-verify=false"
        } else {
            ""
        };
        format!("--src-creds {}{tls}", self.creds_expr())
    }

    /// A `ctr images pull` line for `repository` (under the prefix) at `reference`
    /// (`@sha256:…` or `:tag`).
    pub fn ctr_pull(&self, repository: &str, reference: &str) -> String {
        let plain = if self.plain_http { " --plain-http" } else { "" };
        format!(
            "ctr images pull{plain} --user {} {}/{}{}{}",
            self.creds_expr(),
            self.registry,
            self.repository_prefix,
            repository,
            reference
        )
    }

    /// A shell line printing the docker `config.json` `auths` entry for this registry (what
    /// skopeo `--authfile`, podman and the kubelet's image pull secrets read).
    pub fn config_json_line(&self) -> String {
        format!(
            "printf '{{\"auths\":{{\"{}\":{{\"auth\":\"%s\"}}}}}}\\n' \"$(printf '%s' {} | base64 -w0)\"",
            self.registry,
            self.creds_expr()
        )
    }

    /// The recipe as text, one labelled line each, for `ferry install show`.
    pub fn render(&self) -> String {
        format!(
            "node identity  {id} (pull only, {prefix}* only)\n\
             secret file    {file} (0600; never printed)\n\
             config.json    {config}\n\
             ctr            {ctr}\n\
             skopeo         skopeo copy {skopeo} docker://{reg}/{prefix}<repo>@sha256:… oci:<dir>\n",
            id = self.identity,
            prefix = self.repository_prefix,
            file = self.secret_file.display(),
            config = self.config_json_line(),
            ctr = self.ctr_pull("<repo>", "@sha256:…"),
            skopeo = self.skopeo_flags(),
            reg = self.registry,
        )
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> NodePullRecipe {
        NodePullRecipe::new(
            "127.0.0.1:5000",
            "dev-1",
            Path::new("/state/keys/node-dev-1.secret"),
        )
        .expect("recipe")
    }

    #[test]
    fn lines_read_the_secret_from_its_file() {
        let r = recipe();
        assert_eq!(r.identity, "node:dev-1");
        assert!(r.plain_http);
        let creds = "\"node:dev-1:$(cat '/state/keys/node-dev-1.secret')\"";
        assert_eq!(
            r.ctr_pull("demo/base", "@sha256:ab"),
            format!("ctr images pull --plain-http --user {creds} 127.0.0.1:5000/installs/dev-1/demo/base@sha256:ab")
        );
        assert_eq!(
            r.skopeo_flags(),
            format!("--src-creds {creds} --src-tls-verify=false")
        );
        let text = r.render();
        for want in ["config.json", "ctr images pull", "skopeo copy", "0600"] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn the_config_json_line_makes_a_valid_auths_entry() {
        // Run the line through a shell with a known secret, as an operator would.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("it's a secret");
        std::fs::write(&file, "s3cr3t").expect("write");
        let r = NodePullRecipe::new("registry.example:443", "acme", &file).expect("recipe");
        assert!(!r.plain_http);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r.config_json_line())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let auth = v["auths"]["registry.example:443"]["auth"]
            .as_str()
            .expect("auth entry");
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .expect("base64");
        assert_eq!(decoded, b"node:acme:s3cr3t");
        assert!(
            !r.render().contains("s3cr3t"),
            "the recipe never holds the secret"
        );
    }

    #[test]
    fn bad_input_is_refused_with_what_to_give() {
        assert_eq!(
            NodePullRecipe::new("127.0.0.1:5000", "Dev 1", Path::new("/x")),
            Err(RecipeError::InstallId("Dev 1".into()))
        );
        let e = NodePullRecipe::new("http://h/x", "a", Path::new("/x")).unwrap_err();
        assert!(e.to_string().contains("host[:port]"), "{e}");
        assert!(!is_loopback("127.example.com:5000"));
        assert!(is_loopback("[::1]:5000") && is_loopback("localhost"));
    }
}
