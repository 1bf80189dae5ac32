//! Access control: who may do what, where. Every request the server handles is checked here
//! first, before any storage is touched.
//!
//! The server calls [`AccessControl`]'s [`Authorizer::authorize`] with the request's
//! `Authorization` header and what it is about to do. The namespace policy ([`AccessPolicy`]) is
//! checked on every request, not only when a token is issued, so a validly signed token never
//! grants more than the policy allows today. A refusal is 401 (with a `WWW-Authenticate`
//! challenge naming the scope) or 403, always with a message that says what to do and never
//! echoes the token.
//!
//! Tokens come from `GET /token` ([`endpoint::token_router`]) with HTTP Basic identity
//! credentials, or, for one-time sync grants, from [`AccessControl::mint_grant`].

pub mod endpoint;
pub mod identity;
pub mod node;
pub mod not_before;
pub mod revocation;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use crate::authz::{Action, Target};
use crate::authz::{Authorizer, Challenge, Denied, GraphLookup, Principal};
use crate::token::{
    self, AccessEntry, GrantScope, TokenClaims, TokenError, TokenSigner, TokenVerifier,
    LEEWAY_SECS, MAX_TOKEN_TTL_SECS,
};
use identity::{Identity, IdentityStore};
use revocation::{RevocationError, RevocationList};

pub use not_before::revoke_grants_issued_before;

/// Whose namespace a repository is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// `vendor/...`: written by the builder.
    Vendor,
    /// `installs/<id>/...`: written only by `agent:<id>`.
    Install(String),
    /// Anything else: nobody may use it.
    Other,
}

/// Whether `name` is a valid repository name, and whether `s` is a valid (sha256) digest:
/// ferry-spec's rules, re-exported at their old paths.
pub use ferry_spec::{is_digest, valid_repository};

/// The namespace rules and the identities they apply to.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    vendor_prefix: String,
    installs_prefix: String,
    identities: IdentityStore,
    anonymous_vendor_pull: bool,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessPolicy {
    /// `vendor/` and `installs/<id>/` namespaces, no identities, no anonymous access.
    pub fn new() -> Self {
        AccessPolicy {
            vendor_prefix: "vendor".into(),
            installs_prefix: "installs".into(),
            identities: IdentityStore::new(),
            anonymous_vendor_pull: false,
        }
    }

    /// Adds an identity; `secret` is hashed at once and never kept.
    pub fn add_identity(&mut self, identity: Identity, secret: &str) -> &mut Self {
        self.identities.insert(identity, secret);
        self
    }

    /// Adds an identity whose secret hash comes from configuration.
    pub fn add_identity_hash(
        &mut self,
        identity: Identity,
        hash: identity::SecretHash,
    ) -> &mut Self {
        self.identities.insert_hash(identity, hash);
        self
    }

    /// Removes an identity: its existing tokens are refused from the next request on.
    pub fn remove_identity(&mut self, identity: &Identity) -> bool {
        self.identities.remove(identity)
    }

    /// Lets requests without a token pull from the vendor namespace (off by default).
    pub fn allow_anonymous_vendor_pull(&mut self, allow: bool) -> &mut Self {
        self.anonymous_vendor_pull = allow;
        self
    }

    pub fn identities(&self) -> &IdentityStore {
        &self.identities
    }

    /// Which namespace `repository` is in.
    pub fn namespace(&self, repository: &str) -> Namespace {
        if let Some(rest) = repository
            .strip_prefix(self.vendor_prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            if !rest.is_empty() {
                return Namespace::Vendor;
            }
        }
        if let Some(rest) = repository
            .strip_prefix(self.installs_prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            if let Some((id, repo)) = rest.split_once('/') {
                if identity::valid_install_id(id) && !repo.is_empty() {
                    return Namespace::Install(id.to_string());
                }
            }
        }
        Namespace::Other
    }

    /// What `identity` may do on `repository`, whatever any token says.
    pub fn allowed_actions(&self, identity: &Identity, repository: &str) -> Vec<Action> {
        if !self.identities.contains(identity) || !valid_repository(repository) {
            return Vec::new();
        }
        match (identity, self.namespace(repository)) {
            (Identity::Vendor, Namespace::Vendor) => vec![Action::Pull, Action::Push],
            (Identity::Agent(own), Namespace::Install(ns)) if *own == ns => {
                vec![Action::Pull, Action::Push]
            }
            // An install's nodes read what their agent wrote, and nothing else.
            (Identity::Node(own), Namespace::Install(ns)) if *own == ns => vec![Action::Pull],
            (Identity::Admin, Namespace::Vendor) => Action::ALL.to_vec(),
            // Reading an install is fine for an operator; writing it is the agent's alone.
            (Identity::Admin, Namespace::Install(_)) => vec![Action::Pull],
            _ => Vec::new(),
        }
    }

    pub fn may(&self, identity: &Identity, repository: &str, action: Action) -> bool {
        self.allowed_actions(identity, repository).contains(&action)
    }

    pub fn may_list_catalog(&self, identity: &Identity) -> bool {
        *identity == Identity::Admin && self.identities.contains(identity)
    }

    /// Why `identity` may not do `action` on `repository`, phrased as what to do instead.
    fn refusal(&self, identity: &Identity, repository: &str, action: Action) -> String {
        match self.namespace(repository) {
            Namespace::Install(id) => format!(
                "{identity} may not {action} in {repository}: only agent:{id} writes installs/{id}/"
            ),
            Namespace::Vendor => format!(
                "{identity} may not {action} in {repository}: the vendor namespace is written by the vendor identity; agents pull from it with a sync grant"
            ),
            Namespace::Other => format!(
                "{repository} is outside the {}/ and {}/<install>/ namespaces; use a repository under one of them",
                self.vendor_prefix, self.installs_prefix
            ),
        }
    }
}

