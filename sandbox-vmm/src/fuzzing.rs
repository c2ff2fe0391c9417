//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): what a guest
//! controls, played against the real device code. Each entry point takes the
//! fuzzer's bytes and must never panic, hang or grow without bound, whatever they
//! are. [`seed`] builds well-formed inputs (a driver that sets the device up and
//! sends one request), so the fuzzer starts past the setup handshake.
//!
//! Input of [`virtio_mmio`]: `device` (1 byte), image length (u16 LE), the guest
//! memory image (rings and buffers, at guest address 0), then 6-byte operations
//! `[kind, register, value: u32 LE]`: kind 0 writes the register at `register * 4`
//! (config space from 0x100 on) and lets the device handle its events, kind 1 reads
//! it, kind 2 stores `value` at guest address `register * 256` (the guest changing
//! its rings while the device works), kind 3 has a frame of `value % 2048` bytes
//! arrive from the network (virtio-net only: through the tap, which each input
//! finds empty).

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use brig_vmm_api::config::{MacAddr, NetConfig};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{BlockConfig, VsockConfig};
use crate::devices::bus::{lock, BusDevice};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{wire_ends, Net};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::DeviceEvents;

/// Guest RAM of the fuzzed VM.
const MEMORY: usize = 1 << 20;
/// The part of the input that can be guest memory.
const MAX_IMAGE: usize = 64 << 10;
/// Operations played per input.
const MAX_OPS: usize = 4096;

/// The device behind the transport: the input's first byte, modulo 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Block,
    Rng,
    Vsock,
    Net,
}

impl Device {
    fn from_byte(b: u8) -> Device {
        match b % 4 {
            0 => Device::Block,
            1 => Device::Rng,
            2 => Device::Vsock,
            _ => Device::Net,
        }
    }

    fn queues(self) -> u32 {
        match self {
            Device::Vsock => 3,
            Device::Net => 2,
            Device::Block | Device::Rng => 1,
        }
    }

    fn build(self) -> Option<Box<dyn VirtioDevice>> {
        let scratch = |what: &str| std::env::temp_dir().join(format!("brig-fuzz-{what}-{}", std::process::id()));
        match self {
            Device::Block => {
                let path = scratch("disk.img");
                if !path.exists() {
                    std::fs::write(&path, vec![0u8; 64 << 10]).ok()?;
                }
                Some(Box::new(Block::new(&BlockConfig { path, read_only: false, serial: Some("fuzz".into()) }).ok()?))
            }
            Device::Rng => Some(Box::new(Rng::new().ok()?)),
            Device::Vsock => {
                let uds_path: PathBuf = scratch("vsock.sock");
                let _ = std::fs::remove_file(&uds_path);
                Some(Box::new(Vsock::new(&VsockConfig { guest_cid: 3, uds_path }).ok()?))
            }
            Device::Net => {
                let wire = wire()?;
                wire.drain();
                let tap = wire.tap.try_clone().ok()?;
                let config = NetConfig { tap_fd: tap.into_raw_fd(), mac: MacAddr([2, 0, 0, 0, 0, 1]), mtu: 1500 };
                Some(Box::new(Net::new(&config).ok()?))
            }
        }
    }
}

/// The fuzzed NIC's wire: one tap for the whole run, in a network namespace of its
/// own (made once, from a thread, so the fuzzer's own thread stays where it was),
/// and a packet socket that puts frames on it. None without root or /dev/net/tun.
struct Wire {
    tap: OwnedFd,
    packet: OwnedFd,
}

fn wire() -> Option<&'static Wire> {
    static WIRE: OnceLock<Option<Wire>> = OnceLock::new();
    WIRE.get_or_init(|| {
        let made = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
            // The packet socket holds the namespace, and with it the tap, once this thread ends.
            wire_ends("fuzz0", flags, 0).ok()
        });
        let (tap, packet) = made.join().ok()??;
        nix::fcntl::fcntl(&tap, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).ok()?;
        Some(Wire { tap, packet })
    })
    .as_ref()
}

