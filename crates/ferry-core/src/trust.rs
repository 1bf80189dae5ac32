//! Trust between the vendor and its installs: who signed a job, who sent a report.
//!
//! Two directions, two keys (ARCHITECTURE.md invariant 10):
//!
//! - **Vendor → agent.** The IMS holds one [`VendorKey`] (a 32-byte secret: a 0600 file
//!   locally, Secrets Manager on AWS). Two keys are derived from it with HMAC-SHA256 and distinct
//!   labels: an Ed25519 key that signs every `sync.job` message, whose public half every agent
//!   pins ([`verify_job`]), and a MAC key that makes sync ids unguessable from public ids
//!   ([`VendorKey::sync_id`]). A job that does not verify is never acted on: HPKE base mode only
//!   proves who a grant is *for*, not who sealed it.
//! - **Agent → vendor.** Each agent signs its `sync.reported` with an Ed25519 key derived from
//!   its own X25519 secret ([`AgentKeypair::report_key`]), so one key file still holds
//!   everything an agent needs; the public half is registered with the install
//!   (`Install::agent_report_key`). The IMS verifies a report against the key of the install
//!   that owns the *job*, never against anything the report names ([`verify_report`]).
//!
//! What is signed is a fixed, length-prefixed byte layout per message ([`job_signing_bytes`],
//! [`report_signing_bytes`]), never a JSON rendering, so two parsers cannot disagree on it.
//! This module must never print or return a private key, and never treat a missing or
//! malformed signature as anything but a failed verification.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, TryRngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::event::{InstallHeartbeat, SyncJobMessage, SyncReportStatus, SyncReported};
use crate::id::{BuildId, InstallId, ReleaseId, SyncId};
use crate::seal::AgentKeypair;

/// Text prefix of the vendor secret (a 0600 file, or a Secrets Manager value).
pub const VENDOR_SECRET_PREFIX: &str = "FERRY-VENDOR-SECRET-1:";
/// Text prefix of the vendor's job-signing public key, which agents pin.
pub const VENDOR_PUBLIC_KEY_PREFIX: &str = "ferry-vendor-ed25519:";
/// Text prefix of an agent's report-signing public key, registered with its install.
pub const AGENT_REPORT_KEY_PREFIX: &str = "ferry-agent-ed25519:";

const SEED_LEN: usize = 32;
/// The shortest generated (unprefixed) vendor secret accepted: 40 random alphanumerics carry
/// over 230 bits.
pub const MIN_GENERATED_SECRET_LEN: usize = 40;
const SIGNATURE_LEN: usize = 64;

// Derivation labels: each derived key has exactly one use.
const LABEL_JOB_SIGNING: &[u8] = b"ferry vendor job signing key v1";
const LABEL_SYNC_IDS: &[u8] = b"ferry vendor sync id key v1";
const LABEL_REPORT_SIGNING: &[u8] = b"ferry agent report signing key v1";
const LABEL_GENERATED_ROOT: &[u8] = b"ferry vendor secret from generated text v1";
const LABEL_DISPATCH_CONTEXT: &[u8] = b"ferry vendor dispatch context key v1";
// Domain separation of the signed byte layouts.
const JOB_CONTEXT: &[u8] = b"ferry-sync-job-v2";
const REPORT_CONTEXT: &[u8] = b"ferry-sync-reported-v2";
const HEARTBEAT_CONTEXT: &[u8] = b"ferry-install-heartbeat-v2";