/// A scope requested at `/token`, e.g. `repository:vendor/app:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedScope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl RequestedScope {
    /// Parses `type:name:actions`. The name may not contain `:`, so the first and last colons
    /// split it.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() || actions.is_empty() {
            return None;
        }
        Some(RequestedScope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions.split(',').map(str::to_string).collect(),
        })
    }
}

/// A token just issued. `Debug` never shows the token itself.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub jti: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub access: Vec<AccessEntry>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("jti", &self.jti)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("access", &self.access)
            .finish()
    }
}

/// Why a token or grant could not be issued or revoked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    #[error(
        "{0:?} is not a repository in the vendor namespace; grants are for vendor/<name> only"
    )]
    NotVendorRepository(String),
    #[error(
        "{0:?} is not a manifest digest (sha256:<64 hex>); grants name one digest, never a tag"
    )]
    InvalidDigest(String),
    #[error("{0:?} is not a valid install id (lowercase letters, digits, single . _ -)")]
    InvalidInstall(String),
    #[error("job id must be 1 to 128 printable ASCII characters without spaces")]
    InvalidJob,
    #[error(
        "sync job {0} was already reported done; its grant is revoked and no new one is issued"
    )]
    JobRevoked(String),
}

/// How to set up [`AccessControl`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The registry's service name: token audience and the `service` in challenges.
    pub service: String,
    /// Where the signing key and the revocation list live (created if missing).
    pub state_dir: PathBuf,
    /// The token endpoint URL put in challenges, e.g. `http://127.0.0.1:5000/token`. Can be
    /// set later with [`AccessControl::set_realm`] once the listener's port is known.
    pub realm: String,
    /// Lifetime of tokens from `/token` (clamped to 15 minutes).
    pub token_ttl_secs: u64,
}

impl AuthConfig {
    pub fn new(service: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        AuthConfig {
            service: service.into(),
            state_dir: state_dir.into(),
            realm: String::new(),
            token_ttl_secs: 300,
        }
    }
}

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The registry's [`Authorizer`]: verifies tokens, applies the policy, and issues tokens and
/// grants.
pub struct AccessControl {
    service: String,
    token_ttl_secs: u64,
    signer: TokenSigner,
    verifier: TokenVerifier,
    policy: RwLock<AccessPolicy>,
    revocations: RevocationList,
    grants_not_before: not_before::GrantsNotBefore,
    realm: RwLock<String>,
    clock: Clock,
}

