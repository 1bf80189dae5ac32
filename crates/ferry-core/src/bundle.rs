//! Air-gapped installs: the signed manifest of a bundle, the receipts an agent writes when it
//! imports one, and how the vendor records those receipts.
//!
//! - **Bundle manifest** ([`BundleManifest`]): what a bundle tar holds (every artifact, by
//!   build, repository and digest; every blob file with its size). The vendor signs its exact
//!   bytes with the job-signing key every agent already pins ([`sign_bundle`]); the agent
//!   checks them before it reads anything else of the bundle ([`verify_bundle`]). What is
//!   signed is `len(context) || context || len(bytes) || bytes`, never a re-rendering, so the
//!   bytes parsed are the bytes verified.
//! - **Receipt** ([`BundleReceipt`]): "install I now holds build B's digest D", signed by the
//!   install agent's report key, like its online reports ([`sign_receipt`]).
//! - **Recording** ([`record_receipt`]): the vendor authenticates a receipt against the report
//!   key of the install it names, checks it against the build's recorded artifact, and marks the
//!   (build, install) syncs succeeded with their lineage through the rule an online
//!   `sync.reported` uses, so a release waiting on the install advances exactly as it would
//!   online. A replay changes nothing.
//!
//! This module must never do I/O except through the ports it is given, never accept a receipt before its signature verified, and
//! never let a receipt change another install's sync or lineage.

use serde::{Deserialize, Serialize};

use crate::domain::{LineageRecord, SyncJob, SyncStats};
use crate::handlers::{record_success, Config, HandlerError, SecurityEvent};
use crate::id::{AppName, BuildId, ComponentName, Digest, InstallId, Repository, SyncId};
use crate::ports::{Clock as _, JobStore, PageRequest, WriteError, MAX_PAGE};
use crate::release_port::Desk;
use crate::state::JobStatus;
use crate::trust::{
    parse_verifying_key, put, verify, ReportKey, TrustError, VendorKey, AGENT_REPORT_KEY_PREFIX,
    VENDOR_PUBLIC_KEY_PREFIX,
};

/// The bundle manifest's file name inside the tar (its exact bytes are what is signed).
pub const BUNDLE_MANIFEST_FILE: &str = "ferry-bundle.json";
/// The vendor's signature over [`BUNDLE_MANIFEST_FILE`], base64url text.
pub const BUNDLE_SIGNATURE_FILE: &str = "ferry-bundle.sig";
/// The manifest schema this code writes and reads.
pub const BUNDLE_SCHEMA: u32 = 1;
/// The receipt schema this code writes and reads.
pub const RECEIPT_SCHEMA: u32 = 1;
/// The largest bundle manifest accepted (it lists blobs, not their bytes).
pub const MAX_BUNDLE_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// The most artifacts one bundle may hold.
pub const MAX_BUNDLE_ARTIFACTS: usize = 1000;
/// The most blob files one bundle may hold.
pub const MAX_BUNDLE_BLOBS: usize = 100_000;

const BUNDLE_CONTEXT: &[u8] = b"ferry-bundle-manifest-v1";
const RECEIPT_CONTEXT: &[u8] = b"ferry-bundle-receipt-v1";

/// One file under `blobs/` in the bundle: a blob or a manifest, by digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBlob {
    pub digest: Digest,
    pub size: u64,
}

/// A referrer manifest (signature, SBOM) carried with an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReferrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The manifest it refers to.
    pub subject: Digest,
}

/// One artifact of the bundle: one build's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleArtifact {
    pub build_id: BuildId,
    pub app: AppName,
    pub component: ComponentName,
    /// The vendor repository (the agent maps it with `Repository::in_install`, as for a sync).
    pub repository: Repository,
    /// The root manifest or index.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub referrers: Vec<BundleReferrer>,
    /// Every manifest and blob of its graph (referrers included), whether or not this bundle
    /// carries it: what the install holds once the artifact is imported.
    pub requires: Vec<BundleBlob>,
}

/// The signed table of contents of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub schema: u32,
    /// Random, names the bundle in receipts and logs.
    pub bundle_id: String,
    /// Unix ms, by the vendor's clock.
    pub created_at: u64,
    /// The install it was made for; `None`: any install of the vendor may import it.
    pub install: Option<InstallId>,
    /// The bundle this one is incremental to, if any.
    pub since: Option<String>,
    pub artifacts: Vec<BundleArtifact>,
    /// Exactly the files under `blobs/sha256/` in the tar. Manifests are always carried;
    /// blobs the install already holds (by `--since` or `--have`) are not.
    pub blobs: Vec<BundleBlob>,
}

