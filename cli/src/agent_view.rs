//! `agent-view.json`: what the guest agent says about its guest (processes,
//! mounts) when asked after the capture, kept beside the evidence as the guest's
//! claim, for an analyst to hold against what memory.elf shows.

use std::path::Path;
use std::time::{Duration, Instant};

use brig_protocol::agent::DescribeGuestRequest;
use serde_json::{json, Value};

/// How long the agent gets, connection included.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// The label every agent-view.json carries.
pub const UNTRUSTED: &str = "what the guest agent claimed when asked after the capture; the guest may lie: \
     compare it with memory.elf, never trust it";

/// Asks the agent behind `vsock` within [`DEADLINE`]; the JSON to write, or why not.
pub fn ask(vsock: &Path, asked_at_utc: &str) -> Result<Value, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let started = Instant::now();
    let answer = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let client = brig_shim::sandbox::connect_agent(vsock, DEADLINE).await.map_err(|e| e.to_string())?;
            let request = DescribeGuestRequest::new();
            client.describe_guest(brig_shim::sandbox::ctx(DEADLINE), &request).await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| format!("the agent did not answer within {} ms", DEADLINE.as_millis()))?
    })?;
    let processes: Vec<Value> = answer
        .processes
        .iter()
        .map(|p| json!({"pid": p.pid, "ppid": p.ppid, "comm": p.comm, "cmdline": p.cmdline, "uid": p.uid, "state": p.state}))
        .collect();
    let mounts: Vec<Value> = answer
        .mounts
        .iter()
        .map(|m| json!({"source": m.source, "target": m.target, "fstype": m.fstype, "options": m.options}))
        .collect();
    Ok(json!({
        "untrusted": UNTRUSTED,
        "asked_at_utc": asked_at_utc,
        "answered_in_ms": started.elapsed().as_millis() as u64,
        "processes": processes,
        "mounts": mounts,
        "truncated": answer.truncated,
    }))
}
