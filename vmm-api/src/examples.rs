//! One exchange per request, with realistic values: what the round-trip tests and
//! the generated table in docs/control-socket.md use.

use crate::metrics::{Counters, MemoryUsage};
use crate::{
    DeviceInfo, ErrorCode, MemoryDumped, Request, Response, RunState, Saved, VersionInfo, VmMetrics, VmState,
    API_VERSION,
};

/// Every request with a typical answer, then a failed request with its error.
pub fn exchanges() -> Vec<(Request, Response)> {
    let state_path = std::path::PathBuf::from("/run/brig/1f2e/state.bin");
    let devices = vec![
        DeviceInfo { virtio_type: 19, activated: true, status: 15 },
        DeviceInfo { virtio_type: 4, activated: true, status: 15 },
    ];
    let metrics = VmMetrics {
        counters: Counters { vcpu_exits_io: 4711, vsock_rx_bytes: 65536, api_requests: 3, ..Counters::default() },
        memory: MemoryUsage {
            rss_kib: 60_312,
            rss_anon_kib: 1_204,
            rss_file_kib: 2_608,
            rss_guest_kib: 56_500,
            guest_memory_kib: 262_144,
            guest_huge_kib: 53_248,
        },
    };
    vec![
        (
            Request::Version { client: Some(API_VERSION) },
            Response::Version(VersionInfo { api: API_VERSION, vmm_version: "0.1.0".into() }),
        ),
        (Request::Pause {}, Response::RunState { state: RunState::Paused }),
        (Request::Resume {}, Response::RunState { state: RunState::Running }),
        (Request::Shutdown {}, Response::RunState { state: RunState::Stopping }),
        (
            Request::State {},
            Response::State(VmState { state: RunState::Running, vcpus: 2, memory_mib: 256, uptime_ms: 5120, devices }),
        ),
        (Request::Metrics {}, Response::Metrics(Box::new(metrics))),
        (
            Request::SaveState { path: state_path.clone() },
            Response::Saved(Saved { path: Some(state_path.clone()), bytes: 48_213 }),
        ),
        (Request::SaveStateFd {}, Response::Saved(Saved { path: None, bytes: 48_213 })),
        (
            Request::DumpMemoryFd { vmcoreinfo_note_symbol: Some(0x0192_0a48) },
            Response::MemoryDumped(MemoryDumped {
                bytes: 268_439_552,
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                vcpus: 2,
                regions: 1,
                vmcoreinfo_bytes: 2_571,
                vmcoreinfo_missing: None,
            }),
        ),
        (
            Request::SaveState { path: state_path },
            Response::error(ErrorCode::FailedPrecondition, "save-state needs a paused VM: send pause first"),
        ),
    ]
}
