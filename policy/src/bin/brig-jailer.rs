//! `brig-jailer`: builds one brig-vmm's jail and runs it there (docs/jail.md).
//!
//! The shim runs it as root with `--spec jail.json`. It prints `pid N` (brig-vmm's
//! host pid) on stdout once brig-vmm is forked, forwards SIGTERM, SIGINT and
//! SIGHUP to it, and exits with its status.

use std::path::PathBuf;
use std::process::ExitCode;

use brig_policy::jail::{self, JailSpec};
use clap::Parser;

/// Builds a brig-vmm jail (namespaces, pivot_root, cgroup v2, an unprivileged
/// uid, no capabilities, Landlock) and runs brig-vmm in it.
#[derive(Debug, Parser)]
#[command(name = "brig-jailer", version, after_help = EXIT_CODES)]
struct Cli {
    /// The jail as JSON (what the shim writes: brig_policy::jail::JailSpec).
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
}

const EXIT_CODES: &str = "\
Exit status: brig-vmm's own; 128+N if signal N ended it; 30 if the jail could not
be built (the message on stderr names the step and the fix).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = JailSpec::from_file(&cli.spec).and_then(|spec| jail::run(&spec));
    match outcome {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("brig-jailer: {}: {e}", cli.spec.display());
            ExitCode::from(jail::EXIT_JAIL_FAILED as u8)
        }
    }
}
