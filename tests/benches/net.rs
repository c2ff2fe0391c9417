//! Benchmark: TCP between the host and a container on one CNI bridge (Debian's
//! `bridge` + `host-local`, a named namespace per container as CRI makes them), with
//! brig (`ctr run --with-ns`: the namespace joined to the VM through a tap) and with
//! runc in the same test host: host → container and container → host throughput
//! (busybox `nc`, `BRIG_NET_MIB` (32) MiB each way, the best of 3), and the time of
//! one HTTP request to busybox `httpd` (connect, request, answer: two round trips;
//! the median of 50). Run by `cargo xtask bench net`; prints numbers, asserts
//! nothing about them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use brig_tests::cni::{accept_within, task_dir, try_vmm_control, vmm_control, CniNetwork};
use brig_tests::containerd::{Containerd, IMAGE, RUNTIME};
use brig_tests::ms;
use brig_vmm_api::metrics::Counters;

const ROUNDS: usize = 3;
const REQUESTS: usize = 50;
const CHUNK: usize = 64 << 10;

/// What one runtime measured.
struct Row {
    label: &'static str,
    upload_mbs: f64,
    download_mbs: f64,
    request: Duration,
}

fn mib() -> usize {
    std::env::var("BRIG_NET_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// Retries `connect` until the container's server listens.
fn connect(address: &str, port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect((address, port)) {
            Ok(stream) => return stream,
            Err(e) if Instant::now() > deadline => panic!("{address}:{port} does not answer: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Host → container: `bytes` to the container's `nc -l`, until it has closed.
fn upload(address: &str, bytes: usize) -> Duration {
    let mut stream = connect(address, 5001);
    stream.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let chunk = vec![0x5a; CHUNK];
    let start = Instant::now();
    for _ in 0..bytes / CHUNK {
        stream.write_all(&chunk).expect("upload");
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let _ = stream.read(&mut [0u8; 16]);
    start.elapsed()
}

/// Container → host: `dd | nc` in an exec, to a listener on the bridge.
fn download(containerd: &Containerd, id: &str, gateway: &str, bytes: usize, round: usize) -> Duration {
    let listener = TcpListener::bind((gateway, 0)).expect("a listener on the bridge");
    let port = listener.local_addr().expect("port").port();
    let send = format!("dd if=/dev/zero bs={CHUNK} count={} 2>/dev/null | nc {gateway} {port}", bytes / CHUNK);
    let exec_id = format!("dl-{round}");
    let mut exec = containerd
        .command(&["task", "exec", "--exec-id", &exec_id, id, "sh", "-c", &send])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr task exec");
    let (mut stream, _) = accept_within(&listener, Duration::from_secs(60));
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut buf = vec![0u8; CHUNK];
    let (start, mut got) = (Instant::now(), 0);
    while got < bytes {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!(
                "download stalled after {got} of {bytes} bytes: {e}; {}\n{}\nthe guest's interrupts:\n{}\nthe end of vmm.log:\n{}\nthe shim's warnings:\n{}",
                vm_counters(id),
                vm_net_state(id),
                guest_interrupts(containerd, id),
                vmm_log_tail(id),
                warnings(containerd)
            ),
        }
    }
    let took = start.elapsed();
    drop(stream);
    assert!(exec.wait().expect("exec").success() && got == bytes, "{got} of {bytes} bytes");
    took
}

/// brig-vmm's network counters, for a stalled transfer's message (runc has none).
fn vm_counters(id: &str) -> String {
    if !id.ends_with("brig") {
        return String::new();
    }
    match try_vmm_control(id).and_then(|mut c| c.metrics().map_err(|e| e.to_string())) {
        Ok(m) => format!(
            "brig-vmm: rx {} packets ({} dropped), tx {} packets ({} dropped), bad requests {}",
            m.counters.net_rx_packets,
            m.counters.net_rx_dropped,
            m.counters.net_tx_packets,
            m.counters.net_tx_dropped,
            m.counters.virtio_bad_requests
        ),
        Err(e) => format!("brig-vmm's metrics: {e}"),
    }
}

/// What brig-vmm did over one direction's rounds: frames each way and their mean
/// size, the guest's notifications and MMIO exits, the interrupts it was sent.
fn per_frame(before: &Option<Counters>, after: &Option<Counters>) -> String {
    let (Some(b), Some(a)) = (before, after) else { return String::new() };
    let mean = |bytes: u64, frames: u64| bytes.checked_div(frames).unwrap_or(0);
    format!(
        " (brig-vmm: rx {} frames of {} B, tx {} frames of {} B, {} notifications, {} MMIO exits, {} interrupts)",
        a.net_rx_packets - b.net_rx_packets,
        mean(a.net_rx_bytes - b.net_rx_bytes, a.net_rx_packets - b.net_rx_packets),
        a.net_tx_packets - b.net_tx_packets,
        mean(a.net_tx_bytes - b.net_tx_bytes, a.net_tx_packets - b.net_tx_packets),
        a.virtio_notifications - b.virtio_notifications,
        a.vcpu_exits_mmio - b.vcpu_exits_mmio,
        a.virtio_interrupts - b.virtio_interrupts,
    )
}

/// brig-vmm's net transport as a saved state shows it (interrupt status, each
/// queue's next avail and used index, whether the tap is watched and a frame
/// waits), for a stalled transfer's message.
fn vm_net_state(id: &str) -> String {
    if !id.ends_with("brig") {
        return String::new();
    }
    // The jailed brig-vmm sees none of the host's paths: the file goes with the request.
    let path = std::env::temp_dir().join(format!("{id}-stalled.state"));
    let saved = std::fs::File::create(&path).map_err(|e| e.to_string()).and_then(|file| {
        let mut control = try_vmm_control(id)?;
        let saved = control.pause().and_then(|_| control.save_state_to(&file));
        let _ = control.resume();
        saved.map_err(|e| e.to_string())
    });
    let bytes = std::fs::read(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    if let Err(e) = saved {
        return format!("brig-vmm's state: {e}");
    }
    let Some(start) = bytes.iter().position(|&b| b == b'{') else { return "brig-vmm's state: no JSON".into() };
    let mut values = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<serde_json::Value>();
    let Some(Ok(state)) = values.next() else { return "brig-vmm's state does not decode".into() };
    let mut nets = Vec::new();
    find_net_transports(&state, &mut nets);
    format!("brig-vmm's net device: {}", nets.join("; "))
}

/// Every object in `value` with `"device_type": 1` (virtio-net).
fn find_net_transports(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("device_type").and_then(serde_json::Value::as_u64) == Some(1) {
                found.push(value.to_string());
            }
            map.values().for_each(|v| find_net_transports(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| find_net_transports(v, found)),
        _ => {}
    }
}

/// The guest kernel's virtio interrupt counts, twice a second apart.
fn guest_interrupts(containerd: &Containerd, id: &str) -> String {
    let read = |n: usize| {
        let exec_id = format!("irq-{n}");
        let out = containerd.ctr(&["task", "exec", "--exec-id", &exec_id, id, "cat", "/proc/interrupts"]);
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("virtio")).collect::<Vec<_>>().join("\n")
    };
    let first = read(0);
    std::thread::sleep(Duration::from_secs(1));
    format!("{first}\n-- a second later --\n{}", read(1))
}

/// The last lines brig-vmm and brig-jailer wrote (the task directory's `vmm.log`).
fn vmm_log_tail(id: &str) -> String {
    if !id.ends_with("brig") {
        return String::new();
    }
    match task_dir(id).and_then(|d| std::fs::read_to_string(d.join("vmm.log")).map_err(|e| e.to_string())) {
        Ok(log) => log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
        Err(e) => format!("vmm.log: {e}"),
    }
}

/// The shim's (and containerd's) warnings and errors, for a failure's message.
fn warnings(containerd: &Containerd) -> String {
    let log = containerd.log_for_failure();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("level=warn") || l.contains("level=error")).collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One `GET /` from busybox httpd.
fn request(address: &str) -> Duration {
    let start = Instant::now();
    let mut stream = TcpStream::connect((address, 80)).expect("httpd");
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("answer");
    // busybox httpd answers HTTP/1.1 to a 1.0 request.
    assert!(
        answer.starts_with(b"HTTP/1.0 200 ") || answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    start.elapsed()
}

fn measure(containerd: &Containerd, network: &CniNetwork, label: &'static str, runtime: &str) -> Row {
    let ns = network.add(&format!("bench-{label}"));
    let id = format!("net-{label}");
    let with_ns = format!("network:{}", ns.path());
    let serve = "mkdir -p /www && echo page > /www/index.html && httpd -p 80 -h /www && \
                 while true; do nc -l -p 5001 > /dev/null; done";
    let args = ["run", "-d", "--with-ns", &with_ns, "--runtime", runtime, IMAGE, &id, "sh", "-c", serve];
    containerd.assert_ok(&containerd.ctr(&args));
    containerd.wait_for_status(&id, "RUNNING");
    let bytes = mib() << 20;
    drop(connect(&ns.address, 80));
    let best = |samples: Vec<Duration>| samples.into_iter().min().expect("samples");
    let counters = || (label == "brig").then(|| vmm_control(&id).metrics().expect("brig-vmm's metrics").counters);
    let before = counters();
    let up = best((0..ROUNDS).map(|_| upload(&ns.address, bytes)).collect());
    eprintln!("net: {label}: host → container {:.1} MB/s{}", mb_per_s(bytes, up), per_frame(&before, &counters()));
    let before = counters();
    let down = best((0..ROUNDS).map(|r| download(containerd, &id, &network.gateway, bytes, r)).collect());
    eprintln!("net: {label}: container → host {:.1} MB/s{}", mb_per_s(bytes, down), per_frame(&before, &counters()));
    let mut requests: Vec<Duration> = (0..REQUESTS).map(|_| request(&ns.address)).collect();
    requests.sort();
    containerd.kill_and_delete(&id);
    Row { label, upload_mbs: mb_per_s(bytes, up), download_mbs: mb_per_s(bytes, down), request: requests[REQUESTS / 2] }
}

fn main() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let network = CniNetwork::new("brig-bench", "brigbench0", "10.88.9.0/24");
    let brig = measure(&containerd, &network, "brig", RUNTIME);
    let runc = measure(&containerd, &network, "runc", "io.containerd.runc.v2");
    println!(
        "TCP on one CNI bridge, in the test host ({} MiB each way, best of {ROUNDS}; HTTP GET, median of {REQUESTS}):",
        mib()
    );
    println!("  {:<8} {:>16} {:>16} {:>12}", "runtime", "host→container", "container→host", "GET /");
    for row in [&brig, &runc] {
        println!(
            "  {:<8} {:>11.1} MB/s {:>11.1} MB/s {:>9.2} ms",
            row.label,
            row.upload_mbs,
            row.download_mbs,
            ms(row.request)
        );
    }
    println!(
        "  brig / runc: host→container {:.2}x, container→host {:.2}x, GET {:.2}x the time",
        brig.upload_mbs / runc.upload_mbs,
        brig.download_mbs / runc.download_mbs,
        ms(brig.request) / ms(runc.request)
    );
}