/// Why a bundle manifest or receipt was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("the bundle manifest is not valid: {0}; re-export the bundle with this ferry")]
    Invalid(String),
}

fn signed_bytes(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    put(&mut out, context);
    put(&mut out, body);
    out
}

impl BundleManifest {
    /// The exact bytes that are written to the bundle and signed.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        serde_json::to_vec_pretty(self).map_err(|e| BundleError::Invalid(e.to_string()))
    }

    /// Parses (after [`verify_bundle`]) and checks the limits and the schema.
    pub fn parse(bytes: &[u8]) -> Result<BundleManifest, BundleError> {
        let m: BundleManifest =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Invalid(e.to_string()))?;
        if m.schema != BUNDLE_SCHEMA {
            return Err(BundleError::Invalid(format!(
                "schema {} is not the supported {BUNDLE_SCHEMA}",
                m.schema
            )));
        }
        if m.artifacts.is_empty() || m.artifacts.len() > MAX_BUNDLE_ARTIFACTS {
            return Err(BundleError::Invalid(format!(
                "it lists {} artifacts (1 to {MAX_BUNDLE_ARTIFACTS} allowed)",
                m.artifacts.len()
            )));
        }
        if m.blobs.len() > MAX_BUNDLE_BLOBS {
            return Err(BundleError::Invalid(format!(
                "it lists {} blobs (at most {MAX_BUNDLE_BLOBS})",
                m.blobs.len()
            )));
        }
        Ok(m)
    }
}

/// The vendor's signature over a bundle manifest's exact bytes.
pub fn sign_bundle(key: &VendorKey, manifest_bytes: &[u8]) -> String {
    key.sign_bytes(&signed_bytes(BUNDLE_CONTEXT, manifest_bytes))
}

/// The agent's check of a bundle manifest against the vendor key it pins.
pub fn verify_bundle(
    vendor_public_key: &str,
    manifest_bytes: &[u8],
    signature: &str,
) -> Result<(), TrustError> {
    let key = parse_verifying_key(
        vendor_public_key,
        VENDOR_PUBLIC_KEY_PREFIX,
        "the vendor public key",
    )?;
    verify(
        &key,
        &signed_bytes(BUNDLE_CONTEXT, manifest_bytes),
        signature,
        "bundle manifest",
        "this agent's vendor",
    )
}

/// "This install holds this build's digest", written by the agent when it imports a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReceipt {
    pub schema: u32,
    pub install_id: InstallId,
    pub bundle_id: String,
    pub build_id: BuildId,
    /// The vendor repository, as the bundle named it.
    pub repository: Repository,
    pub digest: Digest,
    /// Unix ms, by the agent's clock.
    pub imported_at: u64,
    pub bytes_copied: u64,
    pub bytes_skipped: u64,
    pub duration_ms: u64,
    pub signature: String,
}

fn receipt_signing_bytes(r: &BundleReceipt) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put(&mut out, RECEIPT_CONTEXT);
    put(&mut out, &r.schema.to_be_bytes());
    put(&mut out, r.install_id.as_str().as_bytes());
    put(&mut out, r.bundle_id.as_bytes());
    put(&mut out, r.build_id.as_str().as_bytes());
    put(&mut out, r.repository.as_str().as_bytes());
    put(&mut out, r.digest.as_str().as_bytes());
    put(&mut out, &r.imported_at.to_be_bytes());
    put(&mut out, &r.bytes_copied.to_be_bytes());
    put(&mut out, &r.bytes_skipped.to_be_bytes());
    put(&mut out, &r.duration_ms.to_be_bytes());
    out
}

/// Signs `receipt` in place (its `signature` field) with the agent's report key.
pub fn sign_receipt(key: &ReportKey, receipt: &mut BundleReceipt) {
    receipt.signature = key.sign_bytes(&receipt_signing_bytes(receipt));
}

/// The vendor's check of a receipt against the report key registered for its install.
pub fn verify_receipt(agent_report_key: &str, receipt: &BundleReceipt) -> Result<(), TrustError> {
    let key = parse_verifying_key(
        agent_report_key,
        AGENT_REPORT_KEY_PREFIX,
        "the install's agent report key",
    )?;
    verify(
        &key,
        &receipt_signing_bytes(receipt),
        &receipt.signature,
        "bundle receipt",
        "the install's registered agent",
    )
}

/// What recording one receipt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReceiptOutcome {
    /// The sync is now succeeded and the lineage recorded.
    Recorded { sync_id: SyncId },
    /// Already recorded (a replay, or the agent had synced it online): nothing changed.
    Replayed { sync_id: SyncId },
    /// Not authenticated or not consistent with the vendor's records: nothing changed.
    Refused { reason: String },
}

