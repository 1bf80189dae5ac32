//! The authorization contract between the HTTP server, storage and access control: what a
//! request is about to do ([`Action`], [`Target`]), the read-only manifest graph an authorizer
//! may consult ([`GraphLookup`], implemented by storage), and the hook itself ([`Authorizer`])
//! with its answers ([`Principal`], [`Denied`], [`Challenge`]).
//!
//! It sits beneath `server`, `storage` and `access` so none of them imports another for these
//! types. It must never depend on any of them, and a refusal must never carry a token.

use std::fmt;
use std::sync::Arc;

/// What a request is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The token-spec action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request touches, for grants that are limited to one manifest graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A manifest by tag or digest.
    Manifest(String),
    /// A blob by digest.
    Blob(String),
    /// The referrers of a digest (`GET /v2/<name>/referrers/<digest>`).
    Referrers(String),
    /// Tag list, upload sessions: the repository as a whole.
    Repository,
    /// `/v2/_catalog`.
    Catalog,
}

/// Read-only view of the manifest graph, given to the [`Authorizer`] so a grant limited to one
/// manifest digest can also allow that manifest's children, config and layers.
pub trait GraphLookup {
    /// Every digest `manifest_digest` references in `repository`, recursively: child manifests
    /// (and their children), configs and layers; not the manifest itself and not its subject.
    /// `None` when that manifest is not in the repository.
    fn manifest_references(&self, repository: &str, manifest_digest: &str) -> Option<Vec<String>>;

    /// The digest a tag currently points at in `repository`, if any.
    fn resolve_tag(&self, repository: &str, tag: &str) -> Option<String>;

    /// Digests of the manifests in `repository` whose `subject` is `digest` (its referrers:
    /// signatures, SBOMs, attestations), at most `limit` of them. None by default.
    fn referrers_of(&self, repository: &str, digest: &str, limit: usize) -> Vec<String> {
        let _ = (repository, digest, limit);
        Vec::new()
    }
}

/// Who a request was authorized as. Only for logs and auditing; never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal {
            subject: "anonymous".to_string(),
        }
    }
}

/// The `WWW-Authenticate` challenge sent with a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm="<realm>",service="<service>",scope="<scope>"`; `scope` is e.g.
    /// `repository:vendor/app:pull,push` or `registry:catalog:*`.
    Bearer {
        realm: String,
        service: String,
        scope: String,
    },
    /// `Basic realm="<realm>"`.
    Basic { realm: String },
}

impl Challenge {
    /// The header value.
    pub fn header_value(&self) -> String {
        match self {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } if scope.is_empty() => format!("Bearer realm=\"{realm}\",service=\"{service}\""),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => format!("Bearer realm=\"{realm}\",service=\"{service}\",scope=\"{scope}\""),
            Challenge::Basic { realm } => format!("Basic realm=\"{realm}\""),
        }
    }

    /// Adds the scopes of `other` (a Bearer challenge for the same realm) to this one, space
    /// separated as the distribution token spec allows: a mount asks for push on the target
    /// and pull on `from` in one challenge, so a client following it gets one token for both.
    pub fn merge_scope(&mut self, other: &Challenge) {
        if let (
            Challenge::Bearer { realm, scope, .. },
            Challenge::Bearer {
                realm: other_realm,
                scope: other_scope,
                ..
            },
        ) = (&mut *self, other)
        {
            if realm == other_realm
                && !other_scope.is_empty()
                && !scope.split(' ').any(|s| s == other_scope)
            {
                if !scope.is_empty() {
                    scope.push(' ');
                }
                scope.push_str(other_scope);
            }
        }
    }
}

/// A refusal. The server turns it into the HTTP response; messages must never contain a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401 `UNAUTHORIZED` with a `WWW-Authenticate` challenge: no or invalid credentials.
    Unauthorized {
        challenge: Challenge,
        message: String,
    },
    /// 403 `DENIED`: valid credentials that do not allow this.
    Forbidden { message: String },
    /// 429 `TOOMANYREQUESTS` with `Retry-After`.
    TooManyRequests {
        retry_after_secs: u64,
        message: String,
    },
}

/// The authorization hook. Called once per request (twice for a cross-repository mount: Push
/// on the target, Pull on `from`), before storage is touched.
///
/// `repository` is the validated repository name, or `""` for [`Target::Catalog`].
pub trait Authorizer: Send + Sync + 'static {
    fn authorize(
        &self,
        authorization: Option<&str>,
        repository: &str,
        action: Action,
        target: &Target,
        graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied>;

    /// The version check `GET /v2/`. Clients read the challenge from this answer to learn
    /// where to get tokens, so an authorizer that requires tokens should refuse it with
    /// [`Denied::Unauthorized`] when no valid credential is sent. Allows by default.
    fn authorize_base(&self, authorization: Option<&str>) -> Result<Principal, Denied> {
        let _ = authorization;
        Ok(Principal::anonymous())
    }
}

/// Allows everything: used when auth is off (`ferry dev` without tokens, most tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(
        &self,
        _authorization: Option<&str>,
        _repository: &str,
        _action: Action,
        _target: &Target,
        _graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied> {
        Ok(Principal::anonymous())
    }
}

impl<T: Authorizer + ?Sized> Authorizer for Arc<T> {
    fn authorize(
        &self,
        authorization: Option<&str>,
        repository: &str,
        action: Action,
        target: &Target,
        graph: &dyn GraphLookup,
    ) -> Result<Principal, Denied> {
        (**self).authorize(authorization, repository, action, target, graph)
    }

    fn authorize_base(&self, authorization: Option<&str>) -> Result<Principal, Denied> {
        (**self).authorize_base(authorization)
    }
}