impl fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessControl")
            .field("service", &self.service)
            .field("kid", &self.signer.kid())
            .field("revocations", &self.revocations.path())
            .finish_non_exhaustive()
    }
}

impl AccessControl {
    /// Loads (or creates) the signing key `state_dir/signing.key` and the revocation list
    /// `state_dir/revocations.json`.
    pub fn open(config: AuthConfig, policy: AccessPolicy) -> Result<Self, AuthError> {
        let signer = TokenSigner::load_or_generate(&config.state_dir.join("signing.key"))?;
        let revocations = RevocationList::open(config.state_dir.join("revocations.json"))?;
        let grants_not_before = not_before::GrantsNotBefore::new(&config.state_dir);
        Ok(AccessControl {
            grants_not_before,
            verifier: signer.verifier(config.service.clone()),
            service: config.service,
            token_ttl_secs: config.token_ttl_secs.clamp(1, MAX_TOKEN_TTL_SECS),
            signer,
            policy: RwLock::new(policy),
            revocations,
            realm: RwLock::new(config.realm),
            clock: Arc::new(token::unix_now),
        })
    }

    /// Replaces the clock (unix seconds); for tests of expiry.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Sets the token endpoint URL put in 401 challenges.
    pub fn set_realm(&self, realm: impl Into<String>) {
        let mut r = self.realm.write().unwrap_or_else(|p| p.into_inner());
        *r = realm.into();
    }

