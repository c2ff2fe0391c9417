//! OCI `linux.seccomp` profiles compiled to seccomp-BPF programs with `seccompiler`.
//!
//! # One profile, several stacked filters
//!
//! A seccompiler filter has one match and one mismatch action; an OCI profile has an action per
//! rule and a default. The kernel runs every filter of a thread and takes the result of highest
//! precedence (`KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > TRACE > LOG > ALLOW`), and between
//! equal actions the errno of the latest filter. [`compile`] emits:
//!
//! - the *default* filter: the syscalls of every rule, with their conditions, get `ALLOW`,
//!   anything else `defaultAction` (no such filter when that is `ALLOW`);
//! - for every distinct non-`ALLOW` action (errno or trace value included) a filter giving it to
//!   the rules of that action and `ALLOW` to anything else;
//! - the *guard* (below).
//!
//! When no rule matches, `defaultAction` beats `ALLOW`; when rules of one action match, that
//! action beats the default filter's `ALLOW`; when rules of several actions match, the strictest
//! wins. Rules restating the default for a syscall no other rule names change nothing: dropped.
//!
//! # Syscall names: a table of our own (option b)
//!
//! seccompiler resolves names only in its JSON frontend (a cargo feature), which fails on the
//! first unknown name and keeps its table private: unknown names could not be skipped with a
//! warning as libseccomp and runc do. [`super::syscalls`] is a data table from the Linux 6.1
//! headers, the guest kernel's series, and the filters are built with seccompiler's Rust API.
//!
//! # Details
//!
//! - seccompiler starts every program by killing the process on a call that is not
//!   `AUDIT_ARCH_X86_64` (i386 `int 0x80`): other architectures in the list are not honoured.
//! - x32 calls pass as `AUDIT_ARCH_X86_64` with bit 30 in the number, and would slip past every
//!   filter whose mismatch action is `ALLOW`. The *guard* answers `ENOSYS` to numbers above
//!   [`syscalls::HIGHEST`]: x32 calls, and calls newer than the guest kernel, so that libc falls
//!   back as on an older kernel instead of failing with the default's `EPERM` (as in runc).
//! - seccompiler rejects rules without conditions; a syscall mapped to no rules matches any
//!   arguments, which is what one unconditional OCI rule for it becomes.
//! - Arguments compare as 64 bits (libseccomp on 64-bit). `SCMP_CMP_MASKED_EQ` is
//!   `(arg & value) == valueTwo`, an absent `valueTwo` being 0; seccompiler masks `valueTwo`
//!   too, so a `valueTwo` with bits outside the mask, which never matches, is dropped. The
//!   conditions of a rule are ANDed, except when one argument appears more than once: then, as
//!   runc does, each condition becomes its own alternative (ORed).
//! - `flags` are ignored with a warning: each asks for less (logging, speculation mitigation,
//!   thread sync), never for more filtering.
//!
//! # Installing
//!
//! [`SeccompPrograms::install`] calls `seccomp(2)` itself for each program and, unlike
//! `seccompiler::apply_filter`, does not set `no_new_privs`: like runc, the helper installs the
//! filters while it still holds `CAP_SYS_ADMIN` unless the spec asks for `noNewPrivileges`, so
//! setuid binaries keep working in containers that did not opt out of them. Nothing installs
//! after a program that denies `seccomp`; such a program (at most one, else [`compile`] fails;
//! typically the default filter of an allow-list) goes last, and newer syscalls then get its
//! action instead of the guard's `ENOSYS`. The kernel takes 4,096 instructions per program and
//! 32,768 per thread, counting 4 more per program.
//!
//! `unsafe` here: the `seccomp(2)` call. Invariant: the `sock_fprog` points at a live program
//! whose length is the one given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::syscalls;

/// The largest errno the kernel passes on (`MAX_ERRNO`); higher values are clamped to it.
const MAX_ERRNO: u32 = 4095;
/// The errno of `SCMP_ACT_ERRNO` and the value of `SCMP_ACT_TRACE` without `errnoRet`.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;
/// Total instructions of the filters attached to one thread (`MAX_INSNS_PER_PATH`).
const MAX_TOTAL_INSTRUCTIONS: usize = 32_768;
/// What the kernel adds to that total for each filter.
const PER_PROGRAM_PENALTY: usize = 4;
/// The syscalls [`SeccompPrograms::install`] makes to install a program.
const INSTALL_SYSCALLS: [i64; 1] = [libc::SYS_seccomp];
/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{action} ({rule}) is not supported")]
    UnsupportedAction { rule: String, action: LinuxSeccompAction },
    #[error("seccomp architectures [{architectures}] do not include SCMP_ARCH_X86_64")]
    NoX86_64 { architectures: String },
    #[error("errnoRet {value} ({rule}) is above {max}")]
    ReturnValueTooLarge { rule: String, value: u32, max: u32 },
    #[error("errnoRet is set ({rule}) but {action} takes no errno")]
    UnexpectedErrnoRet { rule: String, action: LinuxSeccompAction },
    #[error("argument index {index} ({rule}) is above 5")]
    ArgumentIndex { rule: String, index: usize },
    #[error("cannot build the {filter} seccomp filter")]
    Build { filter: String, source: seccompiler::BackendError },
    #[error("the {first} and {second} seccomp filters both deny seccomp, so they cannot both be installed")]
    InstallBlocked { first: String, second: String },
    #[error("the seccomp programs hold {total} instructions, the kernel takes at most {MAX_TOTAL_INSTRUCTIONS}")]
    TooManyInstructions { total: usize },
    #[error("cannot install seccomp program {index}")]
    Install { index: usize, source: std::io::Error },
}

