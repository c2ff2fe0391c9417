//! The sandbox's cgroup v2: made below [`CGROUP_ROOT`] with the controllers it
//! needs switched on in every ancestor, its limits written, and the jailer moved
//! in before it forks (brig-vmm inherits it).

use std::path::{Path, PathBuf};

use super::{CgroupSpec, JailError};

/// Where cgroup v2 must be mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// statfs(2)'s f_type of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Makes `spec`'s cgroup, writes its limits and moves this process into it.
pub fn create_and_enter(spec: &CgroupSpec) -> Result<PathBuf, JailError> {
    check_cgroup2(Path::new(CGROUP_ROOT))?;
    let leaf = Path::new(CGROUP_ROOT).join(&spec.path);
    // Every ancestor below the root hands the controllers down.
    let mut dir = PathBuf::from(CGROUP_ROOT);
    for part in spec.path.components() {
        enable_controllers(&dir)?;
        dir.push(part);
        if dir != leaf {
            make_dir(&dir)?;
        }
    }
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        // A leftover of a task whose cleanup never ran: empty, so it can go.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir(&leaf).map_err(JailError::step(format!(
                "cgroup {} exists and cannot be removed (processes still in it?)",
                leaf.display()
            )))?;
            make_dir(&leaf)?;
        }
        Err(e) => return Err(JailError::step(format!("creating cgroup {}", leaf.display()))(e)),
    }
    let cpu_max = spec.cpu_max.map_or("max 100000".to_owned(), |(quota, period)| format!("{quota} {period}"));
    for (file, value) in [
        ("memory.max", spec.memory_max.to_string()),
        ("memory.swap.max", "0".to_owned()),
        ("pids.max", spec.pids_max.to_string()),
        ("cpu.max", cpu_max),
    ] {
        let path = leaf.join(file);
        // memory.swap.max exists only where swap is accounted.
        if file == "memory.swap.max" && !path.exists() {
            continue;
        }
        std::fs::write(&path, &value).map_err(JailError::step(format!("writing {value} to {}", path.display())))?;
    }
    let procs = leaf.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(JailError::step(format!("entering {}", procs.display())))?;
    Ok(leaf)
}

/// How long [`remove_cgroup`] waits for a killed cgroup to empty.
const EMPTY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Kills whatever still runs in a sandbox's cgroup (`cgroup.kill`), waits until
/// it is empty (`populated 0` in `cgroup.events`) and removes it; a missing one is
/// fine. Used on delete, also after brig-vmm or the shim was SIGKILLed.
pub fn remove_cgroup(path: &Path) -> std::io::Result<()> {
    let leaf = Path::new(CGROUP_ROOT).join(path);
    if !leaf.exists() {
        return Ok(());
    }
    // cgroup.kill is Linux 5.14+; it kills every process of the cgroup, also one
    // forked since (a jailer, a brig-vmm whose pid the shim never learnt).
    match std::fs::write(leaf.join("cgroup.kill"), "1") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !leaf.exists() => return Ok(()),
        Err(e) => {
            return Err(std::io::Error::new(e.kind(), format!("writing 1 to {}/cgroup.kill: {e}", leaf.display())))
        }
    }
    let deadline = std::time::Instant::now() + EMPTY_TIMEOUT;
    loop {
        let events = match std::fs::read_to_string(leaf.join("cgroup.events")) {
            Ok(events) => events,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if events.lines().any(|line| line == "populated 0") {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "{} still has processes {EMPTY_TIMEOUT:?} after cgroup.kill",
                leaf.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match std::fs::remove_dir(&leaf) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn check_cgroup2(root: &Path) -> Result<(), JailError> {
    let fs = nix::sys::statfs::statfs(root).map_err(JailError::nix(format!("statfs {}", root.display())))?;
    if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(JailError::Prerequisite(format!(
            "cgroup v2 is not mounted at {CGROUP_ROOT} (this host uses cgroup v1 or a hybrid layout): boot with \
             systemd.unified_cgroup_hierarchy=1, or set `jail = false` in /etc/brig/config.toml (development only)"
        )));
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(JailError::step(format!("creating cgroup {}", dir.display()))(e)),
    }
}

/// Switches memory, pids and cpu on for `dir`'s children.
fn enable_controllers(dir: &Path) -> Result<(), JailError> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(JailError::step(format!("reading {}/cgroup.controllers", dir.display())))?;
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in CONTROLLERS {
        if enabled.split_whitespace().any(|c| c == controller) {
            continue;
        }
        if !available.split_whitespace().any(|c| c == controller) {
            return Err(JailError::Prerequisite(format!(
                "the cgroup v2 controller `{controller}` is not available in {} (it has: {}); brig needs memory, \
                 pids and cpu",
                dir.display(),
                available.trim()
            )));
        }
        std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"))
            .map_err(JailError::step(format!("enabling {controller} in {}/cgroup.subtree_control", dir.display())))?;
    }
    Ok(())
}
