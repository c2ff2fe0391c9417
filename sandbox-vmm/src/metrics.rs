//! Counters for the control socket's `metrics` operation, and rate-limited logging
//! for anything a guest can trigger.
//!
//! One VM per process, so the counters are process-global. Their names are part of
//! brig-vmm's contract and listed once, in `brig_vmm_api::for_each_counter!`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        guest_huge_kib: huge_mapped_kib(&std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default()),
    }
}

/// `ShmemPmdMapped` of `smaps_rollup`: shared memory (guest RAM) mapped in 2 MiB pages.
fn huge_mapped_kib(smaps_rollup: &str) -> u64 {
    smaps_rollup
        .lines()
        .find_map(|line| line.strip_prefix("ShmemPmdMapped:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `metrics` answer.
pub fn snapshot(guest_memory_mib: u64) -> VmMetrics {
    VmMetrics { counters: METRICS.counters(), memory: memory_usage(guest_memory_mib) }
}

/// Logs a guest-triggerable event at most `BURST` times per `WINDOW`, and says
/// how many were not logged, so a hostile guest cannot flood the host's logs
/// however long it keeps trying.
#[derive(Debug)]
pub struct RateLimit(Mutex<Window>);

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    seen: u64,
    suppressed: u64,
}

/// What [`RateLimit::allow`] lets through: how often the event was seen in all,
/// and how many were not logged since the last line that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    pub seen: u64,
    pub suppressed: u64,
}

impl RateLimit {
    pub const BURST: u32 = 10;
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub const fn new() -> Self {
        RateLimit(Mutex::new(Window { start: None, logged: 0, seen: 0, suppressed: 0 }))
    }

    /// Whether this occurrence should be logged.
    pub fn allow(&self) -> Option<Allowed> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<Allowed> {
        let mut w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.seen += 1;
        if w.start.is_none_or(|start| now.saturating_duration_since(start) >= Self::WINDOW) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= Self::BURST {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        let allowed = Allowed { seen: w.seen, suppressed: w.suppressed };
        w.suppressed = 0;
        Some(allowed)
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
        if let Some(allowed) = LIMIT.allow() {
            log::warn!(
                "{} (seen {} times, {} not logged)",
                format_args!($($arg)*),
                allowed.seen,
                allowed.suppressed
            );
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_read_from_smaps_rollup() {
        let rollup = "Rss:              131072 kB\nShmemPmdMapped:    65536 kB\nFilePmdMapped:         0 kB\n";
        assert_eq!(huge_mapped_kib(rollup), 65536);
        assert_eq!(huge_mapped_kib("Rss: 4 kB\n"), 0, "a kernel without the field");
    }

    #[test]
    fn rate_limit_allows_a_burst_per_window_whatever_the_count() {
        let limit = RateLimit::new();
        let start = Instant::now();
        let allowed = (0..100_000).filter(|_| limit.allow_at(start).is_some()).count();
        assert_eq!(allowed, RateLimit::BURST as usize, "one window, however many events");
        let later = start + RateLimit::WINDOW;
        let next = limit.allow_at(later).expect("a new window logs again");
        assert_eq!(next, Allowed { seen: 100_001, suppressed: 100_000 - u64::from(RateLimit::BURST) });
        assert_eq!(limit.allow_at(later), Some(Allowed { seen: 100_002, suppressed: 0 }));
        // An hour of flooding logs at most BURST lines per window.
        let mut lines = 0;
        for second in 0..3600 {
            let now = later + Duration::from_secs(second);
            lines += (0..1000).filter(|_| limit.allow_at(now).is_some()).count();
        }
        assert!(lines <= (3600 / RateLimit::WINDOW.as_secs() as usize + 1) * RateLimit::BURST as usize, "{lines}");
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
