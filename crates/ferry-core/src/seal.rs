//! Sealing: grants encrypted to one install agent's X25519 key, so only that agent can open
//! them, bound to the job they were minted for.
//!
//! The construction is HPKE base mode, single shot (RFC 9180: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305), from the `hpke` crate; the tests check it against the RFC's
//! appendix A.2.1 vector. Randomness is the OS generator through `rand_core` 0.9 (the version
//! `hpke` takes). Wire form: `0x01 || enc (32) || ciphertext+tag`. The associated data (see
//! [`grant_associated_data`]) is authenticated, so a grant sealed for one (install, sync) cannot
//! be opened as another's.
//!
//! This module must never print a private key or a clear grant (their `Debug` is redacted),
//! never return a partial plaintext, and never accept a low-order peer key (`hpke` refuses an
//! all-zero X25519 result, as RFC 9180 requires).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, HpkeError, Kem, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, OsRng, RngCore, TryRngCore, UnwrapErr};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::id::{InstallId, SyncId};

/// Text prefix of a public key (`Install.agent_public_key`).
pub const PUBLIC_KEY_PREFIX: &str = "ferry-x25519-pub:";
/// Text prefix of a private key file.
pub const SECRET_KEY_PREFIX: &str = "FERRY-X25519-SECRET-1:";

const FORMAT_VERSION: u8 = 1;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// HPKE `info`: separates Ferry grants from any other use of the same key.
const INFO: &[u8] = b"ferry grant v1";

type SuiteKem = X25519HkdfSha256;
type SuiteKdf = HkdfSha256;
type SuiteAead = ChaCha20Poly1305;
type PublicKey = <SuiteKem as Kem>::PublicKey;
type PrivateKey = <SuiteKem as Kem>::PrivateKey;
type EncappedKey = <SuiteKem as Kem>::EncappedKey;

/// Why sealing or opening a grant, or reading a key, failed; never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("agent public key is not valid: {reason}; it looks like {PUBLIC_KEY_PREFIX}<43 base64url characters> (from `ferry-agent keygen`)")]
    InvalidPublicKey { reason: &'static str },
    #[error("agent key file is not valid: {reason}; regenerate it with `ferry-agent keygen`")]
    InvalidSecretKey { reason: &'static str },
    /// Wrong key, wrong associated data, or tampered bytes: deliberately not told apart.
    #[error("the sealed grant could not be opened: it was sealed to another agent key or for another job, or it was altered")]
    OpenFailed,
    #[error("the sealed grant is malformed: {reason}")]
    Malformed { reason: &'static str },
    #[error("the system random generator failed")]
    Random,
}

/// The associated data that binds a grant to one job of one install: length-prefixed so
/// ("ab","c") and ("a","bc") differ.
pub fn grant_associated_data(install: &InstallId, sync: &SyncId) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + install.as_str().len() + sync.as_str().len());
    out.extend_from_slice(b"ferry-grant-aad-v1");
    for part in [install.as_str(), sync.as_str()] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// An agent's X25519 key pair. The private half zeroizes on drop and never prints.
pub struct AgentKeypair {
    // hpke's X25519 private key wraps x25519-dalek's `StaticSecret`, which zeroizes on drop
    // (its `zeroize` feature is turned on in this crate's Cargo.toml).
    secret: PrivateKey,
    public: PublicKey,
}

impl AgentKeypair {
    /// A fresh key pair: RFC 9180 GenerateKeyPair, i.e. DeriveKeyPair of 32 OS-random bytes.
    pub fn generate() -> Result<AgentKeypair, SealError> {
        let mut ikm = Zeroizing::new([0u8; KEY_LEN]);
        OsRng
            .try_fill_bytes(ikm.as_mut())
            .map_err(|_| SealError::Random)?;
        let (secret, public) = SuiteKem::derive_keypair(ikm.as_ref());
        Ok(AgentKeypair { secret, public })
    }

    fn from_private(secret: PrivateKey) -> AgentKeypair {
        let public = SuiteKem::sk_to_pk(&secret);
        AgentKeypair { secret, public }
    }

    /// `ferry-x25519-pub:<base64url>`: what the install records as `agent_public_key`.
    pub fn public_key_string(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.public.to_bytes())
        )
    }

    /// The private key in text form, for a key file (mode 0600). Handle as a secret.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let raw = self.secret_bytes();
        Zeroizing::new(format!(
            "{SECRET_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(raw.as_ref())
        ))
    }

    /// The raw private key, for deriving this agent's other keys (`trust`). Never leaves the crate.
    pub(crate) fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        self.secret.write_exact(raw.as_mut());
        raw
    }

    /// Parses what [`AgentKeypair::to_secret_string`] wrote (surrounding whitespace allowed).
    pub fn from_secret_string(s: &str) -> Result<AgentKeypair, SealError> {
        let body = s
            .trim()
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or(SealError::InvalidSecretKey {
                reason: "it does not start with FERRY-X25519-SECRET-1:",
            })?;
        let mut raw = Zeroizing::new(URL_SAFE_NO_PAD.decode(body.as_bytes()).map_err(|_| {
            SealError::InvalidSecretKey {
                reason: "it is not base64url",
            }
        })?);
        // The only failure is a wrong length: any 32 bytes are an X25519 private key.
        let secret = PrivateKey::from_bytes(&raw).map_err(|_| SealError::InvalidSecretKey {
            reason: "it is not 32 bytes",
        })?;
        raw.zeroize();
        Ok(AgentKeypair::from_private(secret))
    }
}