/// Why a signature, key or keyed id could not be made or checked; never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the vendor secret is not valid: {reason}; generate one with `ferry vendor-key init` (locally `ferry dev` does it)")]
    InvalidVendorSecret { reason: &'static str },
    #[error("{what} is not valid: {reason}; it looks like {prefix}<43 base64url characters>")]
    InvalidPublicKey {
        what: &'static str,
        prefix: &'static str,
        reason: &'static str,
    },
    /// Wrong key, altered fields or a forged signature: deliberately not told apart.
    #[error("the {what} signature does not verify: it was not signed by {signer}, or it was altered on the way")]
    BadSignature {
        what: &'static str,
        signer: &'static str,
    },
    #[error("the system random generator failed")]
    Random,
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256(key, label): one derived 32-byte key per label.
fn derive(key: &[u8], label: &[u8]) -> Zeroizing<[u8; SEED_LEN]> {
    let mut out = Zeroizing::new([0u8; SEED_LEN]);
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    if let Ok(mut mac) = HmacSha256::new_from_slice(key) {
        mac.update(label);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// Appends `part` with a length prefix, so ("ab","c") and ("a","bc") sign differently.
pub(crate) fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_be_bytes());
    out.extend_from_slice(part);
}

fn encode_signature(sig: &Signature) -> String {
    URL_SAFE_NO_PAD.encode(sig.to_bytes())
}

fn decode_signature(text: &str) -> Option<Signature> {
    let raw = URL_SAFE_NO_PAD.decode(text.trim().as_bytes()).ok()?;
    let bytes: [u8; SIGNATURE_LEN] = raw.try_into().ok()?;
    Some(Signature::from_bytes(&bytes))
}

pub(crate) fn parse_verifying_key(
    text: &str,
    prefix: &'static str,
    what: &'static str,
) -> Result<VerifyingKey, TrustError> {
    let invalid = |reason| TrustError::InvalidPublicKey {
        what,
        prefix,
        reason,
    };
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or(invalid("it does not start with the expected prefix"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(body.as_bytes())
        .map_err(|_| invalid("it is not base64url"))?;
    let bytes: [u8; SEED_LEN] = raw.try_into().map_err(|_| invalid("it is not 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| invalid("it is not an Ed25519 point"))
}

pub(crate) fn verify(
    key: &VerifyingKey,
    message: &[u8],
    signature: &str,
    what: &'static str,
    signer: &'static str,
) -> Result<(), TrustError> {
    let bad = TrustError::BadSignature { what, signer };
    let sig = decode_signature(signature).ok_or(bad.clone())?;
    // verify_strict refuses weak keys and malleable signatures.
    key.verify_strict(message, &sig).map_err(|_| bad)
}

// ---- vendor side ------------------------------------------------------------------------------

/// The IMS's secret. Signs job messages and keys sync ids. `Debug` never prints it.
pub struct VendorKey {
    root: Zeroizing<[u8; SEED_LEN]>,
    signing: SigningKey,
    ids: Zeroizing<[u8; SEED_LEN]>,
    /// MACs the dispatch context a release step hands sync-requested (`crate::fanout`).
    context: Zeroizing<[u8; SEED_LEN]>,
}

impl VendorKey {
    /// A fresh secret from the OS generator.
    pub fn generate() -> Result<VendorKey, TrustError> {
        let mut root = Zeroizing::new([0u8; SEED_LEN]);
        OsRng
            .try_fill_bytes(root.as_mut())
            .map_err(|_| TrustError::Random)?;
        Ok(VendorKey::from_root(root))
    }

    fn from_root(root: Zeroizing<[u8; SEED_LEN]>) -> VendorKey {
        let seed = derive(root.as_ref(), LABEL_JOB_SIGNING);
        let signing = SigningKey::from_bytes(&seed);
        let ids = derive(root.as_ref(), LABEL_SYNC_IDS);
        let context = derive(root.as_ref(), LABEL_DISPATCH_CONTEXT);
        VendorKey {
            root,
            signing,
            ids,
            context,
        }
    }

    /// The secret in text form (`FERRY-VENDOR-SECRET-1:<base64url>`). Handle as a secret.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{VENDOR_SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.root.as_ref())
        ))
    }

    /// Parses what [`VendorKey::to_secret_string`] wrote (surrounding whitespace allowed), or
    /// a generated secret of at least [`MIN_GENERATED_SECRET_LEN`] printable characters without
    /// the prefix (what CloudFormation's `GenerateSecretString` makes, so the vendor stack can
    /// create its own key), from which the 32-byte secret is derived.
    pub fn from_secret_string(text: &str) -> Result<VendorKey, TrustError> {
        let text = text.trim();
        let Some(body) = text.strip_prefix(VENDOR_SECRET_PREFIX) else {
            if text.len() < MIN_GENERATED_SECRET_LEN || !text.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(TrustError::InvalidVendorSecret {
                    reason: "it neither starts with FERRY-VENDOR-SECRET-1: nor is a generated secret of at least 40 printable characters",
                });
            }
            return Ok(VendorKey::from_root(derive(
                text.as_bytes(),
                LABEL_GENERATED_ROOT,
            )));
        };
        let raw = Zeroizing::new(URL_SAFE_NO_PAD.decode(body.as_bytes()).map_err(|_| {
            TrustError::InvalidVendorSecret {
                reason: "it is not base64url",
            }
        })?);
        if raw.len() != SEED_LEN {
            return Err(TrustError::InvalidVendorSecret {
                reason: "it is not 32 bytes",
            });
        }
        let mut root = Zeroizing::new([0u8; SEED_LEN]);
        root.copy_from_slice(&raw);
        Ok(VendorKey::from_root(root))
    }

    /// `ferry-vendor-ed25519:<base64url>`: what every agent is configured to trust.
    pub fn public_key_string(&self) -> String {
        format!(
            "{VENDOR_PUBLIC_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.signing.verifying_key().to_bytes())
        )
    }

    /// The one sync id for a build into an install: derived (a replayed fan-out gets the same
    /// id, so it never creates a second job) and keyed (nobody without the vendor secret can
    /// compute another install's sync ids from the public build and install ids).
    pub fn sync_id(&self, build: &BuildId, install: &InstallId) -> SyncId {
        let mut input = Vec::with_capacity(64);
        put(&mut input, b"sync");
        put(&mut input, build.as_str().as_bytes());
        put(&mut input, install.as_str().as_bytes());
        let mac = derive(self.ids.as_ref(), &input);
        SyncId::from_derived(format!("s-{}", hex::encode(&mac[..16])))
    }

    /// The sync id of one round of a release's sync of `build` into `install`: keyed like
    /// [`VendorKey::sync_id`], so a replayed step derives the same id (and enqueues nothing
    /// twice), while a retry round after `release resume` gets a fresh job.
    pub fn release_sync_id(
        &self,
        release: &ReleaseId,
        build: &BuildId,
        install: &InstallId,
        round: u32,
    ) -> SyncId {
        let mut input = Vec::with_capacity(96);
        put(&mut input, b"release-sync");
        put(&mut input, release.as_str().as_bytes());
        put(&mut input, build.as_str().as_bytes());
        put(&mut input, install.as_str().as_bytes());
        put(&mut input, &round.to_be_bytes());
        let mac = derive(self.ids.as_ref(), &input);
        SyncId::from_derived(format!("s-{}", hex::encode(&mac[..16])))
    }

    /// Signs `message` with the job-signing key (base64url). Only for byte layouts with their
    /// own domain-separation context (bundle manifests: `crate::bundle`).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> String {
        encode_signature(&self.signing.sign(message))
    }

    /// HMAC-SHA256 of `bytes` with the dispatch-context key (base64url). Only for
    /// [`crate::fanout::context_bytes`].
    pub(crate) fn context_mac(&self, bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(derive(self.context.as_ref(), bytes).as_ref())
    }

    /// Whether `mac` is [`VendorKey::context_mac`] of `bytes` (compared in constant time).
    pub(crate) fn context_mac_matches(&self, bytes: &[u8], mac: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(mac.trim().as_bytes()) else {
            return false;
        };
        let Ok(mut check) = HmacSha256::new_from_slice(self.context.as_ref()) else {
            return false;
        };
        check.update(bytes);
        check.verify_slice(&given).is_ok()
    }

    /// Signs `msg` in place (its `signature` field), over [`job_signing_bytes`].
    pub fn sign_job(&self, msg: &mut SyncJobMessage) {
        let sig = self.signing.sign(&job_signing_bytes(msg));
        msg.signature = encode_signature(&sig);
    }
}

