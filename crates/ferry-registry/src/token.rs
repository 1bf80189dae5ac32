//! Signed registry tokens: Ed25519 over a JWT-shaped `header.claims.signature` (alg EdDSA).
//!
//! Tokens are bearer secrets: they must never be logged, stored in clear beyond their
//! revocation id (`jti`), or echoed in an error body.

use serde::{Deserialize, Serialize};

/// One access entry, as in the distribution token spec: `repository:<name>:<actions>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// What a token says. `grant` is set only on one-time sync grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub iss: String,
    /// The identity: e.g. `vendor`, `agent:<install>`, `grant:<sync job>`.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    /// Unique id, used for revocation.
    pub jti: String,
    pub access: Vec<AccessEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantScope>,
}

/// A one-time grant's scope: one repository, one manifest digest (and what it references).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantScope {
    pub repository: String,
    pub digest: String,
    pub job: String,
}
