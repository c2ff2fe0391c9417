//! The filters, checked in the kernel: each case forks a child that installs a filter
//! and makes one system call (crate::sys::probe). Root is not needed, nor KVM: the
//! calls get arguments that make them fail harmlessly (fd -1, address -1), since only
//! whether the filter lets them through matters.

use std::collections::BTreeSet;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::*;
use crate::sys::probe;

/// The SIGSYS handler's exit code in these tests.
const DENIED: u8 = 97;
/// Arguments no call can do anything with: fd -1, address -1, length -1.
const INERT: [u64; 6] = [u64::MAX; 6];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The filter let the call through (whatever it then returned).
    Ran,
    /// The filter trapped it.
    Trapped,
}

fn outcome(kind: ThreadKind, nr: i64, args: [u64; 6]) -> Outcome {
    let program = filter(kind).expect("the filter compiles");
    let report = probe::call(&program, Some(DENIED), nr, args);
    match report.status {
        WaitStatus::Exited(_, code) if code == i32::from(DENIED) => {
            assert!(report.stderr.contains("seccomp denied syscall"), "{report:?}");
            Outcome::Trapped
        }
        WaitStatus::Exited(_, code) if code != probe::SETUP_FAILED => Outcome::Ran,
        _ => panic!("{kind}: syscall {nr} {args:x?} ended the child unexpectedly: {report:?}"),
    }
}

fn arguments(values: &[(u8, u64)]) -> [u64; 6] {
    let mut args = INERT;
    for &(index, value) in values {
        args[usize::from(index)] = value;
    }
    args
}

/// `value`'s bit `bit` flipped, in the 32 bits the rules compare.
fn flipped(value: u64, bit: u32) -> u64 {
    (value ^ (1 << bit)) & u64::from(u32::MAX)
}

fn assert_outcome(kind: ThreadKind, allowed: &Allowed, args: [u64; 6], want: Outcome) {
    let got = outcome(kind, allowed.nr, args);
    assert_eq!(got, want, "{kind}: {}({args:x?}) under the rule {}", allowed.name, allowed.args);
}

#[test]
fn every_filter_compiles_for_x86_64() {
    for kind in ThreadKind::ALL {
        let program = filter(kind).expect("compiles");
        assert!(!program.is_empty() && program.len() < 4096, "{kind}: {} instructions", program.len());
        let allowed = allowed_syscalls(kind);
        let names: BTreeSet<_> = allowed.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), allowed.len(), "{kind}: each system call is listed once");
        for a in &allowed {
            assert_eq!(syscall_name(a.nr), Some(a.name), "{kind}: {} is named", a.nr);
            assert!(!a.why.is_empty(), "{kind}: {} says why", a.name);
        }
        for needed in ["write", "exit_group"] {
            assert!(names.contains(needed), "{kind}: the SIGSYS report needs {needed}");
        }
    }
}

#[test]
fn kvm_requests_are_the_kernels() {
    // The values <linux/kvm.h> gives on x86_64.
    let header = [
        (KVM_RUN, 0xae80),
        (KVM_GET_REGS, 0x8090_ae81),
        (KVM_GET_SREGS, 0x8138_ae83),
        (KVM_GET_MSRS, 0xc008_ae88),
        (KVM_GET_FPU, 0x81a0_ae8c),
        (KVM_GET_LAPIC, 0x8400_ae8e),
        (KVM_GET_MP_STATE, 0x8004_ae98),
        (KVM_GET_VCPU_EVENTS, 0x8040_ae9f),
        (KVM_GET_XCRS, 0x8188_aea6),
        (KVM_GET_IRQCHIP, 0xc208_ae62),
        (KVM_GET_PIT2, 0x8070_ae9f),
        (KVM_GET_CLOCK, 0x8030_ae7c),
    ];
    for (ours, kernel) in header {
        assert_eq!(ours, kernel, "{ours:#x}");
    }
}

