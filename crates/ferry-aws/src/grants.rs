//! The incident kill switch for grants on AWS: deny every session of the pull role that was
//! issued before a moment, so every ECR token minted from those sessions stops working.
//!
//! ECR cannot revoke an authorization token, but ECR checks the permissions of the principal a
//! token was minted for on each use. Each grant's token was minted with an assumed session of
//! the pull role, so an inline policy on the role that denies everything to sessions whose
//! `aws:TokenIssueTime` is before *now* (IAM's standard "revoke older sessions" policy) turns
//! every grant issued so far into a refusal, while grants minted afterwards work. Re-running it
//! moves the moment forward; the policy has one fixed name, so it never accumulates.
//!
//! This module must never widen the role's permissions: it only writes a Deny.

use std::time::{Duration, UNIX_EPOCH};

use aws_config::SdkConfig;

use crate::error::describe;

/// The inline policy's name on the pull role (the console uses the same name).
pub const REVOKE_POLICY_NAME: &str = "AWSRevokeOlderSessions";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("{0} is not a role name or role ARN; pass the vendor stack's PullRoleArn output")]
    InvalidRole(String),
    #[error("IAM refused the revocation: {message}; the caller needs iam:PutRolePolicy on the pull role")]
    Refused { message: String },
    #[error("IAM is unavailable: {message}; nothing was changed, try again")]
    Unavailable { message: String },
}

/// The role name of `role` (a name, or an ARN with an optional path).
pub fn role_name(role: &str) -> Result<String, RevokeError> {
    let name = match role.strip_prefix("arn:") {
        Some(rest) => rest
            .split_once(":role/")
            .map(|(_, path)| path.rsplit('/').next().unwrap_or(path))
            .unwrap_or(""),
        None => role,
    };
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(RevokeError::InvalidRole(role.chars().take(200).collect()))
    }
}

/// The policy document that denies every session issued before `before_ms` (unix ms).
pub fn revoke_older_sessions_policy(before_ms: u64) -> String {
    let at = aws_smithy_types::DateTime::from(UNIX_EPOCH + Duration::from_millis(before_ms));
    let stamp = at
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "FerryRevokeGrantsIssuedBefore",
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": stamp}}
        }]
    })
    .to_string()
}

/// Puts [`revoke_older_sessions_policy`] for `before_ms` on the pull role `role`.
pub async fn revoke_grants_issued_before(
    config: &SdkConfig,
    role: &str,
    before_ms: u64,
) -> Result<String, RevokeError> {
    let name = role_name(role)?;
    let iam = aws_sdk_iam::Client::new(config);
    iam.put_role_policy()
        .role_name(&name)
        .policy_name(REVOKE_POLICY_NAME)
        .policy_document(revoke_older_sessions_policy(before_ms))
        .send()
        .await
        .map_err(|e| {
            let f = describe("IAM", "PutRolePolicy", &e);
            if f.transient {
                RevokeError::Unavailable { message: f.message }
            } else {
                RevokeError::Refused { message: f.message }
            }
        })?;
    tracing::warn!(role = %name, before_ms, "every grant issued before now is revoked");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_come_from_names_and_arns() {
        assert_eq!(role_name("ferry-pull").unwrap(), "ferry-pull");
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/ferry-pull").unwrap(),
            "ferry-pull"
        );
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/team/ferry-pull").unwrap(),
            "ferry-pull"
        );
        assert!(role_name("arn:aws:iam::123456789012:user/alice").is_err());
        assert!(role_name("bad name").is_err());
    }

    #[test]
    fn the_policy_denies_everything_to_older_sessions_only() {
        let doc: serde_json::Value =
            serde_json::from_str(&revoke_older_sessions_policy(1_767_225_600_000)).unwrap();
        let st = &doc["Statement"][0];
        assert_eq!(st["Effect"], "Deny");
        assert_eq!(st["Action"][0], "*");
        assert_eq!(
            st["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2026-01-01T00:00:00Z"
        );
    }
}
