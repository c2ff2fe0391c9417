//! A container network namespace set up by real CNI (Debian's bridge and host-local
//! plugins), joined to the VM by the shim: `ctr run --with-ns network:PATH`, as CRI
//! runs a pod's containers. The host fetches a page from busybox `httpd` in the
//! container at the address CNI reported, the container reaches a listener on the
//! bridge, and its NIC has CNI's address and MAC; the tap and redirects are in the
//! namespace while it runs, and nothing of brig's is left there after `ctr task delete`
//! or a SIGKILL of brig-vmm. Without a namespace there is only loopback (up, as with
//! runc); `--net-host` is refused by name.

use std::process::Stdio;
use std::time::{Duration, Instant};

use brig_tests::cni::{accept_within, run, vmm_control, CniNetwork, CtrNetwork};
use brig_tests::containerd::{describe, Containerd};

const BRIDGE: &str = "brigcni0";
const SUBNET: &str = "10.88.7.0/24";

/// `GET /` from `address`'s port 80; the whole answer.
fn http_get(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &(address.parse::<std::net::IpAddr>().expect("an IP"), 80).into(),
        Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The page httpd in task `id` serves at `address`, within a minute (it may still be
/// starting).
fn fetch_page(address: &str, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(address) {
            Ok(answer) => return answer,
            Err(e) if Instant::now() > deadline => {
                panic!("no page from {address}: {e}; {:?}", vmm_control(id).metrics().expect("metrics"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `ip addr show eth0` in task `id`.
fn eth0_of(containerd: &Containerd, id: &str) -> String {
    let addr = containerd.ctr(&["task", "exec", "--exec-id", "addr", id, "ip", "addr", "show", "eth0"]);
    containerd.assert_ok(&addr);
    String::from_utf8_lossy(&addr.stdout).into_owned()
}

/// Task `id` sends `text` with `nc` to a listener on `gateway` (the bridge's side);
/// returns the line the host read and the address it came from.
fn line_from_container(containerd: &Containerd, id: &str, gateway: &str, text: &str) -> (String, String) {
    let listener = std::net::TcpListener::bind((gateway, 0)).expect("a listener on the bridge");
    let port = listener.local_addr().expect("port").port();
    // busybox nc waits for the peer to close: the host reads the line, then closes.
    let send = format!("echo {text} | nc {gateway} {port}");
    let nc = containerd
        .command(&["task", "exec", "--exec-id", "nc", id, "sh", "-c", &send])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr task exec");
    let (conn, from) = accept_within(&listener, Duration::from_secs(60));
    conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line).expect("the container's line");
    drop(conn);
    containerd.assert_ok(&nc.wait_with_output().expect("ctr task exec"));
    (line, from.ip().to_string())
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_cni_namespace_is_the_containers_network_and_is_left_after_delete_and_after_a_vmm_sigkill() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let network = CniNetwork::new("brig-test", BRIDGE, SUBNET);
    let ns = network.add("brig-cni-1");
    let with_ns = format!("network:{}", ns.path());
    let serve = "mkdir -p /www && echo brig-page > /www/index.html && exec httpd -f -p 80 -h /www";
    containerd.assert_ok(&containerd.run_with(&["-d", "--with-ns", &with_ns], "joined", &["sh", "-c", serve]));
    let pid = containerd.wait_for_status("joined", "RUNNING");

    assert_eq!(ns.brigs().len(), 2, "the tap and eth0's ingress qdisc: {:?}", ns.brigs());
    let filters = ns.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(filters.contains("mirred") && filters.contains("tap0_brig"), "eth0 redirects to the tap: {filters}");
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("brig-vmm's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(fds.iter().any(|f| f.ends_with("/dev/net/tun")), "brig-vmm holds the tap: {fds:?}");

    // The host reaches the container at CNI's address.
    let page = fetch_page(&ns.address, "joined");
    assert!(page.contains("brig-page"), "{page}");

    // The container sees CNI's address and MAC, and reaches the bridge's side.
    let text = eth0_of(&containerd, "joined");
    assert!(text.contains(&format!("inet {}/24", ns.address)), "{text}");
    assert!(text.contains(&ns.mac), "the NIC has CNI's MAC {}: {text}", ns.mac);
    let (line, from) = line_from_container(&containerd, "joined", &network.gateway, "hello-host");
    assert_eq!((line.as_str(), from), ("hello-host\n", ns.address.clone()));
    let rx = vmm_control("joined").metrics().expect("metrics").counters;
    assert!(rx.net_rx_packets > 0 && rx.net_tx_packets > 0, "{rx:?}");

    containerd.kill_and_delete("joined");
    assert_eq!(ns.brigs(), Vec::<String>::new(), "delete leaves the namespace as CNI made it");

    containerd.assert_ok(&containerd.run_with(&["-d", "--with-ns", &with_ns], "killed", &["sleep", "1000"]));
    let pid = containerd.wait_for_status("killed", "RUNNING");
    assert_eq!(ns.brigs().len(), 2, "joined again: {:?}", ns.brigs());
    run("kill", &["-9", &pid.to_string()]);
    containerd.wait_for_status("killed", "STOPPED");
    containerd.assert_ok(&containerd.ctr(&["task", "delete", "killed"]));
    containerd.assert_ok(&containerd.ctr(&["container", "delete", "killed"]));
    assert_eq!(ns.brigs(), Vec::<String>::new(), "nothing of brig's after brig-vmm's SIGKILL");
    containerd.assert_no_leftovers("CNI namespace");
}

/// What `ctr run --cni` does: create the task (brig gives it a namespace of its own,
/// with brig-vmm in it), run CNI on `/proc/<task pid>/ns/net`, start it; on exit,
/// CNI DEL and delete.
#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn ctr_run_cni_gives_the_container_the_address_cni_reports_and_leaves_nothing() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let network = CtrNetwork::install("brig-ctr", "brigctr0", "10.88.9.0/24");
    let serve = "mkdir -p /www && echo brig-cni-page > /www/index.html && exec httpd -f -p 80 -h /www";
    let ctr = containerd
        .run_command(&["--rm", "--cni"], "cnirun", &["sh", "-c", serve])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run --cni");
    let pid = containerd.wait_for_status("cnirun", "RUNNING");
    let address = network.wait_for_address("cnirun");
    let netns = format!("--net=/proc/{pid}/ns/net");
    let filters = run("nsenter", &[&netns, "tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(filters.contains("mirred") && filters.contains("tap0_brig"), "eth0 redirects to the tap: {filters}");

    let page = fetch_page(&address, "cnirun");
    assert!(page.contains("brig-cni-page"), "{page}");
    let text = eth0_of(&containerd, "cnirun");
    assert!(text.contains(&format!("inet {address}/24")), "the address CNI reported ({address}): {text}");
    let (line, from) = line_from_container(&containerd, "cnirun", &network.gateway, "hello-ctr");
    assert_eq!((line.as_str(), from), ("hello-ctr\n", address.clone()));

    containerd.assert_ok(&containerd.ctr(&["task", "kill", "-s", "SIGKILL", "cnirun"]));
    let out = ctr.wait_with_output().expect("ctr run");
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    assert_eq!(network.address_of("cnirun"), None, "ctr's CNI DEL released the address");
    containerd.assert_no_leftovers("ctr run --cni, killed");

    // brig-vmm killed: the namespace (and with it the tap, CNI's veth and its
    // redirects) goes with the task.
    let ctr = containerd
        .run_command(&["--rm", "--cni"], "cnikill", &["sleep", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run --cni");
    let pid = containerd.wait_for_status("cnikill", "RUNNING");
    network.wait_for_address("cnikill");
    run("kill", &["-9", &pid.to_string()]);
    let out = ctr.wait_with_output().expect("ctr run");
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    containerd.assert_no_leftovers("ctr run --cni, brig-vmm killed");
    let veths = run("ip", &["-o", "link", "show", "master", "brigctr0"]);
    assert_eq!(veths.trim(), "", "no veth of the task is left on the bridge");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn without_a_network_namespace_the_container_has_loopback_up() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let out = containerd.run("lo-only", &["ip", "-o", "link"]);
    containerd.assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Tunnel modules' fallback devices (sit0 …) are in every namespace, runc's too.
    let lo = text.lines().find(|l| l.contains(": lo: ")).unwrap_or_else(|| panic!("no lo: {text}"));
    assert!(lo.contains(",UP"), "loopback is up: {text}");
    assert!(!text.contains("link/ether"), "no Ethernet interface: {text}");
    containerd.assert_no_leftovers("loopback only");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn the_hosts_network_is_refused_by_name() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let out = containerd.run_with(&["--rm", "--net-host"], "host-net", &["true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run it without --net-host"), "{}", describe(&out));
    containerd.assert_no_leftovers("--net-host");
}
