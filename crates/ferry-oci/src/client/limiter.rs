//! Adaptive per-host concurrency, shared by everything one [`RegistryClient`] does.
//!
//! Each registry host has a limit that starts at [`HostLimits::initial`] and moves between
//! [`HostLimits::min`] and [`HostLimits::max`] by AIMD: it is halved when the host throttles
//! (429 or 503, at most once per [`HostLimits::decrease_cooldown`], so one burst of refusals
//! seen by every in-flight request halves it once), and it grows while the host is saturated
//! (the limit is what holds the work back): by one per success until the host first throttles
//! (slow start, so a long link gets its connections within a few round trips), then by one
//! per `limit` successes (congestion avoidance).
//!
//! The start follows the link: the first time a host's fastest answer shows it is on a long
//! link, a limit still in slow start is raised at once to [`HostLimits::start_for`] that
//! round trip (one more `initial` per `long_link` of RTT, up to `max`). A connection whose
//! window caps it at window / RTT carries less the longer the link, so the connections worth
//! opening grow with the RTT; growing there one success at a time would spend most of a
//! many-layer copy below what the link can carry. A short link keeps the configured start
//! (and the memory bound that goes with it).
//!
//! The bound is the client's, not a copy's: manifest requests take a permit inside the client,
//! and the copy engine takes one per blob transfer (its requests run under it), so concurrent
//! copies over one client share it. It must never let more than `max` permits exist for a
//! host, never block a release, and never make a request wait for a permit its own caller
//! already holds (blob requests are bounded by the caller's [`HostPermit`]; see
//! [`self_limited`]).
//!
//! [`RegistryClient`]: super::RegistryClient

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Step;

/// Concurrent transfers per host a client starts with (`ferry copy --max-per-host`).
pub const DEFAULT_INITIAL_PER_HOST: usize = 4;
/// The most concurrent transfers per host the limit may grow to: enough parallel
/// connections to fill a long link whose per-connection window caps each at window / RTT.
pub const DEFAULT_MAX_PER_HOST: usize = 16;
/// The floor a throttling host can push the limit down to.
pub const DEFAULT_MIN_PER_HOST: usize = 1;
/// After a decrease, further throttle signals within this time do not decrease again.
pub const DEFAULT_DECREASE_COOLDOWN: Duration = Duration::from_millis(500);
/// A host whose fastest answer so far took at least this long is on a long link: only there
/// are large blobs read as parallel ranges and blob transfers allowed beyond the configured
/// start value (on a short link they buy nothing and cost about 2 MiB of memory each).
pub const DEFAULT_LONG_LINK: Duration = Duration::from_millis(10);

/// How many requests (and blob transfers) a client runs at once against one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// The starting limit.
    pub initial: usize,
    /// The hard upper bound: no more permits than this ever exist for a host.
    pub max: usize,
    /// The floor a throttling host can push the limit to (at least 1).
    pub min: usize,
    /// At most one decrease per this interval.
    pub decrease_cooldown: Duration,
    /// The fastest answer at or above which a host counts as on a long link (zero: every
    /// host does).
    pub long_link: Duration,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            initial: DEFAULT_INITIAL_PER_HOST,
            max: DEFAULT_MAX_PER_HOST,
            min: DEFAULT_MIN_PER_HOST,
            decrease_cooldown: DEFAULT_DECREASE_COOLDOWN,
            long_link: DEFAULT_LONG_LINK,
        }
    }
}

impl HostLimits {
    /// The starting limit for a host whose fastest answer took `rtt`: `initial` on a short
    /// link, and `initial` more per `long_link` of round trip on a long one, never above
    /// `max`.
    pub fn start_for(&self, rtt: Duration) -> usize {
        let n = self.normalised();
        if n.long_link.is_zero() || rtt < n.long_link {
            return n.initial;
        }
        let links = (rtt.as_nanos() / n.long_link.as_nanos()).max(1);
        let links = usize::try_from(links).unwrap_or(usize::MAX);
        n.initial.saturating_mul(links).clamp(n.initial, n.max)
    }

    /// The limits with `min ≤ initial ≤ max` and `min ≥ 1` enforced.
    fn normalised(&self) -> HostLimits {
        let max = self.max.max(1);
        let min = self.min.clamp(1, max);
        HostLimits {
            initial: self.initial.clamp(min, max),
            max,
            min,
            decrease_cooldown: self.decrease_cooldown,
            long_link: self.long_link,
        }
    }
}

