//! Sources from git: fetch one ref of a repository into a fresh directory with the git CLI and
//! say which commit it resolved to, so a build records (and annotates) exactly what it built.
//!
//! Only the one ref is fetched (`--depth 1` unless the ref is a commit id the server refuses to
//! serve shallow, in which case the full history is fetched and the commit checked out). No
//! submodules, no hooks, no prompts; the transports are limited to https, http, ssh, git and
//! file (`GIT_ALLOW_PROTOCOL`), so a URL can never run a helper program (`ext::`).
//!
//! This module must never put a credential on a command line or in an error message (git's
//! stderr is reported with any `user:password@` removed), and never check out outside the
//! directory it was given.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::BuildError;

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
/// (which must not exist or be empty) and checks it out detached.
pub async fn checkout(
    component: &str,
    url: &str,
    reference: &str,
    dir: &Path,
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
    std::fs::create_dir_all(dir).map_err(crate::error::io_err("create checkout dir", dir))?;
    git(component, dir, &["init", "-q"]).await?;
    let shallow = git(
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
    )
    .await;
    if let Err(shallow_err) = shallow {
        // A commit id is served shallow only where the server allows it; fetch everything and
        // look for it instead. Any other failure (no such ref, no such repository) stands.
        if !is_commit_id(reference) {
            return Err(shallow_err);
        }
        git(component, dir, &["fetch", "-q", "--no-tags", "--", url]).await?;
        git(component, dir, &["checkout", "-q", "--detach", reference]).await?;
    } else {
        git(
            component,
            dir,
            &["checkout", "-q", "--detach", "FETCH_HEAD"],
        )
        .await?;
    }
    let commit = git(component, dir, &["rev-parse", "HEAD"]).await?;
    Ok(Checkout {
        dir: dir.to_path_buf(),
        commit: commit.trim().to_string(),
    })
}

fn is_commit_id(r: &str) -> bool {
    (7..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs git in `dir`; stdout on success.
async fn git(component: &str, dir: &Path, args: &[&str]) -> Result<String, BuildError> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
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
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|_| BuildError::ToolMissing {
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
