//! Counters for the control socket's `metrics` operation, and rate-limited logging
//! for anything a guest can trigger.
//!
//! One VM per process, so the counters are process-global.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

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

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

#[derive(Debug, Serialize)]
pub struct Metrics {
    pub vcpu_exits_io: Counter,
    pub vcpu_exits_mmio: Counter,
    pub vcpu_exits_other: Counter,
    pub unhandled_accesses: Counter,
    pub console_bytes: Counter,
    pub console_bytes_dropped: Counter,
    pub virtio_notifications: Counter,
    pub virtio_interrupts: Counter,
    pub virtio_bad_requests: Counter,
    pub block_reads: Counter,
    pub block_writes: Counter,
    pub block_flushes: Counter,
    pub block_read_bytes: Counter,
    pub block_write_bytes: Counter,
    pub block_errors: Counter,
    pub rng_bytes: Counter,
    pub vsock_tx_packets: Counter,
    pub vsock_rx_packets: Counter,
    pub vsock_tx_bytes: Counter,
    pub vsock_rx_bytes: Counter,
    pub vsock_connections_opened: Counter,
    pub vsock_connections_closed: Counter,
    pub vsock_resets: Counter,
    pub api_requests: Counter,
}

pub static METRICS: Metrics = Metrics {
    vcpu_exits_io: Counter::new(),
    vcpu_exits_mmio: Counter::new(),
    vcpu_exits_other: Counter::new(),
    unhandled_accesses: Counter::new(),
    console_bytes: Counter::new(),
    console_bytes_dropped: Counter::new(),
    virtio_notifications: Counter::new(),
    virtio_interrupts: Counter::new(),
    virtio_bad_requests: Counter::new(),
    block_reads: Counter::new(),
    block_writes: Counter::new(),
    block_flushes: Counter::new(),
    block_read_bytes: Counter::new(),
    block_write_bytes: Counter::new(),
    block_errors: Counter::new(),
    rng_bytes: Counter::new(),
    vsock_tx_packets: Counter::new(),
    vsock_rx_packets: Counter::new(),
    vsock_tx_bytes: Counter::new(),
    vsock_rx_bytes: Counter::new(),
    vsock_connections_opened: Counter::new(),
    vsock_connections_closed: Counter::new(),
    vsock_resets: Counter::new(),
    api_requests: Counter::new(),
};

/// Resident memory of this process, in KiB (`VmRSS` of /proc/self/status).
pub fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
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
    fn rss_is_readable() {
        assert!(rss_kib() > 0);
    }
}
