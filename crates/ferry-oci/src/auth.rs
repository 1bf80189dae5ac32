//! Credentials and the registry auth flows: anonymous, basic, bearer token (with a
//! `WWW-Authenticate` challenge, per-repository scope and a cache until expiry), an OAuth2
//! refresh token exchanged at the token service (docker `config.json`'s `identitytoken`), a
//! pre-issued bearer token (Ferry's one-time grants), docker `config.json`, and a
//! caller-supplied ECR basic credential (`AWS:<token>`).
//!
//! It must never print a secret: [`Secret`] redacts itself in `Debug` and `Display`, and no
//! error built here contains a password, a token or an Authorization header.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::error::{Error, Result, Step};

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
    /// An OAuth2 refresh token (docker `config.json`'s `identitytoken`, what `docker login`
    /// stores for registries such as ACR): exchanged at the registry's token service with
    /// `POST grant_type=refresh_token` for an access token; never sent to the registry itself.
    IdentityToken(Secret),
}

impl Credential {
    /// A key that names this identity without revealing it (a hash of the secret), so the
    /// token cache never hands a token minted for one identity to a request made as another.
    pub(crate) fn identity_key(&self) -> String {
        use sha2::Digest as _;
        let hash = |parts: &[&str]| {
            let mut h = sha2::Sha256::new();
            for p in parts {
                h.update(p.as_bytes());
                h.update([0u8]);
            }
            hex::encode(h.finalize())
        };
        match self {
            Credential::Anonymous => "anonymous".to_string(),
            Credential::Basic { username, password } => {
                format!("basic:{}", hash(&[username, password.expose()]))
            }
            Credential::Bearer(token) => format!("bearer:{}", hash(&[token.expose()])),
            Credential::IdentityToken(token) => {
                format!("identity:{}", hash(&[token.expose()]))
            }
        }
    }
}

/// Which repositories of a registry an entry of a [`CredentialStore`] covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Covers {
    /// Every repository (docker `config.json` entries, which are per host by nature).
    Registry,
    /// Repositories equal to or below a prefix.
    Prefix(String),
    /// Exactly one repository (`ferry copy --src-creds/--dest-creds`).
    Repository(String),
}

impl Covers {
    /// How specific the match is (higher wins), or `None` when `repository` is not covered.
    fn score(&self, repository: &str) -> Option<usize> {
        match self {
            Covers::Registry => Some(0),
            Covers::Prefix(p) if repository == p || repository.starts_with(&format!("{p}/")) => {
                Some(p.len() + 1)
            }
            Covers::Prefix(_) => None,
            Covers::Repository(r) => (r == repository).then_some(usize::MAX),
        }
    }
}

/// Credentials by registry host and repository: an exact repository entry wins, then the
/// longest repository prefix, then the registry-wide entry, else anonymous. Two repositories
/// of one registry can therefore hold two identities (a copy's source and destination).
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    entries: Vec<(String, Covers, Credential)>,
}

impl CredentialStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a credential for `registry` (`host[:port]`), for every repository or only for
    /// repositories equal to or below `repo_prefix`.
    /// Replaces any previous entry for the same registry and prefix.
    pub fn insert(&mut self, registry: &str, repo_prefix: Option<&str>, credential: Credential) {
        let covers = match repo_prefix {
            Some(p) => Covers::Prefix(p.to_string()),
            None => Covers::Registry,
        };
        self.put(registry, covers, credential);
    }

    /// Adds a credential for exactly one repository of `registry` (not the ones below it);
    /// it wins over every prefix and registry-wide entry for that repository. Replaces any
    /// previous entry for the same registry and repository.
    pub fn insert_repository(&mut self, registry: &str, repository: &str, credential: Credential) {
        self.put(
            registry,
            Covers::Repository(repository.to_string()),
            credential,
        );
    }

    fn put(&mut self, registry: &str, covers: Covers, credential: Credential) {
        self.entries
            .retain(|(r, c, _)| !(r == registry && *c == covers));
        self.entries
            .push((registry.to_string(), covers, credential));
    }

    /// The credential for a repository: an exact repository entry, else the longest
    /// matching prefix, else the registry-wide entry, else anonymous.
    pub fn lookup(&self, registry: &str, repository: &str) -> Credential {
        let mut best: Option<(usize, &Credential)> = None;
        for (r, covers, cred) in &self.entries {
            if r != registry {
                continue;
            }
            let Some(score) = covers.score(repository) else {
                continue;
            };
            if best.map(|(s, _)| score > s).unwrap_or(true) {
                best = Some((score, cred));
            }
        }
        best.map(|(_, c)| c.clone()).unwrap_or_default()
    }
}