impl Wire {
    /// Reads away what an earlier input left in the tap, so inputs do not leak into
    /// one another.
    fn drain(&self) {
        let mut buf = [0u8; 2048];
        // SAFETY: reads into a live, writable buffer.
        while unsafe { libc::read(self.tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } >= 0 {}
    }

    /// A frame of `len` bytes (at least an Ethernet header) towards the device.
    fn send(&self, len: usize) {
        let mut frame = vec![0x5a; len.max(14)];
        frame[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: sends a live slice.
        unsafe { libc::send(self.packet.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    }
}

/// Plays one input (see the module documentation).
pub fn virtio_mmio(data: &[u8]) {
    let Some((&device, rest)) = data.split_first() else { return };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
    let len = usize::from(u16::from_le_bytes(*len)).min(MAX_IMAGE).min(rest.len());
    let (image, ops) = rest.split_at(len);
    let Some(mut vm) = FuzzVm::new(Device::from_byte(device), image) else { return };
    for op in ops.chunks_exact(6).take(MAX_OPS) {
        let value = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        vm.play(op[0], op[1], value);
    }
}

struct FuzzVm {
    device: Device,
    mem: GuestMemoryMmap,
    events: DeviceEvents,
    transport: Arc<Mutex<MmioTransport>>,
}

impl FuzzVm {
    fn new(device: Device, image: &[u8]) -> Option<FuzzVm> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).ok()?;
        mem.write_slice(image, GuestAddress(0)).ok()?;
        let mut events = DeviceEvents::new().ok()?;
        let built = device.build()?;
        let transport = events.register_with(|ops| MmioTransport::new(built, mem.clone(), ops)).ok()?;
        Some(FuzzVm { device, mem, events, transport })
    }

    fn play(&mut self, kind: u8, register: u8, value: u32) {
        let offset = u64::from(register) * 4;
        match kind % 4 {
            0 => {
                lock(&self.transport).write(offset, &value.to_le_bytes());
                // What the event loop does next: serve whatever the write made ready.
                let _ = self.events.dispatch();
            }
            1 => {
                let mut data = [0u8; 4];
                lock(&self.transport).read(offset, &mut data);
            }
            2 => {
                let _ = self.mem.write_obj(value, GuestAddress(u64::from(register) * 256));
            }
            _ => {
                if let (Device::Net, Some(wire)) = (self.device, wire()) {
                    wire.send(value as usize % 2048);
                    let _ = self.events.dispatch();
                }
            }
        }
    }
}

/// Builders of well-formed inputs for the seed corpus.
pub mod seed {
    use super::Device;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    };
    use virtio_bindings::virtio_mmio::{
        VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_QUEUE_READY,
        VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
    };
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    use crate::devices::virtio::net::VNET_HDR_LEN;
    use crate::devices::virtio::vsock::packet::{Header, OP_REQUEST, TYPE_STREAM};

    pub use crate::devices::virtio::vsock::packet::HDR_LEN as PACKET_HDR_LEN;
    pub const HDR_LEN: usize = PACKET_HDR_LEN;
    const QUEUE_SIZE: u32 = 16;
    /// Queue `q`'s rings are at `q * 0x1000`; buffers from 0x8000 on.
    const BUFFERS: u64 = 0x8000;
    const IMAGE: usize = 0xc000;

    struct Image(Vec<u8>);

    impl Image {
        fn put(&mut self, at: u64, bytes: &[u8]) {
            let at = at as usize;
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }

        /// Descriptor `index` of queue `q`.
        fn desc(&mut self, q: u64, index: u64, addr: u64, len: u32, flags: u32, next: u16) {
            let mut raw = Vec::with_capacity(16);
            raw.extend_from_slice(&addr.to_le_bytes());
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&(flags as u16).to_le_bytes());
            raw.extend_from_slice(&next.to_le_bytes());
            self.put(q * 0x1000 + index * 16, &raw);
        }

        /// Queue `q` offers the chains that start at `heads`.
        fn avail(&mut self, q: u64, heads: &[u16]) {
            self.put(q * 0x1000 + 0x100 + 2, &(heads.len() as u16).to_le_bytes());
            for (i, head) in heads.iter().enumerate() {
                self.put(q * 0x1000 + 0x100 + 4 + 2 * i as u64, &head.to_le_bytes());
            }
        }
    }