/// BPF programs ready to install, in install order.
pub struct SeccompPrograms(Vec<BpfProgram>);

impl fmt::Debug for SeccompPrograms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lengths: Vec<usize> = self.0.iter().map(Vec::len).collect();
        f.debug_struct("SeccompPrograms").field("instructions", &lengths).finish()
    }
}

impl SeccompPrograms {
    /// Installs every program on the calling thread, in order. Needs `CAP_SYS_ADMIN` or
    /// `no_new_privs` already set (it does not set it).
    ///
    /// Allocates nothing, so it may run in a child forked from a multi-threaded process. On error
    /// the programs before `index` stay installed: the caller must not exec.
    pub fn install(&self) -> Result<(), SeccompError> {
        for (index, program) in self.0.iter().enumerate() {
            let fprog =
                libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
            // SAFETY: `fprog` points at `program`, alive for the call, with its exact length;
            // seccompiler's `sock_filter` has the kernel's (and libc's) layout.
            let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) };
            if rc != 0 {
                return Err(SeccompError::Install { index, source: std::io::Error::last_os_error() });
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Instructions of all programs, without the kernel's per-program penalty.
    pub fn instruction_count(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }
}

/// Compiles an OCI `linux.seccomp` object. Unknown syscall names are skipped with a log::warn
/// (libseccomp/runc do the same); an unsupported action (SCMP_ACT_NOTIFY) or an architecture list
/// without SCMP_ARCH_X86_64 is an error.
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompPrograms, SeccompError> {
    check_architectures(profile.architectures().as_deref().unwrap_or_default())?;
    if let Some(flags) = profile.flags().as_ref().filter(|flags| !flags.is_empty()) {
        log::warn!("seccomp: flags {flags:?} are ignored");
    }
    let default = Action::resolve(profile.default_action(), profile.default_errno_ret(), "defaultAction")?;

    let mut rules = Vec::new();
    let mut unknown = BTreeSet::new();
    for (index, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let rule = describe(index, syscall.names());
        let action = Action::resolve(syscall.action(), syscall.errno_ret(), &rule)?;
        let args = arguments(syscall.args().as_deref().unwrap_or_default(), &rule)?;
        if let Args::Never = args {
            log::warn!("seccomp: {rule} can never match, skipped");
            continue;
        }
        let mut numbers = Vec::new();
        for name in syscall.names() {
            match syscalls::number(name) {
                Some(nr) => numbers.push(nr),
                None => {
                    unknown.insert(name.as_str());
                }
            }
        }
        rules.push(Rule { action, numbers, args });
    }
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.into_iter().collect();
        log::warn!("seccomp: skipped syscalls unknown on x86_64 Linux 6.1: {}", names.join(", "));
    }
    drop_redundant(&mut rules, default);

    let mut everything = RuleSet::default();
    let mut by_action: BTreeMap<Action, RuleSet> = BTreeMap::new();
    for rule in &rules {
        for &nr in &rule.numbers {
            everything.add(nr, &rule.args)?;
            if rule.action != Action::Allow {
                by_action.entry(rule.action).or_default().add(nr, &rule.args)?;
            }
        }
    }

    let mut programs = Vec::new();
    if default != Action::Allow {
        let blocks_install =
            default.may_block_install() && !INSTALL_SYSCALLS.iter().all(|&nr| everything.matches_any_arguments(nr));
        let bpf = build("default", everything, default, Action::Allow)?;
        programs.push(Program { name: "default".into(), bpf, blocks_install });
    }
    for (action, rules) in by_action {
        let blocks_install = action.may_block_install() && INSTALL_SYSCALLS.iter().any(|&nr| rules.mentions(nr));
        let name = action.to_string();
        let bpf = build(&name, rules, Action::Allow, action)?;
        programs.push(Program { name, bpf, blocks_install });
    }
    programs.push(Program { name: "guard".into(), bpf: guard(), blocks_install: false });
    order(programs)
}