impl CredentialStore {
    /// Reads the `auths` of a docker `config.json`: each entry's `identitytoken` (an OAuth2
    /// refresh token, preferred as docker does), else its base64 `auth` (`user:password`) or its
    /// `username`/`password`. Keys may be `https://host/...` or
    /// `host`; Docker Hub's keys map to `registry-1.docker.io`. Credential helpers
    /// (`credsStore`, `credHelpers`) are not run; such entries are skipped.
    pub fn from_docker_config(path: &Path) -> Result<CredentialStore> {
        let io = |source| Error::Io {
            step: Step::Auth,
            path: path.display().to_string(),
            source,
        };
        let text = std::fs::read(path).map_err(io)?;
        Self::from_docker_config_bytes(&text, &path.display().to_string())
    }

    /// Parses docker `config.json` bytes; `origin` names them in errors. Errors never quote
    /// the file's content, since it holds passwords.
    pub fn from_docker_config_bytes(bytes: &[u8], origin: &str) -> Result<CredentialStore> {
        let bad = |reason: String| {
            Error::Config(format!(
                "{origin}: {reason}; fix the docker config file or pass credentials explicitly"
            ))
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut store = CredentialStore::new();
        let Some(auths) = value.get("auths") else {
            return Ok(store);
        };
        let auths = auths
            .as_object()
            .ok_or_else(|| bad("\"auths\" must be an object".into()))?;
        for (key, entry) in auths {
            let registry = normalise_config_key(key);
            let field = |name: &str| {
                entry
                    .get(name)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            };
            let credential = if let Some(token) = field("identitytoken") {
                Credential::IdentityToken(Secret::new(token))
            } else if let Some(encoded) = field("auth") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "the \"auth\" of {key:?} is not base64 of user:password"
                        ))
                    })?;
                let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                    bad(format!(
                        "the \"auth\" of {key:?} is not base64 of user:password"
                    ))
                })?;
                Credential::Basic {
                    username: user.to_string(),
                    password: Secret::new(pass),
                }
            } else if let (Some(user), Some(pass)) = (field("username"), field("password")) {
                Credential::Basic {
                    username: user.to_string(),
                    password: Secret::new(pass),
                }
            } else if let Some(token) = field("registrytoken") {
                Credential::Bearer(Secret::new(token))
            } else {
                tracing::debug!(registry = %registry, "docker config entry without usable credentials skipped");
                continue;
            };
            store.insert(&registry, None, credential);
        }
        Ok(store)
    }

    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; an empty store when
    /// neither exists.
    pub fn load_default() -> Result<CredentialStore> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("config.json"),
            _ => match std::env::var_os("HOME") {
                Some(home) if !home.is_empty() => {
                    PathBuf::from(home).join(".docker").join("config.json")
                }
                _ => return Ok(CredentialStore::new()),
            },
        };
        if !path.is_file() {
            return Ok(CredentialStore::new());
        }
        Self::from_docker_config(&path)
    }

    /// Every secret this store holds, so error text from a hostile server can be scrubbed.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, _, cred) in &self.entries {
            match cred {
                Credential::Anonymous => {}
                Credential::Basic { username, password } => {
                    out.push(password.expose().to_string());
                    out.push(basic_token(username, password));
                }
                Credential::Bearer(s) | Credential::IdentityToken(s) => {
                    out.push(s.expose().to_string())
                }
            }
        }
        out
    }
}

/// `https://index.docker.io/v1/` → `registry-1.docker.io`; `https://host:5000/x` → `host:5000`.
fn normalise_config_key(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "registry-1.docker.io".to_string()
        }
        h => h.to_string(),
    }
}