    /// Puts `packet` in a fresh tx buffer of the vsock seed's queue 1 and offers it
    /// (round `round`), and reposts the two rx buffers.
    pub fn offer_tx_packet(mem: &vm_memory::GuestMemoryMmap, round: u16, packet: &[u8]) {
        use vm_memory::{Bytes, GuestAddress};
        let slot = u64::from(round % QUEUE_SIZE as u16);
        let buffer = BUFFERS + 0x3000 + slot * 0x1100;
        let _ = mem.write_slice(packet, GuestAddress(buffer));
        let desc = |q: u64, index: u64, addr: u64, len: u32, flags: u32| {
            let mut raw = Vec::with_capacity(16);
            raw.extend_from_slice(&addr.to_le_bytes());
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&(flags as u16).to_le_bytes());
            raw.extend_from_slice(&0u16.to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(q * 0x1000 + index * 16));
        };
        desc(1, slot, buffer, packet.len() as u32, 0);
        let offer = |q: u64, heads: &[u16]| {
            let idx_at = GuestAddress(q * 0x1000 + 0x100 + 2);
            let idx: u16 = mem.read_obj(idx_at).unwrap_or(0);
            for (i, head) in heads.iter().enumerate() {
                let at = q * 0x1000 + 0x100 + 4 + 2 * u64::from((idx + i as u16) % QUEUE_SIZE as u16);
                let _ = mem.write_obj(*head, GuestAddress(at));
            }
            let _ = mem.write_obj(idx.wrapping_add(heads.len() as u16), idx_at);
        };
        offer(1, &[slot as u16]);
        offer(0, &[0, 1]);
    }

    fn op(ops: &mut Vec<u8>, register: u32, value: u32) {
        ops.push(0);
        ops.push((register / 4) as u8);
        ops.extend_from_slice(&value.to_le_bytes());
    }

    /// A driver's setup of `device` (features, queues, DRIVER_OK), one request in
    /// guest memory, and its notification.
    pub fn virtio_mmio(device: Device) -> Vec<u8> {
        let mut image = Image(vec![0; IMAGE]);
        let notify = match device {
            Device::Block => {
                let mut header = [0u8; 16];
                header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
                image.put(BUFFERS, &header);
                image.desc(0, 0, BUFFERS, 16, VRING_DESC_F_NEXT, 1);
                image.desc(0, 1, BUFFERS + 0x1000, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
                image.desc(0, 2, BUFFERS + 0x2000, 1, VRING_DESC_F_WRITE, 0);
                image.avail(0, &[0]);
                0
            }
            Device::Rng => {
                image.desc(0, 0, BUFFERS, 64, VRING_DESC_F_WRITE, 0);
                image.avail(0, &[0]);
                0
            }
            Device::Vsock => {
                // Two rx buffers, and a connection request to a host port nobody serves.
                image.desc(0, 0, BUFFERS, 4096, VRING_DESC_F_WRITE, 0);
                image.desc(0, 1, BUFFERS + 0x1000, 4096, VRING_DESC_F_WRITE, 0);
                image.avail(0, &[0, 1]);
                let request = Header {
                    src_cid: 3,
                    dst_cid: 2,
                    src_port: 49152,
                    dst_port: 9999,
                    kind: TYPE_STREAM,
                    op: OP_REQUEST,
                    buf_alloc: 65536,
                    ..Default::default()
                };
                image.put(BUFFERS + 0x2000, &request.to_bytes());
                image.desc(1, 0, BUFFERS + 0x2000, HDR_LEN as u32, 0, 0);
                image.avail(1, &[0]);
                1
            }
            Device::Net => {
                // Two receive buffers, and one broadcast frame to send behind an
                // all-zero virtio header (no offloads).
                image.desc(0, 0, BUFFERS, 2048, VRING_DESC_F_WRITE, 0);
                image.desc(0, 1, BUFFERS + 0x1000, 2048, VRING_DESC_F_WRITE, 0);
                image.avail(0, &[0, 1]);
                let mut frame = vec![0u8; VNET_HDR_LEN];
                frame.extend([0xff; 6]);
                frame.extend([2, 0, 0, 0, 0, 1]);
                frame.extend(0x88b5u16.to_be_bytes());
                frame.resize(VNET_HDR_LEN + 60, 0x5a);
                image.put(BUFFERS + 0x2000, &frame);
                image.desc(1, 0, BUFFERS + 0x2000, frame.len() as u32, 0, 0);
                image.avail(1, &[0]);
                1
            }
        };
        let mut ops = Vec::new();
        let status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        op(&mut ops, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        op(&mut ops, VIRTIO_MMIO_STATUS, status);
        op(&mut ops, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        op(&mut ops, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 is bit 32
        op(&mut ops, VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_FEATURES_OK);
        for q in 0..device.queues() {
            op(&mut ops, VIRTIO_MMIO_QUEUE_SEL, q);
            op(&mut ops, VIRTIO_MMIO_QUEUE_NUM, QUEUE_SIZE);
            op(&mut ops, VIRTIO_MMIO_QUEUE_DESC_LOW, q * 0x1000);
            op(&mut ops, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q * 0x1000 + 0x100);
            op(&mut ops, VIRTIO_MMIO_QUEUE_USED_LOW, q * 0x1000 + 0x200);
            op(&mut ops, VIRTIO_MMIO_QUEUE_READY, 1);
        }
        let ready = status | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
        op(&mut ops, VIRTIO_MMIO_STATUS, ready);
        op(&mut ops, VIRTIO_MMIO_QUEUE_NOTIFY, notify);
        if device == Device::Net {
            // A 60-byte frame arrives from the network.
            ops.extend([3, 0]);
            ops.extend(60u32.to_le_bytes());
        }

        let mut input = vec![device as u8];
        input.extend_from_slice(&(IMAGE as u16).to_le_bytes());
        input.extend_from_slice(&image.0);
        input.extend_from_slice(&ops);
        input
    }
}

/// Plays `data` as a stream of guest vsock packets (44-byte header, then as many
/// payload bytes as the header says, up to what is left) through a set-up vsock
/// device, each in its own tx buffer, with two rx buffers reposted each round.
pub fn vsock_packets(data: &[u8]) {
    let setup = seed::virtio_mmio(Device::Vsock);
    let image_len = usize::from(u16::from_le_bytes([setup[1], setup[2]]));
    let Some(mut vm) = FuzzVm::new(Device::Vsock, &setup[3..3 + image_len]) else { return };
    for op in setup[3 + image_len..].chunks_exact(6) {
        vm.play(op[0], op[1], u32::from_le_bytes([op[2], op[3], op[4], op[5]]));
    }
    let mut rest = data;
    for round in 0..MAX_OPS as u16 {
        if rest.is_empty() {
            break;
        }
        let take = rest.len().min(seed::HDR_LEN + 4096);
        let (packet, tail) = rest.split_at(take);
        rest = tail;
        seed::offer_tx_packet(&vm.mem, round, packet);
        vm.play(0, (virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY / 4) as u8, 1);
        vm.play(0, (virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY / 4) as u8, 0);
    }
}

/// The seed corpus kept in `fuzz/seeds/`: (target/name, bytes).
pub fn seed_files() -> Vec<(String, Vec<u8>)> {
    use brig_vmm_api::wire::{request_line, response_line};
    let mut files = vec![
        ("virtio_mmio/block".to_owned(), seed::virtio_mmio(Device::Block)),
        ("virtio_mmio/rng".to_owned(), seed::virtio_mmio(Device::Rng)),
        ("virtio_mmio/vsock".to_owned(), seed::virtio_mmio(Device::Vsock)),
        ("virtio_mmio/net".to_owned(), seed::virtio_mmio(Device::Net)),
    ];
    let packet = |op: u16, len: u32, payload: &[u8]| {
        let hdr = crate::devices::virtio::vsock::packet::Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 49152,
            dst_port: 1024,
            len,
            kind: 1,
            op,
            buf_alloc: 65536,
            ..Default::default()
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    };
    let mut stream = packet(1, 0, b"");
    stream.extend(packet(5, 5, b"hello"));
    stream.extend(packet(4, 0, b""));
    files.push(("vsock_packets/request-data-shutdown".to_owned(), stream));
    for (i, (request, response)) in brig_vmm_api::examples::exchanges().into_iter().enumerate() {
        let trim = |mut line: Vec<u8>| {
            line.pop();
            line
        };
        files.push((format!("control_socket/request-{i}"), trim(request_line(&request))));
        files.push((format!("control_socket/answer-{i}"), trim(response_line(&response))));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::METRICS;

    #[test]
    fn the_seed_corpus_in_the_repo_is_what_the_builders_make() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        for (name, bytes) in seed_files() {
            let path = root.join(&name);
            if std::env::var_os("BRIG_BLESS").is_some() {
                std::fs::create_dir_all(path.parent().expect("a target directory")).expect("mkdir");
                std::fs::write(&path, &bytes).expect("bless");
                continue;
            }
            let kept = std::fs::read(&path).unwrap_or_default();
            assert!(
                kept == bytes,
                "fuzz/seeds/{name} is out of date: BRIG_BLESS=1 cargo test -p sandbox-vmm seed_corpus"
            );
        }
    }

    #[test]
    fn vsock_packet_streams_are_harmless() {
        let hdr = crate::devices::virtio::vsock::packet::Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1,
            dst_port: 2,
            len: 5,
            kind: 1,
            op: 5,
            ..Default::default()
        };
        let mut data = hdr.to_bytes().to_vec();
        data.extend_from_slice(b"hello");
        data.extend_from_slice(&[0xff; 300]);
        let before = METRICS.vsock_tx_packets.get();
        vsock_packets(&data);
        assert!(METRICS.vsock_tx_packets.get() > before, "packets reached the device");
        vsock_packets(&[]);
        vsock_packets(&[1, 2, 3]);
    }

    #[test]
    fn the_seeds_set_devices_up_and_get_requests_served() {
        for device in [Device::Block, Device::Rng, Device::Vsock, Device::Net] {
            let input = seed::virtio_mmio(device);
            let (len, image) = input[1..].split_at(2);
            let image = &image[..usize::from(u16::from_le_bytes([len[0], len[1]]))];
            let mut vm = FuzzVm::new(device, image).expect("vm");
            let ops = &input[3 + image.len()..];
            for op in ops.chunks_exact(6) {
                vm.play(op[0], op[1], u32::from_le_bytes([op[2], op[3], op[4], op[5]]));
            }
            assert!(lock(&vm.transport).snapshot().activated, "{device:?} is activated by its seed");
            // Queue 0's used ring (at 0x200): the device answered at least one request,
            // except vsock, whose answer (a reset) lands in rx: also queue 0; and
            // virtio-net, whose receive queue took the frame from the network.
            let used: u16 = vm.mem.read_obj(GuestAddress(0x202)).expect("used.idx");
            assert!(used >= 1, "{device:?} served its request (used.idx {used})");
            if device == Device::Net {
                let sent: u16 = vm.mem.read_obj(GuestAddress(0x1202)).expect("tx used.idx");
                assert_eq!(sent, 1, "virtio-net sent its frame");
            }
        }
        assert!(METRICS.virtio_notifications.get() > 0);
    }

    #[test]
    fn garbage_and_truncated_inputs_are_harmless() {
        virtio_mmio(&[]);
        virtio_mmio(&[2]);
        virtio_mmio(&[0, 0xff, 0xff, 1, 2, 3]);
        let mut seed = seed::virtio_mmio(Device::Vsock);
        seed.truncate(seed.len() - 3);
        virtio_mmio(&seed);
        let noise: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        virtio_mmio(&noise);
    }
}