/// Whether the client itself takes a host permit for a request of this step. Blob requests
/// do not: the copy engine holds one [`HostPermit`] per host for a whole blob transfer (the
/// GET, the HEADs, the POST and the streaming PUT run under it), and asking again from inside
/// would let transfers deadlock on each other's permits.
pub(super) fn self_limited(step: Step) -> bool {
    !matches!(
        step,
        Step::HeadBlob | Step::GetBlob | Step::StartUpload | Step::PutBlob | Step::MountBlob
    )
}

struct HostState {
    limit: usize,
    /// Permits to destroy as they come back (the limit fell below what was handed out).
    debt: usize,
    in_flight: usize,
    peak: usize,
    successes: usize,
    /// No throttle seen yet: grow by one per saturated success.
    slow_start: bool,
    last_decrease: Option<Instant>,
    /// The fastest exchange (request to answer headers) seen so far.
    fastest: Option<Duration>,
    /// The start has been fitted to the link's round trip (done at most once).
    fitted: bool,
}

struct Host {
    /// Permits in existence = `limit + debt`, never more than `max`.
    sem: Arc<Semaphore>,
    state: Mutex<HostState>,
}

/// The per-host limits of one client.
pub(crate) struct HostLimiter {
    limits: HostLimits,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// One unit of a host's concurrency. Dropping it gives it back (or destroys it, when the
/// limit has fallen since it was taken).
pub struct HostPermit {
    host: Arc<Host>,
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for HostPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPermit").finish_non_exhaustive()
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        match self.host.state.lock() {
            Ok(mut st) => {
                st.in_flight = st.in_flight.saturating_sub(1);
                if st.debt > 0 {
                    st.debt -= 1;
                    permit.forget();
                }
            }
            // A poisoned lock only means another thread panicked mid-update; the permit
            // still goes back so nothing waits forever.
            Err(_) => drop(permit),
        }
    }
}

