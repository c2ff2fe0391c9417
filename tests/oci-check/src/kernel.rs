//! Namespaced kernel state the spec sets: `hostname`, `domainname` (uname) and
//! `linux.sysctl` (read back from `/proc/sys`).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;

use nix::sys::utsname::uname;

use crate::report::{errno_name, Check};

pub fn uts(hostname: Option<&str>, domainname: Option<&str>) -> Vec<Check> {
    let names = uname().map_err(|errno| format!("{errno:?}"));
    let field = |pick: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| match &names {
        Ok(names) => String::from_utf8_lossy(pick(names).as_bytes()).into_owned(),
        Err(errno) => errno.clone(),
    };
    let mut checks = Vec::new();
    if let Some(want) = hostname {
        checks.push(Check::compare("hostname", want, field(|u| u.nodename())));
    }
    if let Some(want) = domainname {
        checks.push(Check::compare("domainname", want, field(|u| u.domainname())));
    }
    checks
}

/// One check per key, in key order.
pub fn sysctl(sysctl: &HashMap<String, String>) -> Vec<Check> {
    let mut keys: Vec<&String> = sysctl.keys().collect();
    keys.sort();
    keys.into_iter().map(|key| check_sysctl(key, &sysctl[key], "/proc/sys")).collect()
}

fn check_sysctl(key: &str, want: &str, root: &str) -> Check {
    let path = format!("{root}/{}", key.replace('.', "/"));
    let got = std::fs::read_to_string(&path).map_or_else(|e| errno_name(&e), |v| words(&v));
    Check::compare(format!("sysctl {key}"), words(want), got)
}

/// Multi-field values (`kernel.sem`) read back tab-separated: compare their words.
fn words(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_read_from_proc_sys() {
        let ostype = std::fs::read_to_string("/proc/sys/kernel/ostype").expect("ostype");
        assert_eq!(check_sysctl("kernel.ostype", ostype.trim(), "/proc/sys").to_string(), "PASS sysctl kernel.ostype");
        assert_eq!(
            check_sysctl("kernel.ostype", "Plan9", "/proc/sys").to_string(),
            format!("FAIL sysctl kernel.ostype: want Plan9 got {}", ostype.trim())
        );
        assert_eq!(
            check_sysctl("kernel.no_such_knob", "1", "/proc/sys").to_string(),
            "FAIL sysctl kernel.no_such_knob: want 1 got ENOENT"
        );
    }

    #[test]
    fn multi_field_values_compare_by_words() {
        assert_eq!(words("32000\t1024000000  500\n"), "32000 1024000000 500");
        let dir = std::env::temp_dir().join(format!("brig-oci-check-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel")).expect("dir");
        std::fs::write(dir.join("kernel/sem"), "32000\t1024000000\t500\t32000\n").expect("write");
        let check = check_sysctl("kernel.sem", "32000 1024000000 500 32000", &dir.to_string_lossy());
        assert!(check.passed(), "{check}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn keys_are_checked_in_order() {
        let map =
            HashMap::from([("kernel.ostype".to_owned(), "x".to_owned()), ("kernel.arch".to_owned(), "y".to_owned())]);
        let names: Vec<String> = sysctl(&map).iter().map(|c| c.name().to_owned()).collect();
        assert_eq!(names, ["sysctl kernel.arch", "sysctl kernel.ostype"]);
    }

    #[test]
    fn uts_names_come_from_uname() {
        let names = uname().expect("uname");
        let host = names.nodename().to_string_lossy().into_owned();
        let checks = uts(Some(&host), Some("brig-oci-check-not-this-domain"));
        assert_eq!(checks[0].to_string(), "PASS hostname");
        assert!(checks[1].to_string().starts_with("FAIL domainname: want brig-oci-check-not-this-domain got "));
        assert!(uts(None, None).is_empty());
    }
}
