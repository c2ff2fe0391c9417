//! The guest's cgroup statistics as containerd's cgroups v2 `Metrics` (what
//! `ctr task metrics` decodes).

use brig_protocol::agent as agent_api;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::cgroups_v2::metrics as cg;
use containerd_shim_protos::protobuf::Message;

use crate::error::ShimError;

/// The type URL containerd decodes `Stats` answers by.
const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The guest's statistics, encoded as containerd's `Stats` answer carries them.
pub fn to_any(stats: &agent_api::StatsContainerResponse) -> Result<Any, ShimError> {
    let value =
        to_metrics(stats).write_to_bytes().map_err(|e| ShimError::Internal(format!("encoding metrics: {e}")))?;
    Ok(Any { type_url: METRICS_TYPE_URL.into(), value, ..Default::default() })
}

/// The guest's cgroup statistics as containerd's cgroups v2 `Metrics`.
pub fn to_metrics(stats: &agent_api::StatsContainerResponse) -> cg::Metrics {
    let cpu = cg::CPUStat {
        usage_usec: stats.cpu.usage_usec,
        user_usec: stats.cpu.user_usec,
        system_usec: stats.cpu.system_usec,
        nr_periods: stats.cpu.nr_periods,
        nr_throttled: stats.cpu.nr_throttled,
        throttled_usec: stats.cpu.throttled_usec,
        ..Default::default()
    };
    let memory = cg::MemoryStat {
        usage: stats.memory.usage_bytes,
        usage_limit: stats.memory.limit_bytes,
        max_usage: stats.memory.max_usage_bytes,
        anon: stats.memory.anon_bytes,
        file: stats.memory.file_bytes,
        ..Default::default()
    };
    let events =
        cg::MemoryEvents { oom: stats.memory.oom_events, oom_kill: stats.memory.oom_kill_events, ..Default::default() };
    let pids = cg::PidsStat { current: stats.pids.current, limit: stats.pids.limit, ..Default::default() };
    let io = cg::IOStat {
        usage: stats
            .io
            .iter()
            .map(|d| cg::IOEntry {
                major: u64::from(d.major),
                minor: u64::from(d.minor),
                rbytes: d.read_bytes,
                wbytes: d.write_bytes,
                rios: d.read_ios,
                wios: d.write_ios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    cg::Metrics {
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        memory_events: Some(events).into(),
        pids: Some(pids).into(),
        io: Some(io).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_stats_become_cgroup_v2_metrics() {
        let stats = agent_api::StatsContainerResponse {
            cpu: Some(agent_api::CpuStats { usage_usec: 42, ..Default::default() }).into(),
            memory: Some(agent_api::MemoryStats {
                usage_bytes: 1 << 20,
                limit_bytes: 32 << 20,
                oom_kill_events: 1,
                ..Default::default()
            })
            .into(),
            pids: Some(agent_api::PidsStats { current: 3, limit: 64, ..Default::default() }).into(),
            ..Default::default()
        };
        let m = to_metrics(&stats);
        assert_eq!(m.cpu.usage_usec, 42);
        assert_eq!((m.memory.usage, m.memory.usage_limit), (1 << 20, 32 << 20));
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (3, 64));
    }

    #[test]
    fn metrics_go_out_as_an_any_containerd_decodes() {
        let any = to_any(&agent_api::StatsContainerResponse::default()).expect("encodes");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let decoded = cg::Metrics::parse_from_bytes(&any.value).expect("decodes");
        assert_eq!(decoded, to_metrics(&agent_api::StatsContainerResponse::default()));
    }
}
