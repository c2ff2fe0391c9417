//! cgroup v2 for containers: `/sys/fs/cgroup/brig/<id>`, resources from the OCI
//! spec, the freezer, statistics, OOM events and killing everything inside.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brig_protocol::agent::{CpuStats, IoDeviceStats, MemoryStats, PidsStats, StatsContainerResponse};
use oci_spec::runtime::LinuxResources;

pub const ROOT: &str = "/sys/fs/cgroup";
/// Where container cgroups live, under the root.
pub const PARENT: &str = "brig";
/// Controllers delegated to container cgroups.
const CONTROLLERS: &str = "+cpu +cpuset +io +memory +pids";
/// How long the freezer and `remove` wait for the kernel.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot write {value:?} to {path}")]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("invalid resource: {0}")]
    Invalid(String),
    #[error("{path} did not {what} within {SETTLE:?}")]
    Timeout { path: PathBuf, what: &'static str },
}

/// Enables the controllers for `brig/` and its children (once, at agent start).
pub fn prepare(root: &Path) -> Result<(), CgroupError> {
    let parent = root.join(PARENT);
    std::fs::create_dir_all(&parent).map_err(|source| CgroupError::Create { path: parent.clone(), source })?;
    write(&root.join("cgroup.subtree_control"), CONTROLLERS)?;
    write(&parent.join("cgroup.subtree_control"), CONTROLLERS)
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write { path: path.into(), value: value.into(), source })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.into(), source })
}

/// `key value` lines (cpu.stat, memory.stat, memory.events) as a lookup.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// A single-value file: a number, or 0 for `max`.
fn number_or_max(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(root: &Path, id: &str) -> Result<Cgroup, CgroupError> {
        let path = root.join(PARENT).join(id);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create { path: path.clone(), source })?;
        Ok(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Applies `linux.resources` (v1-style fields converted as runc converts them, and `unified`).
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        for (file, value) in resource_writes(resources)? {
            write(&self.path.join(file), &value)?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(read(&self.path.join("cgroup.procs"))?.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + SETTLE;
        while !read(&self.path.join("cgroup.events"))?.lines().any(|l| l == want) {
            if Instant::now() > deadline {
                return Err(CgroupError::Timeout { path: self.path.clone(), what: "freeze" });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Kills every process in the cgroup (`cgroup.kill`).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.kill"), "1")
    }

    /// Kills what is left, waits for the cgroup to empty, and removes it.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            let _ = self.kill_all();
            let _ = self.freeze(false);
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return Err(CgroupError::Timeout { path: self.path.clone(), what: "empty" }),
            }
        }
    }

    /// How many OOM kills the cgroup has seen.
    pub fn oom_kills(&self) -> u64 {
        read(&self.path.join("memory.events")).map(|t| keyed(&t, "oom_kill")).unwrap_or(0)
    }

    pub fn stats(&self) -> Result<StatsContainerResponse, CgroupError> {
        let cpu = read(&self.path.join("cpu.stat"))?;
        let memory_stat = read(&self.path.join("memory.stat"))?;
        let events = read(&self.path.join("memory.events"))?;
        let peak = read(&self.path.join("memory.peak")).map(|t| number_or_max(&t)).unwrap_or(0);
        let mut io = Vec::new();
        for line in read(&self.path.join("io.stat"))?.lines() {
            let mut words = line.split_whitespace();
            let Some((major, minor)) = words.next().and_then(|d| d.split_once(':')) else { continue };
            let mut device = IoDeviceStats {
                major: major.parse().unwrap_or(0),
                minor: minor.parse().unwrap_or(0),
                ..Default::default()
            };
            for field in words {
                let Some((k, v)) = field.split_once('=') else { continue };
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => device.read_bytes = v,
                    "wbytes" => device.write_bytes = v,
                    "rios" => device.read_ios = v,
                    "wios" => device.write_ios = v,
                    _ => {}
                }
            }
            io.push(device);
        }
        Ok(StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: keyed(&cpu, "usage_usec"),
                user_usec: keyed(&cpu, "user_usec"),
                system_usec: keyed(&cpu, "system_usec"),
                nr_periods: keyed(&cpu, "nr_periods"),
                nr_throttled: keyed(&cpu, "nr_throttled"),
                throttled_usec: keyed(&cpu, "throttled_usec"),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage_bytes: number_or_max(&read(&self.path.join("memory.current"))?),
                limit_bytes: number_or_max(&read(&self.path.join("memory.max"))?),
                anon_bytes: keyed(&memory_stat, "anon"),
                file_bytes: keyed(&memory_stat, "file"),
                oom_events: keyed(&events, "oom"),
                oom_kill_events: keyed(&events, "oom_kill"),
                max_usage_bytes: peak,
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStats {
                current: number_or_max(&read(&self.path.join("pids.current"))?),
                limit: number_or_max(&read(&self.path.join("pids.max"))?),
                ..Default::default()
            })
            .into(),
            io,
            ..Default::default()
        })
    }
}