/// Every rule in both directions: what it allows runs, each change to a checked
/// argument traps; calls allowed with any arguments run with inert ones.
#[test]
fn every_rule_holds_both_ways() {
    for kind in ThreadKind::ALL {
        for allowed in allowed_syscalls(kind) {
            match &allowed.args {
                // Returning from a signal that never came would restore garbage.
                Args::Any if allowed.nr == libc::SYS_rt_sigreturn => {}
                Args::Any => assert_outcome(kind, &allowed, INERT, Outcome::Ran),
                Args::OneOf { arg, values, ignoring } => {
                    let mask = u64::from(u32::MAX) & !ignoring.map_or(0, |flags| flags.value);
                    let permitted = |v: u64| values.iter().any(|allowed| v & mask == allowed.value & mask);
                    for value in values {
                        assert_outcome(kind, &allowed, arguments(&[(arg.index, value.value)]), Outcome::Ran);
                        if let Some(flags) = ignoring {
                            let with_flags = value.value | flags.value;
                            assert_outcome(kind, &allowed, arguments(&[(arg.index, with_flags)]), Outcome::Ran);
                        }
                        let other = (0..32).map(|bit| flipped(value.value, bit)).find(|v| !permitted(*v));
                        let other = other.expect("some one-bit change is not allowed");
                        assert_outcome(kind, &allowed, arguments(&[(arg.index, other)]), Outcome::Trapped);
                    }
                }
                Args::Without { arg, bits } => {
                    let others = u64::from(u32::MAX) & !bits.value;
                    assert_outcome(kind, &allowed, arguments(&[(arg.index, 0)]), Outcome::Ran);
                    assert_outcome(kind, &allowed, arguments(&[(arg.index, others)]), Outcome::Ran);
                    assert_outcome(kind, &allowed, arguments(&[(arg.index, bits.value)]), Outcome::Trapped);
                    assert_outcome(kind, &allowed, arguments(&[(arg.index, u64::from(u32::MAX))]), Outcome::Trapped);
                }
                Args::All(pairs) => {
                    let exact: Vec<(u8, u64)> = pairs.iter().map(|(arg, v)| (arg.index, v.value)).collect();
                    assert_outcome(kind, &allowed, arguments(&exact), Outcome::Ran);
                    for changed in 0..exact.len() {
                        let mut args = exact.clone();
                        args[changed].1 = flipped(args[changed].1, 0);
                        assert_outcome(kind, &allowed, arguments(&args), Outcome::Trapped);
                    }
                }
            }
        }
    }
}

/// What the rules are there for, spelled out.
#[test]
fn what_matters_most_is_denied() {
    use libc::*;
    for kind in ThreadKind::ALL {
        for family in [AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK] {
            let args = arguments(&[(0, family as u64)]);
            assert_eq!(outcome(kind, SYS_socket, args), Outcome::Trapped, "{kind}: socket({family})");
        }
        for prot in [PROT_EXEC, PROT_READ | PROT_EXEC, PROT_READ | PROT_WRITE | PROT_EXEC] {
            let args = arguments(&[(2, prot as u64)]);
            assert_eq!(outcome(kind, SYS_mmap, args), Outcome::Trapped, "{kind}: mmap prot {prot:#x}");
            assert_eq!(outcome(kind, SYS_mprotect, args), Outcome::Trapped, "{kind}: mprotect prot {prot:#x}");
        }
        for op in [FUTEX_LOCK_PI, FUTEX_UNLOCK_PI, FUTEX_CMP_REQUEUE_PI, FUTEX_WAIT_REQUEUE_PI, FUTEX_REQUEUE] {
            let args = arguments(&[(1, (op | FUTEX_PRIVATE_FLAG) as u64)]);
            assert_eq!(outcome(kind, SYS_futex, args), Outcome::Trapped, "{kind}: futex op {op}");
        }
        // A terminal's requests (TIOCSTI types into it), and KVM's that build a VM.
        let create_vcpu = kvm_request(_IOC_NONE, 0x41, 0);
        for request in [TCGETS, TIOCSTI, create_vcpu] {
            let args = arguments(&[(1, request)]);
            assert_eq!(outcome(kind, SYS_ioctl, args), Outcome::Trapped, "{kind}: ioctl {request:#x}");
        }
        for sig in [SIGKILL, SIGSTOP, SIGTERM] {
            let args = arguments(&[(2, sig as u64)]);
            assert_eq!(outcome(kind, SYS_tgkill, args), Outcome::Trapped, "{kind}: tgkill {sig}");
        }
    }
}