/// The base64 part of a Basic Authorization header.
pub(crate) fn basic_token(username: &str, password: &Secret) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()))
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased scheme: `basic`, `bearer`, …
    pub scheme: String,
    /// Parameters with lower-cased names.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a `WWW-Authenticate` value into its challenges (RFC 7235): a scheme, then
/// comma-separated `name=token` or `name="quoted, \"escaped\""` parameters. It never panics;
/// garbage is skipped.
pub fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        String::from_utf8_lossy(&b[start..*i]).into_owned()
    };
    while i < b.len() {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            i += 1; // not a token character: skip it and resynchronise
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        loop {
            skip_ws(&mut i);
            let save = i;
            let name = token(&mut i);
            skip_ws(&mut i);
            if name.is_empty() || i >= b.len() || b[i] != b'=' {
                // Not a parameter: the start of the next challenge (or a token68).
                i = save;
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let val = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut buf = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    buf.push(b[i]);
                    i += 1;
                }
                i = (i + 1).min(b.len()); // closing quote, if any
                String::from_utf8_lossy(&buf).into_owned()
            } else {
                // Lenient: servers send unquoted URLs, which are not RFC tokens.
                let start = i;
                while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                String::from_utf8_lossy(&b[start..i]).into_owned()
            };
            challenge.params.insert(name.to_ascii_lowercase(), val);
            skip_ws(&mut i);
            if i < b.len() && b[i] == b',' {
                i += 1;
                continue;
            }
            break;
        }
        out.push(challenge);
        if i < b.len() && !is_tchar(b[i]) && !matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
    }
    out
}

/// How a registry asked to be authenticated, remembered so later requests (other
/// repositories, other scopes) authenticate up front instead of paying a 401 each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl AuthScheme {
    /// The scheme to use from a 401's challenges: Bearer preferred over Basic.
    pub(crate) fn from_challenges(challenges: &[Challenge]) -> Option<AuthScheme> {
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(realm) = c.param("realm").filter(|r| !r.is_empty()) {
                return Some(AuthScheme::Bearer {
                    realm: realm.to_string(),
                    service: c.param("service").map(str::to_string),
                });
            }
        }
        challenges
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(AuthScheme::Basic)
    }
}

/// The key of a cached token: registry, identity ([`Credential::identity_key`]) and scope.
/// The identity is part of it so a token minted for one identity never serves another,
/// even for the same scope.
type TokenKey = (String, String, String);

/// Tokens by (registry, identity, scope) with their expiry, and the auth scheme of each
/// registry (which is the registry's, whoever asks).
#[derive(Default)]
pub(crate) struct AuthState {
    schemes: Mutex<HashMap<String, AuthScheme>>,
    tokens: Mutex<HashMap<TokenKey, (Secret, Instant)>>,
}

fn token_key(registry: &str, identity: &str, scope: &str) -> TokenKey {
    (
        registry.to_string(),
        identity.to_string(),
        scope.to_string(),
    )
}

impl AuthState {
    pub(crate) fn scheme(&self, registry: &str) -> Option<AuthScheme> {
        self.schemes.lock().ok()?.get(registry).cloned()
    }

    pub(crate) fn set_scheme(&self, registry: &str, scheme: AuthScheme) {
        if let Ok(mut m) = self.schemes.lock() {
            m.insert(registry.to_string(), scheme);
        }
    }

    pub(crate) fn token(&self, registry: &str, identity: &str, scope: &str) -> Option<Secret> {
        let mut m = self.tokens.lock().ok()?;
        let key = token_key(registry, identity, scope);
        match m.get(&key) {
            Some((t, until)) if Instant::now() < *until => Some(t.clone()),
            Some(_) => {
                m.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Caches a token until shortly before it expires, so it is never sent stale.
    pub(crate) fn store_token(
        &self,
        registry: &str,
        identity: &str,
        scope: &str,
        token: Secret,
        expires_in: Duration,
    ) {
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        let until = Instant::now() + expires_in.saturating_sub(margin);
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(token_key(registry, identity, scope), (token, until));
        }
    }

    pub(crate) fn forget_token(&self, registry: &str, identity: &str, scope: &str) {
        if let Ok(mut m) = self.tokens.lock() {
            m.remove(&token_key(registry, identity, scope));
        }
    }

    /// Every token currently cached, for scrubbing error text.
    pub(crate) fn secrets(&self) -> Vec<String> {
        self.tokens
            .lock()
            .map(|m| m.values().map(|(t, _)| t.expose().to_string()).collect())
            .unwrap_or_default()
    }
}

/// What a token endpoint answers. Unknown fields are ignored.
#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A parsed token answer: the token and how long it lives (60 s when unsaid).
pub(crate) fn parse_token_response(body: &[u8]) -> Option<(Secret, Duration)> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    let token = r
        .token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))?;
    let ttl = Duration::from_secs(r.expires_in.filter(|s| *s > 0).unwrap_or(60));
    Some((Secret::new(token), ttl))
}