/// cgroup v1 `cpu.shares` (2..=262144) to v2 `cpu.weight` (1..=10000), as runc converts.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// The files and values that apply `resources`.
pub fn resource_writes(resources: &LinuxResources) -> Result<Vec<(String, String)>, CgroupError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let limit = |v: i64| if v < 0 { "max".to_owned() } else { v.to_string() };
    if let Some(memory) = resources.memory() {
        if let Some(v) = memory.limit() {
            out.push(("memory.max".into(), limit(v)));
        }
        if let Some(v) = memory.reservation() {
            out.push(("memory.low".into(), limit(v)));
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares() {
            if shares > 0 {
                out.push(("cpu.weight".into(), shares_to_weight(shares).to_string()));
            }
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu.quota().filter(|q| *q > 0).map_or("max".to_owned(), |q| q.to_string());
            let period = cpu.period().unwrap_or(100_000);
            out.push(("cpu.max".into(), format!("{quota} {period}")));
        }
        if let Some(cpus) = cpu.cpus() {
            out.push(("cpuset.cpus".into(), cpus.clone()));
        }
        if let Some(mems) = cpu.mems() {
            out.push(("cpuset.mems".into(), mems.clone()));
        }
    }
    if let Some(pids) = resources.pids() {
        out.push(("pids.max".into(), if pids.limit() > 0 { pids.limit().to_string() } else { "max".into() }));
    }
    if let Some(io) = resources.block_io() {
        if let Some(weight) = io.weight() {
            // v1 blkio weight 10..=1000 → v2 io.weight 1..=10000
            out.push((
                "io.weight".into(),
                format!("default {}", 1 + (u64::from(weight).saturating_sub(10) * 9999) / 990),
            ));
        }
        let throttles = [
            (io.throttle_read_bps_device(), "rbps"),
            (io.throttle_write_bps_device(), "wbps"),
            (io.throttle_read_iops_device(), "riops"),
            (io.throttle_write_iops_device(), "wiops"),
        ];
        for (devices, key) in throttles {
            for d in devices.as_deref().unwrap_or_default() {
                out.push(("io.max".into(), format!("{}:{} {key}={}", d.major(), d.minor(), d.rate())));
            }
        }
    }
    for (key, value) in resources.unified().as_ref().into_iter().flatten() {
        if key.contains('/') || key.starts_with('.') || !key.contains('.') {
            return Err(CgroupError::Invalid(format!("unified key {key:?} is not a cgroup file name")));
        }
        out.push((key.clone(), value.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).expect("resources")
    }

    #[test]
    fn v1_style_resources_become_v2_files() {
        let writes = resource_writes(&resources(
            r#"{"memory":{"limit":67108864},"cpu":{"shares":1024,"quota":50000,"period":100000},
                "pids":{"limit":32},"unified":{"memory.high":"60000000"}}"#,
        ))
        .expect("writes");
        let find = |f: &str| writes.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
        assert_eq!(find("memory.max"), Some("67108864"));
        assert_eq!(find("cpu.weight"), Some("39"));
        assert_eq!(find("cpu.max"), Some("50000 100000"));
        assert_eq!(find("pids.max"), Some("32"));
        assert_eq!(find("memory.high"), Some("60000000"));
    }

    #[test]
    fn unlimited_and_hostile_values() {
        let writes = resource_writes(&resources(r#"{"memory":{"limit":-1},"pids":{"limit":0}}"#)).expect("writes");
        assert!(writes.contains(&("memory.max".into(), "max".into())));
        assert!(writes.contains(&("pids.max".into(), "max".into())));
        let err = resource_writes(&resources(r#"{"unified":{"../../cgroup.procs":"1"}}"#)).expect_err("escape");
        assert!(err.to_string().contains("not a cgroup file name"), "{err}");
    }

    #[test]
    fn stat_files_parse() {
        assert_eq!(keyed("usage_usec 123\nuser_usec 100\n", "user_usec"), 100);
        assert_eq!(keyed("oom 0\noom_kill 2\n", "oom_kill"), 2);
        assert_eq!(keyed("oom_kill 2\n", "oom"), 0, "a key is not a prefix match");
        assert_eq!(number_or_max("max\n"), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
