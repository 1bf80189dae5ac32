//! `EcrGrantMinter`: ferry-core's `GrantMinter` on STS and ECR, and vendor ECR repositories.
//!
//! A grant is: STS AssumeRole of the pull role for 900 s with an inline session policy that
//! allows only `ecr:GetAuthorizationToken` and pulls from the one repository; then ECR
//! GetAuthorizationToken with those credentials; then the result sealed to the install agent's
//! key (`ferry_core::seal`). Revocation is a record in DynamoDB (ECR cannot revoke a token).
//! This module must never log, return or store the clear token or the STS credentials: they
//! live in zeroizing buffers until sealed, and only [`SealedGrant`] leaves.

use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::SensitiveOutput;
use aws_smithy_types::config_bag::ConfigBag;
use zeroize::Zeroizing;

use ferry_core::id::Repository;

// The client side (feature `minter`): STS, ECR, sealing.
#[cfg(feature = "minter")]
use {
    crate::error::describe,
    crate::store::DynamoStore,
    crate::token_vault::TokenVault,
    aws_config::SdkConfig,
    aws_credential_types::Credentials,
    aws_sdk_ecr::types::ImageTagMutability,
    ferry_core::domain::{Install, SealedGrant},
    ferry_core::id::Digest,
    ferry_core::ports::{GrantError, GrantId, GrantMinter},
    ferry_core::seal::{ClearGrant, GrantScheme, SealError},
    std::time::SystemTime,
};

/// The longest a grant lives, whatever STS or ECR would allow.
pub const GRANT_TTL: Duration = Duration::from_secs(15 * 60);
/// STS AssumeRole duration: its minimum, which is also the grant's maximum.
pub const ASSUME_ROLE_SECONDS: i32 = 900;
/// The pull actions a grant allows on its one repository.
pub const PULL_ACTIONS: [&str; 3] = [
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
];

/// Where grants are minted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrGrantSettings {
    /// The role assumed for each grant; its own policy should allow at most ECR pulls.
    pub pull_role_arn: String,
    /// The account that owns the vendor repositories.
    pub registry_account_id: String,
    pub region: String,
    /// The registry host put into grants; by default the one ECR reports
    /// (`<account>.dkr.ecr.<region>.amazonaws.com`).
    pub registry_host: Option<String>,
}

impl EcrGrantSettings {
    pub fn repository_arn(&self, repository: &Repository) -> String {
        repository_arn(&self.region, &self.registry_account_id, repository)
    }

    #[cfg(feature = "minter")]
    fn default_host(&self) -> String {
        format!(
            "{}.dkr.ecr.{}.amazonaws.com",
            self.registry_account_id, self.region
        )
    }
}

pub fn repository_arn(region: &str, account: &str, repository: &Repository) -> String {
    format!("arn:aws:ecr:{region}:{account}:repository/{repository}")
}

/// The inline session policy of one grant: the token call, and pulls from one repository.
/// (A session policy can only narrow the role's own policy, never widen it.)
pub fn session_policy(repository_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FerryGrantToken",
                "Effect": "Allow",
                "Action": "ecr:GetAuthorizationToken",
                "Resource": "*"
            },
            {
                "Sid": "FerryGrantPullOneRepository",
                "Effect": "Allow",
                "Action": PULL_ACTIONS,
                "Resource": repository_arn
            }
        ]
    })
    .to_string()
}

/// `ferry-<sync id>.a<attempt>`, cut to STS's 64 characters (sync ids only use characters STS
/// allows). It shows in CloudTrail, so an incident can be traced to one attempt.
#[cfg(feature = "minter")]
fn session_name(grant: &GrantId) -> String {
    let mut name = format!("ferry-{grant}");
    name.truncate(64);
    name
}

/// The system clock in unix ms (ferry-clock's, the one definition).
#[cfg(feature = "minter")]
fn now_ms() -> u64 {
    ferry_clock::unix_ms()
}

#[cfg(feature = "minter")]
fn to_ms(t: &aws_smithy_types::DateTime) -> Option<u64> {
    u64::try_from(t.to_millis().ok()?).ok()
}

/// The grant's expiry: 15 minutes from now, earlier if STS or ECR say so. An ECR expiry that
/// is already past is ignored (moto's fake token always says 2015): the grant never waits on
/// or retries a refresh, it simply lasts at most 15 minutes.
pub fn grant_expiry(now: u64, sts_expires: Option<u64>, ecr_expires: Option<u64>) -> u64 {
    let cap = now.saturating_add(GRANT_TTL.as_millis() as u64);
    let mut at = cap;
    if let Some(s) = sts_expires.filter(|s| *s > now) {
        at = at.min(s);
    }
    if let Some(e) = ecr_expires.filter(|e| *e > now) {
        at = at.min(e);
    }
    at
}

