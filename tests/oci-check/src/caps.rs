//! The five capability sets of `process.capabilities` against the `Cap*` lines of
//! `/proc/self/status`.

use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::report::{status_field, Check};

/// Capability names by bit number, as in `<linux/capability.h>` (Linux 5.9 and later).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One check per set; a set the spec leaves out is expected to be empty, as runtimes
/// leave it.
pub fn check(caps: &LinuxCapabilities, status: &str) -> Vec<Check> {
    [
        ("bounding", caps.bounding(), "CapBnd"),
        ("effective", caps.effective(), "CapEff"),
        ("inheritable", caps.inheritable(), "CapInh"),
        ("permitted", caps.permitted(), "CapPrm"),
        ("ambient", caps.ambient(), "CapAmb"),
    ]
    .into_iter()
    .map(|(set, want, key)| check_set(&format!("capabilities.{set}"), want.as_ref(), key, status))
    .collect()
}

fn check_set(name: &str, want: Option<&Capabilities>, key: &str, status: &str) -> Check {
    let want = match mask_of(want) {
        Ok(mask) => mask,
        Err(unknown) => return Check::fail(name, "capabilities this checker knows", unknown),
    };
    match status_field(status, key).and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
        Some(got) => Check::compare(name, names(want), names(got)),
        None => Check::fail(name, names(want), format!("no {key} line in /proc/self/status")),
    }
}

/// The bit mask of a spec set, or the name of a capability missing from [`NAMES`].
fn mask_of(set: Option<&Capabilities>) -> Result<u64, String> {
    let mut mask = 0u64;
    for cap in set.into_iter().flatten() {
        let name = format!("CAP_{cap}");
        let bit = NAMES.iter().position(|n| *n == name).ok_or(name)?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

/// `CAP_CHOWN,CAP_KILL` in bit order, `none` for the empty set.
fn names(mask: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| NAMES.get(bit).map_or_else(|| format!("CAP_{bit}"), |n| (*n).to_owned()))
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    fn caps(json: &str) -> LinuxCapabilities {
        serde_json::from_str(json).expect("capabilities")
    }

    #[test]
    fn every_name_is_an_oci_capability() {
        for name in NAMES {
            let cap: Capability = name.trim_start_matches("CAP_").parse().expect(name);
            assert_eq!(format!("CAP_{cap}"), name);
        }
    }

    #[test]
    fn masks_follow_the_kernel_bit_numbers() {
        let set: Capabilities = [Capability::Chown, Capability::Kill, Capability::CheckpointRestore].into();
        assert_eq!(mask_of(Some(&set)), Ok(1 | 1 << 5 | 1 << 40));
        assert_eq!(mask_of(None), Ok(0));
        assert_eq!(names(1 | 1 << 5), "CAP_CHOWN,CAP_KILL");
        assert_eq!(names(0), "none");
        assert_eq!(names(1 << 41), "CAP_41");
    }

    #[test]
    fn compares_each_set_with_its_status_line() {
        let spec = caps(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"],
                "inheritable":[],"permitted":["CAP_KILL"]}"#,
        );
        let status = "CapInh:\t0000000000000000\nCapPrm:\t0000000000000020\nCapEff:\t0000000000000021\n\
                      CapBnd:\t0000000000000021\nCapAmb:\t0000000000000000\n";
        let lines: Vec<String> = check(&spec, status).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "PASS capabilities.bounding",
                "FAIL capabilities.effective: want CAP_KILL got CAP_CHOWN,CAP_KILL",
                "PASS capabilities.inheritable",
                "PASS capabilities.permitted",
                "PASS capabilities.ambient",
            ]
        );
        let missing = check(&spec, "");
        assert_eq!(
            missing[0].to_string(),
            "FAIL capabilities.bounding: want CAP_CHOWN,CAP_KILL got no CapBnd line in /proc/self/status"
        );
    }

    #[test]
    fn this_process_matches_its_own_sets() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let set = |key: &str| {
            let mask = u64::from_str_radix(status_field(&status, key).expect(key), 16).expect("hex");
            let names: Vec<String> =
                (0..41).filter(|b| mask & (1 << b) != 0).map(|b| format!("\"{}\"", NAMES[b])).collect();
            format!("[{}]", names.join(","))
        };
        let spec = caps(&format!(
            r#"{{"bounding":{},"effective":{},"inheritable":{},"permitted":{},"ambient":{}}}"#,
            set("CapBnd"),
            set("CapEff"),
            set("CapInh"),
            set("CapPrm"),
            set("CapAmb")
        ));
        for c in check(&spec, &status) {
            assert!(c.passed(), "{c}");
        }
    }
}
