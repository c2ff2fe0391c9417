//! virtio-net through the guest kernel: brig-vmm on a tap the test created (as the
//! shim will), a guest that configures its NIC and talks UDP to the host across it,
//! and descriptors that are not a usable tap refused by name.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use brig_tests::net::HostTap;
use brig_tests::scratch::Scratch;
use brig_tests::vm::{probe_lines, probe_spec, TestVm, VmSpec};

const MAC: &str = "02:42:0a:4d:00:02";

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_guest_talks_udp_to_the_host_across_its_tap() {
    brig_tests::require_kvm_host();
    let tap = HostTap::new("brigt0", "10.77.0.1/24").expect("host tap");
    let server = UdpSocket::bind("10.77.0.1:7777").expect("bind on the tap's address");
    server.set_read_timeout(Some(Duration::from_secs(90))).expect("timeout");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, from) = server.recv_from(&mut buf).expect("the guest's datagram arrives");
        server.send_to(&[b"pong ", &buf[..n]].concat(), from).expect("reply");
        from
    });

    let spec = probe_spec(&["probe.net=eth0:10.77.0.2/24:10.77.0.1:7777:hello".into()])
        .net(format!("tap-fd={},mac={MAC}", tap.fd()));
    let mut vm = TestVm::start_in(spec, Scratch::new("net"));
    let status = vm.wait(Duration::from_secs(120)).expect("probe finishes");
    assert_eq!(status.code(), Some(0), "{}", vm.diagnostics());
    let console = vm.console_text();
    assert_eq!(
        probe_lines(&console, "net"),
        [format!("probe: net ok: pong hello from 10.77.0.1:7777, mac {MAC}, mtu 1500")],
        "{console}"
    );
    let from = echo.join().expect("echo thread");
    assert_eq!(from.ip().to_string(), "10.77.0.2", "the datagram came from the guest's address");

    drop(tap);
    assert!(!HostTap::exists("brigt0"), "the tap is gone with its last descriptor");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn what_is_not_a_usable_tap_is_refused_by_name() {
    brig_tests::require_kvm_host();
    let file = std::fs::File::open("/proc/self/status").expect("open");
    // std opens with close-on-exec; brig-vmm must inherit this one to name it.
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("inheritable");
    for (net, expect) in [
        (format!("tap-fd={},mac={MAC}", file.as_raw_fd()), "is not a tap: it is /proc/"),
        (format!("tap-fd=900,mac={MAC}"), "net tap_fd 900 is not open in brig-vmm"),
        ("tap-fd=900,mac=01:00:5e:00:00:01".to_owned(), "is not a unicast address"),
    ] {
        let mut vm = TestVm::start_in(VmSpec::new().net(net.clone()), Scratch::new("net-bad"));
        let status = vm.wait(Duration::from_secs(30)).expect("brig-vmm exits");
        assert_eq!(status.code(), Some(1), "{net}: {}", vm.diagnostics());
        assert!(vm.stderr_text().contains(expect), "{net}: {}", vm.stderr_text());
    }
}