/// Records one receipt as if the install's agent had reported the sync online: authenticates
/// it against the report key of the install it names and checks it names the build's recorded
/// artifact; then, through the same rule as an online `sync.reported`
/// (`handlers::record_success`):
///
/// - every sync of (build, install) still queued or running (an online fan-out or a release
///   step the air-gapped agent never received) becomes Succeeded, its lineage is recorded and
///   its release, if any, is told (`release.synced` on the desk's release queue), so the
///   release's step tallies and advances exactly as for an online report;
/// - otherwise, when one already succeeded, nothing changes ([`ReceiptOutcome::Replayed`]);
/// - otherwise sync `vendor_key.sync_id(build, install)` is created Succeeded (the build never
///   fanned out to the install, or its syncs failed) with its lineage.
///
/// The time is the desk's clock; a created sync is stamped with the receipt's `imported_at`
/// when that is earlier.
pub async fn record_receipt<D: Desk>(
    desk: &D,
    vendor_key: &VendorKey,
    receipt: &BundleReceipt,
) -> Result<ReceiptOutcome, HandlerError> {
    let store = desk.store();
    let now = desk.clock().now_ms();
    let refuse = |reason: String| Ok(ReceiptOutcome::Refused { reason });
    let Some(install) = store.get_install(&receipt.install_id).await? else {
        let reason = format!(
            "receipt for install {}: no such install is registered; nothing was recorded",
            receipt.install_id
        );
        count(store, now, SecurityEvent::ReportUnauthenticated, &reason).await?;
        return refuse(reason);
    };
    if receipt.schema != RECEIPT_SCHEMA {
        return refuse(format!(
            "receipt schema {} is not the supported {RECEIPT_SCHEMA}; import it with a matching ferry",
            receipt.schema
        ));
    }
    if let Err(e) = verify_receipt(&install.agent_report_key, receipt) {
        let reason = format!(
            "receipt for install {} (build {}): {e}",
            receipt.install_id, receipt.build_id
        );
        count(store, now, SecurityEvent::ReportUnauthenticated, &reason).await?;
        return refuse(reason);
    }
    let Some(build) = store.get_build(&receipt.build_id).await? else {
        return refuse(format!(
            "receipt for install {} names build {}, which this vendor does not know",
            receipt.install_id, receipt.build_id
        ));
    };
    let matches = build
        .artifact
        .as_ref()
        .is_some_and(|a| a.digest == receipt.digest && a.repository == receipt.repository);
    if !matches || build.app != install.app {
        return refuse(format!(
            "receipt for install {} says build {} is {}@{}, which is not what that build \
             produced for the install's app; nothing was recorded",
            receipt.install_id, receipt.build_id, receipt.repository, receipt.digest
        ));
    }
    let stats = SyncStats {
        bytes_copied: receipt.bytes_copied,
        bytes_skipped: receipt.bytes_skipped,
        duration_ms: receipt.duration_ms,
    };
    let config = Config {
        max_write_tries: desk.max_write_tries(),
        ..Config::default()
    };
    let syncs = syncs_of(store, &build.id, &install.id).await?;
    let mut recorded = Vec::new();
    for job in syncs.iter().filter(|j| !j.status().is_terminal()) {
        let stored = record_success(desk, &config, job.clone(), stats, now).await?;
        recorded.push(stored.id);
    }
    if let Some(sync_id) = recorded.first() {
        tracing::info!(%sync_id, install_id = %install.id, syncs = recorded.len(), "bundle receipt completed open syncs");
        return Ok(ReceiptOutcome::Recorded {
            sync_id: sync_id.clone(),
        });
    }
    if let Some(done) = syncs.iter().find(|j| j.status() == JobStatus::Succeeded) {
        return Ok(ReceiptOutcome::Replayed {
            sync_id: done.id.clone(),
        });
    }
    let at = receipt.imported_at.min(now);
    let sync_id = vendor_key.sync_id(&build.id, &install.id);
    let fresh = SyncJob::new(
        sync_id.clone(),
        build.id.clone(),
        install.id.clone(),
        receipt.repository.clone(),
        receipt.digest.clone(),
        at,
    );
    let done = fresh.dispatch(at, at)?.succeed(at, stats)?;
    let (stored, recorded) = match store.create_sync(&done).await {
        Ok(()) => (done, true),
        Err(WriteError::Conflict(c)) => match c.current {
            Some(existing) => finish_existing(desk, &config, existing, receipt, now, stats).await?,
            None => {
                return Err(HandlerError::Vanished {
                    what: "sync job",
                    id: sync_id.to_string(),
                })
            }
        },
        Err(WriteError::Store(e)) => return Err(e.into()),
    };
    store
        .record_lineage(&LineageRecord {
            digest: stored.digest.clone(),
            install_id: stored.install_id.clone(),
            repository: stored.repository.clone(),
            build_id: stored.build_id.clone(),
            sync_id: stored.id.clone(),
            since: stored.state.finished_at.unwrap_or(at),
        })
        .await?;
    tracing::info!(sync_id = %stored.id, install_id = %stored.install_id, recorded, "bundle receipt");
    Ok(if recorded {
        ReceiptOutcome::Recorded { sync_id: stored.id }
    } else {
        ReceiptOutcome::Replayed { sync_id: stored.id }
    })
}

