//! virtio-vsock with Firecracker's hybrid host side: guest AF_VSOCK streams
//! become host Unix-socket streams.
//!
//! - Host → guest: the host connects to `uds_path` and writes `CONNECT <port>\n`;
//!   once the guest accepts, it reads `OK <host port>\n` and the stream is live.
//! - Guest → host: a guest connection to host port P is connected to the Unix
//!   socket `<uds_path>_P`.
//!
//! Queues: 0 = rx (to the guest), 1 = tx (from the guest), 2 = events (unused).
//! All of it runs on the event loop under the transport's lock.

mod connection;
pub mod packet;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use self::connection::{Connection, Interest, Verdict};
use self::packet::*;
use super::{feature, ActivateError, Activation, Queues, VirtioDevice};
use crate::config::VsockConfig;
use crate::event_loop::EventOps;
use crate::guest_warn;
use crate::metrics::METRICS;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVT: usize = 2;
/// Linux never sends more than 64 KiB in one packet.
const MAX_PAYLOAD: usize = 64 << 10;
/// Host connections (live or in handshake) beyond this are refused.
const MAX_CONNECTIONS: usize = 1024;
/// `CONNECT 4294967295\n` fits; anything longer without a newline is refused.
const MAX_HANDSHAKE: usize = 32;
/// Resets waiting for rx buffers beyond this are dropped (and counted): a guest that
/// posts no rx buffers must not grow brig-vmm's memory.
const MAX_CONTROL: usize = QUEUE_SIZE as usize;
/// Ports we give host-initiated connections on the host side.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot listen on the vsock socket {path}")]
    Listen { path: PathBuf, source: std::io::Error },
}

type Key = (u32, u32); // (host-side port, guest-side port)

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    active: Option<Queues>,
    handshakes: HashMap<RawFd, Handshake>,
    conns: BTreeMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Packets for connections that no longer (or never) existed: RSTs.
    control: VecDeque<Header>,
    next_local_port: u32,
    rx_starved: bool,
    config: [u8; 8],
    /// One tx payload at a time, reused.
    tx_buf: Vec<u8>,
}

impl Vsock {
    /// Binds the host socket now; it is removed again when the device is dropped.
    pub fn new(config: &VsockConfig) -> Result<Vsock, VsockError> {
        let listen_err = |source| VsockError::Listen { path: config.uds_path.clone(), source };
        let listener = UnixListener::bind(&config.uds_path).map_err(listen_err)?;
        // Connecting to it reaches the guest agent's API: the owner (the shim) only.
        std::fs::set_permissions(&config.uds_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Vsock {
            cid: config.guest_cid,
            uds_path: config.uds_path.clone(),
            listener,
            active: None,
            handshakes: HashMap::new(),
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_starved: false,
            config: config.guest_cid.to_le_bytes(),
            tx_buf: vec![0; MAX_PAYLOAD],
        })
    }

    fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    fn accept_all(&mut self, ops: &EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS {
                        log::warn!("vsock: refusing a host connection, {MAX_CONNECTIONS} already open");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if stream.set_nonblocking(true).is_err() || ops.add(fd, EventSet::IN).is_err() {
                        continue;
                    }
                    self.handshakes.insert(fd, Handshake { stream, line: Vec::new() });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("vsock: accept on {} failed: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    /// Reads a host's `CONNECT <port>\n`.
    fn on_handshake(&mut self, fd: RawFd, ops: &EventOps) {
        let Some(hs) = self.handshakes.get_mut(&fd) else { return };
        let mut buf = [0u8; MAX_HANDSHAKE];
        let n = match hs.stream.read(&mut buf[..MAX_HANDSHAKE.saturating_sub(hs.line.len()).max(1)]) {
            Ok(0) => return self.drop_handshake(fd, ops),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => return,
            Err(_) => return self.drop_handshake(fd, ops),
        };
        hs.line.extend_from_slice(&buf[..n]);
        let Some(end) = hs.line.iter().position(|&b| b == b'\n') else {
            if hs.line.len() >= MAX_HANDSHAKE {
                log::warn!("vsock: host sent a handshake without a newline; closing it");
                self.drop_handshake(fd, ops);
            }
            return;
        };
        let port = parse_connect(&hs.line[..end]);
        let Some(hs) = self.handshakes.remove(&fd) else { return };
        let Some(port) = port else {
            log::warn!(
                "vsock: malformed handshake {:?}; expected `CONNECT <port>`",
                String::from_utf8_lossy(&hs.line[..end])
            );
            let _ = ops.remove(fd);
            return;
        };
        let early = hs.line[end + 1..].to_vec();
        let local = self.allocate_local_port(port);
        let mut conn = Connection::host_initiated(hs.stream, local, port, early);
        conn.registered = Interest { read: true, write: false };
        self.by_fd.insert(fd, (local, port));
        self.conns.insert((local, port), conn);
        METRICS.vsock_connections_opened.inc();
    }

    fn drop_handshake(&mut self, fd: RawFd, ops: &EventOps) {
        let _ = ops.remove(fd);
        self.handshakes.remove(&fd);
    }

    fn allocate_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    /// Handles each tx chain as it is popped, at most one ring's worth per event (then
    /// the tx notification is re-armed, so the event loop serves everything else first).
    fn process_tx(&mut self, ops: &EventOps) {
        let mut payload = std::mem::take(&mut self.tx_buf);
        let mut served = 0;
        let mut budget = usize::MAX;
        while served < budget {
            let Some(active) = self.active.as_mut() else { break };
            budget = super::budget(&active.queues[TX]);
            let Some(chain) = active.queues[TX].pop_descriptor_chain(&active.mem) else { break };
            let head = chain.head_index();
            let packet = read_packet(&active.mem, chain, &mut payload);
            if let Err(e) = active.queues[TX].add_used(&active.mem, head, 0) {
                guest_warn!("vsock: cannot return a tx buffer: {e}");
            }
            served += 1;
            match packet {
                Some((hdr, len)) => self.on_guest_packet(hdr, &payload[..len], ops),
                None => {
                    METRICS.virtio_bad_requests.inc();
                    guest_warn!("vsock: malformed packet from the guest dropped");
                }
            }
        }
        self.tx_buf = payload;
        let Some(active) = self.active.as_mut() else { return };
        if served == budget {
            super::rearm(&active.evts[TX]);
        }
        if served > 0 && active.queues[TX].needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    fn on_guest_packet(&mut self, hdr: Header, payload: &[u8], ops: &EventOps) {
        METRICS.vsock_tx_packets.inc();
        METRICS.vsock_tx_bytes.add(payload.len() as u64);
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            guest_warn!(
                "vsock: packet from cid {} to cid {} dropped (guest is cid {})",
                hdr.src_cid,
                hdr.dst_cid,
                self.cid
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.kind != TYPE_STREAM {
            return self.reset_unknown(&hdr);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.connect_to_host(&hdr, ops),
                OP_RST => {}
                _ => self.reset_unknown(&hdr),
            }
            return;
        };
        conn.update_peer_credit(&hdr);
        let verdict = match hdr.op {
            OP_RESPONSE => conn.on_response(),
            OP_RW => conn.on_data(payload),
            OP_CREDIT_UPDATE => Verdict::Keep,
            OP_CREDIT_REQUEST => {
                conn.on_credit_request();
                Verdict::Keep
            }
            OP_SHUTDOWN => conn.on_shutdown(hdr.flags),
            OP_RST => {
                self.close(key, ops, false);
                return;
            }
            _ => Verdict::Reset,
        };
        if let Verdict::Reset = verdict {
            self.close(key, ops, true);
        }
    }

    /// The guest connects to host port `dst_port`: reach `<uds_path>_<port>`.
    fn connect_to_host(&mut self, hdr: &Header, ops: &EventOps) {
        if self.connection_count() >= MAX_CONNECTIONS {
            return self.reset_unknown(hdr);
        }
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        // A Unix-socket connect completes at once unless the listener's backlog is full.
        let stream = match UnixStream::connect(&path) {
            Ok(stream) if stream.set_nonblocking(true).is_ok() => stream,
            _ => return self.reset_unknown(hdr),
        };
        let fd = stream.as_raw_fd();
        let mut conn = Connection::guest_initiated(stream, hdr);
        if ops.add(fd, EventSet::IN).is_err() {
            return self.reset_unknown(hdr);
        }
        conn.registered = Interest { read: true, write: false };
        self.by_fd.insert(fd, (hdr.dst_port, hdr.src_port));
        self.conns.insert((hdr.dst_port, hdr.src_port), conn);
        METRICS.vsock_connections_opened.inc();
    }

    /// Answers a packet for a connection we don't have with RST.
    fn reset_unknown(&mut self, hdr: &Header) {
        self.queue_control(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    /// Queues a reset for the guest, unless [`MAX_CONTROL`] are waiting already.
    fn queue_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL {
            METRICS.vsock_resets_dropped.inc();
            guest_warn!("vsock: {MAX_CONTROL} resets wait for rx buffers; dropping one");
            return;
        }
        METRICS.vsock_resets.inc();
        self.control.push_back(hdr);
    }

    /// Closes the host side of a connection, resetting the guest side if asked.
    fn close(&mut self, key: Key, ops: &EventOps, reset_guest: bool) {
        let Some(conn) = self.conns.remove(&key) else { return };
        let fd = conn.stream.as_raw_fd();
        if conn.registered != Interest::default() {
            let _ = ops.remove(fd);
        }
        self.by_fd.remove(&fd);
        METRICS.vsock_connections_closed.inc();
        if reset_guest {
            let mut hdr = conn.header(self.cid, OP_RST);
            hdr.fwd_cnt = 0;
            self.queue_control(hdr);
        }
    }

    fn on_host_stream(&mut self, fd: RawFd, events: EventSet, ops: &EventOps) {
        let Some(&key) = self.by_fd.get(&fd) else { return };
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP) {
            conn.readable = true;
        }
        if events.contains(EventSet::OUT) {
            if let Verdict::Reset = conn.flush_to_host() {
                self.close(key, ops, true);
            }
        }
    }

    /// Fills the guest's rx buffers: resets first, then connections round-robin.
    fn process_rx(&mut self, ops: &EventOps) {
        let Some(active) = self.active.as_mut() else { return };
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let mut used_any = false;
        let mut to_close = Vec::new();
        'fill: loop {
            let keys: Vec<Key> = self.conns.iter().filter(|(_, c)| c.has_work()).map(|(k, _)| *k).collect();
            if self.control.is_empty() && keys.is_empty() {
                break;
            }
            let mut progressed = false;
            while let Some(hdr) = self.control.front().copied() {
                let Some(chain) = active.queues[RX].pop_descriptor_chain(&active.mem) else {
                    self.rx_starved = true;
                    break 'fill;
                };
                let head = chain.head_index();
                let len = write_packet(&active.mem, chain, &hdr, &[]);
                add_used(active, head, len);
                self.control.pop_front();
                used_any = true;
                progressed = true;
            }
            for key in keys {
                let Some(conn) = self.conns.get_mut(&key) else { continue };
                let Some(chain) = active.queues[RX].pop_descriptor_chain(&active.mem) else {
                    self.rx_starved = true;
                    break 'fill;
                };
                let head = chain.head_index();
                let room = chain_room(&active.mem, &chain).min(MAX_PAYLOAD);
                if room == 0 {
                    // Too small for a header and data, or outside guest RAM: consumed, not
                    // pushed back, or the guest could keep the event loop spinning on it.
                    METRICS.virtio_short_rx_buffers.inc();
                    guest_warn!("vsock: rx buffer too small for a packet; returned unused");
                    add_used(active, head, 0);
                    used_any = true;
                    progressed = true;
                    continue;
                }
                match conn.next_packet(self.cid, &mut buf[..room]) {
                    Ok(Some(hdr)) => {
                        let len = write_packet(&active.mem, chain, &hdr, &buf[..hdr.len as usize]);
                        add_used(active, head, len);
                        METRICS.vsock_rx_packets.inc();
                        METRICS.vsock_rx_bytes.add(u64::from(hdr.len));
                        used_any = true;
                        progressed = true;
                    }
                    Ok(None) => active.queues[RX].go_to_previous_position(),
                    Err(_) => {
                        active.queues[RX].go_to_previous_position();
                        to_close.push(key);
                    }
                }
                if let Verdict::Reset = conn.flush_to_host() {
                    to_close.push(key);
                }
            }
            if !progressed {
                break;
            }
        }
        if used_any && active.queues[RX].needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        for key in to_close {
            self.close(key, ops, true);
        }
        if !self.control.is_empty() && !self.rx_starved {
            // Resets queued by the closes above.
            self.process_rx(ops);
        }
    }

    /// Brings every connection's epoll registration in line with what it can do now.
    fn update_interests(&mut self, ops: &EventOps) {
        let mut failed = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let want = conn.interest(self.rx_starved);
            if want == conn.registered {
                continue;
            }
            let fd = conn.stream.as_raw_fd();
            let mut set = EventSet::empty();
            if want.read {
                set |= EventSet::IN;
            }
            if want.write {
                set |= EventSet::OUT;
            }
            let had = conn.registered != Interest::default();
            let result = match (had, set.is_empty()) {
                (true, true) => ops.remove(fd),
                (true, false) => ops.modify(fd, set),
                (false, false) => ops.add(fd, set),
                (false, true) => Ok(()),
            };
            match result {
                Ok(()) => conn.registered = want,
                Err(_) => failed.push(*key),
            }
        }
        for key in failed {
            self.close(key, ops, true);
        }
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.parse().ok()
}

/// Reads one packet from a tx chain: its header, and its payload into `payload`
/// (which holds [`MAX_PAYLOAD`] bytes); returns the header and the payload's length.
fn read_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    payload: &mut [u8],
) -> Option<(Header, usize)> {
    let mut reader = chain.reader(mem).ok()?;
    let mut raw = [0u8; HDR_LEN];
    reader.read_exact(&mut raw).ok()?;
    let hdr = Header::parse(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD || len > payload.len() || len > reader.available_bytes() {
        return None;
    }
    reader.read_exact(&mut payload[..len]).ok()?;
    Some((hdr, len))
}

/// Payload bytes an rx chain can take after the header.
fn chain_room(mem: &GuestMemoryMmap, chain: &virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> usize {
    chain.clone().writer(mem).map_or(0, |w| w.available_bytes().saturating_sub(HDR_LEN))
}

/// Writes a packet into an rx chain; returns the bytes written (0 if the chain is unusable).
fn write_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    hdr: &Header,
    payload: &[u8],
) -> u32 {
    let Ok(mut writer) = chain.writer(mem) else {
        guest_warn!("vsock: rx buffer outside guest memory");
        return 0;
    };
    if writer.available_bytes() < HDR_LEN + payload.len() {
        guest_warn!("vsock: rx buffer too small for a packet");
        return 0;
    }
    if writer.write_all(&hdr.to_bytes()).is_err() || writer.write_all(payload).is_err() {
        return 0;
    }
    (HDR_LEN + payload.len()) as u32
}

fn add_used(active: &mut Queues, head: u16, len: u32) {
    if let Err(e) = active.queues[RX].add_used(&active.mem, head, len) {
        guest_warn!("vsock: cannot return an rx buffer: {e}");
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation, ops: &EventOps) -> Result<(), ActivateError> {
        self.active = Some(Queues::activate(activation, 3, &[self.listener.as_raw_fd()], ops)?);
        self.rx_starved = false;
        Ok(())
    }

    fn on_event(&mut self, fd: RawFd, events: EventSet, ops: &EventOps) {
        let Some(active) = &self.active else { return };
        if let Some(queue) = active.take_notification(fd) {
            match queue {
                RX => self.rx_starved = false,
                TX => self.process_tx(ops),
                EVT => {}
                _ => {}
            }
        } else if fd == self.listener.as_raw_fd() {
            self.accept_all(ops);
        } else if self.handshakes.contains_key(&fd) {
            self.on_handshake(fd, ops);
        } else {
            self.on_host_stream(fd, events, ops);
        }
        self.process_rx(ops);
        self.update_interests(ops);
    }

    fn reset(&mut self, ops: &EventOps) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, ops, false);
        }
        for fd in self.handshakes.keys() {
            let _ = ops.remove(*fd);
        }
        self.handshakes.clear();
        self.control.clear();
        let _ = ops.remove(self.listener.as_raw_fd());
        if let Some(active) = self.active.take() {
            active.deactivate(ops);
        }
    }

