//! `brig ps`: every sandbox, with what its brig-vmm says about it.

use std::time::Duration;

use anyhow::{Context, Result};
use brig_shim::config::Config;
use brig_shim::files::SocketPath;
use brig_shim::record::{self, TaskRecord};
use brig_vmm_api::client::Client;
use brig_vmm_api::VmState;
use serde::Serialize;

/// How long each brig-vmm gets to answer `state`: a hung VM must not hang `ps`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// CRI's annotations on a pod's containers.
const CRI_POD_NAME: &str = "io.kubernetes.cri.sandbox-name";
const CRI_POD_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// List every sandbox: container id, namespace, pod, state, vCPUs, memory, uptime,
/// brig-vmm's pid and image.
///
/// STATE is brig-vmm's own (`running`, `paused`, `stopping`), asked over its
/// control socket; `exited` when brig-vmm is gone, `unreachable` when it runs but
/// does not answer within a second (its error is in --json's `error`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array (one object per sandbox) instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of `brig ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub id: String,
    pub namespace: String,
    /// `namespace/name` of the Kubernetes pod, when CRI made the container.
    pub pod: Option<String>,
    pub state: String,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u64>,
    pub uptime_secs: Option<u64>,
    pub vmm_pid: Option<u32>,
    pub image: Option<String>,
    pub jailed: bool,
    /// The task's state directory.
    pub dir: String,
    /// Why `state` is `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let config = Config::load().context("reading brig's configuration")?;
    let tasks =
        record::list(&config).with_context(|| format!("reading the state directory {}", config.state_dir.display()))?;
    let rows: Vec<Row> = tasks.iter().map(row).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// What brig-vmm answers for `task`.
fn ask(task: &TaskRecord) -> Result<VmState> {
    let socket = SocketPath::open(&task.api).with_context(|| format!("opening {}", task.api.display()))?;
    let mut client = Client::connect(socket.path(), ANSWER_TIMEOUT)?;
    Ok(client.state()?)
}

fn row(task: &TaskRecord) -> Row {
    let annotations = task.annotations();
    let pod = annotations.get(CRI_POD_NAME).map(|name| match annotations.get(CRI_POD_NAMESPACE) {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.clone(),
    });
    let image = annotations.get(CRI_IMAGE_NAME).cloned().or_else(|| {
        task.rootfs.as_ref().and_then(|p| p.file_name()).map(|name| format!("rootfs {}", name.to_string_lossy()))
    });
    let mut row = Row {
        id: task.id.clone(),
        namespace: task.namespace.clone(),
        pod,
        state: String::new(),
        vcpus: task.vcpus,
        memory_mib: task.memory_mib,
        uptime_secs: None,
        vmm_pid: task.vmm_pid,
        image,
        jailed: task.jailed,
        dir: task.dir.display().to_string(),
        error: None,
    };
    match ask(task) {
        Ok(vm) => {
            row.state = vm.state.to_string();
            row.vcpus = Some(vm.vcpus);
            row.memory_mib = Some(vm.memory_mib);
            row.uptime_secs = Some(vm.uptime_ms / 1000);
        }
        Err(e) => {
            row.state = if task.vmm_alive() { "unreachable" } else { "exited" }.into();
            row.error = Some(format!("{e:#}"));
        }
    }
    row
}

/// The rows as a table with a header, columns padded to their widest cell.
pub fn table(rows: &[Row]) -> String {
    let dash = || "-".to_owned();
    let mut cells =
        vec![["ID", "NAMESPACE", "POD", "STATE", "VCPUS", "MEMORY", "UPTIME", "PID", "IMAGE"].map(String::from)];
    for row in rows {
        cells.push([
            row.id.clone(),
            row.namespace.clone(),
            row.pod.clone().unwrap_or_else(dash),
            row.state.clone(),
            row.vcpus.map_or_else(dash, |v| v.to_string()),
            row.memory_mib.map_or_else(dash, |m| format!("{m}MiB")),
            row.uptime_secs.map_or_else(dash, uptime),
            row.vmm_pid.map_or_else(dash, |p| p.to_string()),
            row.image.clone().unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..9).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in cells {
        let padded: Vec<String> = line.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `1h02m`, `3m05s`, `42s`.
fn uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> Row {
        Row {
            id: id.into(),
            namespace: "default".into(),
            pod: None,
            state: "running".into(),
            vcpus: Some(1),
            memory_mib: Some(128),
            uptime_secs: Some(3725),
            vmm_pid: Some(4242),
            image: Some("rootfs k.ext4".into()),
            jailed: true,
            dir: "/run/brig/0a1b".into(),
            error: None,
        }
    }

    #[test]
    fn the_table_has_a_header_and_aligned_columns() {
        let mut second = row("a-much-longer-id");
        second.pod = Some("kube-system/coredns".into());
        second.uptime_secs = None;
        let text = table(&[row("web"), second]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID ") && lines[0].ends_with("IMAGE"), "{text}");
        let state_at = lines[0].find("STATE").expect("STATE");
        assert!(lines.iter().skip(1).all(|l| l[state_at..].starts_with("running")), "{text}");
        assert!(lines[1].contains("1h02m") && lines[1].contains("128MiB") && lines[1].contains(" -  "), "{text}");
        assert!(lines[2].contains("kube-system/coredns"), "{text}");
    }

    #[test]
    fn no_sandboxes_is_a_header_alone() {
        assert_eq!(table(&[]).lines().count(), 1);
    }

    #[test]
    fn uptimes_read_like_ps() {
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(185), "3m05s");
        assert_eq!(uptime(3725), "1h02m");
    }
}
