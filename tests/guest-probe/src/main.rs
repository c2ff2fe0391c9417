//! `brig-guest-probe`: a test-only init for brig's device tests.
//!
//! It runs as PID 1 in a test initramfs (never in brig's own), performs the steps
//! named by `probe.*` parameters on the kernel command line, reports each result on
//! the console as a `probe: …` line, and then resets the VM. Tests read the console
//! file and the host side of each device. Steps run in command-line order:
//!
//! - `probe.vsock=PORT:TEXT` — connect to host CID 2 port PORT, send TEXT, report the reply;
//! - `probe.echo=PORT:COUNT` — listen on vsock PORT and echo COUNT connections back to their peer;
//! - `probe.write=DEV:OFFSET:TEXT` — write TEXT at OFFSET of DEV and fsync, report ok/error;
//! - `probe.read=DEV:OFFSET:LEN` — report LEN bytes at OFFSET of DEV;
//! - `probe.serial=NAME` — report /sys/block/NAME/serial;
//! - `probe.hwrng=LEN` — read LEN bytes from /dev/hwrng, report how many differ from zero;
//! - `probe.ticks=N` — print `probe: tick i` every 50 ms, N times;
//! - `probe.exit=CODE` — exit (as PID 1 this panics the kernel);
//! - `probe.vsock-connect=CID:PORT` — try to open a vsock connection, report the outcome;
//! - `probe.net=IFACE:ADDR/PREFIX:PEER:PORT:TEXT` — give IFACE the IPv4 address and bring
//!   it up, send TEXT in a UDP datagram to PEER:PORT (again every 500 ms, up to 20 times,
//!   while ARP settles), report the reply with IFACE's MAC and MTU;
//! - `probe.net-flood=IFACE:ADDR/PREFIX:PEER:PORT:SECONDS` — configure IFACE as `probe.net`
//!   does, then send 1400-byte UDP datagrams to PEER:PORT as fast as it can for SECONDS,
//!   report how many;
//! - `probe.overwrite-exe=SECONDS` — for SECONDS, try to open every other process's
//!   `/proc/<pid>/exe` for writing (the CVE-2019-5736 attack), report attempts and successes.
//!
//! With arguments (`brig-guest-probe probe.vsock-connect=2:1024 …`) it runs those steps
//! instead, as an ordinary process inside a container: no mounts, no reset.
#![deny(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::socket::{accept, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

const HOST_CID: u32 = 2;
const VMADDR_CID_ANY: u32 = u32::MAX;

/// Takes ownership of a descriptor nix returned as a raw fd.
#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by accept(2), is open, and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        run_steps(&args);
        return;
    }
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(fstype), target, Some(fstype), MsFlags::empty(), None::<&str>) {
            println!("probe: mount {target} error: {e}");
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let steps: Vec<String> = cmdline.split_whitespace().map(str::to_owned).collect();
    run_steps(&steps);
    println!("probe: done");
    let _ = std::io::stdout().flush();
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
}

fn run_steps(steps: &[String]) {
    for arg in steps {
        let Some((step, value)) = arg.strip_prefix("probe.").and_then(|a| a.split_once('=')) else { continue };
        let result = match step {
            "vsock" => vsock(value),
            "echo" => echo(value),
            "write" => write(value),
            "read" => read(value),
            "serial" => std::fs::read_to_string(format!("/sys/block/{value}/serial")).map_err(|e| e.to_string()),
            "hwrng" => hwrng(value),
            "net" => net(value),
            "net-flood" => net_flood(value),
            "ticks" => ticks(value),
            "vsock-connect" => vsock_connect(value),
            "overwrite-exe" => overwrite_exe(value),
            "exit" => {
                println!("probe: exiting as PID 1");
                std::process::exit(value.parse().unwrap_or(1));
            }
            other => Err(format!("unknown step {other}")),
        };
        match result {
            Ok(out) => println!("probe: {step} ok: {out}"),
            Err(e) => println!("probe: {step} error: {e}"),
        }
    }
}

