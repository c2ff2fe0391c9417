//! What `process` asks of the container's first process: user and groups, cwd, env,
//! rlimits, noNewPrivileges and oomScoreAdj.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use nix::sys::resource::{getrlimit, Resource};
use nix::unistd::{getegid, geteuid, getgid, getgroups, getuid};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType, Process, User};

use crate::report::{errno_name, status_field, Check};

pub fn check(process: &Process, status: &str) -> Vec<Check> {
    let mut checks = user(process.user());
    checks.push(cwd(process.cwd()));
    checks.extend(process.env().iter().flatten().map(|var| env(var)));
    checks.extend(process.rlimits().iter().flatten().map(rlimit));
    if let Some(nnp) = process.no_new_privileges() {
        let want = if nnp { "1" } else { "0" };
        let got = status_field(status, "NoNewPrivs").unwrap_or("no NoNewPrivs line in /proc/self/status");
        checks.push(Check::compare("noNewPrivileges", want, got));
    }
    if let Some(adj) = process.oom_score_adj() {
        let got = std::fs::read_to_string("/proc/self/oom_score_adj")
            .map_or_else(|e| errno_name(&e), |s| s.trim().to_owned());
        checks.push(Check::compare("oomScoreAdj", adj.to_string(), got));
    }
    checks
}

/// Real and effective ids must both be the spec's; the supplementary groups are
/// exactly `additionalGids`, compared as sets.
fn user(user: &User) -> Vec<Check> {
    let id = |real: u32, effective: u32| {
        if real == effective {
            real.to_string()
        } else {
            format!("{real} (effective {effective})")
        }
    };
    let mut checks = vec![
        Check::compare("user.uid", user.uid().to_string(), id(getuid().as_raw(), geteuid().as_raw())),
        Check::compare("user.gid", user.gid().to_string(), id(getgid().as_raw(), getegid().as_raw())),
    ];
    if let Some(additional) = user.additional_gids() {
        let got = match getgroups() {
            Ok(groups) => gid_list(groups.iter().map(|g| g.as_raw())),
            Err(errno) => format!("{errno:?}"),
        };
        checks.push(Check::compare("user.additionalGids", gid_list(additional.iter().copied()), got));
    }
    checks
}