impl fmt::Debug for VendorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VendorKey")
            .field("public", &self.public_key_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The bytes a vendor signs for a job: every field the agent acts on, the sealed grant included.
pub fn job_signing_bytes(msg: &SyncJobMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + msg.grant.ciphertext().len());
    put(&mut out, JOB_CONTEXT);
    put(&mut out, msg.sync_id.as_str().as_bytes());
    put(&mut out, msg.build_id.as_str().as_bytes());
    put(&mut out, msg.install_id.as_str().as_bytes());
    put(&mut out, msg.repository.as_str().as_bytes());
    put(&mut out, msg.digest.as_str().as_bytes());
    put(&mut out, &msg.attempt.to_be_bytes());
    put(&mut out, msg.grant.ciphertext());
    put(&mut out, &msg.grant.expires_at.to_be_bytes());
    // Appended only when present, so jobs without a policy sign as before; with one, the
    // bytes differ, so a policy cannot be dropped (or a key swapped) without breaking the
    // signature.
    if let Some(policy) = &msg.verify {
        put(&mut out, b"verify");
        put(&mut out, policy.require.as_str().as_bytes());
        put(&mut out, &(policy.keys.len() as u64).to_be_bytes());
        for key in &policy.keys {
            put(&mut out, key.as_bytes());
        }
    }
    out
}