fn split3(value: &str) -> Result<(&str, &str, &str), String> {
    let mut parts = value.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c)) => Ok((a, b, c)),
        _ => Err(format!("expected A:B:C, got {value}")),
    }
}

fn vsock(value: &str) -> Result<String, String> {
    let (port, text) = value.split_once(':').ok_or("expected PORT:TEXT")?;
    let port: u32 = port.parse().map_err(|e| format!("port: {e}"))?;
    let fd: OwnedFd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, port)).map_err(|e| format!("connect: {e}"))?;
    let mut stream = File::from(fd);
    stream.write_all(text.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn echo(value: &str) -> Result<String, String> {
    let (port, count) = value.split_once(':').ok_or("expected PORT:COUNT")?;
    let port: u32 = port.parse().map_err(|e| format!("port: {e}"))?;
    let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
    let listener: OwnedFd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    bind(listener.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, port)).map_err(|e| format!("bind: {e}"))?;
    listen(&listener, Backlog::new(4).map_err(|e| e.to_string())?).map_err(|e| format!("listen: {e}"))?;
    println!("probe: listening on vsock port {port}");
    let mut total = 0usize;
    for _ in 0..count {
        let fd = accept(listener.as_raw_fd()).map_err(|e| format!("accept: {e}"))?;
        let mut stream = File::from(owned(fd));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
            total += n;
        }
    }
    Ok(format!("{total} bytes echoed"))
}

fn vsock_connect(value: &str) -> Result<String, String> {
    let (cid, port) = value.split_once(':').ok_or("expected CID:PORT")?;
    let (cid, port): (u32, u32) = (cid.parse().map_err(|_| "cid")?, port.parse().map_err(|_| "port")?);
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)).map_err(|e| format!("connect: {e}"))?;
    Ok("connected".into())
}

fn overwrite_exe(value: &str) -> Result<String, String> {
    let seconds: u64 = value.parse().map_err(|_| "seconds")?;
    let own = std::fs::read_link("/proc/self/exe").ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    let (mut attempts, mut opened) = (0u64, Vec::new());
    while std::time::Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let exe = entry.path().join("exe");
            if std::fs::read_link(&exe).ok() == own {
                continue;
            }
            attempts += 1;
            if OpenOptions::new().write(true).open(&exe).is_ok() {
                opened.push(std::fs::read_link(&exe).map(|p| p.display().to_string()).unwrap_or_default());
            }
        }
    }
    Ok(format!("{attempts} attempts, {} opened {opened:?}", opened.len()))
}

fn write(value: &str) -> Result<String, String> {
    let (dev, offset, text) = split3(value)?;
    let offset: u64 = offset.parse().map_err(|e| format!("offset: {e}"))?;
    let file = OpenOptions::new().write(true).open(dev).map_err(|e| format!("open {dev}: {e}"))?;
    file.write_all_at(text.as_bytes(), offset).map_err(|e| format!("write {dev}: {e}"))?;
    file.sync_all().map_err(|e| format!("fsync {dev}: {e}"))?;
    Ok(format!("{} bytes", text.len()))
}