/// The filter brig always adds to every container: socket(AF_VSOCK, ...) fails with EACCES, so a
/// container cannot open vsock connections (to the agent or the host).
///
/// The domain is compared as 32 bits, as the kernel reads it (an `int`), so garbage in the upper
/// half cannot dodge the rule. Install it before the profile's programs, which may deny
/// `seccomp(2)`. It does not cover io_uring's `IORING_OP_SOCKET`: the guest kernel is built
/// without io_uring.
pub fn deny_vsock() -> Result<SeccompPrograms, SeccompError> {
    let build_err = |source| SeccompError::Build { filter: "deny-vsock".into(), source };
    let domain = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_VSOCK as u64)
        .map_err(build_err)?;
    let rules = BTreeMap::from([(libc::SYS_socket, vec![SeccompRule::new(vec![domain]).map_err(build_err)?])]);
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EACCES as u32), TargetArch::x86_64)
            .map_err(build_err)?;
    let bpf = BpfProgram::try_from(filter).map_err(build_err)?;
    order(vec![
        Program { name: "deny-vsock".into(), bpf, blocks_install: false },
        Program { name: "guard".into(), bpf: guard(), blocks_install: false },
    ])
}

/// A seccomp action with its data, ordered by the kernel's precedence, strictest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// The action of an OCI rule (or of the default, `rule == "defaultAction"`).
    fn resolve(action: LinuxSeccompAction, errno_ret: Option<u32>, rule: &str) -> Result<Self, SeccompError> {
        let data = |max: u32| {
            let value = errno_ret.unwrap_or(DEFAULT_ERRNO);
            u16::try_from(value).ok().filter(|_| value <= max).ok_or_else(|| SeccompError::ReturnValueTooLarge {
                rule: rule.into(),
                value,
                max,
            })
        };
        match action {
            LinuxSeccompAction::ScmpActErrno => Ok(Action::Errno(data(MAX_ERRNO)?)),
            LinuxSeccompAction::ScmpActTrace => Ok(Action::Trace(data(u16::MAX.into())?)),
            LinuxSeccompAction::ScmpActNotify => Err(SeccompError::UnsupportedAction { rule: rule.into(), action }),
            _ if errno_ret.is_some() => Err(SeccompError::UnexpectedErrnoRet { rule: rule.into(), action }),
            // SCMP_ACT_KILL is the old name of SCMP_ACT_KILL_THREAD.
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => Ok(Action::KillThread),
            LinuxSeccompAction::ScmpActKillProcess => Ok(Action::KillProcess),
            LinuxSeccompAction::ScmpActTrap => Ok(Action::Trap),
            LinuxSeccompAction::ScmpActLog => Ok(Action::Log),
            LinuxSeccompAction::ScmpActAllow => Ok(Action::Allow),
        }
    }

    /// Whether a filter returning this action for `prctl` or `seccomp` stops the next install.
    fn may_block_install(self) -> bool {
        !matches!(self, Action::Log | Action::Allow)
    }
}

impl From<Action> for SeccompAction {
    fn from(action: Action) -> Self {
        match action {
            Action::KillProcess => SeccompAction::KillProcess,
            Action::KillThread => SeccompAction::KillThread,
            Action::Trap => SeccompAction::Trap,
            Action::Errno(errno) => SeccompAction::Errno(errno.into()),
            Action::Trace(value) => SeccompAction::Trace(value.into()),
            Action::Log => SeccompAction::Log,
            Action::Allow => SeccompAction::Allow,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::KillProcess => f.write_str("SCMP_ACT_KILL_PROCESS"),
            Action::KillThread => f.write_str("SCMP_ACT_KILL_THREAD"),
            Action::Trap => f.write_str("SCMP_ACT_TRAP"),
            Action::Errno(errno) => write!(f, "SCMP_ACT_ERRNO({errno})"),
            Action::Trace(value) => write!(f, "SCMP_ACT_TRACE({value})"),
            Action::Log => f.write_str("SCMP_ACT_LOG"),
            Action::Allow => f.write_str("SCMP_ACT_ALLOW"),
        }
    }
}

/// One OCI rule with its names resolved.
struct Rule {
    action: Action,
    numbers: Vec<i64>,
    args: Args,
}

/// What a rule asks of the arguments.
enum Args {
    Any,
    /// One of the alternatives holds; each is a non-empty list of conditions that all hold.
    AnyOf(Vec<Vec<SeccompCondition>>),
    /// No alternative can ever hold.
    Never,
}

/// The rules of one filter: syscall number → alternatives, `None` for any arguments.
#[derive(Default)]
struct RuleSet(BTreeMap<i64, Option<Vec<SeccompRule>>>);