/// The agent's check of a job message against the vendor key it pins.
pub fn verify_job(vendor_public_key: &str, msg: &SyncJobMessage) -> Result<(), TrustError> {
    let key = parse_verifying_key(
        vendor_public_key,
        VENDOR_PUBLIC_KEY_PREFIX,
        "the vendor public key",
    )?;
    verify(
        &key,
        &job_signing_bytes(msg),
        &msg.signature,
        "sync.job",
        "this agent's vendor",
    )
}

/// Checks that `text` is a vendor public key (for configuration errors at start-up).
pub fn check_vendor_public_key(text: &str) -> Result<(), TrustError> {
    parse_verifying_key(text, VENDOR_PUBLIC_KEY_PREFIX, "the vendor public key").map(|_| ())
}

// ---- agent side -------------------------------------------------------------------------------

/// An agent's report-signing key, derived from its X25519 secret. `Debug` never prints it.
pub struct ReportKey {
    signing: SigningKey,
}

impl AgentKeypair {
    /// The Ed25519 key this agent signs reports with (derived, so the key file stays one).
    pub fn report_key(&self) -> ReportKey {
        let root = self.secret_bytes();
        let seed = derive(root.as_ref(), LABEL_REPORT_SIGNING);
        ReportKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }
}

impl ReportKey {
    /// `ferry-agent-ed25519:<base64url>`: what the install records as `agent_report_key`.
    pub fn public_key_string(&self) -> String {
        format!(
            "{AGENT_REPORT_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.signing.verifying_key().to_bytes())
        )
    }

    /// Signs `message` with the report key (base64url). Only for byte layouts with their own
    /// domain-separation context (bundle receipts: `crate::bundle`).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> String {
        encode_signature(&self.signing.sign(message))
    }

    /// Signs `report` in place (its `signature` field), over [`report_signing_bytes`].
    pub fn sign(&self, report: &mut SyncReported) {
        let sig = self.signing.sign(&report_signing_bytes(report));
        report.signature = encode_signature(&sig);
    }

    /// Signs `heartbeat` in place (its `signature` field), over [`heartbeat_signing_bytes`].
    pub fn sign_heartbeat(&self, heartbeat: &mut InstallHeartbeat) {
        let sig = self.signing.sign(&heartbeat_signing_bytes(heartbeat));
        heartbeat.signature = encode_signature(&sig);
    }
}

