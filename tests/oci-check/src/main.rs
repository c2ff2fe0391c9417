//! brig-oci-check: a test-only OCI conformance checker.
//!
//! It runs as a container's process, reads that container's own `config.json`
//! (`argv[1]`, default [`DEFAULT_CONFIG`]; the tests bind-mount the bundle's file there
//! read-only) and compares the spec with what the process actually sees, printing one
//! line per check:
//!
//! ```text
//! PASS capabilities.effective
//! FAIL mount /data: want bind ro got bind rw
//! ```
//!
//! The lines name no pids, addresses or times, so two runtimes given the same bundle
//! print the same lines when they behave the same. A check is left out only when the
//! spec does not ask for it. The exit status is 0 when nothing failed, 1 when a check
//! failed, 2 when the spec could not be read.

mod caps;
mod kernel;
mod mounts;
mod paths;
mod process;
mod report;
mod seccomp;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oci_spec::runtime::Spec;

use report::{errno_name, Check};

const DEFAULT_CONFIG: &str = "/brig-check/config.json";

fn main() -> ExitCode {
    let config = std::env::args_os().nth(1).map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from);
    let (checks, code) = match load(&config) {
        Ok(spec) => {
            let checks = run(&spec);
            let failed = checks.iter().any(|c| !c.passed());
            (checks, if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Err(got) => (
            vec![Check::fail("config", format!("an OCI runtime spec at {}", config.display()), got)],
            ExitCode::from(2),
        ),
    };
    let mut out = std::io::stdout().lock();
    for check in &checks {
        if writeln!(out, "{check}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    code
}

fn load(path: &Path) -> Result<Spec, String> {
    let bytes = std::fs::read(path).map_err(|e| errno_name(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON ({e})"))
}

/// Every check the spec asks for, in a fixed order.
fn run(spec: &Spec) -> Vec<Check> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut checks = Vec::new();
    if let Some(process) = spec.process() {
        if let Some(caps) = process.capabilities() {
            checks.extend(caps::check(caps, &status));
        }
        checks.extend(process::check(process, &status));
    }
    checks.extend(kernel::uts(spec.hostname().as_deref(), spec.domainname().as_deref()));
    checks.extend(mounts::check(spec.mounts().as_deref().unwrap_or_default(), &mounts::parse_mountinfo(&mountinfo)));
    let denied = spec.annotations().as_ref().and_then(|a| a.get(seccomp::DENIED_ANNOTATION)).map(String::as_str);
    if let Some(linux) = spec.linux() {
        checks.extend(linux.masked_paths().iter().flatten().map(|p| paths::masked(p)));
        checks.extend(linux.readonly_paths().iter().flatten().map(|p| paths::readonly(p)));
        checks.extend(kernel::sysctl(linux.sysctl().as_ref().unwrap_or(&Default::default())));
    }
    checks.extend(seccomp::check(spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()), denied, &status));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(spec: serde_json::Value) -> Vec<String> {
        let spec: Spec = serde_json::from_value(spec).expect("spec");
        run(&spec).iter().map(|c| c.name().to_owned()).collect()
    }

    #[test]
    fn a_minimal_spec_asks_only_for_user_and_cwd() {
        assert_eq!(
            names(json!({"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/"}})),
            ["user.uid", "user.gid", "cwd"]
        );
        assert!(names(json!({"ociVersion": "1.0.2"})).is_empty());
    }

    #[test]
    fn every_part_of_the_spec_gets_its_checks_in_order() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0, "additionalGids": [1]}, "cwd": "/", "env": ["A=1"],
                "capabilities": {"bounding": ["CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}],
                "noNewPrivileges": true, "oomScoreAdj": 1
            },
            "hostname": "h",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "annotations": {"io.brig.check.seccomp-denied": "getpriority"},
            "linux": {
                "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
                "sysctl": {"kernel.msgmax": "1"},
                "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
            }
        });
        assert_eq!(
            names(spec),
            [
                "capabilities.bounding",
                "capabilities.effective",
                "capabilities.inheritable",
                "capabilities.permitted",
                "capabilities.ambient",
                "user.uid",
                "user.gid",
                "user.additionalGids",
                "cwd",
                "env A",
                "rlimit RLIMIT_NOFILE",
                "noNewPrivileges",
                "oomScoreAdj",
                "hostname",
                "mount /proc",
                "maskedPaths /proc/kcore",
                "readonlyPaths /proc/sys",
                "sysctl kernel.msgmax",
                "seccomp",
                "seccomp getpriority",
            ]
        );
    }

    #[test]
    fn an_unreadable_spec_is_reported() {
        assert_eq!(load(Path::new("/nonexistent/config.json")), Err("ENOENT".to_owned()));
        let path = std::env::temp_dir().join(format!("brig-oci-check-bad-{}.json", std::process::id()));
        std::fs::write(&path, "{").expect("write");
        assert!(load(&path).expect_err("invalid").starts_with("invalid JSON"));
        std::fs::remove_file(&path).expect("cleanup");
    }
}
