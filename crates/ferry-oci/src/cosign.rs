//! Key-based cosign signatures: find them next to an artifact and verify them against a policy
//! of public keys, before the artifact is promoted anywhere (a build importing an external
//! image, an agent about to tag a sync into an install).
//!
//! The format is cosign's published signature specification:
//! - a signature manifest is an OCI image manifest whose layers are **simple-signing payloads**
//!   (`application/vnd.dev.cosign.simplesigning.v1+json`); each payload's
//!   `critical.image.docker-manifest-digest` names the signed manifest and
//!   `critical.type` is `cosign container image signature`;
//! - each layer carries the signature in the annotation `dev.cosignproject.cosign/signature`:
//!   base64 of an ASN.1 DER ECDSA P-256 / SHA-256 signature over the payload bytes exactly as
//!   stored;
//! - the manifest is found by the tag `sha256-<hex>.sig` in the artifact's repository (cosign's
//!   default, and the only way on registries without the referrers API, ECR included), or
//!   through the OCI 1.1 referrers API (artifact type `application/vnd.dev.cosign.artifact.sig.v1+json`).
//!
//! Keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo) ECDSA P-256 keys, cosign's default
//! (`cosign generate-key-pair`). Other key types are refused with a clear error.
//!
//! This module must never count a payload whose bytes do not hash to their descriptor, a
//! signature whose payload names another digest, or "no signature found" as a pass; and never
//! read more than [`MAX_PAYLOAD`] bytes of a payload or [`MAX_SIGNATURE_MANIFESTS`] manifests.

use std::fmt;

use base64::Engine as _;
use futures::StreamExt as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::media::Manifest;
use crate::{Digest, Error, RegistryClient, RepoRef};

/// A simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature found through the referrers API.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The payload's `critical.type`.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// The largest payload read (real ones are a few hundred bytes).
pub const MAX_PAYLOAD: u64 = 64 * 1024;
/// The most signature manifests examined for one artifact.
pub const MAX_SIGNATURE_MANIFESTS: usize = 16;

