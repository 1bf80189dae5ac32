//! Per-host bounds on blob transfers: the gate each registry host or layout directory is
//! reached through, and the context every transfer task shares.
//!
//! Permits are always taken in sorted host order; it must never let a transfer wait on one
//! host while holding another out of order.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::endpoint::Endpoint;
use crate::client::RegistryClient;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::progress::ProgressSink;
use crate::retry::RetryPolicy;

/// What bounds the transfers touching one host: a registry host by its client's adaptive
/// limit (shared by every copy and manifest request over that client) and, unless the copy
/// reads from a host on a long link, by `max_per_host` transfers of this copy (each costs about 2 MiB; on a short
/// link more buy nothing); a layout directory by `max_per_host` permits of this copy.
pub(super) enum HostGate {
    Registry {
        client: RegistryClient,
        registry: String,
        cap: Arc<Semaphore>,
    },
    Layout(Arc<Semaphore>),
}

/// A permit of either kind, held (never read) for one blob transfer.
pub(super) enum HeldPermit {
    Registry {
        _cap: tokio::sync::OwnedSemaphorePermit,
        _permit: crate::client::HostPermit,
    },
    Layout {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

impl HostGate {
    /// `long`: the copy reads from a host on a long link, where a transfer's time is mostly
    /// waiting on that link, so more transfers than `max_per_host` are worth running (their
    /// chunks are small, so they cost little memory), at the destinations too.
    pub(super) fn of(e: &Endpoint, per_layout: usize, long: bool) -> HostGate {
        match e {
            Endpoint::Registry { client, r } => {
                let cap = if long {
                    client.host_max()
                } else {
                    per_layout.max(1)
                };
                HostGate::Registry {
                    client: client.clone(),
                    registry: r.repo.registry.clone(),
                    cap: Arc::new(Semaphore::new(cap)),
                }
            }
            Endpoint::Layout { .. } => {
                HostGate::Layout(Arc::new(Semaphore::new(per_layout.max(1))))
            }
        }
    }

    /// The most transfers this host can ever run at once.
    pub(super) fn capacity(&self, per_layout: usize) -> usize {
        match self {
            HostGate::Registry { cap, .. } => cap.available_permits(),
            HostGate::Layout(_) => per_layout.max(1),
        }
    }

    pub(super) async fn acquire(&self, digest: &Digest) -> Result<HeldPermit> {
        let closed = |_| {
            Error::Config(format!(
                "blob {digest}: the transfer scheduler was shut down"
            ))
        };
        match self {
            HostGate::Registry {
                client,
                registry,
                cap,
            } => {
                // This copy's cap first, then the client's limit: always in this order.
                let cap = cap.clone().acquire_owned().await.map_err(closed)?;
                Ok(HeldPermit::Registry {
                    _cap: cap,
                    _permit: client.host_permit(registry).await,
                })
            }
            HostGate::Layout(sem) => sem
                .clone()
                .acquire_owned()
                .await
                .map(|p| HeldPermit::Layout { _permit: p })
                .map_err(closed),
        }
    }
}

/// Everything a blob transfer task needs, shared by all of them.
pub(super) struct BlobCtx {
    pub(super) src: Endpoint,
    pub(super) src_key: String,
    pub(super) dsts: Vec<Endpoint>,
    pub(super) dst_keys: Vec<String>,
    pub(super) hosts: HashMap<String, HostGate>,
    /// Transfer tasks worth running at once: enough to fill every host's upper bound.
    pub(super) task_limit: usize,
    pub(super) retry: RetryPolicy,
    pub(super) progress: Arc<dyn ProgressSink>,
}

impl BlobCtx {
    pub(super) fn new(
        src: Endpoint,
        dsts: Vec<Endpoint>,
        per_layout: usize,
        retry: RetryPolicy,
        progress: Arc<dyn ProgressSink>,
    ) -> Self {
        let src_key = src.host_key();
        let dst_keys: Vec<String> = dsts.iter().map(Endpoint::host_key).collect();
        let (long, src_rtt) = match &src {
            Endpoint::Registry { client, r } => (
                client.is_long_link(&r.repo.registry),
                client.fastest_answer(&r.repo.registry),
            ),
            Endpoint::Layout { .. } => (false, None),
        };
        // A transfer holds a permit of the source and of each destination, so near
        // destinations start as wide as the far source they wait on.
        if let (true, Some(rtt)) = (long, src_rtt) {
            for d in &dsts {
                if let Endpoint::Registry { client, r } = d {
                    client.fit_host_start(&r.repo.registry, rtt);
                }
            }
        }
        let mut hosts = HashMap::new();
        for (k, e) in std::iter::once((&src_key, &src)).chain(dst_keys.iter().zip(&dsts)) {
            hosts
                .entry(k.clone())
                .or_insert_with(|| HostGate::of(e, per_layout, long));
        }
        let task_limit = hosts
            .values()
            .map(|g| g.capacity(per_layout))
            .sum::<usize>()
            .max(1);
        BlobCtx {
            src,
            src_key,
            dsts,
            dst_keys,
            hosts,
            task_limit,
            retry,
            progress,
        }
    }

    /// One permit per distinct host this transfer touches, always taken in sorted order so
    /// two transfers can never each hold what the other waits for. Held (never read) until
    /// the transfer ends.
    pub(super) async fn acquire_hosts(&self, digest: &Digest) -> Result<Vec<HeldPermit>> {
        let mut keys: Vec<&String> = std::iter::once(&self.src_key)
            .chain(self.dst_keys.iter())
            .collect();
        keys.sort();
        keys.dedup();
        let mut permits = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(gate) = self.hosts.get(k) {
                permits.push(gate.acquire(digest).await?);
            }
        }
        Ok(permits)
    }
}