impl RuleSet {
    fn add(&mut self, nr: i64, args: &Args) -> Result<(), SeccompError> {
        let alternatives = match args {
            Args::Any => {
                self.0.insert(nr, None);
                return Ok(());
            }
            Args::AnyOf(alternatives) => alternatives,
            Args::Never => return Ok(()),
        };
        for conditions in alternatives {
            let rule = SeccompRule::new(conditions.clone())
                .map_err(|source| SeccompError::Build { filter: format!("syscall {nr}"), source })?;
            if let Some(rules) = self.0.entry(nr).or_insert_with(|| Some(Vec::new())) {
                rules.push(rule);
            }
        }
        Ok(())
    }

    fn mentions(&self, nr: i64) -> bool {
        self.0.contains_key(&nr)
    }

    fn matches_any_arguments(&self, nr: i64) -> bool {
        matches!(self.0.get(&nr), Some(None))
    }

    /// The map seccompiler takes: an empty rule list matches any arguments. `add` never leaves an
    /// empty list behind for a syscall with conditional rules only.
    fn into_map(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.0.into_iter().map(|(nr, rules)| (nr, rules.unwrap_or_default())).collect()
    }
}

/// A compiled filter with what [`order`] needs to know about it.
struct Program {
    name: String,
    bpf: BpfProgram,
    /// Whether it may deny `prctl` or `seccomp`, so that nothing can be installed after it.
    blocks_install: bool,
}

fn check_architectures(architectures: &[Arch]) -> Result<(), SeccompError> {
    // No list means the native architecture, as in libseccomp.
    let native = [Arch::ScmpArchX86_64, Arch::ScmpArchNative];
    if architectures.is_empty() || architectures.iter().any(|arch| native.contains(arch)) {
        return Ok(());
    }
    let names: Vec<String> = architectures.iter().map(Arch::to_string).collect();
    Err(SeccompError::NoX86_64 { architectures: names.join(", ") })
}

/// `syscalls[3] (read, write, +2 more)`, to name a rule in errors and logs.
fn describe(index: usize, names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut listed = names.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        listed.push_str(&format!(", +{} more", names.len() - SHOWN));
    }
    format!("syscalls[{index}] ({listed})")
}

fn arguments(args: &[LinuxSeccompArg], rule: &str) -> Result<Args, SeccompError> {
    if args.is_empty() {
        return Ok(Args::Any);
    }
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let index_err = || SeccompError::ArgumentIndex { rule: rule.into(), index: arg.index() };
        let index = u8::try_from(arg.index()).map_err(|_| index_err())?;
        let (op, value, possible) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value(), true),
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value(), true),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value(), true),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value(), true),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value(), true),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value(), true),
            LinuxSeccompOperator::ScmpCmpMaskedEq => {
                let (mask, expected) = (arg.value(), arg.value_two().unwrap_or(0));
                // seccompiler masks `expected` too: bits outside the mask would match wrongly.
                (SeccompCmpOp::MaskedEq(mask), expected, expected & !mask == 0)
            }
        };
        // Fails only for an index above 5.
        let condition = SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|_| index_err())?;
        conditions.push((arg.index(), possible, condition));
    }
    let mut indices: Vec<usize> = conditions.iter().map(|(i, _, _)| *i).collect();
    indices.sort_unstable();
    indices.dedup();
    let alternatives: Vec<Vec<SeccompCondition>> = if indices.len() == conditions.len() {
        // All on different arguments: one alternative, possible only if every condition is.
        if conditions.iter().all(|(_, possible, _)| *possible) {
            vec![conditions.into_iter().map(|(_, _, c)| c).collect()]
        } else {
            Vec::new()
        }
    } else {
        conditions.into_iter().filter(|(_, possible, _)| *possible).map(|(_, _, c)| vec![c]).collect()
    };
    Ok(if alternatives.is_empty() { Args::Never } else { Args::AnyOf(alternatives) })
}

/// Drops the syscalls of rules that restate the default action when no rule of another action
/// names the same syscall: without them the syscall gets the default action all the same.
fn drop_redundant(rules: &mut [Rule], default: Action) {
    let mut actions: BTreeMap<i64, BTreeSet<Action>> = BTreeMap::new();
    for rule in rules.iter() {
        for &nr in &rule.numbers {
            actions.entry(nr).or_default().insert(rule.action);
        }
    }
    for rule in rules.iter_mut().filter(|rule| rule.action == default) {
        rule.numbers.retain(|nr| actions.get(nr).is_some_and(|set| set.len() > 1));
    }
}

fn build(name: &str, rules: RuleSet, mismatch: Action, on_match: Action) -> Result<BpfProgram, SeccompError> {
    let build_err = |source| SeccompError::Build { filter: name.into(), source };
    let filter = SeccompFilter::new(rules.into_map(), mismatch.into(), on_match.into(), TargetArch::x86_64)
        .map_err(build_err)?;
    BpfProgram::try_from(filter).map_err(build_err)
}

