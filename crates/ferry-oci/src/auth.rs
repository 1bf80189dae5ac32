//! Credentials and the registry auth flows: anonymous, basic, bearer token (with a
//! `WWW-Authenticate` challenge, per-repository scope and a cache until expiry), a pre-issued
//! bearer token (Ferry's one-time grants), docker `config.json`, and a caller-supplied ECR
//! basic credential (`AWS:<token>`).
//!
//! It must never print a secret: [`Secret`] redacts itself in `Debug` and `Display`, and no
//! error built here contains a password, a token or an Authorization header.

use std::fmt;

/// A secret string that never shows itself in logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself. Call only where it goes onto the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to authenticate to one registry (or one repository prefix of it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Credential {
    #[default]
    Anonymous,
    /// Username and password: sent as Basic, or exchanged at a token endpoint.
    Basic { username: String, password: Secret },
    /// A registry token issued elsewhere (a Ferry grant): sent as `Authorization: Bearer`
    /// and never exchanged.
    Bearer(Secret),
}

/// Credentials by registry host and optional repository prefix; the longest prefix wins.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    entries: Vec<(String, Option<String>, Credential)>,
}

impl CredentialStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a credential for `registry` (`host[:port]`), for every repository or only for
    /// repositories equal to or below `repo_prefix`.
    pub fn insert(&mut self, registry: &str, repo_prefix: Option<&str>, credential: Credential) {
        self.entries.retain(|(r, p, _)| !(r == registry && p.as_deref() == repo_prefix));
        self.entries
            .push((registry.to_string(), repo_prefix.map(str::to_string), credential));
    }

    /// The credential for a repository: the longest matching prefix, else the registry-wide
    /// entry, else anonymous.
    pub fn lookup(&self, registry: &str, repository: &str) -> Credential {
        let mut best: Option<(usize, &Credential)> = None;
        for (r, prefix, cred) in &self.entries {
            if r != registry {
                continue;
            }
            let score = match prefix {
                None => 0,
                Some(p) if repository == p || repository.starts_with(&format!("{p}/")) => p.len() + 1,
                Some(_) => continue,
            };
            if best.map(|(s, _)| score > s).unwrap_or(true) {
                best = Some((score, cred));
            }
        }
        best.map(|(_, c)| c.clone()).unwrap_or_default()
    }
}