impl fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportKey")
            .field("public", &self.public_key_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn status_tag(status: SyncReportStatus) -> &'static [u8] {
    match status {
        SyncReportStatus::Succeeded => b"succeeded",
        SyncReportStatus::Failed => b"failed",
        SyncReportStatus::GrantExpired => b"grant_expired",
        SyncReportStatus::PolicyFailed => b"policy_failed",
    }
}

/// The bytes an agent signs for a report: the attempt it is about and everything it claims.
pub fn report_signing_bytes(r: &SyncReported) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put(&mut out, REPORT_CONTEXT);
    put(&mut out, r.install_id.as_str().as_bytes());
    put(&mut out, r.sync_id.as_str().as_bytes());
    put(&mut out, &r.attempt.to_be_bytes());
    put(&mut out, status_tag(r.status));
    put(&mut out, r.digest.as_str().as_bytes());
    put(&mut out, &r.bytes_copied.to_be_bytes());
    put(&mut out, &r.bytes_skipped.to_be_bytes());
    put(&mut out, &r.duration_ms.to_be_bytes());
    put(&mut out, r.error.as_deref().unwrap_or("").as_bytes());
    out
}

/// The IMS's check of a report against the report key registered for the job's install.
pub fn verify_report(agent_report_key: &str, report: &SyncReported) -> Result<(), TrustError> {
    let key = parse_verifying_key(
        agent_report_key,
        AGENT_REPORT_KEY_PREFIX,
        "the install's agent report key",
    )?;
    verify(
        &key,
        &report_signing_bytes(report),
        &report.signature,
        "sync.reported",
        "the install's registered agent",
    )
}

fn opt_time(t: Option<u64>) -> [u8; 9] {
    let mut out = [0u8; 9];
    if let Some(t) = t {
        out[0] = 1;
        out[1..].copy_from_slice(&t.to_be_bytes());
    }
    out
}

/// The bytes an agent signs for a heartbeat: every field it claims, under its own context (a
/// report's signature never verifies as a heartbeat's, nor the reverse).
pub fn heartbeat_signing_bytes(h: &InstallHeartbeat) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put(&mut out, HEARTBEAT_CONTEXT);
    put(&mut out, h.install_id.as_str().as_bytes());
    put(&mut out, h.agent_version.as_bytes());
    put(&mut out, &opt_time(h.last_poll_at));
    put(&mut out, &opt_time(h.last_sync_at));
    put(&mut out, h.health.as_bytes());
    put(&mut out, &h.sent_at.to_be_bytes());
    out
}

/// The IMS's check of a heartbeat against the report key registered for its install.
pub fn verify_heartbeat(agent_report_key: &str, h: &InstallHeartbeat) -> Result<(), TrustError> {
    let key = parse_verifying_key(
        agent_report_key,
        AGENT_REPORT_KEY_PREFIX,
        "the install's agent report key",
    )?;
    verify(
        &key,
        &heartbeat_signing_bytes(h),
        &h.signature,
        "install.heartbeat",
        "the install's registered agent",
    )
}