/// The advice every auth failure ends with.
pub(crate) fn advice(registry: &str) -> String {
    format!(
        "check the credentials for {registry} in docker config.json ($DOCKER_CONFIG or ~/.docker) \
         or pass them with --src-creds/--dest-creds"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges_with_quoted_commas() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn parses_basic_and_multiple_challenges_and_escapes() {
        let c = parse_www_authenticate(
            r#"Basic realm="Registry \"Realm\"", Bearer realm=https://t/x , service = svc"#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"Registry "Realm""#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://t/x"));
        assert_eq!(c[1].param("service"), Some("svc"));
        assert_eq!(
            AuthScheme::from_challenges(&c),
            Some(AuthScheme::Bearer {
                realm: "https://t/x".into(),
                service: Some("svc".into())
            })
        );
        assert_eq!(
            AuthScheme::from_challenges(&parse_www_authenticate("basic realm=x")),
            Some(AuthScheme::Basic)
        );
        assert_eq!(
            AuthScheme::from_challenges(&parse_www_authenticate("Bearer")),
            None
        );
        assert!(parse_www_authenticate("").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn challenge_parser_never_panics(s in "\\PC{0,80}") {
            let _ = parse_www_authenticate(&s);
        }

        #[test]
        fn challenge_parser_never_panics_on_header_like_input(
            s in "(Bearer|Basic|,| |=|\"|\\\\|realm|scope|[a-z:/,]){0,40}"
        ) {
            for c in parse_www_authenticate(&s) {
                proptest::prop_assert!(!c.scheme.is_empty());
            }
        }
    }

    #[test]
    fn reads_docker_config_json() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
               "localhost:5000":{{"username":"bob","password":"hunter2"}},
               "https://ecr.example:443/v2/":{{"auth":"{auth}"}},
               "helper.example":{{}}}},"credsStore":"desktop"}}"#
        );
        let store =
            CredentialStore::from_docker_config_bytes(json.as_bytes(), "test").expect("parses");
        assert_eq!(
            store.lookup("registry-1.docker.io", "library/x"),
            Credential::Basic {
                username: "alice".into(),
                password: Secret::new("pa:ss")
            }
        );
        assert!(matches!(
            store.lookup("localhost:5000", "r"),
            Credential::Basic { ref username, .. } if username == "bob"
        ));
        assert!(matches!(
            store.lookup("ecr.example:443", "r"),
            Credential::Basic { .. }
        ));
        assert_eq!(store.lookup("helper.example", "r"), Credential::Anonymous);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, &json).expect("write");
        let from_file = CredentialStore::from_docker_config(&path).expect("reads");
        assert!(matches!(
            from_file.lookup("localhost:5000", "r"),
            Credential::Basic { .. }
        ));
    }

    #[test]
    fn docker_config_identity_tokens_are_refresh_tokens() {
        let auth = base64::engine::general_purpose::STANDARD.encode("00000000:unused");
        let json = format!(
            r#"{{"auths":{{"acr.example":{{"auth":"{auth}","identitytoken":"refresh-hunter2"}}}}}}"#
        );
        let store = CredentialStore::from_docker_config_bytes(json.as_bytes(), "t").unwrap();
        let c = store.lookup("acr.example", "r");
        assert_eq!(c, Credential::IdentityToken(Secret::new("refresh-hunter2")));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.identity_key().starts_with("identity:"));
        assert!(store.secrets().contains(&"refresh-hunter2".to_string()));
    }

    #[test]
    fn docker_config_errors_never_quote_secrets() {
        let bad = br#"{"auths":{"r.example":{"auth":"hunter2-not-base64!"}}}"#;
        let err = CredentialStore::from_docker_config_bytes(bad, "cfg").expect_err("bad auth");
        let text = format!("{err} {err:?}");
        assert!(text.contains("r.example"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let broken = br#"{"auths":{"r.example":{"password":"hunter2" "#;
        let err = CredentialStore::from_docker_config_bytes(broken, "cfg").expect_err("bad json");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn token_answers_and_cache_expiry() {
        let (t, ttl) =
            parse_token_response(br#"{"access_token":"abc","expires_in":300}"#).expect("token");
        assert_eq!(t.expose(), "abc");
        assert_eq!(ttl, Duration::from_secs(300));
        let (t, ttl) = parse_token_response(br#"{"token":"xyz"}"#).expect("token");
        assert_eq!((t.expose(), ttl), ("xyz", Duration::from_secs(60)));
        assert!(parse_token_response(br#"{"token":""}"#).is_none());
        assert!(parse_token_response(b"<html>").is_none());

        let state = AuthState::default();
        state.store_token("r", "id", "s", Secret::new("t"), Duration::from_secs(60));
        assert_eq!(
            state.token("r", "id", "s").map(|s| s.expose().to_string()),
            Some("t".into())
        );
        assert!(state.token("r", "id", "other").is_none());
        state.store_token("r", "id", "s", Secret::new("t"), Duration::ZERO);
        assert!(
            state.token("r", "id", "s").is_none(),
            "an expired token is never reused"
        );
    }

    #[test]
    fn repository_entries_give_two_repositories_of_one_registry_two_identities() {
        let basic = |u: &str| Credential::Basic {
            username: u.into(),
            password: Secret::new(format!("{u}-pw")),
        };
        let mut store = CredentialStore::new();
        store.insert("reg", None, basic("from-docker-config"));
        store.insert_repository("reg", "team/src", basic("alice"));
        store.insert_repository("reg", "team/dst", basic("bob"));
        let user = |store: &CredentialStore, repo: &str| match store.lookup("reg", repo) {
            Credential::Basic { username, .. } => username,
            other => format!("{other:?}"),
        };
        assert_eq!(user(&store, "team/src"), "alice");
        assert_eq!(user(&store, "team/dst"), "bob");
        assert_eq!(
            user(&store, "team/dst/sub"),
            "from-docker-config",
            "exact, not a prefix"
        );
        assert_eq!(user(&store, "team/other"), "from-docker-config");
        assert_eq!(store.lookup("elsewhere", "team/src"), Credential::Anonymous);
        // A prefix entry does not beat an exact one, however long.
        store.insert("reg", Some("team/src"), basic("prefix"));
        assert_eq!(user(&store, "team/src"), "alice");
        assert_eq!(user(&store, "team/src/x"), "prefix");
    }

    #[test]
    fn the_token_cache_is_keyed_by_identity() {
        let alice = Credential::Basic {
            username: "alice".into(),
            password: Secret::new("a-pw"),
        };
        let alice_other_pw = Credential::Basic {
            username: "alice".into(),
            password: Secret::new("other"),
        };
        let (a, a2) = (alice.identity_key(), alice_other_pw.identity_key());
        assert_ne!(a, a2, "a different password is a different identity");
        assert_ne!(a, Credential::Anonymous.identity_key());
        assert!(!a.contains("a-pw") && !a.contains("alice"), "{a}");
        let state = AuthState::default();
        let scope = "repository:team/app:pull";
        state.store_token(
            "r",
            &a,
            scope,
            Secret::new("alice-tok"),
            Duration::from_secs(60),
        );
        assert!(state.token("r", &a2, scope).is_none());
        assert!(state
            .token("r", &Credential::Anonymous.identity_key(), scope)
            .is_none());
        assert_eq!(
            state.token("r", &a, scope).map(|t| t.expose().to_string()),
            Some("alice-tok".into())
        );
        state.forget_token("r", &a2, scope);
        assert!(
            state.token("r", &a, scope).is_some(),
            "forgetting B keeps A"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Credential::Basic {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        let mut store = CredentialStore::new();
        store.insert("r", None, c.clone());
        assert!(!format!("{c:?} {store:?}").contains("hunter2"));
    }
}
