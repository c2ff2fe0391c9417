//! Every entry of `mounts`: its destination is a mount point in
//! `/proc/self/mountinfo`, with the spec's file-system type (bind mounts show their
//! source's type, so only their being a mount point counts) and the spec's `ro`/`rw`,
//! `nosuid`, `nodev` and `noexec`.

use std::path::Path;

use oci_spec::runtime::Mount;

use crate::report::Check;

/// The fields of one `/proc/self/mountinfo` line this checker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,relatime`), not the super-block's.
    pub options: Vec<String>,
    pub fstype: String,
}

/// Parses mountinfo (proc(5)); lines it cannot read are left out.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let (mount_point, options) = (fields.get(4)?, fields.get(5)?);
            Some(MountInfo {
                mount_point: unescape(mount_point),
                options: options.split(',').map(str::to_owned).collect(),
                fstype: right.split(' ').next()?.to_owned(),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn check(mounts: &[Mount], table: &[MountInfo]) -> Vec<Check> {
    mounts.iter().map(|m| check_one(m, table)).collect()
}

fn check_one(mount: &Mount, table: &[MountInfo]) -> Check {
    let dest = normalize(mount.destination());
    let name = format!("mount {dest}");
    let options: &[String] = mount.options().as_deref().unwrap_or_default();
    let bind = mount.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
    let want_type = if bind { "bind" } else { mount.typ().as_deref().unwrap_or("(no type)") };
    let want = format!("{want_type} {}", flags(options.iter().map(String::as_str)));
    // Later mounts on the same point hide earlier ones: the last is what the process sees.
    let Some(info) = table.iter().rev().find(|i| i.mount_point == dest) else {
        return Check::fail(name, want, "not a mount point");
    };
    let got_type = if bind || same_type(want_type, &info.fstype) { want_type } else { info.fstype.as_str() };
    Check::compare(name, want, format!("{got_type} {}", flags(info.options.iter().map(String::as_str))))
}

/// A spec's `cgroup` is mounted as `cgroup2` on a unified-hierarchy host (runc does so).
fn same_type(want: &str, got: &str) -> bool {
    want == got || (want == "cgroup" && got == "cgroup2")
}

/// The options this checker compares, in a fixed order: `ro` or `rw`, then whichever
/// of `nosuid`, `nodev`, `noexec` are set. A later option overrides an earlier one.
fn flags<'a>(options: impl Iterator<Item = &'a str>) -> String {
    let (mut ro, mut nosuid, mut nodev, mut noexec) = (false, false, false, false);
    for option in options {
        match option {
            "ro" | "rro" => ro = true,
            "rw" | "rrw" => ro = false,
            "nosuid" => nosuid = true,
            "suid" => nosuid = false,
            "nodev" => nodev = true,
            "dev" => nodev = false,
            "noexec" => noexec = true,
            "exec" => noexec = false,
            _ => {}
        }
    }
    let mut out = vec![if ro { "ro" } else { "rw" }];
    out.extend([(nosuid, "nosuid"), (nodev, "nodev"), (noexec, "noexec")].iter().filter(|f| f.0).map(|f| f.1));
    out.join(",")
}

/// `/dev/` and `/dev` are the same destination.
fn normalize(path: &Path) -> String {
    let text = path.to_string_lossy();
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l
23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
24 22 0:23 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
25 22 0:24 /data /mnt/ro\\040data ro,relatime - ext4 /dev/vda rw
26 22 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
27 24 0:26 / /dev rw,nosuid,nodev - tmpfs tmpfs rw
garbage line
";

    fn mount(value: serde_json::Value) -> Mount {
        serde_json::from_value(value).expect("mount")
    }

    fn verdict(value: serde_json::Value) -> String {
        check_one(&mount(value), &parse_mountinfo(MOUNTINFO)).to_string()
    }

    #[test]
    fn parses_mount_points_options_and_types() {
        let table = parse_mountinfo(MOUNTINFO);
        assert_eq!(table.len(), 6, "the garbage line is left out");
        assert_eq!(
            table[3],
            MountInfo {
                mount_point: "/mnt/ro data".into(),
                options: vec!["ro".into(), "relatime".into()],
                fstype: "ext4".into()
            }
        );
    }

    #[test]
    fn unescapes_octal_sequences_only() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/a\09"), r"/a\09");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn type_and_flags_must_match() {
        assert_eq!(
            verdict(json!({"destination": "/proc", "type": "proc", "options": ["nosuid", "noexec", "nodev"]})),
            "PASS mount /proc"
        );
        assert_eq!(
            verdict(json!({"destination": "/proc", "type": "sysfs", "options": ["ro"]})),
            "FAIL mount /proc: want sysfs ro got proc rw,nosuid,nodev,noexec"
        );
        assert_eq!(
            verdict(
                json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "options": ["ro", "nosuid", "nodev", "noexec"]})
            ),
            "PASS mount /sys/fs/cgroup"
        );
    }

    #[test]
    fn the_last_mount_on_a_point_counts() {
        assert_eq!(
            verdict(json!({"destination": "/dev/", "type": "tmpfs", "options": ["nosuid"]})),
            "FAIL mount /dev: want tmpfs rw,nosuid got tmpfs rw,nosuid,nodev"
        );
    }

    #[test]
    fn bind_mounts_compare_only_flags() {
        assert_eq!(
            verdict(json!({"destination": "/mnt/ro data", "type": "bind", "source": "/x", "options": ["rbind", "ro"]})),
            "PASS mount /mnt/ro data"
        );
        assert_eq!(
            verdict(json!({"destination": "/mnt/ro data", "source": "/x", "options": ["bind", "rw"]})),
            "FAIL mount /mnt/ro data: want bind rw got bind ro"
        );
        assert_eq!(
            verdict(json!({"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["ro"]})),
            "FAIL mount /etc/hosts: want bind ro got not a mount point"
        );
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(flags(["ro", "rw", "nosuid", "suid", "noexec"].into_iter()), "rw,noexec");
        assert_eq!(flags(std::iter::empty()), "rw");
    }

    #[test]
    fn this_process_sees_its_own_root() {
        let table = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
        assert!(table.iter().any(|m| m.mount_point == "/"), "{table:?}");
        let proc = table.iter().rev().find(|m| m.mount_point == "/proc").expect("/proc is mounted");
        assert_eq!(proc.fstype, "proc");
    }
}
