//! `cargo xtask demo` (until the containerd shim lands): boots one micro-VM with
//! brig-vmm, asks brig-agent about the guest over vsock, prints the guest's kernel
//! next to the host's, and powers the VM off.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use brig_protocol::agent::{GuestInfoRequest, PingRequest, ShutdownRequest};
use brig_protocol::ttrpc::context;
use brig_tests::vm::VmSpec;

fn main() -> Result<()> {
    let timeout = || context::with_timeout(10_000_000_000);
    println!("brig demo: booting a micro-VM (1 vCPU, 128 MiB) with brig-vmm and brig's guest kernel");
    let started = Instant::now();
    let mut vm = VmSpec::new().start();
    let agent = vm.agent(Duration::from_secs(60))?;
    let pong = agent.ping(timeout(), &PingRequest::new()).map_err(|e| anyhow!("ping: {e}"))?;
    println!("brig-agent {} answered after {:.2} s", pong.agent_version, started.elapsed().as_secs_f64());
    let info = agent.guest_info(timeout(), &GuestInfoRequest::new()).map_err(|e| anyhow!("guest info: {e}"))?;
    let host = nix::sys::utsname::uname()?;
    println!("  guest kernel: {} ({})", info.kernel_release, info.kernel_version);
    println!("  host kernel:  {} ({})", host.release().to_string_lossy(), host.version().to_string_lossy());
    println!(
        "  guest: {} CPU, {} MiB memory, up {:.2} s",
        info.cpus,
        info.mem_total_bytes >> 20,
        info.uptime_ms as f64 / 1000.0
    );
    agent.shutdown(timeout(), &ShutdownRequest::new()).map_err(|e| anyhow!("shutdown: {e}"))?;
    let status = vm.wait(Duration::from_secs(30))?;
    println!("VM powered off ({status}).");
    Ok(())
}