/// Calls no filter allows, and those only the other kind of thread makes.
#[test]
fn system_calls_outside_a_list_trap() {
    use libc::*;
    let never = [
        SYS_execve,
        SYS_execveat,
        SYS_fork,
        SYS_vfork,
        SYS_clone,
        SYS_clone3,
        SYS_ptrace,
        SYS_open,
        SYS_bind,
        SYS_listen,
        SYS_socketpair,
        SYS_mount,
        SYS_kill,
        SYS_prctl,
        SYS_seccomp,
        SYS_bpf,
        SYS_io_uring_setup,
        SYS_userfaultfd,
        SYS_perf_event_open,
        SYS_memfd_create,
        SYS_process_vm_writev,
        SYS_personality,
        SYS_getppid,
    ];
    for kind in ThreadKind::ALL {
        let own: BTreeSet<i64> = allowed_syscalls(kind).iter().map(|a| a.nr).collect();
        let others = ThreadKind::ALL.into_iter().flat_map(allowed_syscalls).map(|a| a.nr);
        for nr in never.into_iter().chain(others).filter(|nr| !own.contains(nr)).collect::<BTreeSet<_>>() {
            assert_eq!(outcome(kind, nr, INERT), Outcome::Trapped, "{kind}: {:?} ({nr})", syscall_name(nr));
        }
        // A number that is no system call at all.
        assert_eq!(outcome(kind, 4321, INERT), Outcome::Trapped, "{kind}: 4321");
    }
}

/// Argument values one kind of thread may use and the other may not.
#[test]
fn one_kinds_arguments_trap_on_the_other() {
    for kind in ThreadKind::ALL {
        let own = allowed_syscalls(kind);
        for other in ThreadKind::ALL.into_iter().filter(|k| *k != kind) {
            for theirs in allowed_syscalls(other) {
                let Some(ours) = own.iter().find(|a| a.nr == theirs.nr) else { continue };
                let (Args::OneOf { arg, values: their_values, .. }, Args::OneOf { values: our_values, .. }) =
                    (&theirs.args, &ours.args)
                else {
                    continue;
                };
                for value in their_values.iter().filter(|v| !our_values.contains(v)) {
                    let args = arguments(&[(arg.index, value.value)]);
                    assert_eq!(
                        outcome(kind, theirs.nr, args),
                        Outcome::Trapped,
                        "{kind}: {} {}",
                        theirs.name,
                        value.name
                    );
                }
            }
        }
    }
}

#[test]
fn the_report_names_the_call_and_the_thread_then_exits() {
    let program = filter(ThreadKind::Vcpu).expect("compiles");
    let report = probe::call(&program, Some(DENIED), libc::SYS_getppid, INERT);
    assert!(matches!(report.status, WaitStatus::Exited(_, code) if code == i32::from(DENIED)), "{report:?}");
    assert_eq!(report.stderr, "brig-vmm: seccomp denied syscall getppid (110) on thread probe; see docs/seccomp.md\n");
}

#[test]
fn without_the_handler_sigsys_kills() {
    let program = filter(ThreadKind::Main).expect("compiles");
    let report = probe::call(&program, None, libc::SYS_getppid, INERT);
    assert!(matches!(report.status, WaitStatus::Signaled(_, Signal::SIGSYS, _)), "{report:?}");
}

/// A panic (`panic = "abort"` in release builds) ends brig-vmm by SIGABRT, as without
/// the filters, not as a seccomp report.
#[test]
fn a_panic_is_still_a_panic() {
    for kind in ThreadKind::ALL {
        let program = filter(kind).expect("compiles");
        let report = probe::in_child(Some(DENIED), || {
            if seccompiler::apply_filter(&program).is_err() {
                return probe::SETUP_FAILED;
            }
            std::process::abort()
        });
        assert!(matches!(report.status, WaitStatus::Signaled(_, Signal::SIGABRT, _)), "{kind}: {report:?}");
    }
}

/// The std calls a vCPU thread makes, on a std thread under the Vcpu filter: writes,
/// eventfd clones, channels and locks, large allocations, and the thread's own end.
#[test]
fn a_vcpu_thread_runs_and_ends_under_its_filter() {
    use std::io::Write;
    use std::os::fd::AsFd;

    let report = probe::in_child(Some(DENIED), || {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("vcpu0".into()).spawn(move || {
            install(ThreadKind::Vcpu).expect("install");
            std::io::stderr().write_all(b"vcpu0 confined\n").expect("write");
            // What EventFd::try_clone does: fcntl(F_DUPFD_CLOEXEC).
            drop(std::io::stderr().as_fd().try_clone_to_owned().expect("F_DUPFD_CLOEXEC"));
            let mut big = vec![1u8; 8 << 20];
            big.resize(32 << 20, 2);
            drop(big);
            std::thread::yield_now();
            let _ = std::time::Instant::now();
            tx.send(7).expect("send");
        });
        let joined = thread.expect("spawn").join();
        match (joined, rx.recv()) {
            (Ok(()), Ok(7)) => 0,
            _ => 1,
        }
    });
    assert!(matches!(report.status, WaitStatus::Exited(_, 0)), "{report:?}");
    assert_eq!(report.stderr, "vcpu0 confined\n");
}