fn read(value: &str) -> Result<String, String> {
    let (dev, offset, len) = split3(value)?;
    let offset: u64 = offset.parse().map_err(|e| format!("offset: {e}"))?;
    let len: usize = len.parse().map_err(|e| format!("len: {e}"))?;
    let file = File::open(dev).map_err(|e| format!("open {dev}: {e}"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| format!("read {dev}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn hwrng(value: &str) -> Result<String, String> {
    let len: usize = value.parse().map_err(|e| format!("len: {e}"))?;
    let mut buf = vec![0u8; len];
    File::open("/dev/hwrng").and_then(|mut f| f.read_exact(&mut buf)).map_err(|e| format!("/dev/hwrng: {e}"))?;
    let current = std::fs::read_to_string("/sys/class/misc/hw_random/rng_current").unwrap_or_default();
    Ok(format!("{} nonzero of {len} from {}", buf.iter().filter(|b| **b != 0).count(), current.trim()))
}

fn ticks(value: &str) -> Result<String, String> {
    let n: u64 = value.parse().map_err(|e| format!("count: {e}"))?;
    for i in 0..n {
        println!("probe: tick {i}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("{n} ticks"))
}

/// `IFACE:ADDR/PREFIX:PEER:PORT:REST`: configures IFACE, returns it, the peer and REST.
fn net_setup(value: &str) -> Result<(&str, std::net::SocketAddr, &str), String> {
    let parts: Vec<&str> = value.splitn(5, ':').collect();
    let [iface, cidr, peer, port, rest] = parts[..] else {
        return Err("expected IFACE:ADDR/PREFIX:PEER:PORT:…".into());
    };
    let (addr, prefix) = cidr.split_once('/').ok_or("expected ADDR/PREFIX")?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|e| format!("address: {e}"))?;
    let prefix: u32 = prefix.parse().map_err(|e| format!("prefix: {e}"))?;
    if prefix > 32 {
        return Err(format!("prefix {prefix} is longer than 32"));
    }
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
    configure_ipv4(iface, addr, mask)?;
    let peer: std::net::SocketAddr = format!("{peer}:{port}").parse().map_err(|e| format!("peer: {e}"))?;
    Ok((iface, peer, rest))
}

fn net_flood(value: &str) -> Result<String, String> {
    let (_, peer, seconds) = net_setup(value)?;
    let seconds: u64 = seconds.parse().map_err(|e| format!("seconds: {e}"))?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    let datagram = [0x5au8; 1400];
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let (mut sent, mut refused) = (0u64, 0u64);
    while std::time::Instant::now() < end {
        match socket.send_to(&datagram, peer) {
            Ok(_) => sent += 1,
            Err(_) => refused += 1, // ENOBUFS, or ARP's queue full: the flood goes on
        }
    }
    Ok(format!("{sent} datagrams sent, {refused} refused"))
}

fn net(value: &str) -> Result<String, String> {
    let (iface, peer, text) = net_setup(value)?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    for _ in 0..20 {
        socket.send_to(text.as_bytes(), peer).map_err(|e| format!("send: {e}"))?;
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let sys = |name: &str| {
                std::fs::read_to_string(format!("/sys/class/net/{iface}/{name}")).unwrap_or_default().trim().to_owned()
            };
            return Ok(format!(
                "{} from {from}, mac {}, mtu {}",
                String::from_utf8_lossy(&buf[..n]),
                sys("address"),
                sys("mtu")
            ));
        }
    }
    Err(format!("no reply from {peer}"))
}

/// `ip addr add ADDR/MASK dev IFACE; ip link set IFACE up`, through the classic ioctls.
#[allow(unsafe_code)]
fn configure_ipv4(iface: &str, addr: std::net::Ipv4Addr, mask: std::net::Ipv4Addr) -> Result<(), String> {
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    let ifreq = || {
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        ifr
    };
    let sockaddr = |ip: std::net::Ipv4Addr| {
        // SAFETY: all-zero is a valid sockaddr_in, and a sockaddr_in fits a sockaddr.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(ip).to_be();
        // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this copies the bytes.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    };
    let call = |what: &str, request: libc::Ioctl, ifr: &mut libc::ifreq| {
        // SAFETY: the request reads (or fills) the ifreq the pointer refers to, which is live.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr) } < 0 {
            return Err(format!("{what} {iface}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let mut ifr = ifreq();
    ifr.ifr_ifru.ifru_addr = sockaddr(addr);
    call("SIOCSIFADDR", libc::SIOCSIFADDR, &mut ifr)?;
    let mut ifr = ifreq();
    ifr.ifr_ifru.ifru_netmask = sockaddr(mask);
    call("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut ifr)?;
    let mut ifr = ifreq();
    call("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut ifr)?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags, the member read and written here.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    call("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut ifr)
}
