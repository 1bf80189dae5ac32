//! Sources from git: fetch one ref of a repository into a fresh directory with the git CLI and
//! say which commit it resolved to, so a build records (and annotates) exactly what it built.
//!
//! Only the one ref is fetched (`--depth 1` unless the ref is a commit id the server refuses to
//! serve shallow, in which case the full history is fetched and the commit checked out). No
//! submodules, no hooks, no prompts; the transports are limited to https, http, ssh, git and
//! file (`GIT_ALLOW_PROTOCOL`), so a URL can never run a helper program (`ext::`).
//!
//! A component's named credential reaches git over https as an `Authorization` header scoped to
//! the repository URL (`http.<url>.extraHeader`), passed in git's environment configuration
//! (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`): never on the command line
//! (where `ps` shows it), never in the URL (which is recorded), never in a file.
//!
//! This module must never put a credential on a command line or in an error message (git's
//! stderr is reported with any `user:password@` removed), and never check out outside the
//! directory it was given.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::BuildError;
use crate::sources::SourceCredential;

/// Transports git may use for a source URL.
const ALLOWED_PROTOCOLS: &str = "https:http:ssh:git:file";
/// Kept from git's stderr in an error.
const MAX_STDERR: usize = 2000;

/// A checked-out source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The work tree.
    pub dir: PathBuf,
    /// The full commit id `HEAD` resolved to.
    pub commit: String,
}

/// Fetches `reference` (a branch, a tag or a commit id; `HEAD` when empty) of `url` into `dir`
/// (which must not exist or be empty) and checks it out detached, authenticating over https
/// with `credential` when given.
pub async fn checkout(
    component: &str,
    url: &str,
    reference: &str,
    dir: &Path,
    credential: Option<&SourceCredential>,
) -> Result<Checkout, BuildError> {
    let reference = match reference.trim() {
        "" => "HEAD",
        r => r,
    };
    if reference.starts_with('-') || url.starts_with('-') {
        return Err(git_failed(
            component,
            "fetch",
            format!("refusing a URL or ref that starts with '-': {reference:?}"),
        ));
    }
    let auth = match credential {
        None => GitAuth::default(),
        Some(c) => GitAuth::for_url(component, url, c)?,
    };
    std::fs::create_dir_all(dir).map_err(crate::error::io_err("create checkout dir", dir))?;
    git_with(component, dir, &["init", "-q"], &auth).await?;
    let shallow = git_with(
        component,
        dir,
        &[
            "fetch",
            "-q",
            "--no-tags",
            "--depth",
            "1",
            "--",
            url,
            reference,
        ],
        &auth,
    )
    .await;
    if let Err(shallow_err) = shallow {
        // A commit id is served shallow only where the server allows it; fetch everything and
        // look for it instead. Any other failure (no such ref, no such repository) stands.
        if !is_commit_id(reference) {
            return Err(shallow_err);
        }
        git_with(
            component,
            dir,
            &["fetch", "-q", "--no-tags", "--", url],
            &auth,
        )
        .await?;
        git_with(
            component,
            dir,
            &["checkout", "-q", "--detach", reference],
            &auth,
        )
        .await?;
    } else {
        git_with(
            component,
            dir,
            &["checkout", "-q", "--detach", "FETCH_HEAD"],
            &auth,
        )
        .await?;
    }
    let commit = git_with(component, dir, &["rev-parse", "HEAD"], &auth).await?;
    Ok(Checkout {
        dir: dir.to_path_buf(),
        commit: commit.trim().to_string(),
    })
}

fn is_commit_id(r: &str) -> bool {
    (7..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Git configuration passed through the environment: an `Authorization` header for one
/// repository URL, or nothing.
#[derive(Default)]
pub(crate) struct GitAuth {
    /// `(key, value)` pairs for `GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`.
    config: Vec<(String, ferry_oci::Secret)>,
}

impl GitAuth {
    /// The header for `url` (http or https only: ssh and file URLs authenticate otherwise).
    pub(crate) fn for_url(
        component: &str,
        url: &str,
        credential: &SourceCredential,
    ) -> Result<GitAuth, BuildError> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(BuildError::InvalidComponent {
                component: component.to_string(),
                reason: format!(
                    "component {component}: a named credential is sent to git over http(s) only, \
                     and {} is not an http(s) URL; use an https URL, or drop \"credentials\" \
                     and give the builder an ssh key",
                    redact(url)
                ),
            });
        }
        if lower.starts_with("http://") && !is_loopback_url(&lower) {
            return Err(BuildError::InvalidComponent {
                component: component.to_string(),
                reason: format!(
                    "component {component}: {} is plain http; a credential is sent only over \
                     https (or to a loopback test server)",
                    redact(url)
                ),
            });
        }
        let value = ferry_oci::Secret::new(format!(
            "Authorization: {}",
            credential.git_authorization().expose()
        ));
        Ok(GitAuth {
            config: vec![(format!("http.{url}.extraHeader"), value)],
        })
    }

    fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env("GIT_CONFIG_COUNT", self.config.len().to_string());
        for (i, (k, v)) in self.config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k);
            cmd.env(format!("GIT_CONFIG_VALUE_{i}"), v.expose());
        }
    }
}

fn is_loopback_url(lower: &str) -> bool {
    let rest = lower.split_once("://").map_or(lower, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Runs git in `dir` with `auth` in its environment; stdout on success.
async fn git_with(
    component: &str,
    dir: &Path,
    args: &[&str],
    auth: &GitAuth,
) -> Result<String, BuildError> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "protocol.ext.allow=never",
        ])
        .args(args)
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // Git's traces would print the header.
        .env_remove("GIT_TRACE")
        .env_remove("GIT_TRACE_CURL")
        .env_remove("GIT_CURL_VERBOSE")
        .stdin(Stdio::null());
    auth.apply(&mut cmd);
    let out = cmd.output().await.map_err(|_| BuildError::ToolMissing {
        component: component.to_string(),
        tool: "git",
        package: "git",
    })?;
    if !out.status.success() {
        return Err(git_failed(
            component,
            args.first().copied().unwrap_or("git"),
            redact(&String::from_utf8_lossy(&out.stderr)),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git_failed(component: &str, step: &str, stderr: String) -> BuildError {
    let mut stderr = stderr.trim().to_string();
    if stderr.len() > MAX_STDERR {
        let mut end = MAX_STDERR;
        while !stderr.is_char_boundary(end) {
            end -= 1;
        }
        stderr.truncate(end);
        stderr.push('…');
    }
    BuildError::ToolFailed {
        component: component.to_string(),
        command: format!("git {step}"),
        status: "failed".into(),
        stderr,
    }
}

/// Removes `user:password@` (or `token@`) from every URL in `text`.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(
            redact("fatal: unable to access 'https://user:s3cret@host/repo.git/': 403"),
            "fatal: unable to access 'https://***@host/repo.git/': 403"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("https://host/x"), "https://host/x");
    }
}
