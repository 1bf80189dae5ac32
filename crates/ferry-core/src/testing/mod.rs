//! In-memory fakes of every port, for unit tests here and in other crates (feature `testing`).
//!
//! They follow the documented port semantics (conditional writes, TTLs, visibility timeouts,
//! receive counts, batch limits) closely enough for the contract suite in [`crate::contract`] to
//! pass against them, and they record calls so tests can assert on side effects. Every store
//! and queue call yields once before acting, so `join!`ed handlers really interleave. They must
//! never be used as a production backend: nothing is persisted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use crate::handlers::{Config, Ports};
use crate::id::{InstallId, QueueName};
use crate::ports::{Clock, IdGenerator};
use crate::trust::VendorKey;

mod builder;
mod bus;
mod minter;
mod queue;
mod store;

pub use builder::MemBuilder;
pub use bus::MemBus;
pub use minter::{MemMinter, Minted, FAKE_GRANT_TTL_MS};
pub use queue::MemQueue;
pub use store::MemStore;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later assertion into a poison error.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns Pending once, so concurrent futures get a turn between read and write.
pub fn yield_now() -> impl Future<Output = ()> + Send {
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    YieldOnce(false)
}

// ---------------------------------------------------------------------------------------------
// Clock and ids

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Ids "000001", "000002", ...
#[derive(Debug, Clone, Default)]
pub struct SeqIds(Arc<AtomicU64>);

impl IdGenerator for SeqIds {
    fn new_id(&self) -> String {
        format!("{:06}", self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// All together

/// The in-memory backend: every port a fake.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fakes;

impl crate::ports::Backend for Fakes {
    type Store = MemStore;
    type Queue = MemQueue;
    type Bus = MemBus;
    type Builder = MemBuilder;
    type Minter = MemMinter;
    type Clock = ManualClock;
}

/// The handlers' ports over the fakes.
pub type FakePorts = Ports<Fakes>;

/// The release queue of the fake ports (created by [`fake_ports`]).
pub const FAKE_RELEASE_QUEUE: &str = "release";

/// Fresh fakes sharing one clock that starts at `start_ms`.
pub fn fake_ports(start_ms: u64) -> FakePorts {
    let clock = ManualClock::new(start_ms);
    let release_queue =
        QueueName::new(FAKE_RELEASE_QUEUE).unwrap_or_else(|e| panic!("release queue name: {e}"));
    let queue = MemQueue::new(clock.clone());
    queue.create_queue(&release_queue);
    Ports {
        store: MemStore::new(),
        queue,
        bus: MemBus::default(),
        builder: MemBuilder::default(),
        minter: MemMinter::new(clock.clone()),
        clock,
        config: Config::default(),
        vendor_key: Arc::new(test_vendor_key()),
        release_queue,
    }
}

/// A test install's agent key pair, derived from its id so tests need not carry keys around
/// (tests only: a real agent generates its key with `ferry-agent keygen`).
pub fn test_agent_key(install: &InstallId) -> crate::seal::AgentKeypair {
    use base64::Engine as _;
    use sha2::Digest as _;
    let seed = sha2::Sha256::digest(format!("agent-key-of-{install}"));
    let text = format!(
        "{}{}",
        crate::seal::SECRET_KEY_PREFIX,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)
    );
    crate::seal::AgentKeypair::from_secret_string(&text)
        .unwrap_or_else(|e| panic!("test agent key: {e}"))
}

/// A report signed by the test agent key of its install ([`test_agent_key`]).
pub fn signed_by_test_agent(mut report: crate::event::SyncReported) -> crate::event::SyncReported {
    test_agent_key(&report.install_id)
        .report_key()
        .sign(&mut report);
    report
}

/// The vendor key every fake port set shares: a fixed secret, so sync ids are stable across
/// test runs (tests only; a real vendor key comes from `VendorKey::generate`).
pub fn test_vendor_key() -> VendorKey {
    let text = format!(
        "{}{}",
        crate::trust::VENDOR_SECRET_PREFIX,
        "dGVzdC12ZW5kb3Ita2V5LWZvci1mZXJyeS10ZXN0cyE"
    );
    VendorKey::from_secret_string(&text).unwrap_or_else(|e| panic!("test vendor key: {e}"))
}
