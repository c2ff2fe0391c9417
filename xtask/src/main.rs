//! brig's developer commands. `cargo xtask help` lists them.

mod apt;
mod artifacts;
mod bench;
mod cargo;
mod demo;
mod fuzz;
mod install;
mod libtest;
mod test;
mod testhost;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const HELP: &str = "\
cargo xtask <command>

  kvm-host [--timeout SECS] [--memory MIB] [--cpus N] -- COMMAND...
        run COMMAND as root where /dev/kvm can boot Linux: directly on a CPU
        with vmx/svm, else inside the nested KVM test host
  demo  the main job: a micro-VM booted by brig-vmm, its agent answering over vsock
  test [--no-lint] [--no-unit] [--no-fuzz] [--test FILE]... [--filter NAME]
        every test: fmt, clippy, unit tests, the fuzz targets, then the
        integration tests inside kvm-host (what CI runs)
  fuzz [--seconds N] [TARGET]...
        the cargo-fuzz targets (guest, agent and file inputs), each for N
        seconds (default 60), with their run counts
  bench [ring0] [boot] [ctr] [snapshot] [stress] [density] [start] [net]
        benchmarks; they print numbers (see docs/testing.md)
  install [--prefix DIR] [--no-build]
        installs the shim, brig-vmm, the guest kernel and initramfs, and
        /etc/brig/config.toml, so `ctr run --runtime io.containerd.brig.v2` works
  help  this text
";

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{HELP}");
        return Ok(ExitCode::FAILURE);
    };
    match cmd.as_str() {
        "kvm-host" => kvm_host(rest),
        "test" => {
            test::run(&test_options(rest)?)?;
            Ok(ExitCode::SUCCESS)
        }
        "demo" => {
            demo::run()?;
            Ok(ExitCode::SUCCESS)
        }
        "install" => {
            install::run(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "fuzz" => {
            fuzz::main(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "bench" => {
            bench::run(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "in-host-tests" => {
            // Internal: `cargo xtask test` runs this inside kvm-host.
            let (threads, filter, binaries) = in_host_args(rest)?;
            libtest::run_binaries(&binaries, threads, filter.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n{HELP}"),
    }
}

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn kvm_host(args: &[String]) -> Result<ExitCode> {
    let mut opts = testhost::Options::new(workspace_root());
    let mut iter = args.iter();
    let mut argv = Vec::new();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = iter.next().with_context(|| format!("{name} needs a value"))?;
            v.parse().with_context(|| format!("{name} takes a number, not `{v}`"))
        };
        match arg.as_str() {
            "--timeout" => opts.timeout = Duration::from_secs(value("--timeout")?),
            "--memory" => opts.memory_mib = u32::try_from(value("--memory")?)?,
            "--cpus" => opts.cpus = u32::try_from(value("--cpus")?)?,
            "--" => {
                argv.extend(iter.by_ref().cloned());
                break;
            }
            _ => {
                argv.push(arg.clone());
                argv.extend(iter.by_ref().cloned());
                break;
            }
        }
    }
    let code = testhost::run(&argv, &opts)?;
    Ok(ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)))
}

fn test_options(args: &[String]) -> Result<test::Options> {
    let mut opts = test::Options::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--no-lint" => opts.no_lint = true,
            "--no-unit" => opts.no_unit = true,
            "--no-fuzz" => opts.no_fuzz = true,
            "--test" => opts.files.push(iter.next().context("--test needs a file name")?.clone()),
            "--filter" => opts.filter = Some(iter.next().context("--filter needs a name")?.clone()),
            other => bail!("unknown option `{other}` for test\n{HELP}"),
        }
    }
    Ok(opts)
}

fn in_host_args(args: &[String]) -> Result<(u32, Option<String>, Vec<String>)> {
    let mut threads = 1;
    let mut filter = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--threads" => threads = iter.next().context("--threads needs a number")?.parse()?,
            "--filter" => filter = Some(iter.next().context("--filter needs a name")?.clone()),
            "--" => return Ok((threads, filter, iter.cloned().collect())),
            other => bail!("unknown option `{other}` for in-host-tests"),
        }
    }
    Ok((threads, filter, Vec::new()))
}
