//! Fan-out efficiency: what a release step hands each `sync.requested` so that the
//! sync-requested handler need not read the store again ([`DispatchContext`]: the install
//! record and the component's verification policy, keyed with the vendor key), and the pacing
//! of grant minting under the STS and ECR token quotas ([`MintPacer`], a token bucket over an
//! injected time).
//!
//! Anyone allowed to put events on the Ferry bus can send a `sync.requested`, so a context is
//! acted on only when its MAC verifies under the vendor key and it names the event's own sync,
//! build, install, artifact and release; otherwise the handler reads the store as before. This
//! module must never trust a context that does not verify, never read a clock and never sleep.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::domain::{Install, VerifyPolicy};
use crate::event::SyncRequested;
use crate::trust::{put, VendorKey};

/// Domain separation of the MAC'd byte layout.
const CONTEXT_LABEL: &[u8] = b"ferry-dispatch-context-v1";

/// What sync-requested needs beyond the event's own fields, read by the release step once per
/// page: the install (its agent key and queue) and the component's verification policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchContext {
    pub install: Install,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPolicy>,
    /// HMAC-SHA256 (base64url) over [`context_bytes`] with the vendor's context key.
    pub mac: String,
}

/// The bytes a context's MAC covers: every field of the event the handler acts on and every
/// field of the context, length-prefixed (never a JSON rendering).
pub fn context_bytes(
    ev: &SyncRequested,
    install: &Install,
    verify: Option<&VerifyPolicy>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    put(&mut out, CONTEXT_LABEL);
    put(&mut out, ev.sync_id.as_str().as_bytes());
    put(&mut out, ev.build_id.as_str().as_bytes());
    put(&mut out, ev.install_id.as_str().as_bytes());
    put(&mut out, ev.repository.as_str().as_bytes());
    put(&mut out, ev.digest.as_str().as_bytes());
    put(
        &mut out,
        ev.release_id.as_ref().map_or("", |r| r.as_str()).as_bytes(),
    );
    put(&mut out, install.id.as_str().as_bytes());
    put(&mut out, install.app.as_str().as_bytes());
    put(&mut out, install.registry.endpoint.as_bytes());
    put(&mut out, install.registry.namespace.as_bytes());
    put(&mut out, install.agent_public_key.as_bytes());
    put(&mut out, install.agent_report_key.as_bytes());
    put(&mut out, install.queue.as_str().as_bytes());
    put(&mut out, &(install.components.len() as u64).to_be_bytes());
    for c in &install.components {
        put(&mut out, c.as_str().as_bytes());
    }
    match verify {
        None => put(&mut out, b"no-verify"),
        Some(policy) => {
            put(&mut out, b"verify");
            put(&mut out, policy.require.as_str().as_bytes());
            put(&mut out, &(policy.keys.len() as u64).to_be_bytes());
            for key in &policy.keys {
                put(&mut out, key.as_bytes());
            }
        }
    }
    out
}

/// The context for `ev` (whose own `context` is ignored), MAC'd with `key`.
pub fn seal_context(
    key: &VendorKey,
    ev: &SyncRequested,
    install: Install,
    verify: Option<VerifyPolicy>,
) -> DispatchContext {
    let mac = key.context_mac(&context_bytes(ev, &install, verify.as_ref()));
    DispatchContext {
        install,
        verify,
        mac,
    }
}

/// The install and policy `ev` carries, when its context verifies under `key` and is about
/// `ev`'s install; `None` otherwise (no context, a forged or altered one), and the caller reads
/// the store instead.
pub fn open_context<'a>(
    key: &VendorKey,
    ev: &'a SyncRequested,
) -> Option<(&'a Install, Option<&'a VerifyPolicy>)> {
    let ctx = ev.context.as_ref()?;
    if ctx.install.id != ev.install_id {
        return None;
    }
    let bytes = context_bytes(ev, &ctx.install, ctx.verify.as_ref());
    if !key.context_mac_matches(&bytes, &ctx.mac) {
        tracing::warn!(sync_id = %ev.sync_id, "sync.requested carries a dispatch context that does not verify; reading the store instead");
        return None;
    }
    Some((&ctx.install, ctx.verify.as_ref()))
}

/// Paces grant minting: a token bucket of `burst` tokens refilled at `per_second` tokens a
/// second, over the time its caller passes in (ms since the epoch). One token is one grant
/// (one STS AssumeRole and one ECR GetAuthorizationToken). Each concurrent function instance
/// holds its own bucket, so a stack-wide rate R over C instances gives each R / C
/// ([`MintPacer::for_share`]).
#[derive(Debug)]
pub struct MintPacer {
    /// Tokens per second, times 1000 (so the bucket counts milli-tokens in whole numbers).
    milli_per_second: u64,
    burst_milli: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at_ms: Option<u64>,
}

/// Why a pacer could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacerError {
    #[error("the mint rate must be at least 1 grant per second across the stack, and the concurrency at least 1 (got rate {rate}, concurrency {concurrency}); set MintRatePerSecond / FERRY_MINT_RATE_PER_SECOND to a positive number")]
    Invalid { rate: u32, concurrency: u32 },
}

impl MintPacer {
    /// A bucket that allows `per_second_milli / 1000` grants a second with bursts of `burst`
    /// (at least one), full at the first call.
    pub fn new(per_second_milli: u64, burst: u32) -> MintPacer {
        let burst_milli = u64::from(burst.max(1)) * 1000;
        MintPacer {
            milli_per_second: per_second_milli.max(1),
            burst_milli,
            state: Mutex::new(Bucket {
                milli: burst_milli,
                at_ms: None,
            }),
        }
    }

