//! `brig-hostile-agent`: a test-only PID 1 that serves the guest agent's API on
//! vsock port 1024 the way a compromised guest might, so that the shim's defences
//! are tested against real frames through brig-vmm (`tests/tests/hostile_agent.rs`).
//! It lives only in a test initramfs (`BRIG_HOSTILE_INITRAMFS`), never in brig's own.
//!
//! The kernel parameter `hostile.mode=` (the shim's `kernel_cmdline_extra`) says how:
//!
//! - `silent`: accepts connections and reads them, never answers (not even `Ping`);
//! - `garbage`: answers every request, `Ping` included, with random bytes;
//! - `oversized`: answers `Ping`, then every other request with a frame header that
//!   claims a 4 GiB payload;
//! - `lie`: `CreateContainer` succeeds with nothing behind it, `Wait` answers at once
//!   with a made-up status, pids are made up, `Shutdown` is acknowledged and ignored;
//! - `oom-flood`: behaves (a signal 9 or 15 ends the process), but `GetOomEvent`
//!   answers at once with an OOM kill, forever;
//! - `never-wait`: acknowledges every signal, carries out none, and never answers
//!   `Wait`;
//! - `mute`: answers until the container has started (nothing is behind it), then
//!   never again, `Ping` included: an agent that stopped answering.
//!
//! The stdio port (1025) accepts every stream (`OK`) and closes the output streams
//! at once. Each mode logs `hostile: …` lines on the console.
#![deny(unsafe_code)]

mod liar;
mod raw;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use brig_protocol::stdio::{Header, Stream, MAX_HEADER, STDIO_VSOCK_PORT};
use nix::mount::{mount, MsFlags};
use nix::sys::socket::{accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

const VMADDR_CID_ANY: u32 = u32::MAX;

/// How the agent misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Silent,
    Garbage,
    Oversized,
    Lie,
    OomFlood,
    NeverWait,
    Mute,
}

impl Mode {
    fn parse(word: &str) -> Option<Mode> {
        Some(match word {
            "silent" => Mode::Silent,
            "garbage" => Mode::Garbage,
            "oversized" => Mode::Oversized,
            "lie" => Mode::Lie,
            "oom-flood" => Mode::OomFlood,
            "never-wait" => Mode::NeverWait,
            "mute" => Mode::Mute,
            _ => return None,
        })
    }
}

fn main() {
    for (fstype, target) in [("proc", "/proc"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(fstype), target, Some(fstype), MsFlags::empty(), None::<&str>) {
            println!("hostile: mount {target}: {e}");
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let word = cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("hostile.mode=")).unwrap_or("");
    let Some(mode) = Mode::parse(word) else {
        println!("hostile: no known hostile.mode= on the command line ({word:?}); idling");
        idle();
    };
    println!("hostile: mode {word}");
    std::thread::spawn(|| {
        if let Err(e) = serve_stdio() {
            println!("hostile: stdio: {e}");
        }
    });
    // Kept until the VM ends: the server stops when dropped.
    let _server = match mode {
        Mode::Silent | Mode::Garbage | Mode::Oversized => raw::serve(mode).map(|()| None),
        Mode::Lie | Mode::OomFlood | Mode::NeverWait | Mode::Mute => liar::serve(mode).map(Some),
    }
    .unwrap_or_else(|e| {
        println!("hostile: agent port: {e}");
        None
    });
    idle();
}

/// PID 1 must not exit (the kernel would panic): it waits for the VM to end.
fn idle() -> ! {
    loop {
        std::thread::park();
    }
}

/// A vsock listener on `port`.
pub fn listen_vsock(port: u32) -> Result<OwnedFd, String> {
    let listener = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    bind(listener.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, port)).map_err(|e| format!("bind {port}: {e}"))?;
    listen(&listener, Backlog::new(16).map_err(|e| e.to_string())?).map_err(|e| format!("listen {port}: {e}"))?;
    Ok(listener)
}

/// The next connection on `listener`.
pub fn accept_one(listener: &OwnedFd) -> Result<File, String> {
    loop {
        match accept(listener.as_raw_fd()) {
            Ok(fd) => return Ok(File::from(owned(fd))),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

#[allow(unsafe_code)]
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by accept(2), is open, and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Ends the VM (brig's guests leave through a reset).
pub fn power_off() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(50));
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    });
}

/// The stdio port: every stream is accepted; stdin is read and dropped, output
/// streams end at once.
fn serve_stdio() -> Result<(), String> {
    let listener = listen_vsock(STDIO_VSOCK_PORT)?;
    loop {
        let conn = accept_one(&listener)?;
        std::thread::spawn(move || stdio_connection(conn));
    }
}

fn stdio_connection(mut conn: File) {
    use std::io::Write;
    let mut line = String::new();
    let read = BufReader::new((&conn).take(MAX_HEADER as u64)).read_line(&mut line);
    let header = match read.map_err(|e| e.to_string()).and_then(|_| Header::parse(line.trim_end())) {
        Ok(header) => header,
        Err(e) => {
            let _ = conn.write_all(format!("ERR {e}\n").as_bytes());
            return;
        }
    };
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    if header.stream == Stream::Stdin {
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
    }
}