impl HostLimiter {
    pub(crate) fn new(limits: &HostLimits) -> Self {
        HostLimiter {
            limits: limits.normalised(),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn host(&self, key: &str) -> Arc<Host> {
        let mut hosts = match self.hosts.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(h) = hosts.get(key) {
            return h.clone();
        }
        hosts
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    sem: Arc::new(Semaphore::new(self.limits.initial)),
                    state: Mutex::new(HostState {
                        limit: self.limits.initial,
                        debt: 0,
                        in_flight: 0,
                        peak: 0,
                        successes: 0,
                        slow_start: true,
                        last_decrease: None,
                        fastest: None,
                        fitted: false,
                    }),
                })
            })
            .clone()
    }

    fn granted(host: Arc<Host>, permit: OwnedSemaphorePermit) -> HostPermit {
        if let Ok(mut st) = host.state.lock() {
            st.in_flight += 1;
            st.peak = st.peak.max(st.in_flight);
        }
        HostPermit {
            host,
            permit: Some(permit),
        }
    }

    /// Waits for a permit on `key`.
    pub(crate) async fn acquire(&self, key: &str) -> HostPermit {
        let host = self.host(key);
        // The semaphore is never closed, so acquiring cannot fail; if it ever did, going on
        // without a permit is safer than failing a copy over bookkeeping.
        match host.sem.clone().acquire_owned().await {
            Ok(p) => Self::granted(host, p),
            Err(_) => HostPermit { host, permit: None },
        }
    }

    /// A permit on `key` if one is free now (extra parallelism is opportunistic).
    pub(crate) fn try_acquire(&self, key: &str) -> Option<HostPermit> {
        let host = self.host(key);
        let p = host.sem.clone().try_acquire_owned().ok()?;
        Some(Self::granted(host, p))
    }

    /// The host throttled (429, 503): halve the limit, at most once per cooldown.
    pub(crate) fn throttled(&self, key: &str) {
        let host = self.host(key);
        let Ok(mut st) = host.state.lock() else {
            return;
        };
        let now = Instant::now();
        if st
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < self.limits.decrease_cooldown)
        {
            return;
        }
        st.last_decrease = Some(now);
        st.successes = 0;
        st.slow_start = false;
        let target = (st.limit / 2).max(self.limits.min);
        let cut = st.limit - target;
        if cut == 0 {
            return;
        }
        st.limit = target;
        // Free permits go at once; the rest are destroyed as their holders give them back.
        let forgotten = host.sem.forget_permits(cut);
        st.debt += cut - forgotten;
        tracing::debug!(
            host = key,
            limit = target,
            "host throttled: concurrency halved"
        );
    }

    /// A request to the host succeeded: while saturated, grow by one (slow start), or by one
    /// per `limit` successes once the host has throttled.
    pub(crate) fn succeeded(&self, key: &str) {
        let host = self.host(key);
        let Ok(mut st) = host.state.lock() else {
            return;
        };
        if st.limit >= self.limits.max || st.in_flight < st.limit {
            return;
        }
        st.successes += 1;
        if !st.slow_start && st.successes < st.limit {
            return;
        }
        st.successes = 0;
        st.limit += 1;
        if st.debt > 0 {
            st.debt -= 1;
        } else {
            host.sem.add_permits(1);
        }
    }

    /// Records how long one exchange with the host took; the first time that shows a long
    /// link, the host's start is fitted to it ([`HostLimiter::fit_start`]).
    pub(crate) fn observe_latency(&self, key: &str, took: Duration) {
        let fastest = {
            let host = self.host(key);
            let Ok(mut st) = host.state.lock() else {
                return;
            };
            let fastest = st.fastest.map_or(took, |f| f.min(took));
            st.fastest = Some(fastest);
            fastest
        };
        if !self.limits.long_link.is_zero() && fastest >= self.limits.long_link {
            self.fit_start(key, fastest);
        }
    }

    /// Raises a limit still in slow start to the start a link of round trip `rtt` calls for
    /// ([`HostLimits::start_for`]), once per host: later round trips, and any host that has
    /// throttled, are left to AIMD. Never lowers a limit, never above `max`.
    pub(crate) fn fit_start(&self, key: &str, rtt: Duration) {
        let host = self.host(key);
        let Ok(mut st) = host.state.lock() else {
            return;
        };
        if st.fitted || !st.slow_start {
            return;
        }
        st.fitted = true;
        let target = self.limits.start_for(rtt);
        if target <= st.limit {
            return;
        }
        let mut grow = target - st.limit;
        st.limit = target;
        // Permits still owed to an earlier decrease are cancelled before new ones are made.
        let repaid = grow.min(st.debt);
        st.debt -= repaid;
        grow -= repaid;
        host.sem.add_permits(grow);
        tracing::debug!(
            host = key,
            limit = target,
            rtt_ms = rtt.as_millis() as u64,
            "concurrency starts from the link's round trip"
        );
    }

    /// The host's fastest exchange so far, if it has been spoken to.
    pub(crate) fn fastest(&self, key: &str) -> Option<Duration> {
        self.host(key).state.lock().ok().and_then(|s| s.fastest)
    }

    /// Whether the host is on a long link (see [`HostLimits::long_link`]); a host not yet
    /// spoken to is not, unless the threshold is zero.
    pub(crate) fn long_link(&self, key: &str) -> bool {
        if self.limits.long_link.is_zero() {
            return true;
        }
        self.host(key)
            .state
            .lock()
            .ok()
            .and_then(|s| s.fastest)
            .is_some_and(|f| f >= self.limits.long_link)
    }

    /// The host's current limit.
    pub(crate) fn limit(&self, key: &str) -> usize {
        self.host(key).state.lock().map(|s| s.limit).unwrap_or(0)
    }

    /// The most permits ever held at once on the host.
    pub(crate) fn peak(&self, key: &str) -> usize {
        self.host(key).state.lock().map(|s| s.peak).unwrap_or(0)
    }

    /// The hard upper bound of every host.
    pub(crate) fn max(&self) -> usize {
        self.limits.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(initial: usize, max: usize) -> HostLimits {
        HostLimits {
            initial,
            max,
            min: 1,
            decrease_cooldown: Duration::ZERO,
            long_link: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn never_hands_out_more_than_the_limit_and_halves_on_throttle() {
        let l = HostLimiter::new(&limits(4, 6));
        let held: Vec<HostPermit> = (0..4).filter_map(|_| l.try_acquire("h")).collect();
        assert_eq!(held.len(), 4);
        assert!(l.try_acquire("h").is_none(), "initial limit is 4");
        l.throttled("h");
        assert_eq!(l.limit("h"), 2);
        drop(held);
        // Two of the four returned permits were destroyed.
        let again: Vec<HostPermit> = (0..4).filter_map(|_| l.try_acquire("h")).collect();
        assert_eq!(again.len(), 2);
        assert!(l.peak("h") <= 4);
        // Other hosts are independent.
        assert!(l.try_acquire("other").is_some());
    }

    #[tokio::test]
    async fn grows_only_while_saturated_and_never_above_max() {
        let l = HostLimiter::new(&limits(2, 6));
        // Not saturated: no growth.
        for _ in 0..10 {
            l.succeeded("h");
        }
        assert_eq!(l.limit("h"), 2);
        let mut held: Vec<HostPermit> = (0..2).filter_map(|_| l.try_acquire("h")).collect();
        // Slow start: one more per saturated success.
        l.succeeded("h");
        assert_eq!(l.limit("h"), 3);
        held.extend(l.try_acquire("h"));
        l.succeeded("h");
        assert_eq!(l.limit("h"), 4);
        held.extend(l.try_acquire("h"));
        // After a throttle: halved, then one more per `limit` saturated successes.
        l.throttled("h");
        assert_eq!(l.limit("h"), 2);
        held.truncate(2);
        for _ in 0..1 {
            l.succeeded("h");
        }
        assert_eq!(
            l.limit("h"),
            2,
            "congestion avoidance waits for `limit` successes"
        );
        l.succeeded("h");
        assert_eq!(l.limit("h"), 3);
        held.extend(l.try_acquire("h"));
        for _ in 0..100 {
            if let Some(p) = l.try_acquire("h") {
                held.push(p);
            }
            l.succeeded("h");
        }
        assert_eq!(l.limit("h"), 6, "bounded above");
        assert_eq!(held.len(), 6);
        assert!(l.try_acquire("h").is_none());
    }

    #[tokio::test]
    async fn under_a_storm_of_429s_the_bound_holds_and_the_floor_is_kept() {
        let l = Arc::new(HostLimiter::new(&limits(8, 8)));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let l = l.clone();
            tasks.spawn(async move {
                let _p = l.acquire("h").await;
                tokio::task::yield_now().await;
                if i % 3 == 0 {
                    l.throttled("h");
                } else {
                    l.succeeded("h");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        assert!(l.peak("h") <= 8, "peak {}", l.peak("h"));
        assert!((1..=8).contains(&l.limit("h")));
        // Everything was given back: the current limit is fully available.
        let free: Vec<HostPermit> = (0..10).filter_map(|_| l.try_acquire("h")).collect();
        assert_eq!(free.len(), l.limit("h"));
    }

    #[test]
    fn the_start_grows_with_the_round_trip_up_to_max() {
        let l = HostLimits {
            long_link: Duration::from_millis(10),
            ..limits(4, 16)
        };
        assert_eq!(l.start_for(Duration::from_micros(300)), 4, "loopback");
        assert_eq!(l.start_for(Duration::from_millis(9)), 4);
        assert_eq!(l.start_for(Duration::from_millis(10)), 4);
        assert_eq!(l.start_for(Duration::from_millis(20)), 8);
        assert_eq!(l.start_for(Duration::from_millis(35)), 12);
        assert_eq!(
            l.start_for(Duration::from_millis(100)),
            16,
            "bounded by max"
        );
        assert_eq!(l.start_for(Duration::from_secs(3600)), 16);
        // With no long-link threshold every host keeps the configured start.
        assert_eq!(limits(4, 16).start_for(Duration::from_millis(100)), 4);
    }

    #[tokio::test]
    async fn a_long_link_starts_wide_once_and_only_in_slow_start() {
        let l = HostLimiter::new(&HostLimits {
            long_link: Duration::from_millis(10),
            ..limits(2, 8)
        });
        // A short link keeps its start.
        l.observe_latency("near", Duration::from_millis(1));
        assert_eq!(l.limit("near"), 2);
        // A 40 ms link starts at 2 × 4 = 8, with the permits to match.
        l.observe_latency("far", Duration::from_millis(40));
        assert_eq!(l.limit("far"), 8);
        let held: Vec<HostPermit> = (0..10).filter_map(|_| l.try_acquire("far")).collect();
        assert_eq!(held.len(), 8, "never above max");
        drop(held);
        // After a throttle the fit is not repeated: AIMD owns the limit.
        l.throttled("far");
        assert_eq!(l.limit("far"), 4);
        l.observe_latency("far", Duration::from_millis(40));
        assert_eq!(l.limit("far"), 4);
        // A near destination of a far source is fitted to the source's round trip, once.
        l.fit_start("dst", Duration::from_millis(40));
        assert_eq!(l.limit("dst"), 8);
        l.fit_start("dst", Duration::from_millis(10));
        assert_eq!(l.limit("dst"), 8, "never lowered, fitted once");
        // A host that throttled before it was seen to be far is not widened either.
        l.throttled("late");
        l.observe_latency("late", Duration::from_millis(100));
        assert_eq!(l.limit("late"), 1);
    }

    #[test]
    fn limits_are_normalised() {
        let n = HostLimits {
            initial: 50,
            max: 0,
            min: 0,
            decrease_cooldown: Duration::ZERO,
            long_link: Duration::ZERO,
        }
        .normalised();
        assert_eq!((n.initial, n.max, n.min), (1, 1, 1));
    }
}
