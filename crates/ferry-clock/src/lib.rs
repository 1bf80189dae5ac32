//! The real `Clock` and `IdGenerator` of every backend (ferry-local, the Lambda functions, the
//! agent, ferry-aws): the system clock in unix milliseconds and random ids. Written once here,
//! below both backends, because ferry-core must never read a clock or draw randomness.
//!
//! Handlers get time and fresh ids only through these ports; this crate must never be used
//! where a replay has to derive the same id (handlers derive those themselves).

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore as _;

use ferry_core::ports::{Clock, IdGenerator};

/// Unix time in milliseconds from the system clock (0 before 1970, saturating far ahead).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds from the system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_ms()
    }
}

/// 128 random bits as 32 lowercase hex characters (valid in every Ferry id).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl IdGenerator for RandomIds {
    fn new_id(&self) -> String {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_valid() {
        let (a, b) = (RandomIds.new_id(), RandomIds.new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(ferry_core::id::BuildId::new(format!("b-{a}")).is_ok());
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
        assert!(unix_ms() > 1_600_000_000_000);
    }
}