/// Sorted, without duplicates: `1001,1002`, or `none`.
fn gid_list(gids: impl Iterator<Item = u32>) -> String {
    let set: std::collections::BTreeSet<u32> = gids.collect();
    if set.is_empty() {
        return "none".to_owned();
    }
    set.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn cwd(want: &Path) -> Check {
    let got = std::env::current_dir().map_or_else(|e| errno_name(&e), |p| p.display().to_string());
    Check::compare("cwd", want.display().to_string(), got)
}

/// `NAME=value`: the variable is set, to exactly that value.
fn env(var: &str) -> Check {
    let (key, want) = var.split_once('=').unwrap_or((var, ""));
    let got = match std::env::var_os(key) {
        Some(value) => format!("{:?}", String::from_utf8_lossy(value.as_bytes())),
        None => "unset".to_owned(),
    };
    Check::compare(format!("env {key}"), format!("{want:?}"), got)
}

fn rlimit(limit: &PosixRlimit) -> Check {
    let (name, resource) = resource(limit.typ());
    let show = |soft: u64, hard: u64| {
        let one = |v: u64| if v == libc::RLIM_INFINITY { "unlimited".to_owned() } else { v.to_string() };
        format!("soft {} hard {}", one(soft), one(hard))
    };
    let got = match getrlimit(resource) {
        Ok((soft, hard)) => show(soft, hard),
        Err(errno) => format!("{errno:?}"),
    };
    Check::compare(format!("rlimit {name}"), show(limit.soft(), limit.hard()), got)
}

fn resource(typ: PosixRlimitType) -> (&'static str, Resource) {
    match typ {
        PosixRlimitType::RlimitCpu => ("RLIMIT_CPU", Resource::RLIMIT_CPU),
        PosixRlimitType::RlimitFsize => ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
        PosixRlimitType::RlimitData => ("RLIMIT_DATA", Resource::RLIMIT_DATA),
        PosixRlimitType::RlimitStack => ("RLIMIT_STACK", Resource::RLIMIT_STACK),
        PosixRlimitType::RlimitCore => ("RLIMIT_CORE", Resource::RLIMIT_CORE),
        PosixRlimitType::RlimitRss => ("RLIMIT_RSS", Resource::RLIMIT_RSS),
        PosixRlimitType::RlimitNproc => ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
        PosixRlimitType::RlimitNofile => ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
        PosixRlimitType::RlimitMemlock => ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
        PosixRlimitType::RlimitAs => ("RLIMIT_AS", Resource::RLIMIT_AS),
        PosixRlimitType::RlimitLocks => ("RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
        PosixRlimitType::RlimitSigpending => ("RLIMIT_SIGPENDING", Resource::RLIMIT_SIGPENDING),
        PosixRlimitType::RlimitMsgqueue => ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
        PosixRlimitType::RlimitNice => ("RLIMIT_NICE", Resource::RLIMIT_NICE),
        PosixRlimitType::RlimitRtprio => ("RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
        PosixRlimitType::RlimitRttime => ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn process(value: serde_json::Value) -> Process {
        serde_json::from_value(value).expect("process")
    }

    fn lines(checks: &[Check]) -> Vec<String> {
        checks.iter().map(ToString::to_string).collect()
    }

    /// A spec that describes this very test process passes every check.
    #[test]
    fn this_process_passes_a_spec_describing_it() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let nnp = status_field(&status, "NoNewPrivs") == Some("1");
        let adj: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").expect("adj").trim().parse().expect("int");
        let groups: Vec<u32> = getgroups().expect("groups").iter().map(|g| g.as_raw()).collect();
        let spec = process(json!({
            "user": {"uid": getuid().as_raw(), "gid": getgid().as_raw(), "additionalGids": groups},
            "cwd": std::env::current_dir().expect("cwd"),
            "env": [format!("PATH={}", std::env::var("PATH").expect("PATH"))],
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}],
            "noNewPrivileges": nnp,
            "oomScoreAdj": adj,
        }));
        let checks = check(&spec, &status);
        assert_eq!(checks.len(), 8, "{:?}", lines(&checks));
        for c in &checks {
            assert!(c.passed(), "{c}");
        }
    }

    #[test]
    fn mismatches_say_what_was_wanted_and_what_was_seen() {
        let spec = process(json!({
            "user": {"uid": 4242, "gid": 4243, "additionalGids": [7, 5, 7]},
            "cwd": "/nonexistent-cwd",
            "env": ["BRIG_OCI_CHECK_UNSET_VAR=a b", "NO_EQUALS"],
            "rlimits": [{"type": "RLIMIT_RTTIME", "soft": 1, "hard": 2}],
        }));
        let checks = check(&spec, "");
        let lines = lines(&checks);
        let uid = getuid().as_raw();
        assert_eq!(lines[0], format!("FAIL user.uid: want 4242 got {uid}"));
        assert!(lines[2].starts_with("FAIL user.additionalGids: want 5,7 got "), "{}", lines[2]);
        assert!(lines[3].starts_with("FAIL cwd: want /nonexistent-cwd got /"), "{}", lines[3]);
        assert_eq!(lines[4], "FAIL env BRIG_OCI_CHECK_UNSET_VAR: want \"a b\" got unset");
        assert_eq!(lines[5], "FAIL env NO_EQUALS: want \"\" got unset");
        assert!(lines[6].starts_with("FAIL rlimit RLIMIT_RTTIME: want soft 1 hard 2 got soft "), "{}", lines[6]);
        assert_eq!(lines.len(), 7, "no noNewPrivileges or oomScoreAdj check unless asked: {lines:?}");
    }

    #[test]
    fn nnp_is_read_from_the_status_text() {
        let spec = process(json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "noNewPrivileges": true}));
        let checks = check(&spec, "NoNewPrivs:\t0\n");
        let nnp = checks.iter().find(|c| c.name() == "noNewPrivileges").expect("nnp check");
        assert_eq!(nnp.to_string(), "FAIL noNewPrivileges: want 1 got 0");
    }

    #[test]
    fn gid_lists_are_sets() {
        assert_eq!(gid_list([3, 1, 3].into_iter()), "1,3");
        assert_eq!(gid_list(std::iter::empty()), "none");
    }

    #[test]
    fn infinite_limits_read_as_unlimited() {
        let spec = process(json!({"user": {"uid": 0, "gid": 0}, "cwd": "/",
            "rlimits": [{"type": "RLIMIT_CPU", "soft": 1, "hard": u64::MAX}]}));
        let checks = check(&spec, "");
        let cpu = checks.iter().find(|c| c.name() == "rlimit RLIMIT_CPU").expect("rlimit check");
        assert!(cpu.to_string().contains("want soft 1 hard unlimited"), "{cpu}");
    }
}
