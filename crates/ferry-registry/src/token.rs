//! Signed registry tokens: Ed25519 over a JWT-shaped `header.claims.signature` (alg EdDSA).
//!
//! [`TokenSigner`] mints tokens and [`TokenVerifier`] checks them (signature, key id,
//! audience, expiry, issue time). The signing key can be persisted to a 0600 key file so a
//! restarted registry still accepts the tokens it issued before.
//!
//! Tokens are bearer secrets: they must never be logged, stored in clear beyond their
//! revocation id (`jti`), or echoed in an error body. Nothing in this module puts token text
//! into an error or a `Debug` output.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Tokens longer than this are refused before any decoding (they are never legitimately large).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew tolerated when checking `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 30;

/// The longest lifetime any token may have.
pub const MAX_TOKEN_TTL_SECS: u64 = 15 * 60;

/// One access entry, as in the distribution token spec: `repository:<name>:<actions>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl AccessEntry {
    /// A `repository` entry.
    pub fn repository(name: impl Into<String>, actions: &[&str]) -> Self {
        AccessEntry {
            kind: "repository".to_string(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }
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

impl TokenClaims {
    /// Whether the token's `access` list grants `action` on repository `name`.
    pub fn allows(&self, name: &str, action: &str) -> bool {
        self.access.iter().any(|e| {
            e.kind == "repository" && e.name == name && e.actions.iter().any(|a| a == action)
        })
    }
}

/// A one-time grant's scope: one repository, one manifest digest (and what it references).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantScope {
    pub repository: String,
    pub digest: String,
    pub job: String,
    /// The install the grant was minted for (audit only: the request carries no install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a token was refused, or a key could not be loaded. Never carries token text.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token header is not {{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}}")]
    UnsupportedHeader,
    #[error("token was signed by a different key; request a new token from /token")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired; request a new token from /token")]
    Expired,
    #[error("token is issued in the future; check the clocks")]
    NotYetValid,
    #[error("token is for another registry service; request a token for this service")]
    WrongAudience,
    #[error("token lifetime must be at most {MAX_TOKEN_TTL_SECS}s")]
    LifetimeTooLong,
    #[error("could not encode token claims: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("signing key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("signing key file {path}: {source}")]
    KeyIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Short, stable id of a public key: the first 16 hex digits of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Mints tokens. Holds the private key; `Debug` shows only the key id.
pub struct TokenSigner {
    key: SigningKey,
    kid: String,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from its 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self::from_key(SigningKey::from_bytes(seed))
    }

    fn from_key(key: SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        TokenSigner { key, kid }
    }

    /// The key id put in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The matching verifier for tokens meant for `audience`.
    pub fn verifier(&self, audience: impl Into<String>) -> TokenVerifier {
        TokenVerifier::new(self.key.verifying_key(), audience)
    }

    /// Signs `claims`. Refuses lifetimes over [`MAX_TOKEN_TTL_SECS`] so no caller can mint a
    /// long-lived credential by mistake.
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, TokenError> {
        if claims.exp.saturating_sub(claims.iat) > MAX_TOKEN_TTL_SECS || claims.exp < claims.iat {
            return Err(TokenError::LifetimeTooLong);
        }
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        let header = serde_json::to_vec(&header).map_err(TokenError::Encode)?;
        let body = serde_json::to_vec(claims).map_err(TokenError::Encode)?;
        let signing_input = format!("{}.{}", b64(&header), b64(&body));
        let sig = self.key.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", b64(&sig.to_bytes())))
    }

    /// Writes the key seed (hex) to `path` with mode 0600, atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        let io = |source| TokenError::KeyIo {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        crate::storage::create_private_dir(dir).map_err(io)?;
        // NamedTempFile is created 0600 on Unix, so the seed is never readable by others.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(hex::encode(self.key.to_bytes()).as_bytes())
            .map_err(io)?;
        tmp.write_all(b"\n").map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        set_private(tmp.path()).map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Reads a key written by [`TokenSigner::save`]. Refuses a file others can read.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let bad = |message: &str| TokenError::KeyFile {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(|source| TokenError::KeyIo {
            path: path.to_path_buf(),
            source,
        })?;
        check_private(&meta).map_err(bad)?;
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::KeyIo {
            path: path.to_path_buf(),
            source,
        })?;
        let raw = hex::decode(text.trim())
            .map_err(|_| bad("not a hex-encoded Ed25519 seed; delete it to generate a new key"))?;
        let seed: [u8; 32] = raw
            .try_into()
            .map_err(|_| bad("seed must be 32 bytes; delete it to generate a new key"))?;
        Ok(Self::from_bytes(&seed))
    }

    /// Loads the key at `path`, or generates and saves one if the file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, TokenError> {
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::generate();
                signer.save(path)?;
                Ok(signer)
            }
            Err(source) => Err(TokenError::KeyIo {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(unix)]
fn set_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn check_private(meta: &std::fs::Metadata) -> Result<(), &'static str> {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err("is readable by group or others; chmod 600 it");
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_meta: &std::fs::Metadata) -> Result<(), &'static str> {
    Ok(())
}