    pub fn realm(&self) -> String {
        self.realm
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn policy(&self) -> std::sync::RwLockReadGuard<'_, AccessPolicy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the policy at run time (e.g. a new install and its agent). Takes effect on the
    /// next request, including for tokens already issued.
    pub fn update_policy<R>(&self, f: impl FnOnce(&mut AccessPolicy) -> R) -> R {
        let mut p = self.policy.write().unwrap_or_else(|p| p.into_inner());
        f(&mut p)
    }

    /// The identity `username`/`secret` authenticate as, if any.
    pub fn authenticate(&self, username: &str, secret: &str) -> Option<Identity> {
        self.policy().identities().authenticate(username, secret)
    }

    /// Issues a token to `identity` for the intersection of `requested` and what the policy
    /// allows. Scopes it may not have are left out, as the distribution token spec says.
    pub fn issue(
        &self,
        identity: &Identity,
        requested: &[RequestedScope],
    ) -> Result<IssuedToken, AuthError> {
        let policy = self.policy();
        let mut access: Vec<AccessEntry> = Vec::new();
        for scope in requested {
            let entry = match scope.kind.as_str() {
                "repository" => {
                    let allowed = policy.allowed_actions(identity, &scope.name);
                    let wildcard = scope.actions.iter().any(|a| a == "*");
                    let granted: Vec<String> = Action::ALL
                        .iter()
                        .filter(|a| allowed.contains(a))
                        .filter(|a| wildcard || scope.actions.iter().any(|r| r == a.as_str()))
                        .map(|a| a.as_str().to_string())
                        .collect();
                    AccessEntry {
                        kind: "repository".into(),
                        name: scope.name.clone(),
                        actions: granted,
                    }
                }
                "registry"
                    if scope.name == "catalog"
                        && scope.actions.iter().any(|a| a == "*")
                        && policy.may_list_catalog(identity) =>
                {
                    AccessEntry {
                        kind: "registry".into(),
                        name: "catalog".into(),
                        actions: vec!["*".into()],
                    }
                }
                _ => continue,
            };
            if entry.actions.is_empty() {
                continue;
            }
            // Merge repeated scopes for the same name.
            match access
                .iter_mut()
                .find(|e| e.kind == entry.kind && e.name == entry.name)
            {
                Some(existing) => {
                    for a in entry.actions {
                        if !existing.actions.contains(&a) {
                            existing.actions.push(a);
                        }
                    }
                }
                None => access.push(entry),
            }
        }
        drop(policy);
        self.sign(identity.name(), access, self.token_ttl_secs, None)
    }

    fn sign(
        &self,
        sub: String,
        access: Vec<AccessEntry>,
        ttl: u64,
        grant: Option<GrantScope>,
    ) -> Result<IssuedToken, AuthError> {
        let now = self.now();
        let claims = TokenClaims {
            iss: self.service.clone(),
            sub,
            aud: self.service.clone(),
            exp: now + ttl.clamp(1, MAX_TOKEN_TTL_SECS),
            iat: now,
            jti: token::random_id(),
            access,
            grant,
        };
        let token = self.signer.sign(&claims)?;
        Ok(IssuedToken {
            token,
            jti: claims.jti,
            issued_at: claims.iat,
            expires_at: claims.exp,
            access: claims.access,
        })
    }

    /// Mints the one-time pull grant of sync job `job_id`: Pull on `repository` (a vendor
    /// repository), only manifest `manifest_digest` (by digest) and what it references. `ttl`
    /// is clamped to 15 minutes. Refused for a job already revoked.
    pub fn mint_grant(
        &self,
        install_id: &str,
        repository: &str,
        manifest_digest: &str,
        job_id: &str,
        ttl: std::time::Duration,
    ) -> Result<IssuedToken, AuthError> {
        if !identity::valid_install_id(install_id) {
            return Err(AuthError::InvalidInstall(install_id.to_string()));
        }
        if !valid_repository(repository) || self.policy().namespace(repository) != Namespace::Vendor
        {
            return Err(AuthError::NotVendorRepository(repository.to_string()));
        }
        if !is_digest(manifest_digest) {
            return Err(AuthError::InvalidDigest(manifest_digest.to_string()));
        }
        if job_id.is_empty() || job_id.len() > 128 || !job_id.bytes().all(|c| c.is_ascii_graphic())
        {
            return Err(AuthError::InvalidJob);
        }
        if self.revocations.is_revoked(job_id) {
            return Err(AuthError::JobRevoked(job_id.to_string()));
        }
        let grant = GrantScope {
            repository: repository.to_string(),
            digest: manifest_digest.to_string(),
            job: job_id.to_string(),
            install: Some(install_id.to_string()),
        };
        self.sign(
            format!("grant:{job_id}"),
            vec![AccessEntry::repository(repository, &["pull"])],
            ttl.as_secs(),
            Some(grant),
        )
    }

    /// Revokes a grant by its sync job id or a token by its `jti`; called when the sync is
    /// reported done. Persisted before it returns, and kept until every token it could match
    /// has expired.
    pub fn revoke_grant(&self, job_or_jti: &str) -> Result<(), AuthError> {
        let now = self.now();
        let keep_until = now + MAX_TOKEN_TTL_SECS + LEEWAY_SECS + 1;
        self.revocations.revoke(job_or_jti, keep_until, now)?;
        Ok(())
    }

    /// Whether the grant of `job_id` (or the token `jti`) was revoked.
    pub fn is_grant_revoked(&self, job_or_jti: &str) -> bool {
        self.revocations.is_revoked(job_or_jti)
    }

    /// Refuses every grant issued before `unix_secs` (the kill switch; see
    /// [`not_before`]). Identity tokens are not affected.
    pub fn revoke_grants_issued_before(&self, unix_secs: u64) -> Result<u64, AuthError> {
        let dir = self.revocations.path().parent().unwrap_or(Path::new("."));
        not_before::revoke_grants_issued_before(dir, unix_secs).map_err(|source| {
            AuthError::Revocation(RevocationError::Io {
                path: dir.join(not_before::FILE_NAME),
                source,
            })
        })
    }

    /// One definition of "this token no longer counts": its `jti` or its grant's job id was
    /// revoked, or it is a grant issued before the kill switch's moment.
    fn is_token_revoked(&self, claims: &TokenClaims) -> bool {
        self.revocations.is_revoked(&claims.jti)
            || claims.grant.as_ref().is_some_and(|g| {
                self.revocations.is_revoked(&g.job) || claims.iat < self.grants_not_before.get()
            })
    }

    /// Forgets revocations that can no longer match a live token.
    pub fn prune_revocations(&self) -> Result<usize, AuthError> {
        Ok(self.revocations.prune(self.now())?)
    }

    fn challenge_scope(repository: &str, action: Action, target: &Target) -> String {
        if *target == Target::Catalog {
            return "registry:catalog:*".to_string();
        }
        let actions = match action {
            Action::Pull => "pull",
            // Clients push with pull,push: they check for existing blobs first.
            Action::Push => "pull,push",
            Action::Delete => "delete",
        };
        format!("repository:{repository}:{actions}")
    }

    fn unauthorized(&self, scope: String, message: String) -> Denied {
        Denied::Unauthorized {
            challenge: Challenge::Bearer {
                realm: self.realm(),
                service: self.service.clone(),
                scope,
            },
            message,
        }
    }

    fn authorize_grant(
        &self,
        claims: &TokenClaims,
        grant: &GrantScope,
        repository: &str,
        action: Action,
        target: &Target,
        graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied> {
        let forbidden = |message: String| Err(Denied::Forbidden { message });
        let what = format!("{}@{}", grant.repository, grant.digest);
        if action != Action::Pull {
            return forbidden(format!(
                "a sync grant is read-only: it allows pulling {what} only; {action} needs the agent's own token"
            ));
        }
        if repository != grant.repository
            || self.policy().namespace(repository) != Namespace::Vendor
            || !claims.allows(repository, "pull")
        {
            return forbidden(format!(
                "this sync grant allows only {what}; request {repository} with its own grant"
            ));
        }
        let base = graph.manifest_references(&grant.repository, &grant.digest);
        let in_graph = |d: &str| {
            base.as_ref()
                .is_some_and(|refs| refs.iter().any(|r| r == d))
        };
        // What travels with the artifact: computed only for what the graph does not hold.
        let attached = |d: &str| {
            crate::grant_scope::attached(graph, &grant.repository, &grant.digest, base.as_deref())
                .contains(d)
        };
        let allowed = match target {
            Target::Manifest(reference) if !is_digest(reference) => {
                if crate::grant_scope::is_attached_tag(&grant.digest, reference) {
                    true
                } else {
                    return forbidden(format!(
                        "a sync grant pulls by digest only: fetch {what}, not a tag \
                         (only its signature tags {})",
                        crate::grant_scope::attached_tags(&grant.digest).join(", ")
                    ));
                }
            }
            Target::Manifest(d) => *d == grant.digest || in_graph(d) || attached(d),
            Target::Blob(d) => in_graph(d) || attached(d),
            Target::Referrers(d) => *d == grant.digest || in_graph(d) || attached(d),
            Target::Repository | Target::Catalog => false,
        };
        if !allowed {
            return forbidden(format!(
                "this sync grant allows only {what}, the manifests and blobs it references, and \
                 its referrers and signature tags"
            ));
        }
        Ok(Principal {
            subject: claims.sub.clone(),
        })
    }
}

/// The `Bearer` credential of an `Authorization` header, if that is what it holds.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl Authorizer for AccessControl {
    /// `GET /v2/`: any valid, unrevoked token passes; otherwise the challenge tells the client
    /// where the token endpoint is (with no scope: the client picks it per operation).
    fn authorize_base(&self, authorization: Option<&str>) -> Result<Principal, Denied> {
        let realm = self.realm();
        let refuse = |message: String| Err(self.unauthorized(String::new(), message));
        let Some(header) = authorization else {
            if self.policy().anonymous_vendor_pull {
                return Ok(Principal::anonymous());
            }
            return refuse(format!(
                "authentication required: request a token from {realm} using HTTP Basic identity credentials"
            ));
        };
        let Some(token) = bearer(header) else {
            return refuse(format!(
                "this registry takes bearer tokens only: request one from {realm}"
            ));
        };
        match self.verifier.verify(token, self.now()) {
            Ok(claims) if !self.is_token_revoked(&claims) => Ok(Principal {
                subject: claims.sub,
            }),
            Ok(_) => refuse("this token was revoked; request a new one".to_string()),
            Err(e) => refuse(format!("{e}; request a new token from {realm}")),
        }
    }

    fn authorize(
        &self,
        authorization: Option<&str>,
        repository: &str,
        action: Action,
        target: &Target,
        graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied> {
        let scope = Self::challenge_scope(repository, action, target);
        let Some(header) = authorization else {
            return self.authorize_anonymous(repository, action, target, scope);
        };
        let claims = self.verified_claims(header, &scope)?;
        if let Some(grant) = &claims.grant {
            return self.authorize_grant(&claims, grant, repository, action, target, graph);
        }
        self.authorize_identity(&claims, repository, action, target, &scope)
    }
}

impl AccessControl {
    /// A request without `Authorization`: allowed only to pull from the vendor namespace,
    /// when the policy allows anonymous vendor pulls; otherwise the challenge for `scope`.
    fn authorize_anonymous(
        &self,
        repository: &str,
        action: Action,
        target: &Target,
        scope: String,
    ) -> Result<Principal, Denied> {
        let policy = self.policy();
        if policy.anonymous_vendor_pull
            && action == Action::Pull
            && *target != Target::Catalog
            && policy.namespace(repository) == Namespace::Vendor
        {
            return Ok(Principal::anonymous());
        }
        let realm = self.realm();
        Err(self.unauthorized(
            scope.clone(),
            format!("authentication required: request a token with scope {scope} from {realm} using HTTP Basic identity credentials"),
        ))
    }

    /// The claims of the bearer token in `header`: signed by us, unexpired and not revoked.
    /// A refusal carries the challenge for `scope`.
    fn verified_claims(&self, header: &str, scope: &str) -> Result<TokenClaims, Denied> {
        let realm = self.realm();
        let Some(token) = bearer(header) else {
            return Err(self.unauthorized(
                scope.to_string(),
                format!("this registry takes bearer tokens only: request a token with scope {scope} from {realm}"),
            ));
        };
        let claims = self.verifier.verify(token, self.now()).map_err(|e| {
            self.unauthorized(
                scope.to_string(),
                format!("{e}; request a token with scope {scope} from {realm}"),
            )
        })?;
        if self.is_token_revoked(&claims) {
            return Err(self.unauthorized(
                scope.to_string(),
                "this token was revoked (its sync attempt was reported, or every grant issued \
                 before an incident was revoked); the next attempt gets a new grant"
                    .to_string(),
            ));
        }
        Ok(claims)
    }

    /// An identity token (not a grant): the identity must still be known, the policy must
    /// allow it `action` on `repository` (or the catalog, for admin), and so must the token.
    fn authorize_identity(
        &self,
        claims: &TokenClaims,
        repository: &str,
        action: Action,
        target: &Target,
        scope: &str,
    ) -> Result<Principal, Denied> {
        let policy = self.policy();
        let identity = Identity::parse(&claims.sub).filter(|i| policy.identities().contains(i));
        let Some(identity) = identity else {
            return Err(self.unauthorized(
                scope.to_string(),
                "the token's identity is no longer known to this registry; authenticate again at the token endpoint".to_string(),
            ));
        };
        if *target == Target::Catalog {
            let in_token = claims.access.iter().any(|e| {
                e.kind == "registry" && e.name == "catalog" && e.actions.iter().any(|a| a == "*")
            });
            if in_token && policy.may_list_catalog(&identity) {
                return Ok(Principal {
                    subject: identity.name(),
                });
            }
            return Err(Denied::Forbidden {
                message: format!(
                    "{identity} may not list the catalog; only admin may, with scope registry:catalog:*"
                ),
            });
        }
        if !policy.may(&identity, repository, action) {
            return Err(Denied::Forbidden {
                message: policy.refusal(&identity, repository, action),
            });
        }
        if !claims.allows(repository, action.as_str()) {
            let realm = self.realm();
            return Err(Denied::Forbidden {
                message: format!(
                    "the token does not allow {action} on {repository}; request a token with scope {scope} from {realm}"
                ),
            });
        }
        Ok(Principal {
            subject: identity.name(),
        })
    }
}

#[cfg(test)]
mod tests;
