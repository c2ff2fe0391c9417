//! virtio-net through the guest kernel: brig-vmm on a tap the test created (as the
//! shim will), a guest that configures its NIC and talks UDP to the host across it, a
//! guest and a host that flood each other while the control socket keeps answering,
//! and descriptors that are not a usable tap refused by name.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
fn a_flood_both_ways_leaves_the_control_socket_answering() {
    brig_tests::require_kvm_host();
    let tap = HostTap::new("brigt1", "10.78.0.1/24").expect("host tap");
    let sink = UdpSocket::bind("10.78.0.1:7777").expect("bind on the tap's address");
    let spec = probe_spec(&["probe.net-flood=eth0:10.78.0.2/24:10.78.0.1:7777:20".into()])
        .net(format!("tap-fd={},mac={MAC}", tap.fd()));
    let mut vm = TestVm::start_in(spec, Scratch::new("net-flood"));
    let mut control = vm.control().expect("control socket");

    // Towards the guest, as fast as the host can, once its address answers ARP.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let socket = UdpSocket::bind("10.78.0.1:0").expect("bind");
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if socket.send_to(&[0xa5; 1400], "10.78.0.2:9").is_ok() {
                    sent += 1;
                }
            }
            sent
        }
    });

    // While both floods run, every metrics request is answered, and the counters move.
    sink.set_read_timeout(Some(Duration::from_secs(90))).expect("timeout");
    sink.recv_from(&mut [0u8; 2048]).expect("the guest's flood starts");
    let first = control.metrics().expect("metrics during the flood").counters;
    let mut answers = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        control.metrics().expect("metrics during the flood");
        answers += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = control.metrics().expect("metrics during the flood").counters;
    stop.store(true, Ordering::Relaxed);
    let host_sent = flood.join().expect("flood thread");
    assert!(last.net_tx_packets > first.net_tx_packets, "the guest's frames go out: {first:?} → {last:?}");
    assert!(last.net_rx_packets > first.net_rx_packets, "the host's frames come in: {first:?} → {last:?}");
    assert!(host_sent > 0 && answers >= 10, "{host_sent} sent, {answers} answers");

    let status = vm.wait(Duration::from_secs(120)).expect("probe finishes");
    assert_eq!(status.code(), Some(0), "{}", vm.diagnostics());
    let console = vm.console_text();
    let report = probe_lines(&console, "net-flood");
    assert!(report.len() == 1 && report[0].starts_with("probe: net-flood ok: "), "{console}");
    eprintln!("{}; host sent {host_sent}; counters at the end {last:?}", report[0]);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn what_is_not_a_usable_tap_is_refused_by_name() {
    brig_tests::require_kvm_host();
    // Close-on-exec like every descriptor: TestVm hands a `tap-fd` to its brig-vmm only.
    let file = std::fs::File::open("/proc/self/status").expect("open");
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
