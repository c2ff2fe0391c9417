//! A container network namespace set up by real CNI (Debian's bridge and host-local
//! plugins), joined to the VM by the shim: `ctr run --with-ns network:PATH`, as CRI
//! runs a pod's containers. The host fetches a page from busybox `httpd` in the
//! container at the address CNI reported, the container reaches a listener on the
//! bridge, and its NIC has CNI's address and MAC; the tap and redirects are in the
//! namespace while it runs, and nothing of brig's is left there after `ctr task delete`
//! or a SIGKILL of brig-vmm. Without a namespace there is only loopback (up, as with
//! runc); `--net-host` is refused by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brig_tests::containerd::{describe, Containerd};
use brig_vmm_api::client::Client;

const PLUGINS: &str = "/usr/lib/cni";
const BRIDGE: &str = "brigcni0";
const SUBNET: &str = "10.88.7.0/24";

/// A named network namespace (`ip netns add`) that CNI's bridge plugin has put on
/// [`BRIDGE`]; CNI DEL and the namespace's removal on drop.
struct CniNamespace {
    name: String,
    config: String,
    data_dir: PathBuf,
    /// The container's address and MAC, as CNI's result reports them.
    address: String,
    mac: String,
}

impl CniNamespace {
    fn add(name: &str) -> CniNamespace {
        run("ip", &["netns", "add", name]);
        let data_dir = std::env::temp_dir().join(format!("brig-cni-{name}"));
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "brig-test",
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": data_dir},
        })
        .to_string();
        let mut ns = CniNamespace { name: name.into(), config, data_dir, address: String::new(), mac: String::new() };
        let result = ns.cni("ADD");
        let result: serde_json::Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
        let address = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("an address: {result}"));
        ns.address = address.split('/').next().unwrap_or_default().to_owned();
        let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
        let eth0 = interfaces.iter().find(|i| i["name"] == "eth0" && i.get("sandbox").is_some());
        ns.mac = eth0.and_then(|i| i["mac"].as_str()).unwrap_or_else(|| panic!("eth0's MAC: {result}")).to_owned();
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn cni(&self, command: &str) -> String {
        let mut child = Command::new(Path::new(PLUGINS).join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.name)
            .env("CNI_NETNS", self.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CNI bridge plugin (containernetworking-plugins) runs");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(self.config.as_bytes()).expect("CNI config");
        let out = child.wait_with_output().expect("bridge plugin");
        assert!(out.status.success(), "CNI {command}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS ARGS…`'s output.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("tc", &all)
    }

    /// What of brig's is in the namespace: its tap, and qdiscs on CNI's interface.
    fn brigs(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.ip(&["-o", "link", "show"]).contains("tap0_brig") {
            found.push("tap0_brig".to_owned());
        }
        let qdiscs = self.tc(&["qdisc", "show", "dev", "eth0"]);
        found.extend(qdiscs.lines().filter(|l| l.contains("ingress")).map(str::to_owned));
        found
    }
}

impl Drop for CniNamespace {
    fn drop(&mut self) {
        self.cni("DEL");
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The control socket of task `id`'s brig-vmm (in its jail's state directory).
fn control_of(id: &str) -> Client {
    let dirs = std::fs::read_dir("/run/brig").expect("/run/brig");
    let dir = dirs
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            std::fs::read_to_string(d.join("task")).is_ok_and(|t| t.lines().next() == Some(&format!("default/{id}")))
        })
        .unwrap_or_else(|| panic!("no task directory for {id} in /run/brig"));
    Client::connect(&dir.join("jail/state/api.sock"), Duration::from_secs(30)).expect("brig-vmm's control socket")
}

/// The first connection to `listener` within `limit`.
fn accept_within(listener: &std::net::TcpListener, limit: Duration) -> (std::net::TcpStream, std::net::SocketAddr) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((conn, from)) => {
                conn.set_nonblocking(false).expect("blocking");
                return (conn, from);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no connection from the container within {limit:?}: {e}"),
        }
    }
}

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

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_cni_namespace_is_the_containers_network_and_is_left_after_delete_and_after_a_vmm_sigkill() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let ns = CniNamespace::add("brig-cni-1");
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

    // The host reaches the container at CNI's address (httpd may still be starting).
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        match http_get(&ns.address) {
            Ok(answer) => break answer,
            Err(e) if Instant::now() > deadline => {
                panic!("no page from {}: {e}; {:?}", ns.address, control_of("joined").metrics().expect("metrics"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(page.contains("brig-page"), "{page}");

    // The container sees CNI's address and MAC, and reaches the bridge's side.
    let addr = containerd.ctr(&["task", "exec", "--exec-id", "addr", "joined", "ip", "addr", "show", "eth0"]);
    containerd.assert_ok(&addr);
    let text = String::from_utf8_lossy(&addr.stdout);
    assert!(text.contains(&format!("inet {}/24", ns.address)), "{text}");
    assert!(text.contains(&ns.mac), "the NIC has CNI's MAC {}: {text}", ns.mac);
    let listener = std::net::TcpListener::bind("10.88.7.1:0").expect("a listener on the bridge");
    let port = listener.local_addr().expect("port").port();
    // busybox nc waits for the peer to close: the host reads the line, then closes.
    let send = format!("echo hello-host | nc 10.88.7.1 {port}");
    let nc = containerd
        .command(&["task", "exec", "--exec-id", "nc", "joined", "sh", "-c", &send])
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
    assert_eq!((line.as_str(), from.ip().to_string()), ("hello-host\n", ns.address.clone()));
    let rx = control_of("joined").metrics().expect("metrics").counters;
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