/// Splits an ECR authorizationToken (base64 of `user:password`) into the user and a zeroizing
/// password. `None` if it is not that shape; the token itself is never echoed.
pub fn split_basic(token: &str) -> Option<(String, Zeroizing<String>)> {
    use base64::Engine as _;
    let raw = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(token.trim().as_bytes())
            .ok()?,
    );
    let text = std::str::from_utf8(&raw).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() || password.is_empty() {
        return None;
    }
    Some((user.to_owned(), Zeroizing::new(password.to_owned())))
}

/// Marks a call's response as sensitive, so the SDK's TRACE logging of response bodies prints
/// "REDACTED" instead. ECR's model does not mark GetAuthorizationToken sensitive (STS's
/// AssumeRole is), so without this a TRACE log would carry the token. (`LOG_SENSITIVE_BODIES=true`
/// overrides it: never set that in production.)
#[derive(Debug)]
pub(crate) struct RedactResponseBody;

impl Intercept for RedactResponseBody {
    fn name(&self) -> &'static str {
        "FerryRedactResponseBody"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(SensitiveOutput);
        Ok(())
    }
}

#[cfg(feature = "minter")]
const REFUSED_STS_CODES: &[&str] = &[
    "AccessDenied",
    "NoSuchEntity",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "ValidationError",
];

/// The grant minter port on STS + ECR (feature `minter`: only the minting functions link
/// the STS and ECR clients).
#[cfg(feature = "minter")]
#[derive(Clone)]
pub struct EcrGrantMinter {
    sts: aws_sdk_sts::Client,
    base: SdkConfig,
    settings: EcrGrantSettings,
    revocations: DynamoStore,
}

#[cfg(feature = "minter")]
impl std::fmt::Debug for EcrGrantMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrGrantMinter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "minter")]
impl EcrGrantMinter {
    pub fn new(
        config: &SdkConfig,
        settings: EcrGrantSettings,
        revocations: DynamoStore,
    ) -> EcrGrantMinter {
        EcrGrantMinter {
            sts: aws_sdk_sts::Client::new(config),
            base: config.clone(),
            settings,
            revocations,
        }
    }

    pub fn settings(&self) -> &EcrGrantSettings {
        &self.settings
    }
}

#[cfg(feature = "minter")]
fn sts_error(f: crate::error::Failure) -> GrantError {
    if f.transient {
        GrantError::Unavailable { message: f.message }
    } else if f
        .code
        .as_deref()
        .is_some_and(|c| REFUSED_STS_CODES.contains(&c))
    {
        GrantError::Refused { message: f.message }
    } else {
        GrantError::Unavailable { message: f.message }
    }
}

#[cfg(feature = "minter")]
impl EcrGrantMinter {
    /// STS AssumeRole of the pull role for [`ASSUME_ROLE_SECONDS`], with a session policy
    /// that allows only `ecr:GetAuthorizationToken` and pulls from `repository`.
    async fn assume_pull_role(
        &self,
        repository: &Repository,
        grant_id: &GrantId,
    ) -> Result<aws_sdk_sts::types::Credentials, GrantError> {
        let arn = self.settings.repository_arn(repository);
        let assumed = self
            .sts
            .assume_role()
            .role_arn(&self.settings.pull_role_arn)
            .role_session_name(session_name(grant_id))
            .duration_seconds(ASSUME_ROLE_SECONDS)
            .policy(session_policy(&arn))
            .send()
            .await
            .map_err(|e| sts_error(describe("STS", "AssumeRole", &e)))?;
        assumed.credentials.ok_or_else(|| GrantError::Unavailable {
            message: "STS AssumeRole answered without credentials".into(),
        })
    }

