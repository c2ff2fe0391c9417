//! virtio-net on a tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) the caller opened.
//!
//! Frames cross as they are, each with the 12-byte `virtio_net_hdr_v1` in front, which
//! the tap reads and writes itself: the guest's checksum and TSO requests go to the
//! host kernel as they came, and frames the host kernel left with a partial checksum
//! reach the guest marked so. Transmit accepts TSO (`HOST_TSO4/6`); receive offers
//! only `GUEST_CSUM`, so the host kernel segments before the tap and every receive
//! buffer is an MTU's worth (ADR 017: no 64 KiB buffers, no mergeable buffers yet).
//!
//! Everything from the guest is bounded: a transmit chain longer than one frame can be
//! or shorter than its header is dropped and counted, a receive buffer too small for
//! the frame gets the frame dropped (counted) and the buffer back empty, and each queue
//! is served at most one ring's worth per event. A guest that posts no receive buffers
//! stops the device from watching the tap (frames wait in the tap's queue, which the
//! host kernel bounds and counts), so nothing spins; its next receive notification
//! starts it again.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use brig_vmm_api::config::{MacAddr, NetConfig};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MTU,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::{budget, feature, read_config_bytes, rearm, ActivateError, Activation, Queues, VirtioDevice};
use crate::event_loop::EventOps;
use crate::guest_warn;
use crate::metrics::METRICS;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers. The tap is told this size (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame either way: a 64 KiB TSO segment with its Ethernet and VLAN
/// headers, behind the virtio header.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_535 + 14 + 4;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net tap_fd {fd} is not open in brig-vmm (is it in the jail's keep_fds?)")]
    NotOpen { fd: RawFd },
    #[error("net tap_fd {fd} is not a tap: {why}")]
    NotATap { fd: RawFd, why: String },
    #[error("cannot set up the tap on tap_fd {fd}: {what}")]
    Setup { fd: RawFd, what: &'static str, source: std::io::Error },
}

#[derive(Debug)]
pub struct Net {
    tap: OwnedFd,
    mac: MacAddr,
    mtu: u16,
    acked: u64,
    active: Option<Queues>,
    /// The device watches the tap (it stops while the guest has no receive buffer).
    watching_tap: bool,
    /// The tap failed (its interface was deleted, its namespace went away): never
    /// watched again, so a dead descriptor cannot keep the event loop busy.
    tap_failed: bool,
    /// A frame read from the tap that waits for a receive buffer: its length in `rx_buf`.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

/// /dev/net/tun's device number (misc major 10, minor 200: Documentation/admin-guide/devices.txt).
const TUN_DEVICE: (u32, u32) = (10, 200);

impl Net {
    /// Takes over the tap descriptor `config.tap_fd` (inherited from the shim), after
    /// checking it is a tap brig-vmm can use; makes it non-blocking and tells it the
    /// virtio header's size.
    pub fn new(config: &NetConfig) -> Result<Net, NetError> {
        let fd = config.tap_fd;
        // SAFETY: F_GETFD reads the descriptor's flags and changes nothing.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(NetError::NotOpen { fd });
        }
        // By device number, not by path: in the jail, /proc shows the tun device under
        // the root brig-jailer pivoted away from. No TUN ioctl reaches another device.
        // SAFETY: all-zero is a valid stat, which fstat fills for the open descriptor.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is live and writable for the call.
        if unsafe { libc::fstat(fd, &mut stat) } < 0 {
            return Err(NetError::Setup { fd, what: "fstat", source: std::io::Error::last_os_error() });
        }
        let is_char = stat.st_mode & libc::S_IFMT == libc::S_IFCHR;
        if !is_char || (libc::major(stat.st_rdev), libc::minor(stat.st_rdev)) != TUN_DEVICE {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            return Err(NetError::NotATap { fd, why: format!("it is {}, not /dev/net/tun", target.display()) });
        }
        // SAFETY: the descriptor is open (checked above) and was handed to brig-vmm to
        // own; nothing else in brig-vmm refers to it, so it is closed exactly once.
        let tap = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let flags = tap_flags(&tap).map_err(|source| NetError::Setup { fd, what: "TUNGETIFF", source })?;
        let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & want != want {
            return Err(NetError::NotATap {
                fd,
                why: format!("its flags are {flags:#x}; create it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is live.
        if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(NetError::Setup { fd, what: "TUNSETVNETHDRSZ", source: std::io::Error::last_os_error() });
        }
        set_offload(&tap, 0).map_err(|source| NetError::Setup { fd, what: "TUNSETOFFLOAD", source })?;
        nix::fcntl::fcntl(&tap, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|e| NetError::Setup { fd, what: "O_NONBLOCK", source: e.into() })?;
        Ok(Net {
            tap,
            mac: config.mac,
            mtu: config.mtu,
            acked: 0,
            active: None,
            watching_tap: false,
            tap_failed: false,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
        })
    }

    /// Serves the transmit queue: each chain is one frame (header first) written to the tap.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let (mem, queue) = (&active.mem, &mut active.queues[TX]);
        let budget = budget(queue);
        let mut served = 0;
        while served < budget {
            let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut reader) => {
                    let len = reader.available_bytes();
                    if !(VNET_HDR_LEN..=MAX_FRAME).contains(&len) {
                        METRICS.net_tx_dropped.inc();
                        METRICS.virtio_bad_requests.inc();
                        guest_warn!("net: a transmitted frame of {len} bytes (header included) is dropped");
                    } else if reader.read_exact(&mut self.tx_buf[..len]).is_ok() {
                        match check_tx_header(&self.tx_buf[..VNET_HDR_LEN], self.acked) {
                            Ok(()) => transmit(&self.tap, &self.tx_buf[..len]),
                            Err(why) => {
                                METRICS.net_tx_dropped.inc();
                                METRICS.virtio_bad_requests.inc();
                                guest_warn!("net: a transmitted frame is dropped: {why}");
                            }
                        }
                    } else {
                        METRICS.net_tx_dropped.inc();
                    }
                }
                Err(e) => {
                    METRICS.net_tx_dropped.inc();
                    METRICS.virtio_bad_requests.inc();
                    guest_warn!("net: a transmit chain with bad descriptors: {e}");
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                guest_warn!("net: cannot return a transmit buffer: {e}");
            }
            served += 1;
        }
        if served == budget {
            rearm(&active.evts[TX]);
        }
        if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the tap into receive buffers, one ring's worth at most, and
    /// stops watching the tap while the guest has no buffer.
    fn process_rx(&mut self, ops: &EventOps) {
        let Some(active) = self.active.as_mut() else { return };
        let (mem, queue) = (&active.mem, &mut active.queues[RX]);
        let mut delivered = 0;
        for _ in 0..budget(queue) {
            let len = match self.pending.take() {
                Some(len) => len,
                None if self.tap_failed => break,
                None => match receive(&self.tap, &mut self.rx_buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        log::error!("net: the tap failed ({e}); the guest's NIC receives nothing from now on");
                        self.tap_failed = true;
                        break;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.pending = Some(len);
                break;
            };
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut writer) if writer.available_bytes() >= len => {
                    // Without mergeable buffers every frame is in one buffer (spec 5.1.6.4).
                    self.rx_buf[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
                    if self.acked & feature(VIRTIO_NET_F_GUEST_CSUM) == 0 {
                        // The tap may mark DATA_VALID; a driver without GUEST_CSUM gets 0 (5.1.6.4.1).
                        self.rx_buf[0] = 0;
                    }
                    match writer.write_all(&self.rx_buf[..len]) {
                        Ok(()) => {
                            METRICS.net_rx_packets.inc();
                            METRICS.net_rx_bytes.add((len - VNET_HDR_LEN) as u64);
                            len as u32
                        }
                        Err(_) => {
                            METRICS.net_rx_dropped.inc();
                            0
                        }
                    }
                }
                Ok(writer) => {
                    METRICS.net_rx_dropped.inc();
                    METRICS.virtio_short_rx_buffers.inc();
                    guest_warn!(
                        "net: a {len}-byte frame does not fit a {}-byte receive buffer",
                        writer.available_bytes()
                    );
                    0
                }
                Err(e) => {
                    METRICS.net_rx_dropped.inc();
                    METRICS.virtio_bad_requests.inc();
                    guest_warn!("net: a receive chain with bad descriptors: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, written) {
                guest_warn!("net: cannot return a receive buffer: {e}");
            }
            delivered += 1;
        }
        if delivered > 0 && queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        let watch = self.pending.is_none() && !self.tap_failed;
        if watch != self.watching_tap {
            let result =
                if watch { ops.add(self.tap.as_raw_fd(), EventSet::IN) } else { ops.remove(self.tap.as_raw_fd()) };
            match result {
                Ok(()) => self.watching_tap = watch,
                Err(e) => log::error!("net: cannot change the tap's watch: {e}"),
            }
        }
    }

    fn unwatch_tap(&mut self, ops: &EventOps) {
        if self.watching_tap {
            let _ = ops.remove(self.tap.as_raw_fd());
            self.watching_tap = false;
        }
    }
}

/// One frame to the tap. The host kernel refusing it (a GSO header it rejects, the
/// interface down, its queue full) drops the frame: counted, never retried.
fn transmit(tap: &OwnedFd, frame: &[u8]) {
    // SAFETY: writes `frame.len()` bytes from a live slice.
    let n = unsafe { libc::write(tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n == frame.len() as isize {
        METRICS.net_tx_packets.inc();
        METRICS.net_tx_bytes.add((frame.len() - VNET_HDR_LEN) as u64);
    } else {
        METRICS.net_tx_dropped.inc();
        guest_warn!("net: the tap refused a {}-byte frame: {}", frame.len(), std::io::Error::last_os_error());
    }
}

/// One frame from the tap into `buf` (header first); None when none waits, an error
/// when the tap itself failed.
fn receive(tap: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        // SAFETY: reads at most `buf.len()` bytes into a live, writable slice.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            // The tap returns a frame's whole length even when it cut it to fit.
            Ok(n) if n > buf.len() => METRICS.net_rx_dropped.inc(),
            Ok(n) if n > VNET_HDR_LEN => return Ok(Some(n)),
            Ok(_) => {} // a header without a frame: nothing to deliver
            Err(_) => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(e),
                }
            }
        }
    }
}

/// What a transmitted frame's virtio header may ask of the host kernel: only the
/// offloads the guest negotiated (the kernel's own checks are the second line).
fn check_tx_header(header: &[u8], acked: u64) -> Result<(), String> {
    const NEEDS_CSUM: u8 = 1;
    const GSO_NONE: u8 = 0;
    const GSO_TCPV4: u8 = 1;
    const GSO_TCPV6: u8 = 4;
    let (flags, gso) = (header[0], header[1]);
    if flags & !NEEDS_CSUM != 0 {
        return Err(format!("header flags {flags:#x}"));
    }
    if flags & NEEDS_CSUM != 0 && acked & feature(VIRTIO_NET_F_CSUM) == 0 {
        return Err("a partial checksum without VIRTIO_NET_F_CSUM".into());
    }
    let allowed = match gso {
        GSO_NONE => true,
        GSO_TCPV4 => acked & feature(VIRTIO_NET_F_HOST_TSO4) != 0,
        GSO_TCPV6 => acked & feature(VIRTIO_NET_F_HOST_TSO6) != 0,
        _ => false,
    };
    if !allowed {
        return Err(format!("segmentation type {gso:#x} was not negotiated"));
    }
    Ok(())
}

/// The tap's `IFF_*` flags.
fn tap_flags(tap: &OwnedFd) -> std::io::Result<libc::c_int> {
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF fills the ifreq the pointer refers to, which is live and ours.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETIFF, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF sets ifr_flags, the union member read here.
    Ok(libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags }))
}

/// Tells the tap which offloads the guest takes on receive (`TUN_F_*`).
fn set_offload(tap: &OwnedFd, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_NET_F_MAC)
            | feature(VIRTIO_NET_F_MTU)
            | feature(VIRTIO_NET_F_CSUM)
            | feature(VIRTIO_NET_F_GUEST_CSUM)
            | feature(VIRTIO_NET_F_HOST_TSO4)
            | feature(VIRTIO_NET_F_HOST_TSO6)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features & self.avail_features();
    }

    /// `struct virtio_net_config`: mac[6], status (unused: no `VIRTIO_NET_F_STATUS`),
    /// max_virtqueue_pairs (unused: one pair), mtu.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac.0);
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, activation: Activation, ops: &EventOps) -> Result<(), ActivateError> {
        // Partial checksums reach the guest only if it said it takes them.
        let offload = if self.acked & feature(VIRTIO_NET_F_GUEST_CSUM) != 0 { libc::TUN_F_CSUM } else { 0 };
        set_offload(&self.tap, offload)
            .map_err(|e| ActivateError::Host(format!("the tap refused its offloads (TUNSETOFFLOAD): {e}")))?;
        // Activation runs on a vCPU thread, whose filter has no `read`: the event loop
        // serves the tap from its first event on.
        let watch = (!self.tap_failed).then(|| self.tap.as_raw_fd());
        self.active = Some(Queues::activate(activation, 2, watch.as_slice(), ops)?);
        self.watching_tap = watch.is_some();
        Ok(())
    }

    fn on_event(&mut self, fd: RawFd, events: EventSet, ops: &EventOps) {
        let Some(active) = &self.active else { return };
        if fd == self.tap.as_raw_fd() && events.intersects(EventSet::ERROR | EventSet::HANG_UP) && !self.tap_failed {
            log::error!("net: the tap failed ({events:?}); the guest's NIC receives nothing from now on");
            self.tap_failed = true;
        }
        if active.take_notification(fd) == Some(TX) {
            self.process_tx();
        }
        // A tap event, or new receive buffers: either can let frames through.
        self.process_rx(ops);
    }

    fn reset(&mut self, ops: &EventOps) {
        self.unwatch_tap(ops);
        self.pending = None;
        if let Some(active) = self.active.take() {
            active.deactivate(ops);
        }
    }

    fn queues(&self) -> &[Queue] {
        Queues::queues(&self.active)
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "mac": self.mac.to_string(),
            "mtu": self.mtu,
            "acked_features": self.acked,
            "watching_tap": self.watching_tap,
            "tap_failed": self.tap_failed,
            "frame_waiting": self.pending.is_some(),
        })
    }
}

