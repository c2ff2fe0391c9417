//! `brig`: the operator's command line. It finds sandboxes through the shim's
//! state directory (`state_dir` in /etc/brig/config.toml) and asks each brig-vmm
//! over its control socket, never the guest.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use brig_cli::{copy, ps, signing, snapshot, verify};

const ABOUT: &str = "brig: inspect the micro-VMs that brig runs containers in";

const LONG_ABOUT: &str = "\
brig is the operator's side of brig, the containerd runtime that runs every
container in its own jailed KVM micro-VM (io.containerd.brig.v2).

It reads the shim's state directory (state_dir in /etc/brig/config.toml,
/run/brig by default) to find sandboxes, and asks each VM's brig-vmm over its
control socket. It never asks the guest: what a compromised workload says about
itself is not evidence.";

const AFTER_HELP: &str = "\
FILES
    /etc/brig/config.toml   the shim's configuration ($BRIG_CONFIG overrides it)
    /etc/brig/keys/         this host's snapshot signing key (brig keygen):
                            snapshot.key (secret, 0600) and snapshot.pub
    <state_dir>/<sandbox>/  one directory per task: task, vm.json, vmm.pid, and
                            brig-vmm's sockets (in jail/state/ when jailed)
    <prefix>/share/brig/vmlinux.debug
                            the guest kernel with its DWARF: open a snapshot's
                            memory.elf with `crash vmlinux.debug memory.elf`

EXIT STATUS
    0 on success; 1 when the command failed (the message says why and what to do).

SEE ALSO
    docs/shim.md, docs/jail.md, docs/control-socket.md, docs/snapshot-format.md
    in brig's repository";

#[derive(Debug, Parser)]
#[command(name = "brig", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Ps(ps::Args),
    Snapshot(snapshot::Args),
    Verify(verify::Args),
    Copy(copy::Args),
    Keygen(signing::KeygenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Ps(args) => ps::run(&args),
        Command::Snapshot(args) => snapshot::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Copy(args) => copy::run(&args),
        Command::Keygen(args) => signing::keygen(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brig: {e:#}");
            ExitCode::FAILURE
        }
    }
}
