//! Hybrid vsock, both directions, through the real guest kernel's virtio-vsock driver.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use brig_tests::scratch::Scratch;
use brig_tests::vm::{hybrid_connect, probe_lines, probe_spec, TestVm};

const BOOT: Duration = Duration::from_secs(60);

fn accept_within(listener: &UnixListener, timeout: Duration) -> std::os::unix::net::UnixStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no guest connection within {timeout:?}: {e}"),
        }
    }
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_connection_the_guest_opens_reaches_the_host_listener() {
    brig_tests::require_kvm_host();
    let dir = Scratch::new("vsock-guest");
    let listener = UnixListener::bind(format!("{}_5000", TestVm::vsock_path(&dir).display())).expect("listen");
    let mut vm = TestVm::start_in(probe_spec(&["probe.vsock=5000:hello-from-guest".into()]), dir);

    let mut stream = accept_within(&listener, BOOT);
    let mut got = [0u8; 16];
    stream.read_exact(&mut got).expect("guest bytes");
    assert_eq!(&got, b"hello-from-guest");
    stream.write_all(b"hello-from-host").expect("reply");
    stream.shutdown(std::net::Shutdown::Write).expect("half-close");

    let status = vm.wait(BOOT).expect("probe finishes");
    assert_eq!(status.code(), Some(0), "{}", vm.diagnostics());
    assert_eq!(probe_lines(&vm.console_text(), "vsock"), vec!["probe: vsock ok: hello-from-host"]);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn eight_mib_echo_through_a_host_initiated_connection_arrives_intact() {
    brig_tests::require_kvm_host();
    let mut vm = probe_spec(&["probe.echo=7000:1".into()]).start();
    let stream = vm.connect(7000, BOOT).expect("guest echo server reachable");

    // Deterministic, non-repeating bytes; written from a second thread while we read.
    let data: Vec<u8> = (0u32..(8 << 20) / 4).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
    let mut writer = stream.try_clone().expect("clone");
    let to_send = data.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&to_send).expect("send");
        writer.shutdown(std::net::Shutdown::Write).expect("half-close");
    });
    let mut echoed = Vec::with_capacity(data.len());
    let mut reader = stream;
    reader.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    reader.read_to_end(&mut echoed).expect("echo");
    sender.join().expect("sender");
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echoed bytes differ");

    assert_eq!(vm.wait(BOOT).expect("exit").code(), Some(0), "{}", vm.diagnostics());
    let lines = probe_lines(&vm.console_text(), "echo");
    assert_eq!(lines, vec![format!("probe: echo ok: {} bytes echoed", 8 << 20)]);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn connecting_to_a_guest_port_nobody_listens_on_is_refused_not_hung() {
    brig_tests::require_kvm_host();
    let vm = probe_spec(&["probe.ticks=100".into()]).start();
    // Wait until the guest runs (and its vsock driver is up).
    let deadline = Instant::now() + BOOT;
    while !vm.console_text().contains("probe: tick 3") {
        assert!(Instant::now() < deadline, "guest never ticked:\n{}", vm.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let err = hybrid_connect(&vm.vsock, 4444).expect_err("nothing listens on 4444");
    assert!(err.to_string().contains("closed the connection"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "refusal took {:?}", start.elapsed());
    let mut bad = std::os::unix::net::UnixStream::connect(&vm.vsock).expect("connect");
    bad.write_all(b"HELLO THERE\n").expect("write");
    let mut buf = [0u8; 8];
    assert_eq!(bad.read(&mut buf).expect("read"), 0, "a malformed handshake is closed");
    drop(vm);
}