/// Checks that `text` is an agent report key (for registration errors).
pub fn check_agent_report_key(text: &str) -> Result<(), TrustError> {
    parse_verifying_key(
        text,
        AGENT_REPORT_KEY_PREFIX,
        "the install's agent report key",
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SealedGrant;
    use crate::id::{Digest, Repository};

    /// One way of altering a signed message after signing.
    type Tamper<T> = Box<dyn Fn(&mut T)>;

    fn job() -> SyncJobMessage {
        SyncJobMessage::new(
            SyncId::new("s-1").unwrap(),
            BuildId::new("b-1").unwrap(),
            InstallId::new("acme").unwrap(),
            Repository::new("vendor/web").unwrap(),
            Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            1,
            SealedGrant::new(vec![1, 2, 3], 99),
        )
    }

    fn report() -> SyncReported {
        SyncReported {
            sync_id: SyncId::new("s-1").unwrap(),
            install_id: InstallId::new("acme").unwrap(),
            status: SyncReportStatus::Succeeded,
            digest: Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            bytes_copied: 10,
            bytes_skipped: 0,
            duration_ms: 5,
            error: None,
            attempt: 1,
            signature: String::new(),
        }
    }

    #[test]
    fn vendor_secret_round_trips_and_never_prints() {
        let k = VendorKey::generate().unwrap();
        let text = k.to_secret_string();
        let back = VendorKey::from_secret_string(&text).unwrap();
        assert_eq!(back.public_key_string(), k.public_key_string());
        let dbg = format!("{k:?}");
        let secret_body = text.strip_prefix(VENDOR_SECRET_PREFIX).unwrap();
        assert!(!dbg.contains(secret_body), "{dbg}");
        assert!(VendorKey::from_secret_string("FERRY-VENDOR-SECRET-1:AAAA").is_err());
        assert!(VendorKey::from_secret_string("nonsense").is_err());
        // A generated secret (the vendor stack's) is accepted and always derives the same key.
        let generated = "q3Jw9ZkT2mVx7PbLr8Hc4NdYs6FgA1eUo5KiRtWz0QjMnBvC";
        let g1 = VendorKey::from_secret_string(generated).unwrap();
        let g2 = VendorKey::from_secret_string(&format!(" {generated}\n")).unwrap();
        assert_eq!(g1.public_key_string(), g2.public_key_string());
        assert!(
            VendorKey::from_secret_string(&generated[..39]).is_err(),
            "too short"
        );
    }

    #[test]
    fn sync_ids_are_derived_and_keyed() {
        let (a, b) = (
            VendorKey::generate().unwrap(),
            VendorKey::generate().unwrap(),
        );
        let build = BuildId::new("b-1").unwrap();
        let (i1, i2) = (InstallId::new("i1").unwrap(), InstallId::new("i2").unwrap());
        let s = a.sync_id(&build, &i1);
        assert_eq!(
            s,
            a.sync_id(&build, &i1),
            "derived: replays get the same id"
        );
        assert_ne!(s, a.sync_id(&build, &i2));
        assert_ne!(
            s,
            b.sync_id(&build, &i1),
            "keyed: another secret, another id"
        );
        assert!(SyncId::new(s.as_str()).is_ok());
    }

    #[test]
    fn signed_jobs_verify_and_every_field_is_covered() {
        let k = VendorKey::generate().unwrap();
        let mut m = job();
        assert!(verify_job(&k.public_key_string(), &m).is_err(), "unsigned");
        k.sign_job(&mut m);
        verify_job(&k.public_key_string(), &m).unwrap();
        let other = VendorKey::generate().unwrap();
        assert!(verify_job(&other.public_key_string(), &m).is_err());
        let tampered: Vec<Tamper<SyncJobMessage>> = vec![
            Box::new(|m| m.repository = Repository::new("vendor/evil").unwrap()),
            Box::new(|m| m.digest = Digest::new(format!("sha256:{}", "b".repeat(64))).unwrap()),
            Box::new(|m| m.install_id = InstallId::new("other").unwrap()),
            Box::new(|m| m.attempt = 2),
            Box::new(|m| m.grant = SealedGrant::new(vec![9], 99)),
            Box::new(|m| m.grant = SealedGrant::new(vec![1, 2, 3], 100)),
            Box::new(|m| m.build_id = BuildId::new("b-2").unwrap()),
            Box::new(|m| m.sync_id = SyncId::new("s-2").unwrap()),
        ];
        for t in tampered {
            let mut bad = m.clone();
            t(&mut bad);
            assert!(matches!(
                verify_job(&k.public_key_string(), &bad),
                Err(TrustError::BadSignature { .. })
            ));
        }
    }

    #[test]
    fn a_jobs_verification_policy_is_signed_and_cannot_be_dropped_or_changed() {
        use crate::domain::{KeyRequirement, VerifyPolicy};
        let k = VendorKey::generate().unwrap();
        let policy = VerifyPolicy {
            keys: vec!["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()],
            require: KeyRequirement::Any,
        };
        let mut m = job().with_policy(Some(policy.clone()));
        k.sign_job(&mut m);
        verify_job(&k.public_key_string(), &m).unwrap();
        let tampered: Vec<Tamper<SyncJobMessage>> = vec![
            Box::new(|m| m.verify = None),
            Box::new(|m| {
                if let Some(p) = m.verify.as_mut() {
                    p.require = KeyRequirement::All;
                }
            }),
            Box::new(|m| {
                if let Some(p) = m.verify.as_mut() {
                    p.keys[0] =
                        "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n".into();
                }
            }),
            Box::new(|m| {
                if let Some(p) = m.verify.as_mut() {
                    p.keys.push(p.keys[0].clone());
                }
            }),
        ];
        for t in tampered {
            let mut bad = m.clone();
            t(&mut bad);
            assert!(matches!(
                verify_job(&k.public_key_string(), &bad),
                Err(TrustError::BadSignature { .. })
            ));
        }
        // A job signed without a policy does not verify once one is added either.
        let mut plain = job();
        k.sign_job(&mut plain);
        let added = plain.clone().with_policy(Some(policy));
        assert!(verify_job(&k.public_key_string(), &added).is_err());
    }

    #[test]
    fn signed_reports_verify_and_every_field_is_covered() {
        let agent = AgentKeypair::generate().unwrap();
        let key = agent.report_key();
        assert_eq!(
            key.public_key_string(),
            AgentKeypair::from_secret_string(&agent.to_secret_string())
                .unwrap()
                .report_key()
                .public_key_string(),
            "the report key is derived from the agent's one key file"
        );
        let mut r = report();
        key.sign(&mut r);
        verify_report(&key.public_key_string(), &r).unwrap();
        let stranger = AgentKeypair::generate().unwrap().report_key();
        assert!(verify_report(&stranger.public_key_string(), &r).is_err());
        let tampered: Vec<Tamper<SyncReported>> = vec![
            Box::new(|r| r.install_id = InstallId::new("victim").unwrap()),
            Box::new(|r| r.sync_id = SyncId::new("s-9").unwrap()),
            Box::new(|r| r.attempt = 2),
            Box::new(|r| r.status = SyncReportStatus::Failed),
            Box::new(|r| r.digest = Digest::new(format!("sha256:{}", "c".repeat(64))).unwrap()),
            Box::new(|r| r.bytes_copied = 11),
            Box::new(|r| r.bytes_skipped = 1),
            Box::new(|r| r.duration_ms = 6),
            Box::new(|r| r.error = Some("x".into())),
            Box::new(|r| r.signature = "not base64!".into()),
            Box::new(|r| r.signature = String::new()),
        ];
        for t in tampered {
            let mut bad = r.clone();
            t(&mut bad);
            assert!(verify_report(&key.public_key_string(), &bad).is_err());
        }
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused_clearly() {
        let agent = AgentKeypair::generate().unwrap();
        let err = verify_report(&agent.public_key_string(), &report()).unwrap_err();
        assert!(err.to_string().contains(AGENT_REPORT_KEY_PREFIX), "{err}");
        assert!(check_vendor_public_key("ferry-vendor-ed25519:AAAA").is_err());
        assert!(check_agent_report_key(&agent.report_key().public_key_string()).is_ok());
    }
}