    fn queues(&self) -> &[Queue] {
        Queues::queues(&self.active)
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "guest_cid": self.cid,
            "uds_path": self.uds_path,
            "connections": self.conns.values().map(Connection::snapshot).collect::<Vec<_>>(),
            "pending_handshakes": self.handshakes.len(),
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// The path a guest connection to host `port` reaches.
pub fn host_listener_path(uds_path: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", uds_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 1024"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
    }

    #[test]
    fn packets_longer_than_their_buffers_or_the_limit_are_dropped() {
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Bytes, GuestAddress};

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let queue = MockSplitQueue::new(&mem, 16);
        let mut hdr =
            Header { src_cid: 3, dst_cid: HOST_CID, op: OP_RW, kind: TYPE_STREAM, len: 8, ..Default::default() };
        let chain = |payload_len: u32| {
            let descs = [
                RawDescriptor::from(Descriptor::new(0x10_0000, HDR_LEN as u32, 0, 0)),
                RawDescriptor::from(Descriptor::new(0x20_0000, payload_len, 0, 0)),
            ];
            queue.build_desc_chain(&descs).expect("chain")
        };
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x10_0000)).expect("header");
        mem.write_slice(b"12345678", GuestAddress(0x20_0000)).expect("payload");
        let mut payload = vec![0u8; MAX_PAYLOAD];
        let (parsed, len) = read_packet(&mem, chain(8), &mut payload).expect("a well-formed packet");
        assert_eq!((parsed, &payload[..len]), (hdr, &b"12345678"[..]));

        hdr.len = 4096; // claims more than the chain holds
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x10_0000)).expect("header");
        assert!(read_packet(&mem, chain(8), &mut payload).is_none());
        hdr.len = (MAX_PAYLOAD + 1) as u32; // more than any packet may carry
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x10_0000)).expect("header");
        assert!(read_packet(&mem, chain(MAX_PAYLOAD as u32 + 1), &mut payload).is_none());
    }

    #[test]
    fn the_socket_is_owner_only_and_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("brig-vsock-{}.sock", std::process::id()));
        let dev = Vsock::new(&VsockConfig { guest_cid: 3, uds_path: path.clone() }).expect("vsock");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("socket").permissions());
        assert_eq!(mode & 0o777, 0o600, "only the owner may connect to the agent");
        drop(dev);
        assert!(!path.exists());
        assert_eq!(host_listener_path(&path, 1025).to_string_lossy(), format!("{}_1025", path.display()));
    }

    mod hostile {
        use std::sync::Arc;

        use vmm_sys_util::eventfd::EventFd;

        use super::super::*;
        use crate::devices::virtio::Interrupt;
        use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Address, Bytes, GuestAddress};

        const RX_BASE: u64 = 0;
        const GOOD_BUFFER: u64 = 0x10_0000;

        fn writable(addr: u64, len: u32) -> RawDescriptor {
            RawDescriptor::from(Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0))
        }

        fn guest_header(op: u16, src_port: u32, dst_port: u32) -> Header {
            Header {
                src_cid: 3,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                kind: TYPE_STREAM,
                op,
                buf_alloc: 64 << 10,
                ..Default::default()
            }
        }

        /// An activated device over mock queues in `mem`; the rx queue is at RX_BASE.
        fn activated(name: &str, mem: &GuestMemoryMmap) -> (Vsock, EventOps, PathBuf) {
            let path = std::env::temp_dir().join(format!("brig-vsock-{name}-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let mut vsock = Vsock::new(&VsockConfig { guest_cid: 3, uds_path: path.clone() }).expect("vsock");
            let queues = [RX_BASE, 0x1_0000, 0x2_0000]
                .iter()
                .map(|&base| MockSplitQueue::create(mem, GuestAddress(base), 16).create_queue().expect("queue"))
                .collect();
            let evt = || EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("evt");
            let interrupt = Arc::new(Interrupt::new(evt()));
            let activation = Activation { mem: mem.clone(), interrupt, queues, queue_evts: vec![evt(), evt(), evt()] };
            let ops = EventOps::detached();
            vsock.activate(activation, &ops).expect("activate");
            (vsock, ops, path)
        }

        #[test]
        fn resets_for_a_guest_that_posts_no_rx_buffers_are_capped() {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
            let (mut vsock, ops, path) = activated("rst-cap", &mem);
            let dropped = METRICS.vsock_resets_dropped.get();
            for port in 0..(MAX_CONTROL as u32 * 4) {
                // To ports nobody has, and of a type that is not a stream: each wants a reset.
                let mut hdr = guest_header(OP_RW, 5000 + port, 7777);
                if port % 2 == 0 {
                    hdr.kind = 2;
                }
                vsock.on_guest_packet(hdr, &[], &ops);
            }
            assert_eq!(vsock.control.len(), MAX_CONTROL, "the queue of resets stops growing");
            assert!(METRICS.vsock_resets_dropped.get() - dropped >= 3 * MAX_CONTROL as u64, "and drops are counted");
            drop(vsock);
            assert!(!path.exists());
        }

        #[test]
        fn rx_buffers_too_small_for_a_packet_are_consumed_not_spun_on() {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
            let (mut vsock, ops, path) = activated("short-rx", &mem);
            let rx = MockSplitQueue::create(&mem, GuestAddress(RX_BASE), 16);

            // A host connection to guest port 1024, accepted by the guest.
            let mut host = UnixStream::connect(&path).expect("connect");
            host.write_all(b"CONNECT 1024\n").expect("handshake");
            vsock.accept_all(&ops);
            let fd = *vsock.handshakes.keys().next().expect("a handshake");
            vsock.on_handshake(fd, &ops);
            rx.add_desc_chains(&[writable(GOOD_BUFFER, 4096)], 0).expect("a good rx buffer");
            vsock.process_rx(&ops);
            let mut raw = [0u8; HDR_LEN];
            mem.read_slice(&mut raw, GuestAddress(GOOD_BUFFER)).expect("hdr");
            let request = Header::parse(&raw);
            assert_eq!(request.op, OP_REQUEST);
            vsock.on_guest_packet(guest_header(OP_RESPONSE, 1024, request.src_port), &[], &ops);

            // The host sends data; the guest offers only buffers smaller than a header.
            host.write_all(b"hello").expect("data");
            vsock.on_host_stream(host_fd(&vsock), EventSet::IN, &ops);
            let short = [writable(0x20_0000, 8), writable(0x20_1000, 8), writable(0x20_2000, 8)];
            rx.add_desc_chains(&short, 1).expect("short rx buffers");
            let before = METRICS.virtio_short_rx_buffers.get();
            vsock.process_rx(&ops);
            assert!(METRICS.virtio_short_rx_buffers.get() - before >= 3, "each short buffer is counted");
            let used: u16 = mem.read_obj(rx.used_addr().unchecked_add(2)).expect("used.idx");
            assert_eq!(used, 4, "the short buffers are returned (used length 0), not pushed back");
            assert!(vsock.rx_starved, "so the device waits for new buffers instead of spinning");
            let conn = vsock.conns.values().next().expect("the connection lives on");
            assert!(!conn.interest(vsock.rx_starved).read, "no read interest while starved");
            drop(vsock);
        }

        fn host_fd(vsock: &Vsock) -> RawFd {
            *vsock.by_fd.keys().next().expect("a live connection")
        }
    }
}