/// Checks tokens against one public key and one audience (this registry's service name).
#[derive(Clone)]
pub struct TokenVerifier {
    key: VerifyingKey,
    kid: String,
    audience: String,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenVerifier {
    pub fn new(key: VerifyingKey, audience: impl Into<String>) -> Self {
        TokenVerifier {
            kid: key_id(&key),
            key,
            audience: audience.into(),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies `token` at unix time `now` and returns its claims.
    ///
    /// Order matters: nothing in the claims is trusted before the signature checks out.
    pub fn verify(&self, token: &str, now: u64) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header_raw = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header_raw)
            .map_err(|_| TokenError::Malformed("header is not JSON"))?;
        if header.alg != "EdDSA" || header.typ != "JWT" {
            return Err(TokenError::UnsupportedHeader);
        }
        if header.kid != self.kid {
            return Err(TokenError::UnknownKey);
        }
        let sig_raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let sig_bytes: [u8; 64] = sig_raw
            .try_into()
            .map_err(|_| TokenError::Malformed("signature is not 64 bytes"))?;
        let sig = Signature::from_bytes(&sig_bytes);
        // The signing input is the text as received, so re-encodings never verify.
        let signing_input = &token[..h.len() + 1 + c.len()];
        self.key
            .verify_strict(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims_raw = URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: TokenClaims = serde_json::from_slice(&claims_raw)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience);
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        // A signed token can still claim a long life if the key leaked into another minter.
        if claims.exp.saturating_sub(claims.iat) > MAX_TOKEN_TTL_SECS {
            return Err(TokenError::LifetimeTooLong);
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random 128-bit id, hex encoded, for `jti`.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Unix seconds as RFC 3339 UTC (`2024-01-02T03:04:05Z`), for `issued_at`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn claims() -> TokenClaims {
        TokenClaims {
            iss: "ferry-registry".into(),
            sub: "vendor".into(),
            aud: "svc".into(),
            exp: NOW + 300,
            iat: NOW,
            jti: random_id(),
            access: vec![AccessEntry::repository("vendor/app", &["pull", "push"])],
            grant: None,
        }
    }

    fn signer() -> TokenSigner {
        TokenSigner::from_bytes(&[7u8; 32])
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let s = signer();
        let c = claims();
        let t = s.sign(&c).unwrap();
        assert_eq!(s.verifier("svc").verify(&t, NOW + 1).unwrap(), c);
        assert!(c.allows("vendor/app", "push"));
        assert!(!c.allows("vendor/app", "delete"));
        assert!(!c.allows("vendor/other", "pull"));
    }

    #[test]
    fn tampering_any_byte_of_any_part_is_refused() {
        let s = signer();
        let v = s.verifier("svc");
        let t = s.sign(&claims()).unwrap();
        let bytes = t.as_bytes();
        for i in 0..bytes.len() {
            if bytes[i] == b'.' {
                continue;
            }
            // Two replacements per position so at least one differs from the original.
            for repl in [b'A', b'x'] {
                if bytes[i] == repl {
                    continue;
                }
                let mut b = bytes.to_vec();
                b[i] = repl;
                let forged = String::from_utf8(b).unwrap();
                assert!(v.verify(&forged, NOW).is_err(), "byte {i} -> {repl}");
            }
        }
    }

    #[test]
    fn expired_token_is_refused_after_leeway_only() {
        let s = signer();
        let v = s.verifier("svc");
        let c = claims();
        let t = s.sign(&c).unwrap();
        assert!(v.verify(&t, c.exp + LEEWAY_SECS).is_ok());
        assert!(matches!(
            v.verify(&t, c.exp + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn future_iat_is_refused() {
        let s = signer();
        let t = s.sign(&claims()).unwrap();
        assert!(matches!(
            s.verifier("svc").verify(&t, NOW - LEEWAY_SECS - 1),
            Err(TokenError::NotYetValid)
        ));
    }

    #[test]
    fn wrong_audience_and_wrong_key_are_refused() {
        let s = signer();
        let t = s.sign(&claims()).unwrap();
        assert!(matches!(
            s.verifier("other").verify(&t, NOW),
            Err(TokenError::WrongAudience)
        ));
        let other = TokenSigner::from_bytes(&[8u8; 32]);
        assert!(matches!(
            other.verifier("svc").verify(&t, NOW),
            Err(TokenError::UnknownKey)
        ));
        // Same kid but a different key: signature check must still catch it.
        let forged = TokenVerifier {
            kid: s.kid().to_string(),
            key: other.key.verifying_key(),
            audience: "svc".into(),
        };
        assert!(matches!(
            forged.verify(&t, NOW),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn long_lifetimes_are_refused_at_sign_and_verify() {
        let s = signer();
        let mut c = claims();
        c.exp = c.iat + MAX_TOKEN_TTL_SECS + 1;
        assert!(matches!(s.sign(&c), Err(TokenError::LifetimeTooLong)));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let s = signer();
        let t = s.sign(&claims()).unwrap();
        let rest = t.split_once('.').unwrap().1;
        let none = b64(br#"{"alg":"none","typ":"JWT","kid":"x"}"#);
        let forged = format!("{none}.{rest}");
        assert!(matches!(
            s.verifier("svc").verify(&forged, NOW),
            Err(TokenError::UnsupportedHeader)
        ));
    }

    #[test]
    fn errors_and_debug_never_contain_token_or_key() {
        let s = signer();
        let t = s.sign(&claims()).unwrap();
        let mut broken = t.clone();
        broken.push('x');
        let err = s.verifier("svc").verify(&broken, NOW).unwrap_err();
        let sig = t.rsplit('.').next().unwrap();
        assert!(!err.to_string().contains(sig));
        assert!(!format!("{err:?}").contains(sig));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&hex::encode([7u8; 32])));
        assert!(dbg.contains(s.kid()));
    }

    #[test]
    fn key_file_round_trips_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let a = TokenSigner::load_or_generate(&path).unwrap();
        let b = TokenSigner::load_or_generate(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        let t = a.sign(&claims()).unwrap();
        assert!(b.verifier("svc").verify(&t, NOW).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                TokenSigner::load(&path),
                Err(TokenError::KeyFile { .. })
            ));
        }
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "zz").unwrap();
        set_private(&path).unwrap();
        assert!(matches!(
            TokenSigner::load_or_generate(&path),
            Err(TokenError::KeyFile { .. })
        ));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(s in ".{0,400}") {
            let v = signer().verifier("svc");
            prop_assert!(v.verify(&s, NOW).is_err());
        }

        #[test]
        fn random_three_part_strings_never_verify(
            a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,100}"
        ) {
            let v = signer().verifier("svc");
            let t = format!("{a}.{b}.{c}");
            prop_assert!(v.verify(&t, NOW).is_err());
        }

        #[test]
        fn random_claims_with_valid_header_never_verify(body in proptest::collection::vec(any::<u8>(), 0..200), sig in proptest::collection::vec(any::<u8>(), 64..=64)) {
            let s = signer();
            let header = b64(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, s.kid()).as_bytes());
            let t = format!("{header}.{}.{}", b64(&body), b64(&sig));
            prop_assert!(s.verifier("svc").verify(&t, NOW).is_err());
        }
    }
}
