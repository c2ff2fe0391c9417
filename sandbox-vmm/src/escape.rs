//! Simulated escapes, for the jail's tests only (cargo feature `escape-test`, never in
//! release artifacts): `--escape-test ATTEMPT@THREAD` makes that thread, once its
//! seccomp filter is in place, try one thing a VMM escape would, report on stderr
//! what happened, and end brig-vmm. A call seccomp denies ends it with the SIGSYS
//! report instead (docs/seccomp.md).
//!
//! Report lines: `escape-test: ATTEMPT on THREAD: denied: ERRNO` or `…: ALLOWED`.

use std::ffi::CString;
use std::sync::OnceLock;

/// What a test can ask for.
pub const ATTEMPTS: [&str; 7] =
    ["open-host-file", "connect-containerd", "execve-shell", "ptrace", "mount", "inet-socket", "write-outside-state"];

static REQUEST: OnceLock<(String, String)> = OnceLock::new();

/// Parses `ATTEMPT@THREAD` (THREAD: `main` or `vcpu`).
pub fn request(spec: &str) -> Result<(), String> {
    let (attempt, thread) = spec.split_once('@').ok_or("--escape-test takes ATTEMPT@THREAD")?;
    if !ATTEMPTS.contains(&attempt) || !["main", "vcpu"].contains(&thread) {
        return Err(format!("--escape-test {spec}: attempts are {}, threads main and vcpu", ATTEMPTS.join(", ")));
    }
    let _ = REQUEST.set((attempt.to_owned(), thread.to_owned()));
    Ok(())
}

/// Called by each thread kind right after its filter is installed.
pub fn at(thread: &str) {
    let Some((attempt, wanted)) = REQUEST.get() else { return };
    if wanted != thread {
        return;
    }
    let outcome = match run(attempt) {
        Ok(()) => "ALLOWED".to_owned(),
        Err(e) => format!("denied: {}", nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
    };
    eprintln!("escape-test: {attempt} on {thread}: {outcome}");
    std::process::exit(0);
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// One raw system call, so that nothing in std or a crate takes another path.
fn raw(nr: libc::c_long, args: [usize; 5]) -> std::io::Result<libc::c_long> {
    // SAFETY: the calls made here (openat, socket, connect, execve, ptrace attach,
    // mount) only read from the memory their pointer arguments name, and the kernel
    // checks every such pointer (EFAULT): no argument can make them write to this
    // process's memory.
    let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn run(attempt: &str) -> std::io::Result<()> {
    let ptr = |p: *const libc::c_char| p as usize;
    match attempt {
        "open-host-file" => {
            let path = c("/etc/shadow");
            raw(libc::SYS_openat, [libc::AT_FDCWD as usize, ptr(path.as_ptr()), libc::O_RDONLY as usize, 0, 0])?;
        }
        "connect-containerd" => {
            let fd = raw(libc::SYS_socket, [libc::AF_UNIX as usize, libc::SOCK_STREAM as usize, 0, 0, 0])?;
            let mut path = [0 as libc::c_char; 108];
            for (dst, src) in path.iter_mut().zip(b"/run/containerd/containerd.sock") {
                *dst = *src as libc::c_char;
            }
            let addr = libc::sockaddr_un { sun_family: libc::AF_UNIX as libc::sa_family_t, sun_path: path };
            let len = std::mem::size_of::<libc::sockaddr_un>();
            raw(libc::SYS_connect, [fd as usize, &addr as *const libc::sockaddr_un as usize, len, 0, 0])?;
        }
        "execve-shell" => {
            let (sh, arg) = (c("/bin/sh"), c("sh"));
            let argv = [arg.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            raw(libc::SYS_execve, [ptr(sh.as_ptr()), argv.as_ptr() as usize, envp.as_ptr() as usize, 0, 0])?;
        }
        "ptrace" => {
            // The jailer outside (its pid is 0 here), else anything: PID 1 is ourselves.
            raw(libc::SYS_ptrace, [libc::PTRACE_ATTACH as usize, 1, 0, 0, 0])?;
        }
        "mount" => {
            let (src, dst, fs) = (c("none"), c("/state"), c("tmpfs"));
            raw(libc::SYS_mount, [ptr(src.as_ptr()), ptr(dst.as_ptr()), ptr(fs.as_ptr()), 0, 0])?;
        }
        "inet-socket" => {
            let fd = raw(libc::SYS_socket, [libc::AF_INET as usize, libc::SOCK_STREAM as usize, 0, 0, 0])?;
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 80u16.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([10, 0, 2, 2]).to_be() },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>();
            raw(libc::SYS_connect, [fd as usize, &addr as *const libc::sockaddr_in as usize, len, 0, 0])?;
        }
        "write-outside-state" => {
            let path = c("/images/planted");
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            raw(libc::SYS_openat, [libc::AT_FDCWD as usize, ptr(path.as_ptr()), flags as usize, 0o600, 0])?;
        }
        _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
    }
    Ok(())
}
