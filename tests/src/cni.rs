//! Container networks made as CNI makes them: Debian's `bridge` plugin (with
//! `host-local` addresses) run against named network namespaces (`ip netns add`),
//! the way CRI sets up a pod sandbox before it creates the pod's containers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brig_vmm_api::client::Client;

use crate::containerd::describe;

/// Where Debian's containernetworking-plugins are.
pub const PLUGINS: &str = "/usr/lib/cni";

/// The `bridge` plugin's config on `bridge` with `host-local` addresses from
/// `subnet`, recorded in `data_dir`.
fn bridge_plugin(bridge: &str, subnet: &str, data_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data_dir},
    })
}

/// The bridge's address on `subnet` (`10.88.7.0/24` → `10.88.7.1`).
fn gateway_of(subnet: &str) -> String {
    let prefix = subnet.rsplit_once('.').map_or(subnet, |(p, _)| p);
    format!("{prefix}.1")
}

/// One bridge network: its CNI config and `host-local`'s address records, shared by
/// every namespace put on it (so each gets an address of its own).
#[derive(Debug)]
pub struct CniNetwork {
    config: String,
    data_dir: PathBuf,
    /// The bridge's address: the namespaces' gateway, and the host's side.
    pub gateway: String,
}

impl CniNetwork {
    /// Bridge `bridge` on `subnet` (`10.88.7.0/24`: the gateway is `.1`).
    pub fn new(name: &str, bridge: &str, subnet: &str) -> CniNetwork {
        let data_dir = std::env::temp_dir().join(format!("brig-cni-{name}-{}", std::process::id()));
        let mut config = bridge_plugin(bridge, subnet, &data_dir);
        config["cniVersion"] = "1.0.0".into();
        config["name"] = name.into();
        CniNetwork { config: config.to_string(), data_dir, gateway: gateway_of(subnet) }
    }

    /// A new named namespace, put on this network by CNI ADD.
    pub fn add(&self, name: &str) -> CniNamespace<'_> {
        run("ip", &["netns", "add", name]);
        let mut ns = CniNamespace { network: self, name: name.into(), address: String::new(), mac: String::new() };
        let result = ns.cni("ADD");
        let result: serde_json::Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
        let address = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("an address: {result}"));
        ns.address = address.split('/').next().unwrap_or_default().to_owned();
        let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
        let eth0 = interfaces.iter().find(|i| i["name"] == "eth0" && i.get("sandbox").is_some());
        ns.mac = eth0.and_then(|i| i["mac"].as_str()).unwrap_or_else(|| panic!("eth0's MAC: {result}")).to_owned();
        ns
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A named network namespace on a [`CniNetwork`]; CNI DEL and the namespace's
/// removal on drop.
#[derive(Debug)]
pub struct CniNamespace<'a> {
    network: &'a CniNetwork,
    pub name: String,
    /// The container's address and MAC, as CNI's result reports them.
    pub address: String,
    pub mac: String,
}

impl CniNamespace<'_> {
    /// What `ctr run --with-ns network:PATH` takes.
    pub fn path(&self) -> String {
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
        child.stdin.take().expect("stdin").write_all(self.network.config.as_bytes()).expect("CNI config");
        let out = child.wait_with_output().expect("bridge plugin");
        assert!(out.status.success(), "CNI {command}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS ARGS…`'s output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `tc -n NS ARGS…`'s output.
    pub fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("tc", &all)
    }

    /// What of brig's is in the namespace: its tap, and ingress qdiscs on CNI's interface.
    pub fn brigs(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.ip(&["-o", "link", "show"]).contains("tap0_brig") {
            found.push("tap0_brig".to_owned());
        }
        let qdiscs = self.tc(&["qdisc", "show", "dev", "eth0"]);
        found.extend(qdiscs.lines().filter(|l| l.contains("ingress")).map(str::to_owned));
        found
    }
}

