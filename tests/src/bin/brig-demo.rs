//! `cargo xtask demo`, inside kvm-host: brig's main job as a user meets it. containerd
//! (Debian's) runs one locally built busybox image twice with `ctr run`, once under
//! runc and once under brig, and the two containers report the kernel they run on.
//! Under brig that is the guest kernel of the container's own micro-VM.

use std::process::Output;
use std::time::Instant;

use anyhow::{bail, Result};
use brig_tests::containerd::{describe, Containerd, IMAGE, RUNTIME};

/// What each container prints about where it runs.
const SCRIPT: &str = "echo \"  kernel:   $(uname -r)\"; \
                      echo \"  CPUs:     $(grep -c ^processor /proc/cpuinfo)\"; \
                      echo \"  memory:   $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB\"";

fn main() -> Result<()> {
    println!("brig demo: containerd {} with the image {IMAGE} (built locally)", containerd_version());
    let containerd = Containerd::start();
    let host = nix::sys::utsname::uname()?;
    println!("this host's kernel: {}\n", host.release().to_string_lossy());

    let mut kernels = Vec::new();
    for runtime in ["io.containerd.runc.v2", RUNTIME] {
        let id = format!("demo-{}", runtime.split('.').nth(2).unwrap_or("runtime"));
        println!("$ ctr run --rm --runtime {runtime} {IMAGE} {id} sh -c '…'");
        let started = Instant::now();
        let out = containerd.ctr(&["run", "--rm", "--runtime", runtime, IMAGE, &id, "sh", "-c", SCRIPT]);
        let took = started.elapsed();
        check(&out, &containerd)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        println!("  (ctr run took {:.2} s)\n", took.as_secs_f64());
        kernels.push(text.lines().next().unwrap_or_default().trim().trim_start_matches("kernel:").trim().to_owned());
    }
    if kernels[0] == kernels[1] {
        bail!("the brig container reported the host's kernel {}: it did not run in a micro-VM", kernels[0]);
    }
    println!(
        "The same image ran on the host's kernel {} under runc, and on brig's guest kernel {} in its own micro-VM.",
        kernels[0], kernels[1]
    );
    containerd.assert_no_leftovers("the demo");
    println!("Nothing is left behind: no VMM, shim, mount or socket of the container remains.");
    Ok(())
}

fn check(out: &Output, containerd: &Containerd) -> Result<()> {
    if !out.status.success() {
        bail!("ctr run failed: {}\ncontainerd's log:\n{}", describe(out), containerd.log_for_failure());
    }
    Ok(())
}

fn containerd_version() -> String {
    let out = std::process::Command::new("containerd").arg("--version").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("?").to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}