/// DER prefix of a P-256 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (0 unused bits) }, followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A verification key: an ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    point: Vec<u8>,
    id: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` block (cosign's `cosign.pub`).
    pub fn from_pem(pem: &str) -> Result<PublicKey, VerifyError> {
        let bad = |reason: &str| VerifyError::BadKey(reason.to_string());
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PUBLIC KEY-----")
            .collect();
        if body.is_empty() {
            return Err(bad(
                "no -----BEGIN PUBLIC KEY----- block; give the cosign.pub file (a PEM public key)",
            ));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| bad("the PEM block is not base64"))?;
        let point = der
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .filter(|p| p.len() == 65 && p[0] == 4)
            .ok_or_else(|| bad("only ECDSA P-256 public keys (cosign's default) are supported"))?;
        let id = format!("sha256:{}", &hex::encode(Sha256::digest(&der))[..16]);
        Ok(PublicKey {
            point: point.to_vec(),
            id,
        })
    }

    /// A short, stable name for messages: `sha256:` + 16 hex of the key's DER.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(payload, signature)
        .is_ok()
    }
}

impl Policy {
    /// A policy from PEM keys (as a component stores them); `all` when every key must sign.
    pub fn from_pems<'a>(
        keys: impl IntoIterator<Item = &'a str>,
        all: bool,
    ) -> Result<Policy, VerifyError> {
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                PublicKey::from_pem(k).map_err(|e| VerifyError::BadKey(format!("key #{i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            keys,
            require: if all {
                Requirement::AllKeys
            } else {
                Requirement::AnyKey
            },
        })
    }
}

/// Which keys must have signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requirement {
    /// A valid signature by any one of the keys.
    #[default]
    AnyKey,
    /// A valid signature by every key.
    AllKeys,
}

/// A verification policy: the keys, and whether one or all must have signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub keys: Vec<PublicKey>,
    pub require: Requirement,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Ids of the keys with a valid signature.
    pub keys: Vec<String>,
    /// The signature manifests those signatures came from (to copy along with the artifact).
    pub signatures: Vec<Digest>,
}

/// Why an artifact did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("signature key: {0}")]
    BadKey(String),
    #[error("{target} has no cosign signature (looked for the tag {tag} and its referrers); sign it with `cosign sign --key …` or remove the verification policy")]
    Unsigned { target: String, tag: String },
    #[error("{target} is not signed as the policy requires: {reason}")]
    NotSatisfied { target: String, reason: String },
    #[error("reading the signatures of {target}: {source}")]
    Registry {
        target: String,
        #[source]
        source: Error,
    },
}

/// The tag cosign writes a signature manifest under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}.sig", digest.as_str().replacen(':', "-", 1))
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: PayloadImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Checks one payload and its signature for `subject`: which of `keys` signed it. A payload
/// that does not parse, is of another type, or names another digest verifies for no key.
pub fn verify_payload(
    keys: &[PublicKey],
    payload: &[u8],
    signature_b64: &str,
    subject: &Digest,
) -> Result<Vec<String>, String> {
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("the payload is not a simple-signing document: {e}"))?;
    if p.critical.kind != SIGNATURE_TYPE {
        return Err(format!(
            "the payload's type is {:?}, not {SIGNATURE_TYPE:?}",
            p.critical.kind
        ));
    }
    if p.critical.image.digest != subject.as_str() {
        return Err(format!(
            "the payload signs {}, not {subject}",
            p.critical.image.digest
        ));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| "the signature annotation is not base64".to_string())?;
    let signed: Vec<String> = keys
        .iter()
        .filter(|k| k.verifies(payload, &signature))
        .map(|k| k.id.clone())
        .collect();
    if signed.is_empty() {
        return Err("the signature does not verify with any policy key".into());
    }
    Ok(signed)
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<crate::Descriptor>,
}

/// The signature manifests of `subject`: the one under the cosign tag `tag`, then those the
/// referrers API lists with the signature artifact type, at most [`MAX_SIGNATURE_MANIFESTS`]
/// from referrers.
async fn signature_manifests(
    client: &RegistryClient,
    repo: &RepoRef,
    subject: &Digest,
    tag: &str,
) -> Result<Vec<Manifest>, Error> {
    let mut manifests: Vec<Manifest> = Vec::new();
    match client.get_manifest(repo, tag).await {
        Ok(m) => manifests.push(m),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    // Referrers are optional: a registry without the API answers 404, which is no signature.
    if let Ok(referrers) = client.referrers(repo, subject).await {
        for d in referrers
            .iter()
            .filter(|d| d.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT))
        {
            if manifests.len() >= MAX_SIGNATURE_MANIFESTS {
                break;
            }
            if manifests.iter().any(|m| m.digest == d.digest) {
                continue;
            }
            manifests.push(client.get_manifest(repo, d.digest.as_str()).await?);
        }
    }
    Ok(manifests)
}

/// What the signature manifests showed: the keys that signed, the manifests that held a
/// valid signature, and why each other payload was refused.
#[derive(Default)]
struct Tally {
    signed_by: Vec<String>,
    from: Vec<Digest>,
    refusals: Vec<String>,
}

impl Tally {
    /// Checks every simple-signing payload of the signature manifest `m`.
    async fn check(
        &mut self,
        client: &RegistryClient,
        repo: &RepoRef,
        subject: &Digest,
        m: &Manifest,
        keys: &[PublicKey],
    ) -> Result<(), Error> {
        for (layer, sig) in self.signed_layers(m) {
            let payload = read_payload(client, repo, &layer.digest, layer.size).await?;
            self.record(&m.digest, verify_payload(keys, &payload, &sig, subject));
        }
        Ok(())
    }

    /// The simple-signing layers of `m` small enough to read, with their signatures; every
    /// other payload is recorded as a refusal.
    fn signed_layers(&mut self, m: &Manifest) -> Vec<(crate::Descriptor, String)> {
        let parsed: SignatureManifest = match serde_json::from_slice(&m.bytes) {
            Ok(p) => p,
            Err(e) => {
                self.refusals
                    .push(format!("{}: not a manifest: {e}", m.digest));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for layer in parsed
            .layers
            .into_iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING)
        {
            let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION).cloned() else {
                self.refusals
                    .push(format!("{}: a payload without a signature", m.digest));
                continue;
            };
            if layer.size > MAX_PAYLOAD {
                self.refusals.push(format!(
                    "{}: a payload of {} bytes (at most {MAX_PAYLOAD})",
                    m.digest, layer.size
                ));
                continue;
            }
            out.push((layer, sig));
        }
        out
    }

    /// Records one payload's verdict, from the signature manifest `from`.
    fn record(&mut self, from: &Digest, verdict: Result<Vec<String>, String>) {
        match verdict {
            Ok(signers) => {
                for k in signers {
                    if !self.signed_by.contains(&k) {
                        self.signed_by.push(k);
                    }
                }
                if !self.from.contains(from) {
                    self.from.push(from.clone());
                }
            }
            Err(reason) => self.refusals.push(format!("{from}: {reason}")),
        }
    }

    /// Whether the signatures found satisfy `policy`'s requirement.
    fn judge(self, policy: &Policy, target: String) -> Result<Verified, VerifyError> {
        let missing: Vec<&str> = policy
            .keys
            .iter()
            .map(PublicKey::id)
            .filter(|id| !self.signed_by.iter().any(|s| s == id))
            .collect();
        let satisfied = match policy.require {
            Requirement::AnyKey => !self.signed_by.is_empty(),
            Requirement::AllKeys => missing.is_empty(),
        };
        if !satisfied {
            let mut reason = match policy.require {
                Requirement::AnyKey => "no valid signature by a policy key".to_string(),
                Requirement::AllKeys => format!("no valid signature by {}", missing.join(", ")),
            };
            if !self.refusals.is_empty() {
                reason.push_str(&format!(" ({})", self.refusals.join("; ")));
            }
            return Err(VerifyError::NotSatisfied { target, reason });
        }
        Ok(Verified {
            keys: self.signed_by,
            signatures: self.from,
        })
    }
}

/// Finds the signatures of `repo@subject` and checks them against `policy`.
pub async fn verify(
    client: &RegistryClient,
    repo: &RepoRef,
    subject: &Digest,
    policy: &Policy,
) -> Result<Verified, VerifyError> {
    let target = format!("{repo}@{subject}");
    if policy.keys.is_empty() {
        return Err(VerifyError::BadKey(
            "the policy lists no key; add at least one cosign public key".into(),
        ));
    }
    let registry = |source| VerifyError::Registry {
        target: target.clone(),
        source,
    };
    let tag = signature_tag(subject);
    let manifests = signature_manifests(client, repo, subject, &tag)
        .await
        .map_err(registry)?;
    if manifests.is_empty() {
        return Err(VerifyError::Unsigned { target, tag });
    }
    let mut tally = Tally::default();
    for m in manifests.iter().take(MAX_SIGNATURE_MANIFESTS) {
        tally
            .check(client, repo, subject, m, &policy.keys)
            .await
            .map_err(registry)?;
    }
    tally.judge(policy, target)
}

/// Finds the signature of `subject` in an OCI layout (the manifest its index tags
/// `sha256-<hex>.sig`, as `cosign save` and `skopeo copy` of the signature tag leave it) and
/// checks it against `policy`, exactly as [`verify`] does in a registry.
pub async fn verify_layout(
    layout: &crate::OciLayout,
    subject: &Digest,
    policy: &Policy,
) -> Result<Verified, VerifyError> {
    let target = format!("{}@{subject}", layout.root().display());
    if policy.keys.is_empty() {
        return Err(VerifyError::BadKey(
            "the policy lists no key; add at least one cosign public key".into(),
        ));
    }
    let read = |source| VerifyError::Registry {
        target: target.clone(),
        source,
    };
    let tag = signature_tag(subject);
    let desc = match layout.resolve(Some(&tag)).await {
        Ok(d) => d,
        Err(Error::NotFound { .. }) => return Err(VerifyError::Unsigned { target, tag }),
        Err(e) => return Err(read(e)),
    };
    let m = layout
        .read_manifest(&desc.digest, &desc.media_type)
        .await
        .map_err(read)?;
    let mut tally = Tally::default();
    for (layer, sig) in tally.signed_layers(&m) {
        let payload = read_layout_payload(layout, &layer.digest)
            .await
            .map_err(read)?;
        tally.record(
            &m.digest,
            verify_payload(&policy.keys, &payload, &sig, subject),
        );
    }
    tally.judge(policy, target)
}

/// A payload blob of a layout, bounded by [`MAX_PAYLOAD`] and checked against its digest.
async fn read_layout_payload(layout: &crate::OciLayout, digest: &Digest) -> Result<Vec<u8>, Error> {
    collect_payload(layout.read_blob(digest).await?, digest, MAX_PAYLOAD).await
}

/// Cosign's tag-scheme suffixes that travel with an artifact: signatures, attestations, SBOMs.
pub const TAG_SUFFIXES: &[&str] = &["sig", "att", "sbom"];

/// Copies cosign's tag-scheme artifacts of `digest` (`sha256-<hex>.sig`, `.att`, `.sbom`) from
/// the repository `from` to the same tags in `to`, each by the engine (blobs first, verified,
/// tag last); returns the tags copied. Missing ones are skipped: travelling is not verifying.
pub async fn copy_tag_scheme(
    engine: &crate::CopyEngine,
    client: &RegistryClient,
    from: &RepoRef,
    to: &RepoRef,
    digest: &Digest,
) -> Result<Vec<String>, Error> {
    let base = signature_tag(digest);
    let stem = base.trim_end_matches(".sig");
    let mut copied = Vec::new();
    for suffix in TAG_SUFFIXES {
        let tag = format!("{stem}.{suffix}");
        if client.head_manifest(from, &tag).await?.is_none() {
            continue;
        }
        let at = |repo: &RepoRef| {
            crate::Reference::Registry(crate::RegistryRef {
                repo: repo.clone(),
                tag: Some(tag.clone()),
                digest: None,
            })
        };
        engine
            .copy(
                &at(from),
                &[at(to)],
                std::sync::Arc::new(crate::progress::NoProgress),
            )
            .await?;
        copied.push(tag);
    }
    Ok(copied)
}

/// A payload blob, bounded, checked against its digest.
async fn read_payload(
    client: &RegistryClient,
    repo: &RepoRef,
    digest: &Digest,
    size: u64,
) -> Result<Vec<u8>, Error> {
    collect_payload(
        client.get_blob(repo, digest, Some(size)).await?,
        digest,
        size,
    )
    .await
}

/// Reads a payload stream whole, refusing it past [`MAX_PAYLOAD`] (reported against
/// `expected`) and unless it hashes to `digest`: the one rule for registry and layout payloads.
async fn collect_payload<S, B, E>(
    mut stream: S,
    digest: &Digest,
    expected: u64,
) -> Result<Vec<u8>, Error>
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    Error: From<E>,
{
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let chunk = chunk.as_ref();
        if out.len() as u64 + chunk.len() as u64 > MAX_PAYLOAD {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected,
                actual: out.len() as u64 + chunk.len() as u64,
            });
        }
        out.extend_from_slice(chunk);
    }
    let actual = Digest::of(&out);
    if &actual != digest {
        return Err(Error::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_other_than_p256_are_refused_in_words() {
        let e = PublicKey::from_pem("nothing here").unwrap_err().to_string();
        assert!(e.contains("BEGIN PUBLIC KEY"), "{e}");
        // An Ed25519 SPKI.
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(ed).unwrap_err().to_string();
        assert!(e.contains("only ECDSA P-256"), "{e}");
    }

    #[test]
    fn signature_tags_follow_cosign() {
        let d = Digest::of(b"x");
        assert_eq!(
            signature_tag(&d),
            format!("sha256-{}.sig", d.as_str().trim_start_matches("sha256:"))
        );
    }
}