/// The std calls the main thread's event loop makes, under the Main filter: Unix
/// sockets (accept, connect, non-blocking, send timeout, send, receive, shutdown),
/// /proc reads, a new file written and synced, positioned disk I/O, unlinking; and the
/// thread shows `Seccomp: 2` (filter mode) in its status.
#[test]
fn the_main_threads_io_runs_under_its_filter() {
    use std::io::{Read, Write};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    let dir = std::env::temp_dir().join(format!("brig-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let socket = dir.join("api.sock");
    let state = dir.join("state.bin");
    let _ = std::fs::remove_file(&socket);
    let report = probe::in_child(Some(DENIED), || {
        let listener = UnixListener::bind(&socket).expect("bind");
        install(ThreadKind::Main).expect("install");
        let mut client = UnixStream::connect(&socket).expect("connect");
        let (mut served, _) = listener.accept().expect("accept");
        served.set_nonblocking(true).expect("FIONBIO");
        served.set_nonblocking(false).expect("FIONBIO");
        served.set_write_timeout(Some(std::time::Duration::from_secs(1))).expect("SO_SNDTIMEO");
        served.write_all(b"answer\n").expect("send");
        let mut buf = [0u8; 7];
        client.read_exact(&mut buf).expect("recv");
        served.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        let seccomp = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap_or_default().to_owned();
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&state).expect("create");
        file.write_all(b"BRIGSTAT").expect("write");
        file.write_all_at(b"!", 8).expect("pwrite");
        let mut back = [0u8; 9];
        file.sync_data().expect("fdatasync");
        file.sync_all().expect("fsync");
        drop(file);
        let file = std::fs::File::open(&state).expect("open");
        file.read_exact_at(&mut back, 0).expect("pread");
        std::fs::remove_file(&state).expect("unlink");
        drop(listener);
        std::fs::remove_file(&socket).expect("unlink");
        std::thread::yield_now();
        let ok = &buf == b"answer\n" && &back == b"BRIGSTAT!" && seccomp.split_whitespace().eq(["Seccomp:", "2"]);
        i32::from(!ok)
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(report.status, WaitStatus::Exited(_, 0)), "{report:?}");
}

#[test]
fn the_doc_lists_what_the_filters_allow() {
    const BEGIN: &str = "<!-- generated by policy/src/seccomp/tests.rs: BRIG_BLESS=1 cargo test -p brig-policy -->\n";
    const END: &str = "<!-- end generated -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/seccomp.md");
    let doc = std::fs::read_to_string(path).expect("docs/seccomp.md");
    let start = doc.find(BEGIN).expect("the doc has the generated block's start marker") + BEGIN.len();
    let end = doc[start..].find(END).expect("the doc has the generated block's end marker") + start;
    let mut generated = String::new();
    for kind in ThreadKind::ALL {
        let title = match kind {
            ThreadKind::Main => "Main (the event loop and the control socket)",
            ThreadKind::Vcpu => "Vcpu (each vCPU thread)",
        };
        generated.push_str(&format!("\n### {title}\n\n| system call | arguments | why |\n|---|---|---|\n"));
        for a in allowed_syscalls(kind) {
            // A `|` inside a table cell, even in code, must be escaped.
            let cell = |text: String| text.replace('|', "\\|");
            generated.push_str(&format!("| `{}` | {} | {} |\n", a.name, cell(a.args.to_string()), cell(a.why.into())));
        }
    }
    generated.push('\n');
    if std::env::var_os("BRIG_BLESS").is_some() {
        std::fs::write(path, format!("{}{generated}{}", &doc[..start], &doc[end..])).expect("bless");
        return;
    }
    assert_eq!(
        &doc[start..end],
        generated,
        "docs/seccomp.md is out of date: run BRIG_BLESS=1 cargo test -p brig-policy"
    );
}