/// Kills the process on another architecture (as seccompiler's own check does) and answers
/// `ENOSYS` to numbers above [`syscalls::HIGHEST`], x32 calls included; allows the rest.
fn guard() -> BpfProgram {
    const LOAD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // Offsets in `struct seccomp_data { int nr; __u32 arch; ... }`.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(LOAD, 0, 0, ARCH),
        insn(JEQ, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(LOAD, 0, 0, NR),
        // Unsigned: a negative number is above too.
        insn(JGT, 0, 1, syscalls::HIGHEST as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Puts the one program that may deny the install syscalls last and checks the kernel's limit.
fn order(programs: Vec<Program>) -> Result<SeccompPrograms, SeccompError> {
    let (blocking, mut ordered): (Vec<Program>, Vec<Program>) =
        programs.into_iter().partition(|program| program.blocks_install);
    if let [first, second, ..] = blocking.as_slice() {
        return Err(SeccompError::InstallBlocked { first: first.name.clone(), second: second.name.clone() });
    }
    ordered.extend(blocking);
    let total: usize = ordered.iter().map(|program| program.bpf.len() + PER_PROGRAM_PENALTY).sum();
    if total > MAX_TOTAL_INSTRUCTIONS {
        return Err(SeccompError::TooManyInstructions { total });
    }
    Ok(SeccompPrograms(ordered.into_iter().map(|program| program.bpf).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use libc::{EACCES, ENOSYS, ENOTSUP, EPERM, EXDEV};
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use serde_json::{json, Value};

    const INSTALL_FAILED: i32 = 100;
    const SETUP_FAILED: i32 = 101;
    const X32_SYSCALL_BIT: i64 = 0x4000_0000;

    fn profile(value: Value) -> LinuxSeccomp {
        serde_json::from_value(value).expect("test profile is valid OCI JSON")
    }

    /// A profile: the default action without `SCMP_ACT_`, and rules.
    fn seccomp(default: &str, rules: &[Value]) -> LinuxSeccomp {
        profile(json!({"defaultAction": format!("SCMP_ACT_{default}"), "syscalls": rules}))
    }

    /// A rule: names separated by spaces, the action without `SCMP_ACT_` and with `:errnoRet`
    /// if any (`ERRNO:18`), argument conditions.
    fn rule(names: &str, action: &str, args: &[Value]) -> Value {
        let names: Vec<&str> = names.split_whitespace().collect();
        let (action, errno_ret) = action.split_once(':').map_or((action, None), |(action, ret)| (action, Some(ret)));
        let mut rule = json!({"names": names, "action": format!("SCMP_ACT_{action}"), "args": args});
        if let Some(errno_ret) = errno_ret {
            rule["errnoRet"] = errno_ret.parse::<u32>().expect("errnoRet is a number").into();
        }
        rule
    }

    /// A profile allowing by default, for these architectures.
    fn architectures(names: &[&str]) -> LinuxSeccomp {
        profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": names}))
    }

    /// An argument condition, the operator without `SCMP_CMP_`.
    fn arg(index: usize, op: &str, value: u64) -> Value {
        json!({"index": index, "value": value, "op": format!("SCMP_CMP_{op}")})
    }

    fn masked(index: usize, mask: u64, expected: u64) -> Value {
        json!({"index": index, "value": mask, "valueTwo": expected, "op": "SCMP_CMP_MASKED_EQ"})
    }

    /// A raw system call with integer arguments: the return value or the errno.
    fn raw(nr: i64, args: [u64; 4]) -> Result<i64, i32> {
        // SAFETY: the tests pass integers only, never pointers, so the kernel touches no memory
        // of this process.
        let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3]) };
        (ret != -1).then_some(ret).ok_or_else(nix::errno::Errno::last_raw)
    }

    fn socket(domain: u64) -> Result<i64, i32> {
        raw(libc::SYS_socket, [domain, libc::SOCK_STREAM as u64, 0, 0])
    }

    /// 0 if every check holds, else the 1-based position of the first that does not.
    fn first_failure(checks: &[bool]) -> i32 {
        checks.iter().position(|ok| !ok).map_or(0, |position| position as i32 + 1)
    }

    /// Forks; the child installs `sets` in order, runs `probe` and exits with its result.
    fn in_child(sets: &[&SeccompPrograms], probe: fn() -> i32) -> WaitStatus {
        // SAFETY: the test harness is multi-threaded, so the child does only what is safe after
        // fork: prctl, seccomp and raw system calls, which neither allocate nor take locks, then
        // _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                // Not dumpable: no core file from the SIGSYS tests (core_pattern is a file name).
                let code = if nix::sys::prctl::set_dumpable(false).is_err() {
                    SETUP_FAILED
                } else if sets.iter().any(|set| set.install().is_err()) {
                    INSTALL_FAILED
                } else {
                    probe()
                };
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
        }
    }

    fn assert_exit_ok(status: WaitStatus) {
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "child failed: {status:?}");
    }

    #[test]
    fn action_order_is_the_kernels_precedence() {
        use Action::*;
        let actions = [KillProcess, KillThread, Trap, Errno(1), Errno(2), Trace(1), Log, Allow];
        // The kernel compares `(s32)(ret & SECCOMP_RET_ACTION_FULL)`; lower is stricter.
        let rank = |action: Action| (u32::from(SeccompAction::from(action)) & libc::SECCOMP_RET_ACTION_FULL) as i32;
        for pair in actions.windows(2) {
            assert!(pair[0] < pair[1] && rank(pair[0]) <= rank(pair[1]), "{} / {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn invalid_profiles_are_rejected_with_clear_messages() {
        let cases = [
            (seccomp("NOTIFY", &[]), "SCMP_ACT_NOTIFY (defaultAction) is not supported"),
            (
                seccomp("ALLOW", &[rule("read write close dup", "NOTIFY", &[])]),
                "SCMP_ACT_NOTIFY (syscalls[0] (read, write, close, +1 more)) is not supported",
            ),
            (
                architectures(&["SCMP_ARCH_X86", "SCMP_ARCH_ARM"]),
                "seccomp architectures [SCMP_ARCH_X86, SCMP_ARCH_ARM] do not include SCMP_ARCH_X86_64",
            ),
            (
                profile(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4096})),
                "errnoRet 4096 (defaultAction) is above 4095",
            ),
            (
                seccomp("ALLOW", &[rule("read", "KILL:1", &[])]),
                "errnoRet is set (syscalls[0] (read)) but SCMP_ACT_KILL takes no errno",
            ),
            (
                seccomp("ALLOW", &[rule("read", "ERRNO", &[arg(6, "EQ", 1)])]),
                "argument index 6 (syscalls[0] (read)) is above 5",
            ),
            (
                // Two filters may each deny seccomp (for some arguments).
                seccomp(
                    "ALLOW",
                    &[rule("seccomp", "KILL_PROCESS", &[arg(0, "EQ", 5)]), rule("seccomp", "TRAP", &[arg(0, "EQ", 6)])],
                ),
                "the SCMP_ACT_KILL_PROCESS and SCMP_ACT_TRAP seccomp filters both deny seccomp, \
                 so they cannot both be installed",
            ),
        ];
        for (profile, message) in cases {
            assert_eq!(compile(&profile).expect_err(message).to_string(), message);
        }
    }

    #[test]
    fn programs_per_profile() {
        let allow = |names| rule(names, "ALLOW", &[]);
        let cases = [
            // Default filter, ERRNO(18) filter, KILL_PROCESS filter, guard.
            (
                seccomp(
                    "ERRNO",
                    &[
                        allow("read write prctl seccomp"),
                        rule("getuid getgid", "ERRNO:18", &[]),
                        rule("getppid", "KILL_PROCESS", &[]),
                    ],
                ),
                4,
            ),
            // Default ALLOW: no default filter.
            (seccomp("ALLOW", &[rule("getuid", "ERRNO", &[]), allow("read")]), 2),
            // Unknown names, and (arg & 0x0f) == 0x10, which never holds: only the guard is left.
            (
                seccomp(
                    "ALLOW",
                    &[
                        rule("fchmodat2 _llseek no_such_call", "ERRNO", &[]),
                        rule("getuid", "ERRNO", &[masked(0, 0x0f, 0x10)]),
                    ],
                ),
                1,
            ),
            // An absent valueTwo is 0: (arg & 0x0f) == 0 can hold.
            (seccomp("ALLOW", &[rule("getuid", "ERRNO", &[arg(0, "MASKED_EQ", 0x0f)])]), 2),
            // A rule restating the default is dropped: an ERRNO filter denying seccomp could not be
            // installed before the default filter, which denies it too.
            (seccomp("ERRNO", &[allow("getppid"), rule("seccomp prctl", "ERRNO", &[])]), 2),
            // Lists with x86_64 (or native) are fine; other architectures are not honoured.
            (architectures(&["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]), 1),
            (architectures(&["SCMP_ARCH_NATIVE"]), 1),
            (architectures(&[]), 1),
            // Default LOG: a default filter (LOG outranks ALLOW) and the guard.
            (seccomp("LOG", &[]), 2),
        ];
        for (index, (profile, expected)) in cases.iter().enumerate() {
            assert_eq!(compile(profile).expect("compiles").len(), *expected, "case {index}");
        }
    }

    #[test]
    fn rule_actions_apply() {
        let programs = compile(&seccomp(
            "ALLOW",
            &[
                rule("getppid", &format!("ERRNO:{EXDEV}"), &[]),
                rule("getpgrp", "ERRNO", &[]),
                rule("getgid", "TRACE", &[]),
                rule("getegid", "LOG", &[]),
            ],
        ))
        .expect("compiles");
        assert_exit_ok(in_child(&[&programs], || {
            first_failure(&[
                raw(libc::SYS_getppid, [0; 4]) == Err(EXDEV),
                raw(libc::SYS_getpgrp, [0; 4]) == Err(EPERM),
                raw(libc::SYS_getgid, [0; 4]) == Err(ENOSYS), // TRACE without a tracer
                raw(libc::SYS_getegid, [0; 4]).is_ok(),
                raw(libc::SYS_getuid, [0; 4]).is_ok(),
            ])
        }));
    }

    #[test]
    fn default_action_applies_to_unlisted_syscalls() {
        // It denies seccomp(2) too, so the default filter must be installed last.
        let mut profile = seccomp(
            "ERRNO",
            &[rule("exit_group getppid", "ALLOW", &[]), rule("getuid", &format!("ERRNO:{EXDEV}"), &[])],
        );
        profile.set_default_errno_ret(Some(ENOTSUP as u32));
        let programs = compile(&profile).expect("compiles");
        assert_eq!(programs.len(), 3);
        assert_exit_ok(in_child(&[&programs], || {
            first_failure(&[
                raw(libc::SYS_getppid, [0; 4]).is_ok(),
                raw(libc::SYS_getuid, [0; 4]) == Err(EXDEV),
                raw(libc::SYS_getgid, [0; 4]) == Err(ENOTSUP),
                raw(libc::SYS_seccomp, [0xffff, 0, 0, 0]) == Err(ENOTSUP),
            ])
        }));
    }

    #[test]
    fn argument_conditions_select() {
        let exdev = |names, args: &[Value]| rule(names, &format!("ERRNO:{EXDEV}"), args);
        let programs = compile(&seccomp(
            "ALLOW",
            &[
                exdev("getppid", &[arg(0, "EQ", 7)]),
                exdev("getppid", &[masked(1, 0xf0, 0x30)]),
                exdev("getppid", &[arg(2, "GT", 0x1_0000_0000)]),
                exdev("getppid", &[arg(3, "GE", 10), arg(2, "LE", 20)]),
                exdev("getpgrp", &[arg(0, "LT", 5), arg(1, "NE", 3)]),
                // One argument twice: runc ORs the conditions (arg 0 <= 2 or >= 20).
                exdev("getegid", &[arg(0, "LE", 2), arg(0, "GE", 20)]),
            ],
        ))
        .expect("compiles");
        // getppid and getpgrp ignore their arguments; the filter still sees them.
        assert_exit_ok(in_child(&[&programs], || {
            let ppid = |args| raw(libc::SYS_getppid, args);
            let pgrp = |args| raw(libc::SYS_getpgrp, args);
            let egid = |args| raw(libc::SYS_getegid, args);
            first_failure(&[
                ppid([7, 0, 0, 0]) == Err(EXDEV),
                ppid([0x1_0000_0007, 0, 0, 0]).is_ok(), // compared as 64 bits
                ppid([0, 0x135, 0, 0]) == Err(EXDEV),
                ppid([0, 0x25, 0, 0]).is_ok(),
                ppid([0, 0, 0x1_0000_0001, 0]) == Err(EXDEV),
                ppid([0, 0, 0x1_0000_0000, 0]).is_ok(),
                ppid([0, 0, 0, 10]) == Err(EXDEV), // and arg 2 is 0 <= 20
                ppid([0, 0, 0, 9]).is_ok(),
                pgrp([4, 0, 0, 0]) == Err(EXDEV),
                pgrp([4, 3, 0, 0]).is_ok(),
                pgrp([5, 0, 0, 0]).is_ok(),
                egid([2, 0, 0, 0]) == Err(EXDEV),
                egid([20, 0, 0, 0]) == Err(EXDEV),
                egid([10, 0, 0, 0]).is_ok(),
            ])
        }));
    }

    #[test]
    fn kill_and_trap_rules_end_the_child_with_sigsys() {
        for action in ["KILL_PROCESS", "KILL", "KILL_THREAD", "TRAP"] {
            let programs = compile(&seccomp("ALLOW", &[rule("getppid", action, &[])])).expect("compiles");
            let status = in_child(&[&programs], || first_failure(&[raw(libc::SYS_getppid, [0; 4]).is_ok()]));
            assert!(matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)), "{action}: {status:?}");
        }
    }

    #[test]
    fn deny_vsock_refuses_vsock_sockets_only() {
        let programs = deny_vsock().expect("compiles");
        assert_exit_ok(in_child(&[&programs], || {
            first_failure(&[
                socket(libc::AF_VSOCK as u64) == Err(EACCES),
                // The kernel reads the domain as an int: the upper half does not matter.
                socket(0xdead_0000_0000 | libc::AF_VSOCK as u64) == Err(EACCES),
                socket(libc::AF_UNIX as u64).is_ok(),
                raw(libc::SYS_getppid | X32_SYSCALL_BIT, [0; 4]) == Err(ENOSYS),
            ])
        }));
    }

    #[test]
    fn errno_rule_wins_over_allow_rule_and_vsock_denial_over_profile() {
        let programs = compile(&seccomp(
            "ERRNO",
            &[
                rule("exit_group prctl seccomp getppid socket", "ALLOW", &[]),
                rule("getppid", &format!("ERRNO:{EXDEV}"), &[arg(0, "EQ", 1)]),
            ],
        ))
        .expect("compiles");
        let vsock = deny_vsock().expect("compiles");
        assert_exit_ok(in_child(&[&vsock, &programs], || {
            first_failure(&[
                raw(libc::SYS_getppid, [0; 4]).is_ok(),
                raw(libc::SYS_getppid, [1, 0, 0, 0]) == Err(EXDEV),
                socket(libc::AF_VSOCK as u64) == Err(EACCES),
                socket(libc::AF_UNIX as u64).is_ok(),
            ])
        }));
    }

    /// Docker's default profile in shape: an allow-list of nearly every syscall, names of other
    /// architectures and newer kernels, conditional rules, clone3 answering ENOSYS.
    fn docker_like() -> LinuxSeccomp {
        const DENIED: &str = "acct add_key bpf clock_adjtime clock_settime clone clone3 create_module
            delete_module finit_module get_kernel_syms get_mempolicy init_module ioperm iopl kcmp
            kexec_file_load kexec_load keyctl lookup_dcookie mbind mount move_pages nfsservctl
            open_by_handle_at perf_event_open personality pivot_root process_vm_readv
            process_vm_writev ptrace query_module quotactl reboot request_key set_mempolicy setns
            settimeofday swapoff swapon _sysctl sysfs umount2 unshare uselib userfaultfd ustat vhangup";
        const UNKNOWN: &str = "_llseek _newselect chown32 fadvise64_64 fcntl64 fstat64 fstatat64
            ugetrlimit waitpid arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls
            riscv_flush_icache cachestat fchmodat2 futex_wait futex_wake futex_requeue
            map_shadow_stack mseal";
        let denied: Vec<&str> = DENIED.split_whitespace().collect();
        let known = syscalls::SYSCALLS.iter().map(|(name, _)| *name).filter(|name| !denied.contains(name));
        let allowed: Vec<&str> = known.chain(UNKNOWN.split_whitespace()).collect();
        let mut profile = seccomp(
            "ERRNO",
            &[
                rule(&allowed.join(" "), "ALLOW", &[]),
                rule("personality", "ALLOW", &[arg(0, "EQ", 0)]),
                rule("personality", "ALLOW", &[arg(0, "EQ", 8)]),
                rule("personality", "ALLOW", &[arg(0, "EQ", 0x20000)]),
                rule("personality", "ALLOW", &[arg(0, "EQ", 0x20008)]),
                rule("personality", "ALLOW", &[arg(0, "EQ", 0xffff_ffff)]),
                rule("clone", "ALLOW", &[masked(0, 0x7e02_0000, 0)]),
                rule("clone3", &format!("ERRNO:{ENOSYS}"), &[]),
            ],
        );
        profile.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]));
        profile
    }

    #[test]
    fn docker_like_profile_fits_and_works() {
        let programs = compile(&docker_like()).expect("compiles");
        let vsock = deny_vsock().expect("compiles");
        let total = programs.instruction_count() + vsock.instruction_count();
        let charged = total + PER_PROGRAM_PENALTY * (programs.len() + vsock.len());
        println!("docker-like profile: {programs:?}; with deny_vsock {total} instructions, {charged} charged");
        assert!(charged <= MAX_TOTAL_INSTRUCTIONS);
        assert_exit_ok(in_child(&[&vsock, &programs], || {
            first_failure(&[
                raw(libc::SYS_getppid, [0; 4]).is_ok(),
                raw(libc::SYS_acct, [0; 4]) == Err(EPERM),
                raw(libc::SYS_clone3, [0; 4]) == Err(ENOSYS),
                raw(libc::SYS_personality, [0xffff_ffff, 0, 0, 0]).is_ok(),
                raw(libc::SYS_personality, [0x0040_0000, 0, 0, 0]) == Err(EPERM),
                // fchmodat2: newer than the table, the guard's ENOSYS beats the default EPERM.
                raw(452, [0; 4]) == Err(ENOSYS),
                socket(libc::AF_VSOCK as u64) == Err(EACCES),
            ])
        }));
    }
}