impl fmt::Debug for AgentKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKeypair")
            .field("public", &self.public_key_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn parse_public_key(s: &str) -> Result<PublicKey, SealError> {
    let body = s
        .trim()
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .ok_or(SealError::InvalidPublicKey {
            reason: "it does not start with ferry-x25519-pub:",
        })?;
    let raw = URL_SAFE_NO_PAD
        .decode(body.as_bytes())
        .map_err(|_| SealError::InvalidPublicKey {
            reason: "it is not base64url",
        })?;
    PublicKey::from_bytes(&raw).map_err(|_| SealError::InvalidPublicKey {
        reason: "it is not 32 bytes",
    })
}

/// Encrypts `plaintext` to the agent whose public key is `public_key`, binding `associated`.
///
/// The ephemeral key comes from the OS generator; should that fail mid-call it panics (inside
/// `rand_core::UnwrapErr`), as `rand`'s own generators do, since `hpke` takes only infallible
/// RNGs. [`AgentKeypair::generate`] reports the same failure as [`SealError::Random`].
pub fn seal(public_key: &str, plaintext: &[u8], associated: &[u8]) -> Result<Vec<u8>, SealError> {
    let pk_r = parse_public_key(public_key)?;
    seal_with(&pk_r, INFO, plaintext, associated, &mut UnwrapErr(OsRng))
}

/// RFC 9180 SealBase with the ephemeral key drawn from `rng`, in the wire form.
fn seal_with<R: CryptoRng + RngCore>(
    pk_r: &PublicKey,
    info: &[u8],
    plaintext: &[u8],
    associated: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let (enc, body) = hpke::single_shot_seal::<SuiteAead, SuiteKdf, SuiteKem, R>(
        &OpModeS::Base,
        pk_r,
        info,
        plaintext,
        associated,
        rng,
    )
    .map_err(|e| match e {
        // The only way encapsulation fails: an all-zero DH result from a low-order point.
        HpkeError::EncapError => SealError::InvalidPublicKey {
            reason: "it is a low-order point",
        },
        _ => SealError::Malformed {
            reason: "the plaintext is too large",
        },
    })?;
    let mut out = Vec::with_capacity(1 + KEY_LEN + body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens what [`seal`] produced for `keypair`'s public key with the same `associated` data.
pub fn open(
    keypair: &AgentKeypair,
    sealed: &[u8],
    associated: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    open_with(keypair, INFO, sealed, associated)
}

/// RFC 9180 OpenBase of the wire form.
fn open_with(
    keypair: &AgentKeypair,
    info: &[u8],
    sealed: &[u8],
    associated: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < 1 + KEY_LEN + TAG_LEN {
        return Err(SealError::Malformed {
            reason: "it is shorter than a key and a tag",
        });
    }
    if sealed[0] != FORMAT_VERSION {
        return Err(SealError::Malformed {
            reason: "unknown format version",
        });
    }
    let (enc, ciphertext) = sealed[1..].split_at(KEY_LEN);
    let enc = EncappedKey::from_bytes(enc).map_err(|_| SealError::Malformed {
        reason: "the encapsulated key is not 32 bytes",
    })?;
    // Decapsulation (a low-order `enc`) and authentication failures look the same from outside.
    hpke::single_shot_open::<SuiteAead, SuiteKdf, SuiteKem>(
        &OpModeR::Base,
        &keypair.secret,
        &enc,
        info,
        ciphertext,
        associated,
    )
    .map(Zeroizing::new)
    .map_err(|_| SealError::OpenFailed)
}

// ---- the grant itself -----------------------------------------------------------------------

/// How the agent presents a grant's token to the vendor registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantScheme {
    /// `Authorization: Bearer <token>` (the embedded registry's grants). The default, so grants
    /// sealed before the field existed still open.
    #[default]
    Bearer,
    /// `Authorization: Basic` of `username:token` (ECR: username `AWS`, token the password).
    Basic,
}

/// What a sealed grant holds: where to pull from and the pull token. Only the minter and the
/// agent ever see it; `Debug` redacts the token and the token zeroizes on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearGrant {
    /// The vendor registry host (`host[:port]`).
    pub registry: String,
    pub repository: String,
    pub digest: String,
    /// The bearer token, or the password of a Basic credential.
    pub token: String,
    #[serde(default)]
    pub scheme: GrantScheme,
    /// The Basic username; empty for Bearer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Unix milliseconds.
    pub expires_at: u64,
}

impl Drop for ClearGrant {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

impl fmt::Debug for ClearGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClearGrant")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field("digest", &self.digest)
            .field("token", &"<redacted>")
            .field("scheme", &self.scheme)
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl ClearGrant {
    /// Serializes and seals this grant to `public_key` for (`install`, `sync`).
    pub fn seal(
        &self,
        public_key: &str,
        install: &InstallId,
        sync: &SyncId,
    ) -> Result<Vec<u8>, SealError> {
        let json = Zeroizing::new(serde_json::to_vec(self).map_err(|_| SealError::Malformed {
            reason: "the grant could not be encoded",
        })?);
        seal(public_key, &json, &grant_associated_data(install, sync))
    }

    /// Opens a grant sealed for (`install`, `sync`) to `keypair`.
    pub fn open(
        keypair: &AgentKeypair,
        sealed: &[u8],
        install: &InstallId,
        sync: &SyncId,
    ) -> Result<ClearGrant, SealError> {
        let json = open(keypair, sealed, &grant_associated_data(install, sync))?;
        // serde_json's error could quote the input, so it is not passed on.
        serde_json::from_slice(&json).map_err(|_| SealError::Malformed {
            reason: "the opened grant is not a Ferry grant",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(i: &str, s: &str) -> (InstallId, SyncId) {
        (InstallId::new(i).unwrap(), SyncId::new(s).unwrap())
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Hands out fixed bytes as its "randomness": makes the crate's ephemeral key the vector's.
    struct Replay(Vec<u8>);

    impl RngCore for Replay {
        fn next_u32(&mut self) -> u32 {
            rand_core::impls::next_u32_via_fill(self)
        }
        fn next_u64(&mut self) -> u64 {
            rand_core::impls::next_u64_via_fill(self)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            assert!(dest.len() <= self.0.len(), "the replayed bytes ran out");
            dest.copy_from_slice(&self.0[..dest.len()]);
            self.0.drain(..dest.len());
        }
    }

    impl CryptoRng for Replay {}

    /// RFC 9180 appendix A.2.1 (base mode, X25519, HKDF-SHA256, ChaCha20Poly1305), sequence 0,
    /// through this module's wire form: `seal_with` (the crate's encapsulation fed the vector's
    /// ikmE) gives `0x01 || pkEm || ct`, and a key file holding skRm opens it.
    #[test]
    fn matches_rfc9180_base_vector() {
        const IKM_E: &str = "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b";
        const SK_E: &str = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600";
        const PK_E: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
        const IKM_R: &str = "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df";
        const SK_R: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
        const PK_R: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
        const CT: &str =
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";
        let info = unhex("4f6465206f6e2061204772656369616e2055726e");
        let pt = unhex("4265617574792069732074727574682c20747275746820626561757479");
        let aad = unhex("436f756e742d30");

        // DeriveKeyPair gives the vector's key pairs.
        for (ikm, sk, pk) in [(IKM_E, SK_E, PK_E), (IKM_R, SK_R, PK_R)] {
            let (s, p) = SuiteKem::derive_keypair(&unhex(ikm));
            assert_eq!(hex::encode(s.to_bytes()), sk);
            assert_eq!(hex::encode(p.to_bytes()), pk);
        }

        // A key file holding skRm is the vector's recipient.
        let key_file = format!("{SECRET_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(unhex(SK_R)));
        let recipient = AgentKeypair::from_secret_string(&key_file).unwrap();
        assert_eq!(*recipient.to_secret_string(), key_file);
        assert_eq!(
            recipient.public_key_string(),
            format!("{PUBLIC_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(unhex(PK_R)))
        );

        let sealed = seal_with(
            &recipient.public,
            &info,
            &pt,
            &aad,
            &mut Replay(unhex(IKM_E)),
        )
        .unwrap();
        assert_eq!(hex::encode(&sealed), format!("01{PK_E}{CT}"));
        let back = open_with(&recipient, &info, &sealed, &aad).unwrap();
        assert_eq!(back.as_slice(), pt.as_slice());
        // Ferry's own `info` is part of the key schedule: the vector does not open under it.
        assert_eq!(
            open(&recipient, &sealed, &aad).unwrap_err(),
            SealError::OpenFailed
        );
    }

    #[test]
    fn round_trip_and_key_text_forms() {
        let kp = AgentKeypair::generate().unwrap();
        let pk = kp.public_key_string();
        assert!(pk.starts_with(PUBLIC_KEY_PREFIX), "{pk}");
        let sealed = seal(&pk, b"hello grant", b"aad").unwrap();
        assert_eq!(sealed.len(), 1 + 32 + 11 + 16);
        assert_eq!(
            open(&kp, &sealed, b"aad").unwrap().as_slice(),
            b"hello grant"
        );
        // The key file round-trips to the same key pair.
        let again =
            AgentKeypair::from_secret_string(&format!("\n{}\n", *kp.to_secret_string())).unwrap();
        assert_eq!(again.public_key_string(), pk);
        assert_eq!(
            open(&again, &sealed, b"aad").unwrap().as_slice(),
            b"hello grant"
        );
        // Sealing is randomized: the same input never gives the same bytes.
        assert_ne!(seal(&pk, b"hello grant", b"aad").unwrap(), sealed);
    }

    #[test]
    fn another_key_cannot_open() {
        let a = AgentKeypair::generate().unwrap();
        let b = AgentKeypair::generate().unwrap();
        let sealed = seal(&a.public_key_string(), b"for a only", b"x").unwrap();
        assert_eq!(open(&b, &sealed, b"x").unwrap_err(), SealError::OpenFailed);
    }

    #[test]
    fn tampering_anywhere_fails() {
        let kp = AgentKeypair::generate().unwrap();
        let sealed = seal(&kp.public_key_string(), b"payload bytes", b"x").unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(
                open(&kp, &t, b"x").is_err(),
                "flip at byte {i} was accepted"
            );
        }
        assert!(open(&kp, &sealed[..sealed.len() - 1], b"x").is_err());
        assert!(open(&kp, &sealed[..10], b"x").is_err());
        assert!(open(&kp, &[], b"x").is_err());
    }

    #[test]
    fn wrong_associated_data_fails() {
        let kp = AgentKeypair::generate().unwrap();
        let pk = kp.public_key_string();
        let g = ClearGrant {
            registry: "127.0.0.1:5000".into(),
            repository: "vendor/demo/app".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            token: "tok".into(),
            scheme: GrantScheme::Bearer,
            username: String::new(),
            expires_at: 1,
        };
        let (a, s1) = ids("a", "s-1");
        let (b, s2) = ids("b", "s-2");
        let sealed = g.seal(&pk, &a, &s1).unwrap();
        assert_eq!(ClearGrant::open(&kp, &sealed, &a, &s1).unwrap(), g);
        for (i, s) in [(&a, &s2), (&b, &s1), (&b, &s2)] {
            assert_eq!(
                ClearGrant::open(&kp, &sealed, i, s).unwrap_err(),
                SealError::OpenFailed
            );
        }
        // Length prefixes keep the boundary: ("ab","c") is not ("a","bc").
        assert_ne!(
            grant_associated_data(&InstallId::new("ab").unwrap(), &SyncId::new("c").unwrap()),
            grant_associated_data(&InstallId::new("a").unwrap(), &SyncId::new("bc").unwrap())
        );
    }

    #[test]
    fn a_grant_without_a_scheme_is_bearer_and_basic_round_trips() {
        let old = r#"{"registry":"r","repository":"x","digest":"d","token":"t","expires_at":1}"#;
        let g: ClearGrant = serde_json::from_str(old).unwrap();
        assert_eq!((g.scheme, g.username.as_str()), (GrantScheme::Bearer, ""));
        let mut basic = g.clone();
        basic.scheme = GrantScheme::Basic;
        basic.username = "AWS".into();
        let json = serde_json::to_string(&basic).unwrap();
        assert!(json.contains(r#""scheme":"basic""#), "{json}");
        assert_eq!(serde_json::from_str::<ClearGrant>(&json).unwrap(), basic);
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let kp = AgentKeypair::generate().unwrap();
        let secret = kp.to_secret_string();
        let body = secret.strip_prefix(SECRET_KEY_PREFIX).unwrap().to_string();
        let dbg = format!("{kp:?}");
        assert!(!dbg.contains(&body), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        let g = ClearGrant {
            registry: "r".into(),
            repository: "vendor/x".into(),
            digest: "d".into(),
            token: "Super-Secret-Token-123".into(),
            scheme: GrantScheme::Basic,
            username: "AWS".into(),
            expires_at: 1,
        };
        let dbg = format!("{g:?}");
        assert!(!dbg.contains("Super-Secret-Token-123"), "{dbg}");
        // A secret pasted where a public key belongs is refused without being echoed.
        let e = seal(&secret, b"x", b"").unwrap_err().to_string();
        assert!(!e.contains(&body), "{e}");
        let e = AgentKeypair::from_secret_string(&format!("{SECRET_KEY_PREFIX}{body}x"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&body), "{e}");
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert!(matches!(
            seal("nope", b"x", b""),
            Err(SealError::InvalidPublicKey { .. })
        ));
        // The all-zero point has low order: every shared secret would be zero.
        let zero = format!("{PUBLIC_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(matches!(
            seal(&zero, b"x", b""),
            Err(SealError::InvalidPublicKey { .. })
        ));
    }
}
