//! Device access control for a container's cgroup: cgroup v2 has no devices
//! controller, so the OCI device rules (`linux.resources.devices`) become a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the container's cgroup.
//! Without it, a container with `CAP_MKNOD` could make a node for the guest's
//! block devices and read them.
//!
//! Rules are decided as cgroup v1 did: the last rule that matches a request (type,
//! major, minor, and every requested access bit) decides; nothing matching means
//! deny. As runc does, the devices every container needs (null, zero, full,
//! random, urandom, tty, console, ptmx and the ptys) are allowed after the spec's
//! rules.
//!
//! `unsafe` here: the `bpf(2)` calls. Invariants: every attribute struct is
//! zero-initialised and fully sized, and the instruction buffer and license string
//! outlive the call.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid device rule: access {0:?} (use r, w and m)")]
    Access(String),
    #[error("cannot load the device filter")]
    Load(#[source] std::io::Error),
    #[error("cannot attach the device filter to {path}")]
    Attach { path: String, source: std::io::Error },
}

/// One rule, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `None`: any type (`a`).
    pub kind: Option<u32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `BPF_DEVCG_ACC_*` bits.
    pub access: u32,
}

const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const ALL_ACCESS: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Devices every container may use.
const DEFAULT_ALLOWED: &[(u32, Option<u32>, Option<u32>)] = &[
    (DEV_CHAR, Some(1), Some(3)), // null
    (DEV_CHAR, Some(1), Some(5)), // zero
    (DEV_CHAR, Some(1), Some(7)), // full
    (DEV_CHAR, Some(1), Some(8)), // random
    (DEV_CHAR, Some(1), Some(9)), // urandom
    (DEV_CHAR, Some(5), Some(0)), // tty
    (DEV_CHAR, Some(5), Some(1)), // console
    (DEV_CHAR, Some(5), Some(2)), // ptmx
    (DEV_CHAR, Some(136), None),  // /dev/pts/*
];

fn access_bits(access: &str) -> Result<u32, DeviceError> {
    access.chars().try_fold(0, |bits, c| match c {
        'r' => Ok(bits | ACC_READ),
        'w' => Ok(bits | ACC_WRITE),
        'm' => Ok(bits | ACC_MKNOD),
        _ => Err(DeviceError::Access(access.to_owned())),
    })
}

/// The spec's rules followed by the default allowed devices.
pub fn rules(spec_rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DeviceError> {
    let mut out = Vec::new();
    for r in spec_rules {
        let kind = match r.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            Some(_) => Some(DEV_CHAR),
        };
        let access = match r.access().as_deref() {
            None | Some("") => ALL_ACCESS,
            Some(a) => access_bits(a)?,
        };
        let number = |n: Option<i64>| n.filter(|n| *n >= 0).map(|n| n as u32);
        out.push(Rule { allow: r.allow(), kind, major: number(r.major()), minor: number(r.minor()), access });
    }
    for &(kind, major, minor) in DEFAULT_ALLOWED {
        out.push(Rule { allow: true, kind: Some(kind), major, minor, access: ALL_ACCESS });
    }
    Ok(out)
}

/// Decides a request as the generated program does (for tests and diagnostics).
pub fn decide(rules: &[Rule], kind: u32, major: u32, minor: u32, access: u32) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| {
            r.kind.is_none_or(|k| k == kind)
                && access & !r.access == 0
                && r.major.is_none_or(|m| m == major)
                && r.minor.is_none_or(|m| m == minor)
        })
        .is_some_and(|r| r.allow)
}