/// Every sync job of `build` into `install` (all pages of the build's syncs).
async fn syncs_of<S: JobStore>(
    store: &S,
    build: &BuildId,
    install: &InstallId,
) -> Result<Vec<SyncJob>, HandlerError> {
    let mut out = Vec::new();
    let mut page = PageRequest::first(MAX_PAGE);
    loop {
        let got = store.syncs_by_build(build, &page).await?;
        out.extend(got.items.into_iter().filter(|j| &j.install_id == install));
        match got.next {
            Some(c) => page = PageRequest::after(MAX_PAGE, c),
            None => return Ok(out),
        }
    }
}

async fn count<S: JobStore>(
    store: &S,
    now: u64,
    event: SecurityEvent,
    reason: &str,
) -> Result<(), HandlerError> {
    let n = store.count_security_event(event.as_str(), now).await?;
    tracing::warn!(security_event = event.as_str(), count = n, %reason, "receipt refused");
    Ok(())
}

/// The receipt's sync already exists (created meanwhile): a finished one stays as it is (a
/// replay); a queued or running one is completed by the online report's rule. Returns the
/// stored job and whether this call changed it.
async fn finish_existing<D: Desk>(
    desk: &D,
    config: &Config,
    current: SyncJob,
    receipt: &BundleReceipt,
    now: u64,
    stats: SyncStats,
) -> Result<(SyncJob, bool), HandlerError> {
    if current.install_id != receipt.install_id || current.digest != receipt.digest {
        return Err(HandlerError::Mismatch {
            message: format!(
                "sync {} is for {}@{} into install {}, not the receipt's {}@{} into {}",
                current.id,
                current.repository,
                current.digest,
                current.install_id,
                receipt.repository,
                receipt.digest,
                receipt.install_id
            ),
        });
    }
    if current.status().is_terminal() {
        return Ok((current, false));
    }
    Ok((
        record_success(desk, config, current, stats, now).await?,
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::AgentKeypair;

    fn receipt() -> BundleReceipt {
        BundleReceipt {
            schema: RECEIPT_SCHEMA,
            install_id: InstallId::new("air").unwrap(),
            bundle_id: "b1".into(),
            build_id: BuildId::new("b-1").unwrap(),
            repository: Repository::new("vendor/demo/web").unwrap(),
            digest: Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            imported_at: 5,
            bytes_copied: 1,
            bytes_skipped: 2,
            duration_ms: 3,
            signature: String::new(),
        }
    }

    #[test]
    fn bundle_signatures_cover_every_byte_and_only_the_vendor_key() {
        let k = VendorKey::generate().unwrap();
        let bytes = br#"{"schema":1}"#;
        let sig = sign_bundle(&k, bytes);
        verify_bundle(&k.public_key_string(), bytes, &sig).unwrap();
        assert!(verify_bundle(&k.public_key_string(), br#"{"schema":2}"#, &sig).is_err());
        let other = VendorKey::generate().unwrap();
        assert!(verify_bundle(&other.public_key_string(), bytes, &sig).is_err());
        // A job signature is not a bundle signature (domain separation).
        assert!(verify_bundle(&k.public_key_string(), bytes, "").is_err());
    }

    #[test]
    fn receipts_verify_only_with_their_install_key_and_every_field_counts() {
        let a = AgentKeypair::generate().unwrap().report_key();
        let b = AgentKeypair::generate().unwrap().report_key();
        let mut r = receipt();
        sign_receipt(&a, &mut r);
        verify_receipt(&a.public_key_string(), &r).unwrap();
        assert!(verify_receipt(&b.public_key_string(), &r).is_err());
        for t in [
            |r: &mut BundleReceipt| r.install_id = InstallId::new("victim").unwrap(),
            |r: &mut BundleReceipt| r.build_id = BuildId::new("b-2").unwrap(),
            |r: &mut BundleReceipt| {
                r.digest = Digest::new(format!("sha256:{}", "b".repeat(64))).unwrap()
            },
            |r: &mut BundleReceipt| r.repository = Repository::new("vendor/x").unwrap(),
            |r: &mut BundleReceipt| r.imported_at = 6,
            |r: &mut BundleReceipt| r.bundle_id = "b2".into(),
        ] {
            let mut bad = r.clone();
            t(&mut bad);
            assert!(verify_receipt(&a.public_key_string(), &bad).is_err());
        }
    }

    #[test]
    fn manifests_round_trip_and_limits_hold() {
        let m = BundleManifest {
            schema: BUNDLE_SCHEMA,
            bundle_id: "x".into(),
            created_at: 1,
            install: None,
            since: None,
            artifacts: vec![],
            blobs: vec![],
        };
        let err = BundleManifest::parse(&m.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("0 artifacts"), "{err}");
        assert!(BundleManifest::parse(b"not json").is_err());
    }

    #[tokio::test]
    async fn receipts_record_a_sync_and_lineage_once_and_only_for_their_install() {
        use crate::domain::{Artifact, Build, Install, RegistryTarget};
        use crate::id::QueueName;
        use crate::testing::{fake_ports, test_agent_key, test_vendor_key};

        let p = fake_ports(100);
        let store = &p.store;
        let vendor = test_vendor_key();
        let app = AppName::new("demo").unwrap();
        for id in ["air", "other"] {
            let install = InstallId::new(id).unwrap();
            let key = test_agent_key(&install);
            store
                .put_install(&Install {
                    id: install.clone(),
                    app: app.clone(),
                    registry: RegistryTarget {
                        endpoint: "r".into(),
                        namespace: format!("installs/{id}"),
                    },
                    agent_public_key: key.public_key_string(),
                    agent_report_key: key.report_key().public_key_string(),
                    queue: QueueName::new(format!("install-{id}")).unwrap(),
                    components: vec![],
                })
                .await
                .unwrap();
        }
        let r0 = receipt();
        let build = Build::new(
            r0.build_id.clone(),
            app,
            ComponentName::new("web").unwrap(),
            "main".into(),
            "t".into(),
            1,
        )
        .start(2, "x".into())
        .unwrap()
        .succeed(
            3,
            Artifact {
                repository: r0.repository.clone(),
                digest: r0.digest.clone(),
                media_type: "m".into(),
            },
        )
        .unwrap();
        store.create_build(&build).await.unwrap();

        let air = InstallId::new("air").unwrap();
        let mut good = r0.clone();
        sign_receipt(&test_agent_key(&air).report_key(), &mut good);
        let first = {
            p.clock.set(100);
            record_receipt(&p, &vendor, &good).await.unwrap()
        };
        let sync_id = vendor.sync_id(&good.build_id, &air);
        assert_eq!(
            first,
            ReceiptOutcome::Recorded {
                sync_id: sync_id.clone()
            }
        );
        let again = {
            p.clock.set(200);
            record_receipt(&p, &vendor, &good).await.unwrap()
        };
        assert_eq!(again, ReceiptOutcome::Replayed { sync_id });
        assert_eq!(store.lineage().len(), 1);
        assert_eq!(
            store.lineage()[0].since,
            5,
            "the import time, earlier than now"
        );

        // Signed by another install's key; naming another install with air's key; a digest the
        // build did not produce: all refused, nothing written but the security counters.
        let mut by_other = r0.clone();
        sign_receipt(
            &test_agent_key(&InstallId::new("other").unwrap()).report_key(),
            &mut by_other,
        );
        let mut for_other = r0.clone();
        for_other.install_id = InstallId::new("other").unwrap();
        sign_receipt(&test_agent_key(&air).report_key(), &mut for_other);
        let mut wrong_digest = r0.clone();
        wrong_digest.digest = Digest::new(format!("sha256:{}", "f".repeat(64))).unwrap();
        sign_receipt(&test_agent_key(&air).report_key(), &mut wrong_digest);
        for bad in [by_other, for_other, wrong_digest] {
            let out = {
                p.clock.set(300);
                record_receipt(&p, &vendor, &bad).await.unwrap()
            };
            assert!(matches!(out, ReceiptOutcome::Refused { .. }), "{out:?}");
        }
        assert_eq!(store.syncs().len(), 1);
        assert_eq!(store.lineage().len(), 1);
        let (count, _) = store
            .security_event_count(SecurityEvent::ReportUnauthenticated.as_str())
            .await
            .unwrap();
        assert_eq!(count, 2);
    }
}
