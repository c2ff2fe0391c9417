//! The OCI spec as the guest gets it, and the VM size it asks for.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::ShimError;
use crate::sandbox::Size;

/// Most vCPUs a spec can ask for (brig-vmm's limit).
const MAX_VCPUS: u64 = 32;

/// A bundle's spec, made fit for the guest.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// What the agent gets. Not a re-serialization of [`GuestSpec::spec`]: this is
    /// the bundle's own JSON with only hooks and the cgroup path taken out, so fields
    /// this shim's oci-spec does not know (a newer runtime-spec, vendor extensions)
    /// reach the agent unchanged.
    pub bytes: Vec<u8>,
    /// The same spec, typed, for what the shim decides from it.
    pub spec: Spec,
    /// The network namespace the bundle's spec asks for (the host path is not in
    /// [`GuestSpec::bytes`]).
    pub network: NetworkNamespace,
}

/// Whose network the container has: brig joins a host network namespace to the VM
/// (crate::network); inside the guest the container always gets a namespace of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkNamespace {
    /// A new namespace (plain `ctr run`, `ctr run --cni`): the container has loopback
    /// until an interface is joined to it.
    New,
    /// The host namespace at this path, which CNI has set up (CRI's pod sandbox,
    /// `ctr run --with-ns network:PATH`): its interface is joined to the VM.
    Host(PathBuf),
}

/// The spec's network namespace. A spec without one asks for the host's network
/// (`--net-host`), which a VM cannot share: refused, saying so.
pub fn network_namespace(spec: &Spec) -> Result<NetworkNamespace, ShimError> {
    let namespaces = spec.linux().as_ref().and_then(|linux| linux.namespaces().as_ref());
    let network =
        namespaces.into_iter().flatten().find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network);
    match network {
        None => Err(ShimError::InvalidArgument(
            "the spec shares the host's network namespace (--net-host), which a brig container cannot: \
             it runs in its own VM, with its own kernel and network stack; run it without --net-host"
                .into(),
        )),
        Some(ns) => Ok(match ns.path() {
            Some(path) => NetworkNamespace::Host(path.clone()),
            None => NetworkNamespace::New,
        }),
    }
}

/// `config.json` from the bundle, made fit for the guest: hooks (host binaries),
/// the host cgroup path and the host path of the network namespace are dropped; bind
/// mounts of host paths are refused, since the guest cannot see the host's files.
pub fn guest_spec(bundle: &Path) -> Result<GuestSpec, ShimError> {
    let path = bundle.join("config.json");
    let invalid = |e: serde_json::Error| ShimError::InvalidArgument(format!("{}: {e}", path.display()));
    let text = std::fs::read(&path).map_err(ShimError::io(format!("reading {}", path.display())))?;
    // Raw on purpose, to pass unknown fields through (see `GuestSpec::bytes`).
    let mut raw: Map<String, Value> = serde_json::from_slice(&text).map_err(invalid)?;
    let mut host_netns = None;
    if let Some(hooks) = raw.remove("hooks") {
        if hooks.as_object().is_some_and(|h| !h.is_empty()) {
            log::warn!("OCI hooks run on the host with runc; brig ignores them: {hooks}");
        }
    }
    if let Some(linux) = raw.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("cgroupsPath");
        // The guest's container gets a network namespace of its own, which brig joins
        // to the host's: the host path means nothing in the guest.
        let namespaces = linux.get_mut("namespaces").and_then(Value::as_array_mut);
        for ns in namespaces.into_iter().flatten().filter_map(Value::as_object_mut) {
            if ns.get("type").and_then(Value::as_str) == Some("network") {
                host_netns = ns.remove("path");
            }
        }
    }
    let bytes = serde_json::to_vec(&raw).map_err(|e| ShimError::Internal(format!("encoding the spec: {e}")))?;
    // Typed from what the agent gets, so the shim refuses exactly what the agent would.
    let spec: Spec = serde_json::from_slice(&bytes).map_err(invalid)?;
    // Before the binds: `--net-host` also bind-mounts the host's /etc/hosts.
    let network = match (network_namespace(&spec)?, host_netns) {
        (NetworkNamespace::New, Some(Value::String(path))) => NetworkNamespace::Host(path.into()),
        (NetworkNamespace::New, Some(other)) => {
            return Err(ShimError::InvalidArgument(format!(
                "{}: the network namespace's path {other} is not a string",
                path.display()
            )))
        }
        (network, _) => network,
    };
    refuse_host_binds(&spec)?;
    Ok(GuestSpec { bytes, spec, network })
}

