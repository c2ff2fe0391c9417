//! `linux.seccomp`: the process runs under a filter (`Seccomp: 2`), and the syscall
//! named by the spec annotation [`DENIED_ANNOTATION`] fails with the errno of the
//! profile's `SCMP_ACT_ERRNO` rule for it.
//!
//! This is the checker's only `unsafe`: calling that syscall through `libc::syscall`.
//! Its invariant is [`HARMLESS`]: each entry takes integer arguments only (no pointer
//! the kernel could write through) and, with the arguments listed, reads state
//! without changing it, so the call is sound whether the filter lets it through or not.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

use crate::report::{errno_name, status_field, Check};

/// Names the syscall the profile denies with `SCMP_ACT_ERRNO`.
pub const DENIED_ANNOTATION: &str = "io.brig.check.seccomp-denied";

/// Syscalls the checker can call safely, with their arguments.
const HARMLESS: &[(&str, libc::c_long, [libc::c_long; 3])] = &[
    // getpriority(PRIO_PROCESS, 0): this process's nice value.
    ("getpriority", libc::SYS_getpriority, [0, 0, 0]),
    // personality(0xffffffff): queries the persona without setting it.
    ("personality", libc::SYS_personality, [0xffff_ffff, 0, 0]),
    ("getppid", libc::SYS_getppid, [0, 0, 0]),
    ("getpgrp", libc::SYS_getpgrp, [0, 0, 0]),
    // getsid(0): this process's session.
    ("getsid", libc::SYS_getsid, [0, 0, 0]),
    ("sched_yield", libc::SYS_sched_yield, [0, 0, 0]),
];

/// The errno a profile makes `syscall` fail with, or what it does instead.
fn denial(profile: &LinuxSeccomp, syscall: &str) -> Result<i32, String> {
    let errno = |ret: Option<u32>| ret.map_or(libc::EPERM, |e| i32::try_from(e).unwrap_or(i32::MAX));
    let rule = profile.syscalls().iter().flatten().find(|r| r.names().iter().any(|n| n == syscall));
    match rule {
        Some(rule) if rule.args().as_ref().is_some_and(|a| !a.is_empty()) => {
            Err("a rule with argument conditions".to_owned())
        }
        Some(rule) if rule.action() == LinuxSeccompAction::ScmpActErrno => Ok(errno(rule.errno_ret())),
        Some(rule) => Err(format!("a {} rule", rule.action())),
        None if profile.default_action() == LinuxSeccompAction::ScmpActErrno => Ok(errno(profile.default_errno_ret())),
        None => Err(format!("no rule (default {})", profile.default_action())),
    }
}

pub fn check(profile: Option<&LinuxSeccomp>, denied: Option<&str>, status: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    if profile.is_some() {
        let got = status_field(status, "Seccomp")
            .map_or("no Seccomp line in /proc/self/status".to_owned(), |m| format!("mode {m}"));
        checks.push(Check::compare("seccomp", "mode 2", got));
    }
    if let Some(syscall) = denied {
        checks.push(check_denied(profile, syscall));
    }
    checks
}

fn check_denied(profile: Option<&LinuxSeccomp>, syscall: &str) -> Check {
    let name = format!("seccomp {syscall}");
    let Some(profile) = profile else {
        return Check::fail(name, format!("a profile denying {syscall}"), "no seccomp profile");
    };
    let errno = match denial(profile, syscall) {
        Ok(errno) => errno,
        Err(rule) => return Check::fail(name, format!("a SCMP_ACT_ERRNO rule for {syscall}"), rule),
    };
    let Some(&(_, nr, args)) = HARMLESS.iter().find(|(n, _, _)| *n == syscall) else {
        let known: Vec<&str> = HARMLESS.iter().map(|h| h.0).collect();
        return Check::fail(
            name,
            format!("one of {}", known.join(",")),
            format!("{syscall}, which the checker cannot call"),
        );
    };
    let want = format!("-1 {}", errno_name(&std::io::Error::from_raw_os_error(errno)));
    Check::compare(name, want, call(nr, args))
}

/// `-1 EACCES` when the call fails, `allowed` when it succeeds (its value would vary).
fn call(nr: libc::c_long, args: [libc::c_long; 3]) -> String {
    // SAFETY: `nr` and `args` come from HARMLESS, whose entries take integer arguments
    // only and change no state (see the module comment).
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
    if ret == -1 {
        format!("-1 {}", errno_name(&std::io::Error::last_os_error()))
    } else {
        "allowed".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(value: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(value).expect("seccomp profile")
    }

    #[test]
    fn finds_the_errno_of_the_rule() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid", "getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getsid"], "action": "SCMP_ACT_KILL"},
            {"names": ["getpgrp"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        ]}));
        assert_eq!(denial(&p, "getpriority"), Ok(libc::EACCES));
        assert_eq!(denial(&p, "personality"), Ok(libc::EPERM), "SCMP_ACT_ERRNO without errnoRet is EPERM");
        assert_eq!(denial(&p, "getsid"), Err("a SCMP_ACT_KILL rule".to_owned()));
        assert_eq!(denial(&p, "getpgrp"), Err("a rule with argument conditions".to_owned()));
        assert_eq!(denial(&p, "sched_yield"), Err("no rule (default SCMP_ACT_ALLOW)".to_owned()));
        let deny_all = profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38}));
        assert_eq!(denial(&deny_all, "getppid"), Ok(libc::ENOSYS));
    }

    /// Without a filter the syscall is allowed, and the check says so.
    #[test]
    fn an_unfiltered_process_fails_the_denial_check() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}));
        let lines: Vec<String> =
            check(Some(&p), Some("getpriority"), &status).iter().map(ToString::to_string).collect();
        let mode = status_field(&status, "Seccomp").expect("Seccomp line");
        let first =
            if mode == "2" { "PASS seccomp".to_owned() } else { format!("FAIL seccomp: want mode 2 got mode {mode}") };
        assert_eq!(lines, [first, "FAIL seccomp getpriority: want -1 EACCES got allowed".to_owned()]);
    }

    #[test]
    fn refuses_syscalls_it_cannot_call_safely() {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]}));
        let line = check_denied(Some(&p), "reboot").to_string();
        assert!(line.starts_with("FAIL seccomp reboot: want one of getpriority,"), "{line}");
        assert!(line.ends_with("got reboot, which the checker cannot call"), "{line}");
        assert_eq!(
            check_denied(None, "getpriority").to_string(),
            "FAIL seccomp getpriority: want a profile denying getpriority got no seccomp profile"
        );
        assert!(check(None, None, "").is_empty());
    }
}