    /// ECR GetAuthorizationToken with the assumed credentials: the token (kept out of the
    /// SDK's logs, zeroized when dropped) and the authorization data it came with.
    async fn ecr_authorization(
        &self,
        creds: aws_sdk_sts::types::Credentials,
    ) -> Result<(Zeroizing<String>, aws_sdk_ecr::types::AuthorizationData), GrantError> {
        let expiry = SystemTime::try_from(creds.expiration).ok();
        let secret = Zeroizing::new(creds.secret_access_key);
        let session = Zeroizing::new(creds.session_token);
        // Credentials redacts its secrets in Debug; the client lives for this one call.
        let provider = Credentials::new(
            creds.access_key_id,
            secret.as_str(),
            Some(session.to_string()),
            expiry,
            "ferry-grant",
        );
        let vault = TokenVault::default();
        let ecr = aws_sdk_ecr::Client::from_conf(
            {
                let mut b =
                    aws_sdk_ecr::config::Builder::from(&self.base).credentials_provider(provider);
                if let Some(c) = self.base.http_client() {
                    b = b.http_client(vault.http_client(c));
                }
                b
            }
            .interceptor(RedactResponseBody)
            .build(),
        );
        let out = ecr.get_authorization_token().send().await.map_err(|e| {
            let f = describe("ECR", "GetAuthorizationToken", &e);
            if f.transient {
                GrantError::Unavailable { message: f.message }
            } else {
                GrantError::Refused { message: f.message }
            }
        })?;
        let Some(mut data) = out.authorization_data.and_then(|d| d.into_iter().next()) else {
            return Err(GrantError::Unavailable {
                message: "ECR GetAuthorizationToken answered without authorization data".into(),
            });
        };
        // The vault took the token out of the output before the SDK's TRACE log saw it.
        let token = match vault.take() {
            Some(t) => t,
            None => Zeroizing::new(data.authorization_token.take().unwrap_or_default()),
        };
        if token.is_empty() {
            return Err(GrantError::Unavailable {
                message: "ECR GetAuthorizationToken answered without a token".into(),
            });
        }
        Ok((token, data))
    }

    /// The registry host the agent pulls from: the configured one, else ECR's proxy
    /// endpoint without its scheme, else the account's default ECR host.
    fn registry_host(&self, proxy_endpoint: Option<&str>) -> String {
        match (&self.settings.registry_host, proxy_endpoint) {
            (Some(h), _) => h.clone(),
            (None, Some(p)) => p
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            (None, None) => self.settings.default_host(),
        }
    }
}

#[cfg(feature = "minter")]
impl EcrGrantMinter {
    /// STS, ECR and sealing, without the revocation check (the trait's `mint` does it).
    async fn mint_unchecked(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant_id: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        let sync_id = &grant_id.sync_id;
        let creds = self.assume_pull_role(repository, grant_id).await?;
        let sts_expires = to_ms(&creds.expiration);
        let (token, data) = self.ecr_authorization(creds).await?;
        let now = now_ms();
        let expires_at = grant_expiry(now, sts_expires, data.expires_at.as_ref().and_then(to_ms));
        // ECR's authorizationToken is base64 of `AWS:<password>`: a Basic credential.
        let (username, password) = split_basic(&token).ok_or_else(|| GrantError::Unavailable {
            message: "ECR GetAuthorizationToken answered a token that is not base64 of \
                      `user:password`"
                .into(),
        })?;
        let grant = ClearGrant {
            registry: self.registry_host(data.proxy_endpoint.as_deref()),
            repository: repository.to_string(),
            digest: digest.to_string(),
            token: password.to_string(),
            scheme: GrantScheme::Basic,
            username,
            expires_at,
        };
        let sealed = grant
            .seal(&install.agent_public_key, &install.id, sync_id)
            .map_err(|e| match e {
                SealError::Random => GrantError::Unavailable {
                    message: e.to_string(),
                },
                _ => GrantError::Refused {
                    message: format!("install {}: {e}", install.id),
                },
            })?;
        tracing::info!(
            sync_id = %sync_id,
            install_id = %install.id,
            repository = %repository,
            expires_at,
            "minted a sealed ECR pull grant"
        );
        Ok(SealedGrant::new(sealed, expires_at))
    }
}

#[cfg(feature = "minter")]
impl GrantMinter for EcrGrantMinter {
    async fn mint(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant_id: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        if self.is_revoked(grant_id).await? {
            return Err(GrantError::Refused {
                message: format!("grant {grant_id} was revoked; a new attempt gets a new grant"),
            });
        }
        self.mint_unchecked(install, repository, digest, grant_id)
            .await
    }

    /// The first attempt of a job its caller just created cannot have been revoked: no
    /// revocation read (issue 12, one read less per install in a fan-out).
    async fn mint_first(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant_id: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        self.mint_unchecked(install, repository, digest, grant_id)
            .await
    }

    async fn revoke(&self, grant: &GrantId) -> Result<(), GrantError> {
        self.revocations
            .revoke_grant(grant, now_ms())
            .await
            .map_err(|e| GrantError::Unavailable {
                message: e.to_string(),
            })?;
        tracing::info!(grant = %grant, "grant revoked (recorded; ECR tokens cannot be revoked)");
        Ok(())
    }