fn refuse_host_binds(spec: &Spec) -> Result<(), ShimError> {
    for mount in spec.mounts().iter().flatten() {
        let bind = mount.typ().as_deref() == Some("bind")
            || mount.options().iter().flatten().any(|o| o == "bind" || o == "rbind");
        match mount.source() {
            Some(source) if bind && source.is_absolute() => {
                return Err(ShimError::Unimplemented(format!(
                    "bind-mounting the host path {} to {} (the guest has no access to host files yet)",
                    source.display(),
                    mount.destination().display()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The VM for `spec`: its memory limit plus the guest's own overhead, and as many
/// vCPUs as its CPU quota (or cpuset) allows; the configured defaults otherwise. A
/// cpuset that is not a CPU list is refused.
pub fn vm_size(spec: &Spec, config: &Config) -> Result<Size, ShimError> {
    let resources = spec.linux().as_ref().and_then(|linux| linux.resources().as_ref());
    let memory_mib = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|memory| memory.limit())
        .filter(|limit| *limit > 0)
        .map_or(config.default_memory_mib, |limit| (limit as u64).div_ceil(1 << 20) + config.memory_overhead_mib);
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let cpu_max = match (cpu.and_then(|c| c.quota()), cpu.and_then(|c| c.period())) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => Some((quota as u64, period)),
        _ => None,
    };
    let from_quota = cpu_max.map(|(quota, period)| quota.div_ceil(period));
    let from_cpuset = match cpu.and_then(|c| c.cpus().as_deref()) {
        Some(list) => cpuset_count(list).map_err(|why| {
            ShimError::InvalidArgument(format!("linux.resources.cpu.cpus {list:?} is not a CPU list like 0-3,6: {why}"))
        })?,
        None => None,
    };
    let vcpus = from_quota.or(from_cpuset).unwrap_or(u64::from(config.default_vcpus)).clamp(1, MAX_VCPUS);
    Ok(Size { vcpus: vcpus as u8, memory_mib: memory_mib.max(64), cpu_max })
}

/// CPUs in a cpuset list like `0-3,6` (`None` for an empty list).
fn cpuset_count(list: &str) -> Result<Option<u64>, String> {
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("{:?} is not a CPU number", s.trim()));
    let mut count = 0u64;
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let cpus = match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return Err(format!("the range {first}-{last} runs backwards"));
                }
                (last - first).saturating_add(1)
            }
            None => number(part).map(|_| 1)?,
        };
        count = count.saturating_add(cpus);
    }
    Ok((count > 0).then_some(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed(value: Value) -> Spec {
        serde_json::from_value(value).expect("a valid spec")
    }

    #[test]
    fn vms_are_sized_from_the_spec() {
        let config = Config::default();
        let size = |spec: Value| vm_size(&typed(spec), &config).expect("a size");
        let none = size(json!({}));
        assert_eq!((none.vcpus, none.memory_mib), (1, 128));
        let spec = json!({"linux": {"resources": {"memory": {"limit": 256 << 20}, "cpu": {"quota": 150000, "period": 100000}}}});
        let sized = size(spec);
        assert_eq!((sized.vcpus, sized.memory_mib), (2, 256 + 64));
        let cpuset = json!({"linux": {"resources": {"cpu": {"cpus": "0-2,5"}}}});
        assert_eq!(size(cpuset).vcpus, 4);
        let huge = json!({"linux": {"resources": {"cpu": {"quota": 10_000_000, "period": 1000}}}});
        assert_eq!(size(huge).vcpus, 32);
        let unlimited =
            json!({"linux": {"resources": {"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000}}}});
        let sized = size(unlimited);
        assert_eq!((sized.vcpus, sized.memory_mib), (1, 128), "-1 is no limit");
    }

    #[test]
    fn a_cpuset_that_is_not_a_cpu_list_is_refused_not_miscounted() {
        let config = Config::default();
        let cpus = |list: &str| vm_size(&typed(json!({"linux": {"resources": {"cpu": {"cpus": list}}}})), &config);
        let err = cpus("5-3").expect_err("a backwards range");
        assert!(matches!(err, ShimError::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid argument: linux.resources.cpu.cpus \"5-3\" is not a CPU list like 0-3,6: the range 5-3 runs backwards"
        );
        assert!(cpus("0-x").expect_err("not a number").to_string().contains("\"x\" is not a CPU number"));
        assert_eq!(cpus("0-18446744073709551615").expect("a huge range").vcpus, 32, "no overflow: clamped");
        assert_eq!(cpus("").expect("empty").vcpus, 1, "an empty list is no cpuset");
        assert_eq!(cpus(" 1 , 3-4 ").expect("spaces").vcpus, 3);
    }

    #[test]
    fn the_network_namespace_is_new_a_host_path_or_refused_for_the_hosts_network() {
        let ns = |namespaces: Value| network_namespace(&typed(json!({"linux": {"namespaces": namespaces}})));
        assert_eq!(ns(json!([{"type": "pid"}, {"type": "network"}])).expect("new"), NetworkNamespace::New);
        let joined = ns(json!([{"type": "network", "path": "/var/run/netns/cni-1"}])).expect("a path");
        assert_eq!(joined, NetworkNamespace::Host("/var/run/netns/cni-1".into()));
        let host = ns(json!([{"type": "pid"}, {"type": "mount"}])).expect_err("--net-host");
        assert!(matches!(host, ShimError::InvalidArgument(_)), "{host:?}");
        assert!(host.to_string().contains("run it without --net-host"), "{host}");
        assert!(network_namespace(&typed(json!({}))).is_err(), "no namespaces at all: the host's network");
    }

    #[test]
    fn the_guest_spec_drops_the_host_path_of_the_network_namespace() {
        let dir = std::env::temp_dir().join(format!("brig-shim-spec-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let namespaces = json!([{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]);
        let spec = json!({"ociVersion": "1.2.0", "linux": {"namespaces": namespaces}});
        std::fs::write(dir.join("config.json"), spec.to_string()).expect("write");
        let fit = guest_spec(&dir).expect("fit");
        let guest: Value = serde_json::from_slice(&fit.bytes).expect("json");
        assert_eq!(guest["linux"]["namespaces"], json!([{"type": "pid"}, {"type": "network"}]));
        assert_eq!(fit.network, NetworkNamespace::Host("/var/run/netns/cni-1".into()), "the shim keeps the path");
        let host = json!({"ociVersion": "1.2.0", "linux": {"namespaces": [{"type": "pid"}]}, "mounts": [
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind"]}]});
        std::fs::write(dir.join("config.json"), host.to_string()).expect("write");
        let err = guest_spec(&dir).expect_err("--net-host");
        assert!(err.to_string().contains("--net-host"), "the namespace is named, not the /etc/hosts bind: {err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn hooks_and_host_binds_are_handled_and_unknown_fields_kept() {
        let dir = std::env::temp_dir().join(format!("brig-shim-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let spec = json!({
            "ociVersion": "1.2.0",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
            "linux": {"cgroupsPath": "/default/x", "futureLinuxField": {"a": 1}, "namespaces": [{"type": "network"}]},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "futureField": [1, 2]
        });
        std::fs::write(dir.join("config.json"), spec.to_string()).expect("write");
        let fit = guest_spec(&dir).expect("fit");
        let guest: Value = serde_json::from_slice(&fit.bytes).expect("json");
        assert!(guest.get("hooks").is_none() && guest["linux"].get("cgroupsPath").is_none());
        assert_eq!(guest["futureField"], json!([1, 2]), "unknown fields reach the agent");
        assert_eq!(guest["linux"]["futureLinuxField"], json!({"a": 1}));
        assert!(fit.spec.hooks().is_none());
        assert_eq!(fit.spec.process().as_ref().and_then(|p| p.args().clone()), Some(vec!["sh".to_owned()]));

        let own_network = json!({"namespaces": [{"type": "network"}]});
        let with_bind = json!({"linux": own_network,
            "mounts": [{"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]}]});
        std::fs::write(dir.join("config.json"), with_bind.to_string()).expect("write");
        let err = guest_spec(&dir).expect_err("host bind");
        assert!(matches!(err, ShimError::Unimplemented(_)) && err.to_string().contains("/srv/data"), "{err}");
        let relative =
            json!({"linux": own_network, "mounts": [{"destination": "/data", "type": "bind", "source": "data"}]});
        std::fs::write(dir.join("config.json"), relative.to_string()).expect("write");
        guest_spec(&dir).expect("a relative bind source is inside the rootfs");

        std::fs::write(dir.join("config.json"), "{not json").expect("write");
        assert!(matches!(guest_spec(&dir), Err(ShimError::InvalidArgument(_))));
        std::fs::write(dir.join("config.json"), r#"{"process": {"args": ["sh"]}}"#).expect("write");
        let err = guest_spec(&dir).expect_err("a process needs cwd and user");
        assert!(matches!(err, ShimError::InvalidArgument(_)), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