impl Drop for CniNamespace<'_> {
    fn drop(&mut self) {
        self.cni("DEL");
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Where `ctr run --cni` (go-cni's defaults) reads network configs and finds plugins.
const CTR_CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CTR_CNI_BIN_DIR: &str = "/opt/cni/bin";

/// A bridge network as `ctr run --cni` uses it: the first config in go-cni's
/// default directory, and its plugin directory pointing at Debian's plugins (the
/// test host's root is an overlay: nothing reaches the real host). Removed on drop,
/// with the bridge.
#[derive(Debug)]
pub struct CtrNetwork {
    conf: PathBuf,
    data_dir: PathBuf,
    name: String,
    bridge: String,
    linked_plugins: bool,
    pub gateway: String,
}

impl CtrNetwork {
    pub fn install(name: &str, bridge: &str, subnet: &str) -> CtrNetwork {
        let data_dir = std::env::temp_dir().join(format!("brig-ctr-cni-{name}-{}", std::process::id()));
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [bridge_plugin(bridge, subnet, &data_dir)],
        });
        std::fs::create_dir_all(CTR_CNI_CONF_DIR).expect("CNI's config directory");
        // First in go-cni's sorted list: the default network.
        let conf = Path::new(CTR_CNI_CONF_DIR).join(format!("00-{name}.conflist"));
        std::fs::write(&conf, config.to_string()).expect("the CNI config");
        let linked_plugins = !Path::new(CTR_CNI_BIN_DIR).exists();
        if linked_plugins {
            std::fs::create_dir_all("/opt/cni").expect("/opt/cni");
            std::os::unix::fs::symlink(PLUGINS, CTR_CNI_BIN_DIR).expect("/opt/cni/bin → Debian's plugins");
        }
        CtrNetwork {
            conf,
            data_dir,
            name: name.into(),
            bridge: bridge.into(),
            linked_plugins,
            gateway: gateway_of(subnet),
        }
    }

    /// The address `host-local` gave containerd's container `id` (CNI's container id
    /// is `NAMESPACE-ID`), once it has one.
    pub fn address_of(&self, id: &str) -> Option<String> {
        let owner = format!("default-{id}");
        let records = std::fs::read_dir(self.data_dir.join(&self.name)).ok()?;
        records.flatten().find_map(|record| {
            let text = std::fs::read_to_string(record.path()).ok()?;
            let name = record.file_name().to_string_lossy().into_owned();
            (text.lines().next().map(str::trim) == Some(owner.as_str())).then_some(name)
        })
    }

    /// Waits up to a minute for [`CtrNetwork::address_of`].
    pub fn wait_for_address(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(address) = self.address_of(id) {
                return address;
            }
            assert!(Instant::now() < deadline, "no CNI address for {id} after 60 s in {}", self.data_dir.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for CtrNetwork {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conf);
        if self.linked_plugins {
            let _ = std::fs::remove_file(CTR_CNI_BIN_DIR);
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// `program ARGS…`'s stdout; it must succeed.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first connection to `listener` within `limit`.
pub fn accept_within(listener: &std::net::TcpListener, limit: Duration) -> (std::net::TcpStream, std::net::SocketAddr) {
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

/// The control socket of task `id`'s brig-vmm (in its jail's state directory).
pub fn vmm_control(id: &str) -> Client {
    try_vmm_control(id).unwrap_or_else(|e| panic!("{e}"))
}

/// [`vmm_control`], for a failure's report: brig-vmm may be gone by then.
pub fn try_vmm_control(id: &str) -> Result<Client, String> {
    Client::connect(&task_dir(id)?.join("jail/state/api.sock"), Duration::from_secs(30))
        .map_err(|e| format!("brig-vmm's control socket: {e:?}"))
}

/// The shim's task directory of container `id` (namespace `default`).
pub fn task_dir(id: &str) -> Result<std::path::PathBuf, String> {
    let dirs = std::fs::read_dir("/run/brig").map_err(|e| format!("/run/brig: {e}"))?;
    dirs.filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            std::fs::read_to_string(d.join("task")).is_ok_and(|t| t.lines().next() == Some(&format!("default/{id}")))
        })
        .ok_or_else(|| format!("no task directory for {id} in /run/brig"))
}