// eBPF instruction encoding.
const BPF_LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ALU64_MOV_X: u8 = 0xbf;
const BPF_ALU64_AND_K: u8 = 0x57;
const BPF_ALU64_RSH_K: u8 = 0x77;
const BPF_ALU64_MOV_K: u8 = 0xb7;
const BPF_JMP_JNE_K: u8 = 0x55;
const BPF_EXIT: u8 = 0x95;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// The program: registers r2..r6 hold type, access, major, minor; each rule, last first,
/// is a block that jumps to the next block on mismatch and returns its verdict on match.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(BPF_LDX_W, 2, 1, 0, 0),            // r2 = ctx->access_type
        insn(BPF_ALU64_MOV_X, 3, 2, 0, 0),      // r3 = r2
        insn(BPF_ALU64_AND_K, 3, 0, 0, 0xffff), // r3 = type
        insn(BPF_ALU64_RSH_K, 2, 0, 0, 16),     // r2 = access
        insn(BPF_LDX_W, 4, 1, 4, 0),            // r4 = ctx->major
        insn(BPF_LDX_W, 5, 1, 8, 0),            // r5 = ctx->minor
    ];
    for rule in rules.iter().rev() {
        let mut block = Vec::new();
        if let Some(kind) = rule.kind {
            block.push(insn(BPF_JMP_JNE_K, 3, 0, 0, kind as i32));
        }
        // r6 = access & !rule.access; mismatch if any requested bit is not granted
        block.push(insn(BPF_ALU64_MOV_X, 6, 2, 0, 0));
        block.push(insn(BPF_ALU64_AND_K, 6, 0, 0, (!rule.access & ALL_ACCESS) as i32));
        block.push(insn(BPF_JMP_JNE_K, 6, 0, 0, 0));
        if let Some(major) = rule.major {
            block.push(insn(BPF_JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(BPF_JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(BPF_EXIT, 0, 0, 0, 0));
        // Every conditional jump skips to the end of this block.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == BPF_JMP_JNE_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 0)); // nothing matched: deny
    p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// Loads the program for `rules` and attaches it to the cgroup at `cgroup`.
pub fn apply(cgroup: &Path, rules: &[Rule]) -> Result<(), DeviceError> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    // bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, then zeros.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a zeroed, fully sized bpf_attr whose pointers reference `insns` and
    // `license`, both alive for the call (module invariant).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(DeviceError::Load(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir = std::fs::File::open(cgroup)
        .map_err(|source| DeviceError::Attach { path: cgroup.display().to_string(), source })?;
    // bpf_attr for BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags.
    let mut attach = [0u8; 128];
    attach[0..4].copy_from_slice(&(dir.as_raw_fd() as u32).to_ne_bytes());
    attach[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attach[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    // SAFETY: `attach` is a zeroed, fully sized bpf_attr holding two open descriptors.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, attach.as_ptr(), attach.len() as u32) };
    if rc < 0 {
        return Err(DeviceError::Attach {
            path: cgroup.display().to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_rules(json: serde_json::Value) -> Vec<Rule> {
        let parsed: Vec<LinuxDeviceCgroup> = serde_json::from_value(json).expect("rules");
        rules(&parsed).expect("valid")
    }

    #[test]
    fn containerd_defaults_deny_disks_and_allow_the_basics() {
        let rules = spec_rules(serde_json::json!([{"allow": false, "access": "rwm"}]));
        assert!(decide(&rules, DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE), "/dev/null");
        assert!(decide(&rules, DEV_CHAR, 136, 7, ACC_READ | ACC_WRITE), "a pty");
        assert!(!decide(&rules, DEV_BLOCK, 254, 0, ACC_READ), "/dev/vda");
        assert!(!decide(&rules, DEV_BLOCK, 254, 0, ACC_MKNOD), "mknod of a disk");
        assert!(!decide(&rules, DEV_CHAR, 1, 1, ACC_READ), "/dev/mem");
    }

    #[test]
    fn later_rules_win_and_partial_access_falls_through() {
        let rules = spec_rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "b", "major": 254, "access": "r"},
            {"allow": false, "type": "b", "major": 254, "minor": 1, "access": "rwm"}
        ]));
        assert!(decide(&rules, DEV_BLOCK, 254, 0, ACC_READ));
        assert!(!decide(&rules, DEV_BLOCK, 254, 0, ACC_READ | ACC_WRITE), "write was not granted");
        assert!(!decide(&rules, DEV_BLOCK, 254, 1, ACC_READ), "the later deny wins");
    }

    #[test]
    fn bad_access_strings_are_refused() {
        let parsed: Vec<LinuxDeviceCgroup> =
            serde_json::from_value(serde_json::json!([{"allow": true, "access": "rx"}])).expect("parse");
        assert!(matches!(rules(&parsed), Err(DeviceError::Access(a)) if a == "rx"));
    }

    #[test]
    fn jumps_stay_inside_their_block() {
        let rules = spec_rules(serde_json::json!([{"allow": false, "access": "rwm"}]));
        let p = program(&rules);
        for (i, ins) in p.iter().enumerate() {
            if ins.code == BPF_JMP_JNE_K {
                let target = i + 1 + ins.off as usize;
                assert!(target < p.len(), "jump {i} leaves the program");
                assert!(p[target - 1].code == BPF_EXIT, "jump {i} lands right after an exit");
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(BPF_EXIT));
    }
}
