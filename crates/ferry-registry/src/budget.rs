//! The memory budget for manifest bodies, which the server must buffer whole (to hash and
//! parse them) before storing them.
//!
//! Every buffered byte is reserved first, from the server-wide budget
//! ([`crate::limits::Limits::manifest_memory_bytes`]) and from the requesting identity's share
//! of it (a [`MANIFEST_SHARE_DIVISOR`]th, at least one maximum-size manifest), so stalled PUTs
//! cannot grow memory and one identity cannot take the whole budget from the others. A
//! reservation is returned when it is dropped. This module must never wait for memory: a
//! request that does not fit is refused at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::storage::MAX_MANIFEST_BYTES;

/// One identity may hold at most this fraction of the budget (but always one maximum-size
/// manifest).
pub const MANIFEST_SHARE_DIVISOR: usize = 4;

/// The request does not fit in the budget or in its identity's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the registry is buffering too many manifest bytes at once; retry shortly")]
pub struct BudgetExceeded;

/// The server-wide manifest budget.
pub(crate) struct ManifestBudget {
    total: Arc<Semaphore>,
    per_identity: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl ManifestBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        ManifestBudget {
            total: Arc::new(Semaphore::new(bytes)),
            per_identity: (bytes / MANIFEST_SHARE_DIVISOR).max(MAX_MANIFEST_BYTES),
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Reserves `bytes` for `identity`.
    pub(crate) fn reserve(
        &self,
        identity: &str,
        bytes: usize,
    ) -> Result<Reservation, BudgetExceeded> {
        let mut reservation = Reservation {
            permit: None,
            identity: identity.to_string(),
            bytes: 0,
            per_identity: self.per_identity,
            total: self.total.clone(),
            held: self.held.clone(),
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }
}

/// Bytes held for one request; given back on drop.
pub(crate) struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    identity: String,
    bytes: usize,
    per_identity: usize,
    total: Arc<Semaphore>,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Reservation {
    /// Reserves `bytes` more (a chunk of a body sent without `Content-Length`).
    pub(crate) fn grow(&mut self, bytes: usize) -> Result<(), BudgetExceeded> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| BudgetExceeded)?;
        let mut held = lock(&self.held);
        let mine = held.get(&self.identity).copied().unwrap_or(0);
        if mine.saturating_add(bytes) > self.per_identity {
            return Err(BudgetExceeded);
        }
        let permit = self
            .total
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| BudgetExceeded)?;
        match self.permit.as_mut() {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        held.insert(self.identity.clone(), mine + bytes);
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(mine) = held.get_mut(&self.identity) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.remove(&self.identity);
            }
        }
        // The permit goes back to the total when it drops, right after.
    }
}

fn lock(held: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    // A plain counter map; a panic elsewhere cannot leave it half-updated.
    held.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identity_gets_a_share_and_bytes_come_back_on_drop() {
        let mib = 1024 * 1024;
        let budget = ManifestBudget::new(32 * mib);
        // A share is a quarter (8 MiB) here.
        let a1 = budget.reserve("a", 4 * mib).expect("first");
        let a2 = budget.reserve("a", 4 * mib).expect("second");
        assert_eq!(budget.reserve("a", 1).err(), Some(BudgetExceeded));
        // Others still have room.
        let b = budget.reserve("b", 4 * mib).expect("b");
        drop(a1);
        let mut a3 = budget.reserve("a", 2 * mib).expect("after a drop");
        a3.grow(2 * mib).expect("grows within the share");
        assert_eq!(a3.grow(1).err(), Some(BudgetExceeded));
        drop((a2, a3, b));
        assert_eq!(budget.total.available_permits(), 32 * mib);
        assert!(lock(&budget.held).is_empty());
        // The share is never below one maximum-size manifest.
        let small = ManifestBudget::new(MAX_MANIFEST_BYTES);
        small
            .reserve("a", MAX_MANIFEST_BYTES)
            .expect("one manifest fits");
    }
}
