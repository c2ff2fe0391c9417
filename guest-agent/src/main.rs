//! `brig-agent`: PID 1 of a brig guest.
//!
//! A fatal start-up error is printed to the console and ends the process; as PID 1
//! that panics the guest kernel, and brig-vmm reports the console tail.

use std::process::ExitCode;

use brig_agent::reaper::Reaper;
use brig_agent::service::{self, AgentService};
use brig_agent::{init, VERSION};
use brig_protocol::AGENT_VSOCK_PORT;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = init::mount_filesystems() {
            return fatal(&e);
        }
    }
    let reaper = match Reaper::start() {
        Ok(reaper) => reaper,
        Err(e) => return fatal(&e),
    };
    let address = std::env::var("BRIG_AGENT_ADDRESS").unwrap_or_else(|_| format!("vsock://-1:{AGENT_VSOCK_PORT}"));
    let power_off: fn() -> ! = if pid1 { init::power_off } else { || std::process::exit(0) };
    let _server = match service::serve(&address, AgentService::new(reaper, power_off)) {
        Ok(server) => server,
        Err(e) => return fatal(&e),
    };
    log::info!("brig-agent {VERSION} serving on {address}");
    loop {
        std::thread::park();
    }
}

fn fatal(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("brig-agent: fatal: {error}");
    ExitCode::FAILURE
}