/// The two ends of a test wire, made in the calling thread's network namespace: a
/// tap `name` with `flags`, up and without ARP, and a packet socket bound to it that
/// sees frames of `ethertype` (none for 0). Writing to the socket puts a frame where
/// the tap's reader (the device) gets it. For unit tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn wire_ends(name: &str, flags: libc::c_int, ethertype: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;

    fn check(ret: libc::c_int) -> std::io::Result<libc::c_int> {
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ret)
    }
    let ifreq = || {
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr
    };
    // SAFETY: plain system calls on this thread's namespace and on descriptors and
    // structures of this function's own; every descriptor is owned as soon as it exists.
    unsafe {
        let tap = OwnedFd::from_raw_fd(check(libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC))?);
        let mut ifr = ifreq();
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        check(libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &ifr))?;
        let sock = OwnedFd::from_raw_fd(check(libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0))?);
        let mut ifr = ifreq();
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr))?;
        let mut ifr = ifreq();
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr))?;
        let proto = ethertype.to_be();
        let packet = OwnedFd::from_raw_fd(check(libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        ))?);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifr.ifr_ifru.ifru_ifindex;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        check(libc::bind(packet.as_raw_fd(), (&raw const addr).cast(), len))?;
        Ok((tap, packet))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::sync::Arc;

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::Interrupt;

    const MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0x58, 0x00, 0x05]);
    /// IEEE's "local experimental" EtherType: nothing else in the test's namespace sends it.
    const ETHERTYPE: u16 = 0x88b5;
    const RX_RING: u64 = 0;
    const TX_RING: u64 = 0x1_0000;
    const BUFFERS: u64 = 0x2_0000;

    /// A tap in a network namespace of its own (so parallel tests and the host's
    /// interfaces stay apart), up, IPv6 off (no router solicitations), and a packet
    /// socket bound to it that sees only the test's EtherType: the other end of the wire.
    struct Wire {
        tap: Option<OwnedFd>,
        packet: OwnedFd,
        netns: String,
    }

    impl Drop for Wire {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).status();
        }
    }

    fn wire(flags: libc::c_int) -> Wire {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let netns = format!("brig-vnet-{}-{n}", std::process::id());
        let status = std::process::Command::new("ip").args(["netns", "add", &netns]).status().expect("ip runs");
        assert!(status.success(), "ip netns add {netns} (the net tests need root)");
        let path = format!("/run/netns/{netns}");
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the test's namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the test's namespace");
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").ok();
            wire_ends("brig0", flags, ETHERTYPE)
                .unwrap_or_else(|e| panic!("a tap and a packet socket: {e} (the net tests need root and /dev/net/tun)"))
        })
        .join()
        .map(|(tap, packet)| Wire { tap: Some(tap), packet, netns })
        .expect("wire thread")
    }

    impl Wire {
        /// Deletes the tap's interface under the device (`ip link del`), as a namespace
        /// torn down while the VM runs would.
        fn delete_interface(&self) {
            let status = std::process::Command::new("ip")
                .args(["-n", &self.netns, "link", "del", "brig0"])
                .status()
                .expect("ip");
            assert!(status.success(), "ip link del brig0");
        }

        /// An Ethernet frame of the test's EtherType.
        fn frame(dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
            let mut frame = dst.to_vec();
            frame.extend([0x02, 0, 0, 0, 0, 0x99]);
            frame.extend(ETHERTYPE.to_be_bytes());
            frame.extend(payload);
            frame
        }

        /// Puts `frame` on the wire, towards the guest.
        fn send(&self, frame: &[u8]) {
            // SAFETY: sends a live slice.
            let n = unsafe { libc::send(self.packet.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
        }

        /// The next frame of the test's EtherType the guest sent, within a second.
        fn recv(&self) -> Option<Vec<u8>> {
            let mut poll = libc::pollfd { fd: self.packet.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: polls one live pollfd.
            if unsafe { libc::poll(&mut poll, 1, 1000) } != 1 {
                return None;
            }
            let mut buf = vec![0u8; 70_000];
            // SAFETY: receives into a live, writable buffer.
            let n = unsafe { libc::recv(self.packet.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            buf.truncate(usize::try_from(n).ok()?);
            Some(buf)
        }
    }

    /// A device on `wire`'s tap, activated on two mock queues of 16.
    struct Rig<'a> {
        net: Net,
        ops: EventOps,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        rx_posted: u16,
        tx_posted: u16,
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a GuestMemoryMmap, wire: &mut Wire) -> Rig<'a> {
            let tap = wire.tap.take().expect("tap");
            let fd = tap.as_raw_fd();
            std::mem::forget(tap); // Net::new takes the descriptor over
            let mut net = Net::new(&NetConfig { tap_fd: fd, mac: MAC, mtu: 1500 }).expect("a usable tap");
            let (rx, tx) = (
                MockSplitQueue::create(mem, GuestAddress(RX_RING), 16),
                MockSplitQueue::create(mem, GuestAddress(TX_RING), 16),
            );
            let ops = EventOps::detached();
            net.set_acked_features(net.avail_features());
            let activation = Activation {
                mem: mem.clone(),
                interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("irq"))),
                queues: vec![rx.create_queue().expect("rx"), tx.create_queue().expect("tx")],
                queue_evts: vec![EventFd::new(EFD_NONBLOCK).expect("evt"), EventFd::new(EFD_NONBLOCK).expect("evt")],
            };
            net.activate(activation, &ops).expect("activate");
            Rig { net, ops, rx, tx, rx_posted: 0, tx_posted: 0 }
        }

        fn evt(&self, queue: usize) -> RawFd {
            self.net.active.as_ref().expect("active").evts[queue].as_raw_fd()
        }

        /// Posts one chain on TX made of `parts`, each in its own descriptor, and notifies.
        fn transmit(&mut self, mem: &GuestMemoryMmap, parts: &[&[u8]]) {
            let mut descs = Vec::new();
            let base = BUFFERS + 0x1_0000 + u64::from(self.tx_posted) * 0x2_0000;
            let mut addr = base;
            for (i, part) in parts.iter().enumerate() {
                mem.write_slice(part, GuestAddress(addr)).expect("write");
                let next = i + 1 < parts.len();
                let index = self.tx_posted * 4 + i as u16;
                let flags = if next { virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16 } else { 0 };
                descs.push(RawDescriptor::from(Descriptor::new(addr, part.len() as u32, flags, index + 1)));
                addr += part.len() as u64;
            }
            self.tx.add_desc_chains(&descs, self.tx_posted * 4).expect("chain");
            self.tx_posted += 1;
            let evt = self.evt(TX);
            self.net.active.as_ref().expect("active").evts[TX].write(1).expect("notify");
            self.net.on_event(evt, EventSet::IN, &self.ops);
        }

        /// Posts one receive buffer of `len` bytes (at a slot of its own) and notifies.
        fn post_rx(&mut self, len: u32) -> u64 {
            let addr = BUFFERS + u64::from(self.rx_posted) * 0x1000;
            let desc = Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0);
            self.rx.add_desc_chains(&[RawDescriptor::from(desc)], self.rx_posted).expect("chain");
            self.rx_posted += 1;
            let evt = self.evt(RX);
            self.net.active.as_ref().expect("active").evts[RX].write(1).expect("notify");
            self.net.on_event(evt, EventSet::IN, &self.ops);
            addr
        }

        /// The tap became readable: what the event loop would call.
        fn tap_event(&mut self) {
            let fd = self.net.tap.as_raw_fd();
            self.net.on_event(fd, EventSet::IN, &self.ops);
        }

        /// Used entries of `mock` so far: (descriptor id, length).
        fn used(mock: &MockSplitQueue<'a, GuestMemoryMmap>) -> Vec<(u32, u32)> {
            let count = mock.used().idx().load();
            (0..count)
                .map(|i| mock.used().ring().ref_at(usize::from(i)).expect("used").load())
                .map(|e| (e.id(), e.len()))
                .collect()
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("mem")
    }

    fn header() -> [u8; VNET_HDR_LEN] {
        [0; VNET_HDR_LEN]
    }

    #[test]
    fn frames_cross_a_real_tap_both_ways() {
        let mem = memory();
        let mut wire = wire(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let mut rig = Rig::new(&mem, &mut wire);
        assert!(rig.net.watching_tap, "activation watches the tap");

        // Guest → wire: the header and the frame in two descriptors, as Linux sends them.
        let (tx_before, tx_bytes) = (METRICS.net_tx_packets.get(), METRICS.net_tx_bytes.get());
        let out = Wire::frame([0x02, 0, 0, 0, 0, 0x99], b"from the guest");
        rig.transmit(&mem, &[&header(), &out]);
        assert_eq!(wire.recv().as_deref(), Some(out.as_slice()), "the frame reached the wire as sent");
        assert_eq!(Rig::used(&rig.tx), [(0, 0)], "the transmit buffer came back");
        assert!(METRICS.net_tx_packets.get() > tx_before);
        assert!(METRICS.net_tx_bytes.get() - tx_bytes >= out.len() as u64);

        // Wire → guest: into the posted buffer, header first, num_buffers = 1.
        let rx_before = METRICS.net_rx_packets.get();
        let addr = rig.post_rx(1526);
        let inbound = Wire::frame(MAC.0, b"to the guest");
        wire.send(&inbound);
        rig.tap_event();
        let used = Rig::used(&rig.rx);
        assert_eq!(used, [(0, (VNET_HDR_LEN + inbound.len()) as u32)], "one frame, header included");
        let mut got = vec![0u8; VNET_HDR_LEN + inbound.len()];
        mem.read_slice(&mut got, GuestAddress(addr)).expect("read");
        assert_eq!(&got[VNET_HDR_LEN..], inbound.as_slice());
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert!(METRICS.net_rx_packets.get() > rx_before);

        // The guest's view: its MAC and MTU in config space.
        let mut config = [0u8; 12];
        rig.net.read_config(0, &mut config);
        assert_eq!(&config[..6], &MAC.0);
        assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1500);
    }

    #[test]
    fn a_guest_that_posts_no_receive_buffers_stops_the_tap_watch_until_it_does() {
        let mem = memory();
        let mut wire = wire(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let mut rig = Rig::new(&mem, &mut wire);
        for i in 0..3u8 {
            wire.send(&Wire::frame(MAC.0, &[i; 60]));
        }
        rig.tap_event();
        assert!(!rig.net.watching_tap, "no buffer: the device stops watching the tap, so nothing spins");
        assert!(rig.net.pending.is_some(), "the frame read waits for a buffer");
        assert!(Rig::used(&rig.rx).is_empty());

        rig.post_rx(1526);
        assert_eq!(Rig::used(&rig.rx).len(), 1, "the waiting frame went into the new buffer");
        assert!(!rig.net.watching_tap, "the next frame waits again");
        rig.post_rx(1526);
        rig.post_rx(1526);
        let used = Rig::used(&rig.rx);
        assert_eq!(used.len(), 3, "all three frames, in order: {used:?}");
        let mut third = [0u8; 1];
        mem.read_slice(&mut third, GuestAddress(BUFFERS + 2 * 0x1000 + VNET_HDR_LEN as u64 + 14)).expect("read");
        assert_eq!(third, [2], "frames arrive in order");
        assert!(rig.net.watching_tap, "buffers to spare: the tap is watched again");
    }

    #[test]
    fn bad_chains_and_short_buffers_are_dropped_and_counted() {
        let mem = memory();
        let mut wire = wire(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let mut rig = Rig::new(&mem, &mut wire);

        // Shorter than the header, and longer than any frame: dropped, buffers returned.
        let dropped = METRICS.net_tx_dropped.get();
        rig.transmit(&mem, &[&[0u8; 4]]);
        let big = vec![0u8; 40_000];
        rig.transmit(&mem, &[&header(), &big, &big]);
        assert_eq!(Rig::used(&rig.tx), [(0, 0), (4, 0)]);
        assert!(METRICS.net_tx_dropped.get() - dropped >= 2);
        assert_eq!(wire.recv(), None, "nothing reached the wire");

        // A header asking for an offload the guest did not negotiate (a GSO type brig
        // never offers): dropped before the host kernel sees it.
        let mut bad_gso = header();
        bad_gso[1] = 0x7f;
        let dropped = METRICS.net_tx_dropped.get();
        rig.transmit(&mem, &[&bad_gso, &Wire::frame([2, 0, 0, 0, 0, 0x99], &[0; 60])]);
        assert!(METRICS.net_tx_dropped.get() > dropped, "the tap's refusal is counted");
        assert_eq!(wire.recv(), None, "the refused frame is not on the wire");
        assert_eq!(Rig::used(&rig.tx).len(), 3, "its buffer came back");

        // A receive buffer too small for the frame: the frame is dropped, the buffer
        // comes back empty, and the next frame uses the next buffer.
        let (rx_dropped, short) = (METRICS.net_rx_dropped.get(), METRICS.virtio_short_rx_buffers.get());
        rig.post_rx(20);
        wire.send(&Wire::frame(MAC.0, &[7; 100]));
        rig.tap_event();
        assert_eq!(Rig::used(&rig.rx), [(0, 0)]);
        assert!(METRICS.net_rx_dropped.get() > rx_dropped && METRICS.virtio_short_rx_buffers.get() > short);
        rig.post_rx(1526);
        wire.send(&Wire::frame(MAC.0, &[8; 100]));
        rig.tap_event();
        assert_eq!(Rig::used(&rig.rx)[1], (1, (VNET_HDR_LEN + 114) as u32));
    }

    #[test]
    fn a_tap_whose_interface_goes_away_is_dropped_from_the_event_loop() {
        let mem = memory();
        let mut wire = wire(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        let mut rig = Rig::new(&mem, &mut wire);
        rig.post_rx(1526);
        assert!(rig.net.watching_tap);
        wire.delete_interface();
        rig.tap_event();
        assert!(rig.net.tap_failed, "the failed read is seen");
        assert!(!rig.net.watching_tap, "a dead tap is no longer watched, so it cannot spin the event loop");
        rig.post_rx(1526);
        assert!(!rig.net.watching_tap, "not even after new receive buffers");
        assert!(Rig::used(&rig.rx).is_empty());
    }

    #[test]
    fn transmitted_headers_may_ask_only_for_negotiated_offloads() {
        let all = feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_HOST_TSO4) | feature(VIRTIO_NET_F_HOST_TSO6);
        let header = |flags: u8, gso: u8| {
            let mut h = [0u8; VNET_HDR_LEN];
            (h[0], h[1]) = (flags, gso);
            h
        };
        check_tx_header(&header(0, 0), 0).expect("a plain frame");
        check_tx_header(&header(1, 1), all).expect("TSO4 with a partial checksum");
        check_tx_header(&header(1, 4), all).expect("TSO6");
        assert!(check_tx_header(&header(1, 0), 0).expect_err("no CSUM").contains("VIRTIO_NET_F_CSUM"));
        assert!(check_tx_header(&header(1, 1), feature(VIRTIO_NET_F_CSUM)).is_err(), "TSO4 not negotiated");
        for gso in [3, 5, 0x81] {
            let err = check_tx_header(&header(1, gso), all).expect_err("UDP, USO, ECN are never offered");
            assert!(err.contains("was not negotiated"), "{gso:#x}: {err}");
        }
        assert!(check_tx_header(&header(2, 0), all).expect_err("DATA_VALID").contains("flags"));
    }

    #[test]
    fn what_is_not_a_usable_tap_is_refused_by_name() {
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        let err = Net::new(&NetConfig { tap_fd: fd, mac: MAC, mtu: 1500 }).expect_err("a file").to_string();
        assert!(err.contains(&format!("net tap_fd {fd} is not a tap: it is /proc/")), "{err}");
        // SAFETY: the descriptor is ours, opened above, and closed once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });

        let err = Net::new(&NetConfig { tap_fd: 999, mac: MAC, mtu: 1500 }).expect_err("closed").to_string();
        assert!(err.contains("net tap_fd 999 is not open in brig-vmm"), "{err}");

        let mut wire = wire(libc::IFF_TAP | libc::IFF_NO_PI);
        let tap = wire.tap.take().expect("tap");
        let fd = tap.as_raw_fd();
        std::mem::forget(tap);
        let err = Net::new(&NetConfig { tap_fd: fd, mac: MAC, mtu: 1500 }).expect_err("no vnet header").to_string();
        assert!(err.contains("create it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"), "{err}");
    }
}
