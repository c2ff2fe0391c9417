//! brig-vmm's counters, named once here. brig-vmm keeps them as atomics of the
//! same names (it expands [`for_each_counter!`] into its own struct), and the
//! `metrics` answer carries them as [`Counters`].

use serde::{Deserialize, Serialize};

/// Calls `$callback! { name, name, … }` with every counter's name, so that a
/// struct of any counter type can be generated from the one list.
#[macro_export]
macro_rules! for_each_counter {
    ($callback:ident) => {
        $callback! {
            vcpu_exits_io,
            vcpu_exits_mmio,
            vcpu_exits_other,
            unhandled_accesses,
            console_bytes,
            console_bytes_dropped,
            virtio_notifications,
            virtio_interrupts,
            virtio_bad_requests,
            virtio_budget_exhausted,
            virtio_short_rx_buffers,
            block_reads,
            block_writes,
            block_flushes,
            block_read_bytes,
            block_write_bytes,
            block_errors,
            rng_bytes,
            vsock_tx_packets,
            vsock_rx_packets,
            vsock_tx_bytes,
            vsock_rx_bytes,
            vsock_connections_opened,
            vsock_connections_closed,
            vsock_resets,
            vsock_resets_dropped,
            net_rx_packets,
            net_rx_bytes,
            net_rx_dropped,
            net_tx_packets,
            net_tx_bytes,
            net_tx_dropped,
            api_requests,
        }
    };
}

macro_rules! counters_struct {
    ($($name:ident),* $(,)?) => {
        /// Event counts since brig-vmm started. A counter that an older brig-vmm
        /// does not have reads as 0.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counters {
            $(pub $name: u64,)*
        }

        impl Counters {
            /// Every counter's name, in wire order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];
        }
    };
}

for_each_counter!(counters_struct);

/// The memory brig-vmm's process holds, from its `/proc/self/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryUsage {
    /// Resident set, guest RAM included (`VmRSS`).
    pub rss_kib: u64,
    /// brig-vmm's own memory is `rss_anon_kib + rss_file_kib`.
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    /// Guest RAM that has been touched: guest RAM is a memfd, so it is shared memory (`RssShmem`).
    pub rss_guest_kib: u64,
    /// The guest's configured RAM.
    pub guest_memory_kib: u64,
    /// Guest RAM mapped in 2 MiB huge pages (`ShmemPmdMapped` of
    /// `/proc/self/smaps_rollup`; API 1.4).
    pub guest_huge_kib: u64,
}