    /// One instance's share of a stack-wide `rate` (grants a second) spread over
    /// `concurrency` instances (the event source's `MaximumConcurrency`), with a burst of
    /// one second's share (at least one grant).
    pub fn for_share(rate: u32, concurrency: u32) -> Result<MintPacer, PacerError> {
        if rate == 0 || concurrency == 0 {
            return Err(PacerError::Invalid { rate, concurrency });
        }
        let milli = u64::from(rate) * 1000 / u64::from(concurrency);
        let burst = u32::try_from(milli / 1000).unwrap_or(u32::MAX).max(1);
        Ok(MintPacer::new(milli.max(1), burst))
    }

    /// Takes one token at `now_ms`: `Ok(())`, or `Err(wait_ms)`, how long until one is there
    /// (nothing is taken then).
    pub fn try_take(&self, now_ms: u64) -> Result<(), u64> {
        let mut b = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = b.at_ms {
            let elapsed = now_ms.saturating_sub(at);
            let refill = elapsed.saturating_mul(self.milli_per_second) / 1000;
            b.milli = b.milli.saturating_add(refill).min(self.burst_milli);
        }
        b.at_ms = Some(now_ms.max(b.at_ms.unwrap_or(0)));
        if b.milli >= 1000 {
            b.milli -= 1000;
            return Ok(());
        }
        let missing = 1000 - b.milli;
        Err((missing * 1000).div_ceil(self.milli_per_second))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::domain::RegistryTarget;
    use crate::id::{BuildId, Digest, InstallId, QueueName, Repository, SyncId};

    fn event() -> SyncRequested {
        SyncRequested {
            sync_id: SyncId::new("s-1").unwrap(),
            build_id: BuildId::new("b-1").unwrap(),
            install_id: InstallId::new("i-1").unwrap(),
            repository: Repository::new("shop/web").unwrap(),
            digest: Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            release_id: None,
            context: None,
        }
    }

    fn install(id: &str) -> Install {
        Install {
            id: InstallId::new(id).unwrap(),
            app: crate::id::AppName::new("shop").unwrap(),
            registry: RegistryTarget {
                endpoint: "r.test".into(),
                namespace: "ferry".into(),
            },
            agent_public_key: "pk".into(),
            agent_report_key: "rk".into(),
            queue: QueueName::new("q-1").unwrap(),
            components: vec![crate::id::ComponentName::new("web").unwrap()],
        }
    }

    #[test]
    fn a_context_verifies_only_unaltered_and_under_the_vendor_key() {
        let key = VendorKey::generate().unwrap();
        let mut ev = event();
        ev.context = Some(Box::new(seal_context(&key, &ev, install("i-1"), None)));
        let (got, verify) = open_context(&key, &ev).unwrap();
        assert_eq!(got.queue.as_str(), "q-1");
        assert!(verify.is_none());
        // Another vendor key.
        assert!(open_context(&VendorKey::generate().unwrap(), &ev).is_none());
        // An altered agent key, queue or policy.
        let mut bad = ev.clone();
        bad.context.as_mut().unwrap().install.agent_public_key = "attacker".into();
        assert!(open_context(&key, &bad).is_none());
        let mut bad = ev.clone();
        bad.context.as_mut().unwrap().verify = Some(VerifyPolicy {
            keys: vec!["k".into()],
            require: Default::default(),
        });
        assert!(open_context(&key, &bad).is_none());
        // The same context moved onto another event (another digest).
        let mut moved = ev.clone();
        moved.digest = Digest::new(format!("sha256:{}", "b".repeat(64))).unwrap();
        assert!(open_context(&key, &moved).is_none());
        // A context about another install.
        let mut other = event();
        other.context = Some(Box::new(seal_context(&key, &other, install("i-2"), None)));
        assert!(open_context(&key, &other).is_none());
        // Garbage MAC.
        let mut junk = ev;
        junk.context.as_mut().unwrap().mac = "!!".into();
        assert!(open_context(&key, &junk).is_none());
    }

    #[test]
    fn the_pacer_allows_its_rate_and_says_how_long_to_wait() {
        // 20 grants/s over 10 instances: 2 a second each, burst 2.
        let p = MintPacer::for_share(20, 10).unwrap();
        let t0 = 1_000_000;
        assert_eq!(p.try_take(t0), Ok(()));
        assert_eq!(p.try_take(t0), Ok(()));
        assert_eq!(
            p.try_take(t0),
            Err(500),
            "third grant in the same ms waits 500 ms"
        );
        assert_eq!(p.try_take(t0 + 499), Err(1));
        assert_eq!(p.try_take(t0 + 500), Ok(()));
        // A long pause refills only up to the burst.
        assert_eq!(p.try_take(t0 + 60_000), Ok(()));
        assert_eq!(p.try_take(t0 + 60_000), Ok(()));
        assert!(p.try_take(t0 + 60_000).is_err());
        // Time going backwards (another instance's clock) never refills.
        assert!(p.try_take(t0).is_err());
        // Over 1,000 simulated seconds the rate holds.
        let p = MintPacer::for_share(20, 10).unwrap();
        let mut granted = 0;
        for ms in (0..1_000_000u64).step_by(10) {
            if p.try_take(ms).is_ok() {
                granted += 1;
            }
        }
        assert!((2000..=2002).contains(&granted), "{granted}");
        assert!(MintPacer::for_share(0, 10).is_err());
        assert!(MintPacer::for_share(10, 0).is_err());
        // A share below one a second still makes progress.
        let slow = MintPacer::for_share(1, 4).unwrap();
        assert_eq!(slow.try_take(0), Ok(()));
        assert_eq!(slow.try_take(0), Err(4000));
    }
}
