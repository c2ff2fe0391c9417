//! The OCI spec as the guest gets it, and the VM size it asks for.

use std::path::Path;

use serde_json::Value;

use crate::config::Config;
use crate::error::ShimError;
use crate::sandbox::Size;

/// Most vCPUs a spec can ask for (brig-vmm's limit).
const MAX_VCPUS: u64 = 32;

/// `config.json` from the bundle, made fit for the guest: hooks (host binaries)
/// and the host cgroup path are dropped; bind mounts of host paths are refused,
/// since the guest cannot see the host's files.
pub fn guest_spec(bundle: &Path) -> Result<(Vec<u8>, Value), ShimError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(ShimError::io(format!("reading {}", path.display())))?;
    let mut spec: Value =
        serde_json::from_slice(&text).map_err(|e| ShimError::InvalidArgument(format!("{}: {e}", path.display())))?;
    if let Some(hooks) = spec.as_object_mut().and_then(|s| s.remove("hooks")) {
        if hooks.as_object().is_some_and(|h| !h.is_empty()) {
            log::warn!("OCI hooks run on the host with runc; brig ignores them: {hooks}");
        }
    }
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("cgroupsPath");
    }
    for mount in spec.get("mounts").and_then(Value::as_array).into_iter().flatten() {
        let bind = mount.get("type").and_then(Value::as_str) == Some("bind")
            || mount
                .get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|v| v == "bind" || v == "rbind"));
        let source = mount.get("source").and_then(Value::as_str).unwrap_or_default();
        if bind && source.starts_with('/') {
            let destination = mount.get("destination").and_then(Value::as_str).unwrap_or_default();
            return Err(ShimError::Unimplemented(format!(
                "bind-mounting the host path {source} to {destination} (the guest has no access to host files yet)"
            )));
        }
    }
    let bytes = serde_json::to_vec(&spec).map_err(|e| ShimError::Internal(format!("encoding the spec: {e}")))?;
    Ok((bytes, spec))
}

/// The VM for `spec`: its memory limit plus the guest's own overhead, and as many
/// vCPUs as its CPU quota (or cpuset) allows; the configured defaults otherwise.
pub fn vm_size(spec: &Value, config: &Config) -> Size {
    let resources = &spec["linux"]["resources"];
    let memory_mib = resources["memory"]["limit"]
        .as_i64()
        .filter(|l| *l > 0)
        .map_or(config.default_memory_mib, |limit| (limit as u64).div_ceil(1 << 20) + config.memory_overhead_mib);
    let cpu = &resources["cpu"];
    let from_quota = match (cpu["quota"].as_i64(), cpu["period"].as_u64()) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => Some((quota as u64).div_ceil(period)),
        _ => None,
    };
    let from_cpuset = cpu["cpus"].as_str().and_then(cpuset_count);
    let vcpus = from_quota.or(from_cpuset).unwrap_or(u64::from(config.default_vcpus)).clamp(1, MAX_VCPUS);
    Size { vcpus: vcpus as u8, memory_mib: memory_mib.max(64) }
}

/// CPUs in a cpuset list like `0-3,6`.
fn cpuset_count(list: &str) -> Option<u64> {
    let mut count = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => count += b.trim().parse::<u64>().ok()? - a.trim().parse::<u64>().ok()? + 1,
            None => {
                part.trim().parse::<u64>().ok()?;
                count += 1;
            }
        }
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vms_are_sized_from_the_spec() {
        let config = Config::default();
        let none = vm_size(&json!({}), &config);
        assert_eq!((none.vcpus, none.memory_mib), (1, 128));
        let spec = json!({"linux": {"resources": {"memory": {"limit": 256 << 20}, "cpu": {"quota": 150000, "period": 100000}}}});
        let size = vm_size(&spec, &config);
        assert_eq!((size.vcpus, size.memory_mib), (2, 256 + 64));
        let cpuset = json!({"linux": {"resources": {"cpu": {"cpus": "0-2,5"}}}});
        assert_eq!(vm_size(&cpuset, &config).vcpus, 4);
        let huge = json!({"linux": {"resources": {"cpu": {"quota": 10_000_000, "period": 1000}}}});
        assert_eq!(vm_size(&huge, &config).vcpus, 32);
    }

    #[test]
    fn hooks_and_host_binds_are_handled() {
        let dir = std::env::temp_dir().join(format!("brig-shim-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let spec = json!({
            "process": {"args": ["sh"]},
            "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
            "linux": {"cgroupsPath": "/default/x"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
        });
        std::fs::write(dir.join("config.json"), spec.to_string()).expect("write");
        let (_, guest) = guest_spec(&dir).expect("fit");
        assert!(guest.get("hooks").is_none() && guest["linux"].get("cgroupsPath").is_none());
        let with_bind =
            json!({"mounts": [{"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]}]});
        std::fs::write(dir.join("config.json"), with_bind.to_string()).expect("write");
        let err = guest_spec(&dir).expect_err("host bind");
        assert!(err.to_string().contains("/srv/data"), "{err}");
        std::fs::write(dir.join("config.json"), "{not json").expect("write");
        assert!(matches!(guest_spec(&dir), Err(ShimError::InvalidArgument(_))));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
