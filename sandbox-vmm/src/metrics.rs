//! Counters for the control socket's `metrics` operation, and rate-limited logging
//! for anything a guest can trigger.
//!
//! One VM per process, so the counters are process-global. Their names are part of
//! brig-vmm's contract and listed once, in `brig_vmm_api::for_each_counter!`.

use std::sync::atomic::{AtomicU64, Ordering};

use brig_vmm_api::metrics::{Counters, MemoryUsage};
use brig_vmm_api::VmMetrics;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! atomic_counters {
    ($($name:ident),* $(,)?) => {
        /// The live counters; [`Metrics::counters`] reads them into the contract's type.
        #[derive(Debug)]
        pub struct Metrics {
            $(pub $name: Counter,)*
        }

        pub static METRICS: Metrics = Metrics { $($name: Counter::new(),)* };

        impl Metrics {
            pub fn counters(&self) -> Counters {
                Counters { $($name: self.$name.get(),)* }
            }
        }
    };
}

brig_vmm_api::for_each_counter!(atomic_counters);

/// This process's memory, from `/proc/self/status` (zeros where it cannot be read).
pub fn memory_usage(guest_memory_mib: u64) -> MemoryUsage {
    let status = procfs::process::Process::myself().and_then(|p| p.status()).ok();
    let field = |pick: fn(&procfs::process::Status) -> Option<u64>| status.as_ref().and_then(pick).unwrap_or(0);
    MemoryUsage {
        rss_kib: field(|s| s.vmrss),
        rss_anon_kib: field(|s| s.rssanon),
        rss_file_kib: field(|s| s.rssfile),
        // Guest RAM is a memfd, so the guest's touched pages show up as shared memory.
        rss_guest_kib: field(|s| s.rssshmem),
        guest_memory_kib: guest_memory_mib << 10,
    }
}

/// The `metrics` answer.
pub fn snapshot(guest_memory_mib: u64) -> VmMetrics {
    VmMetrics { counters: METRICS.counters(), memory: memory_usage(guest_memory_mib) }
}

/// Logs the first `BURST` occurrences of a guest-triggerable event, then one in every
/// `EVERY`, so a hostile guest cannot flood the host's logs.
#[derive(Debug)]
pub struct RateLimit(AtomicU64);

impl RateLimit {
    const BURST: u64 = 10;
    const EVERY: u64 = 1000;

    pub const fn new() -> Self {
        RateLimit(AtomicU64::new(0))
    }

    /// Whether this occurrence should be logged; also returns how many were seen.
    pub fn allow(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= Self::BURST || n.is_multiple_of(Self::EVERY)).then_some(n)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `warn!` that a guest cannot use to flood the log.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::metrics::RateLimit = $crate::metrics::RateLimit::new();
        if let Some(n) = LIMIT.allow() {
            log::warn!("{} (seen {} times)", format_args!($($arg)*), n);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_one_in_a_thousand() {
        let limit = RateLimit::new();
        let allowed = (0..5000).filter(|_| limit.allow().is_some()).count();
        assert_eq!(allowed, 10 + 5);
    }

    #[test]
    fn memory_is_readable_and_counters_reach_the_contract() {
        let usage = memory_usage(128);
        assert!(usage.rss_kib > 0 && usage.rss_anon_kib > 0, "{usage:?}");
        assert_eq!(usage.guest_memory_kib, 128 << 10);
        let before = METRICS.counters().api_requests;
        METRICS.api_requests.inc();
        assert!(snapshot(128).counters.api_requests > before);
    }
}