    async fn is_revoked(&self, grant: &GrantId) -> Result<bool, GrantError> {
        self.revocations
            .is_grant_revoked(grant)
            .await
            .map_err(|e| GrantError::Unavailable {
                message: e.to_string(),
            })
    }
}

// ---- vendor repositories ------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcrError {
    #[error("ECR unavailable: {message}")]
    Unavailable { message: String },
    #[error("ECR refused the request: {message}")]
    Invalid { message: String },
}

/// A vendor repository as ECR reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryInfo {
    pub arn: String,
    pub uri: String,
    pub immutable: bool,
}

/// Vendor ECR repositories: a push needs the repository to exist first.
#[cfg(feature = "minter")]
#[derive(Clone, Debug)]
pub struct EcrRepositories {
    client: aws_sdk_ecr::Client,
}

#[cfg(feature = "minter")]
impl EcrRepositories {
    pub fn new(config: &SdkConfig) -> EcrRepositories {
        EcrRepositories {
            client: aws_sdk_ecr::Client::new(config),
        }
    }

    /// Creates `name` with immutable tags unless it exists; either way returns it as it is
    /// (an existing repository is not changed, so a mutable one stays mutable).
    pub async fn ensure_repository(&self, name: &Repository) -> Result<RepositoryInfo, EcrError> {
        let fail = |op: &str, f: crate::error::Failure| {
            if f.transient {
                EcrError::Unavailable { message: f.message }
            } else {
                EcrError::Invalid {
                    message: format!("{} ({op} {name})", f.message),
                }
            }
        };
        let created = self
            .client
            .create_repository()
            .repository_name(name.as_str())
            .image_tag_mutability(ImageTagMutability::Immutable)
            .send()
            .await;
        let repo = match created {
            Ok(out) => out.repository,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_repository_already_exists_exception()) =>
            {
                let out = self
                    .client
                    .describe_repositories()
                    .repository_names(name.as_str())
                    .send()
                    .await
                    .map_err(|e| {
                        fail(
                            "DescribeRepositories",
                            describe("ECR", "DescribeRepositories", &e),
                        )
                    })?;
                out.repositories.and_then(|r| r.into_iter().next())
            }
            Err(e) => {
                return Err(fail(
                    "CreateRepository",
                    describe("ECR", "CreateRepository", &e),
                ))
            }
        };
        let repo = repo.ok_or_else(|| EcrError::Unavailable {
            message: format!("ECR did not describe repository {name}"),
        })?;
        Ok(RepositoryInfo {
            arn: repo.repository_arn.unwrap_or_default(),
            uri: repo.repository_uri.unwrap_or_default(),
            immutable: repo.image_tag_mutability == Some(ImageTagMutability::Immutable),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_capped_and_ignores_a_past_ecr_expiry() {
        let now = 1_000_000;
        let cap = now + 15 * 60 * 1000;
        assert_eq!(grant_expiry(now, None, None), cap);
        assert_eq!(grant_expiry(now, Some(now + 60_000), None), now + 60_000);
        // moto: ECR says 2015.
        assert_eq!(grant_expiry(now, Some(cap + 1), Some(1)), cap);
        assert_eq!(grant_expiry(now, None, Some(now + 12 * 3_600_000)), cap);
    }

    #[test]
    fn the_session_policy_names_one_repository() {
        let arn = "arn:aws:ecr:us-east-1:123456789012:repository/shop/web";
        let p: serde_json::Value = serde_json::from_str(&session_policy(arn)).unwrap();
        let statements = p["Statement"].as_array().unwrap();
        assert_eq!(statements[0]["Action"], "ecr:GetAuthorizationToken");
        assert_eq!(statements[1]["Resource"], arn);
        assert_eq!(statements[1]["Action"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn an_ecr_token_splits_into_a_basic_credential() {
        use base64::Engine as _;
        let t = base64::engine::general_purpose::STANDARD.encode("AWS:pass:with:colons");
        let (u, p) = split_basic(&t).unwrap();
        assert_eq!((u.as_str(), p.as_str()), ("AWS", "pass:with:colons"));
        assert!(split_basic("not base64!").is_none());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("AWS");
        assert!(split_basic(&no_colon).is_none());
    }

    #[test]
    fn session_names_fit_sts() {
        let long = GrantId::new(ferry_core::id::SyncId::new("s".repeat(100)).unwrap(), 3);
        assert_eq!(session_name(&long).len(), 64);
        let short = GrantId::new(ferry_core::id::SyncId::new("s-1").unwrap(), 2);
        assert_eq!(session_name(&short), "ferry-s-1.a2");
    }
}
