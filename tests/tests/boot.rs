//! brig-vmm boots brig's guest kernel to the agent, and leaves cleanly.

use std::time::Duration;

use brig_protocol::agent::{GuestInfoRequest, PingRequest, ShutdownRequest};
use brig_protocol::agent_ttrpc::AgentClient;
use brig_protocol::ttrpc::context;
use brig_tests::vm::{TestVm, VmSpec};

const BOOT: Duration = Duration::from_secs(60);

/// Asks the agent to power the guest off; brig-vmm must then exit cleanly.
fn power_off(vm: &mut TestVm, agent: &AgentClient) {
    agent.shutdown(context::with_timeout(10_000_000_000), &ShutdownRequest::new()).expect("shutdown");
    let status = vm.wait(Duration::from_secs(30)).expect("brig-vmm exits");
    assert_eq!(status.code(), Some(0), "a guest-initiated power-off is a clean exit\n{}", vm.diagnostics());
}

fn boots_to_agent_with(vcpus: u8, memory_mib: u64) {
    brig_tests::require_kvm_host();
    let mut vm = VmSpec::new().vcpus(vcpus).memory(memory_mib).start();
    let agent = vm.agent(BOOT).expect("agent reachable");
    let pong = agent.ping(context::with_timeout(10_000_000_000), &PingRequest::new()).expect("ping");
    assert_eq!(pong.api_major, brig_protocol::API_MAJOR);
    assert!(!pong.agent_version.is_empty());
    let info = agent.guest_info(context::with_timeout(10_000_000_000), &GuestInfoRequest::new()).expect("info");
    assert_eq!(info.cpus, u32::from(vcpus), "the guest sees every vCPU");
    let total_mib = info.mem_total_bytes >> 20;
    assert!(total_mib > memory_mib * 3 / 4 && total_mib <= memory_mib, "guest sees {total_mib} MiB of {memory_mib}");
    assert!(info.kernel_release.starts_with("6.1."), "{}", info.kernel_release);
    eprintln!("agent ready after {:?}, guest uptime {} ms", vm.started.elapsed(), info.uptime_ms);

    power_off(&mut vm, &agent);
    assert!(!vm.vsock.exists() && !vm.api.exists(), "sockets are removed on exit");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn boots_with_1_vcpu_and_128_mib() {
    boots_to_agent_with(1, 128);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn boots_with_2_vcpus_and_256_mib() {
    boots_to_agent_with(2, 256);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn guests_time_with_the_tsc_deadline_timer_not_the_pit() {
    brig_tests::require_kvm_host();
    // Without `quiet`, Linux reports the timer it found; without the TSC-deadline timer
    // it calibrates the LAPIC against the PIT, and under load keeps the PIT (ADR 007).
    let mut vm = VmSpec::new().cmdline("console=ttyS0").start();
    let agent = vm.agent(BOOT).expect("agent reachable");
    let console = vm.console_text();
    assert!(console.contains("TSC deadline timer available"), "the guest has no TSC-deadline timer:\n{console}");
    power_off(&mut vm, &agent);
}
