//! `brig-agent`: PID 1 of a brig guest, and (re-executed as `container-init` or
//! `container-exec`) the helper that becomes a container's process.
//!
//! A fatal start-up error is printed to the console and ends the process; as PID 1
//! that panics the guest kernel, and brig-vmm reports the console tail.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;

use brig_agent::container::{stdio, Manager};
use brig_agent::reaper::Reaper;
use brig_agent::runtime::{self, config};
use brig_agent::service::{self, AgentService};
use brig_agent::{init, VERSION};
use brig_protocol::stdio::STDIO_VSOCK_PORT;
use brig_protocol::AGENT_VSOCK_PORT;
use nix::sys::socket::{accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

/// Log lines go to the console, each message on one line ([`brig_agent::one_line`]).
fn init_logging() {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let message = brig_agent::one_line(&record.args().to_string());
            writeln!(buf, "brig-agent {} {}: {message}", record.level(), record.target())
        })
        .init();
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some(config::INIT_ARG) => runtime::init_main(),
        Some(config::EXEC_ARG) => runtime::exec_main(),
        _ => {}
    }
    brig_agent::guest_info::note_start();
    init_logging();
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = init::leave_initramfs().and_then(|()| init::mount_filesystems()) {
            return fatal(&e);
        }
    }
    let reaper = match Reaper::start() {
        Ok(reaper) => reaper,
        Err(e) => return fatal(&e),
    };
    let manager = match Manager::new(reaper) {
        Ok(manager) => manager,
        Err(e) => return fatal(&e),
    };
    if pid1 {
        // After the agent copied itself into its sealed memfd (Manager::new).
        if let Err(e) = init::protect_root() {
            return fatal(&e);
        }
    }
    if let Err(e) = serve_stdio(manager.clone()) {
        return fatal(&e);
    }
    let address = std::env::var("BRIG_AGENT_ADDRESS").unwrap_or_else(|_| format!("vsock://-1:{AGENT_VSOCK_PORT}"));
    let power_off: fn() -> ! = if pid1 { init::power_off } else { || std::process::exit(0) };
    let _server = match service::serve(&address, AgentService::new(manager, power_off)) {
        Ok(server) => server,
        Err(e) => return fatal(&e),
    };
    log::info!("brig-agent {VERSION} serving on {address}");
    loop {
        std::thread::park();
    }
}

/// Accepts stdio connections on vsock port 1025, one thread each.
fn serve_stdio(manager: Arc<Manager>) -> nix::Result<()> {
    let listener = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(listener.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, STDIO_VSOCK_PORT))?;
    listen(&listener, Backlog::new(64)?)?;
    std::thread::Builder::new()
        .name("stdio".into())
        .spawn(move || loop {
            match accept(listener.as_raw_fd()) {
                Ok(fd) => {
                    // SAFETY: accept(2) returned a new descriptor that nothing else owns.
                    let conn = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    let _ = nix::fcntl::fcntl(&conn, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
                    let manager = manager.clone();
                    std::thread::spawn(move || stdio::serve_connection(conn, manager.as_ref()));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::error!("stdio accept failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
    Ok(())
}

fn fatal(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("brig-agent: fatal: {error}");
    ExitCode::FAILURE
}
