//! `brig-vmm`: boots one micro-VM and runs it until the guest resets, powers off,
//! panics, or is told to stop.
//!
//! Exit status: 0 guest reset/power-off or `shutdown` request; 1 the VM could not
//! be started (the message says why); 2 guest kernel panic; 3 a vCPU failed;
//! 31 a thread made a system call its seccomp filter denies (the message names the
//! call and the thread, docs/seccomp.md); 128+N stopped by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use brig_vmm::builder;
use brig_vmm::config::{
    BlockConfig, BootConfig, MacAddr, MachineConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_MTU,
};
use brig_vmm::seccomp::{install_sigsys_handler, Seccomp};
use brig_vmm::vmm::{error_chain, ExitReason};
use clap::Parser;

/// Boots one micro-VM and runs it until the guest resets, powers off, panics, or is
/// told to stop (docs/control-socket.md).
///
/// Flags override the values of --config (JSON, the fields docs/control-socket.md
/// describes under "Configuration").
#[derive(Debug, Parser)]
#[command(name = "brig-vmm", version, after_help = EXIT_CODES)]
struct Cli {
    /// The VM's configuration as JSON (what the shim writes).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Uncompressed ELF guest kernel (required without --config).
    #[arg(long, value_name = "VMLINUX")]
    kernel: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    initramfs: Option<PathBuf>,
    /// Kernel parameters before brig-vmm's own (default: `console=ttyS0 quiet`).
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    #[arg(long, value_name = "N")]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Keep guest RAM in this tmpfs directory (an unnamed file), not in a memfd;
    /// mounted `huge=within_size`, it gives 2 MiB pages whatever the host's
    /// shmem_enabled.
    #[arg(long, value_name = "DIR")]
    memory_dir: Option<PathBuf>,
    /// Guest RAM in 4 KiB pages only (default: 2 MiB huge pages where the host has them).
    #[arg(long)]
    no_huge_pages: bool,
    /// Where the guest's serial console is written.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Hybrid vsock: the guest CID and the host Unix socket.
    #[arg(long, value_name = "cid=N,path=SOCKET", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// A virtio-blk disk; repeat for more.
    #[arg(long, value_name = "path=IMAGE[,ro][,serial=ID]", value_parser = parse_block)]
    block: Vec<BlockConfig>,
    /// A virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// A virtio-net device on an inherited tap descriptor (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR); repeat for more.
    #[arg(long, value_name = "tap-fd=N,mac=MAC[,mtu=N]", value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// The control socket (created mode 0600; the path must not exist).
    #[arg(long, value_name = "SOCKET")]
    api_socket: Option<PathBuf>,
    #[arg(long, value_name = "LEVEL", default_value = "warn",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
    /// Run without the per-thread seccomp filters (development only; logs a warning).
    #[arg(long)]
    no_seccomp: bool,
    /// Test builds only: try one escape from one thread kind (sandbox-vmm/src/escape.rs).
    #[cfg(feature = "escape-test")]
    #[arg(long, value_name = "ATTEMPT@THREAD")]
    escape_test: Option<String>,
}

const EXIT_CODES: &str = "\
Exit status: 0 guest reset/power-off or `shutdown` request; 1 the VM could not be
started (the message says why); 2 guest kernel panic; 3 a vCPU failed; 31 a thread
made a system call its seccomp filter denies (the message names the call and the
thread); 128+N stopped by signal N.";

/// The exit status when a seccomp filter denied a system call (docs/seccomp.md): none
/// of the others, and not 128+N, so it cannot be taken for a signal.
const EXIT_SECCOMP_DENIED: u8 = 31;

fn main() -> ExitCode {
    // Everything brig-vmm creates (its sockets above all, between bind and chmod) is
    // its owner's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(1);
        }
    };
    let log_level = cli.log_level.clone();
    let no_seccomp = cli.no_seccomp;
    #[cfg(feature = "escape-test")]
    if let Some(Err(message)) = cli.escape_test.as_deref().map(brig_vmm::escape::request) {
        eprintln!("brig-vmm: {message}");
        return ExitCode::from(1);
    }
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("brig-vmm: {message}");
            return ExitCode::from(1);
        }
    };
    // The configured level is the level: RUST_LOG does not override it.
    brig_vmm::logging::init(&log_level);
    let seccomp = if no_seccomp {
        log::warn!("--no-seccomp: brig-vmm runs without its seccomp filters; for development only");
        Seccomp::Off
    } else {
        if let Err(e) = install_sigsys_handler(EXIT_SECCOMP_DENIED) {
            eprintln!("brig-vmm: cannot install the SIGSYS handler: {e}");
            return ExitCode::from(1);
        }
        Seccomp::Enforce
    };
    let vmm = match builder::build(config) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("brig-vmm: cannot start the VM: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let outcome = match vmm.run(seccomp) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("brig-vmm: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    match &outcome.reason {
        ExitReason::GuestPanic => {
            eprintln!("brig-vmm: the guest kernel panicked. Console tail:\n{}", outcome.console_tail)
        }
        ExitReason::VcpuFailed { index, reason } => {
            eprintln!("brig-vmm: vCPU {index} failed: {reason}. Console tail:\n{}", outcome.console_tail)
        }
        other => log::info!("VM stopped: {other:?}"),
    }
    ExitCode::from(outcome.reason.exit_code().clamp(0, 255) as u8)
}

impl Cli {
    /// The configuration: --config's, with the flags given on top.
    fn into_config(self) -> Result<VmConfig, String> {
        let mut config = match (&self.config, &self.kernel) {
            (Some(path), _) => VmConfig::from_file(path).map_err(|e| e.to_string())?,
            (None, Some(kernel)) => VmConfig {
                machine: MachineConfig::default(),
                boot: BootConfig { kernel: kernel.clone(), initramfs: None, cmdline: None },
                console: None,
                vsock: None,
                block: Vec::new(),
                rng: false,
                net: Vec::new(),
                api_socket: None,
            },
            (None, None) => return Err("--kernel (or --config) is required".into()),
        };
        if let Some(kernel) = self.kernel {
            config.boot.kernel = kernel;
        }
        config.boot.initramfs = self.initramfs.or(config.boot.initramfs);
        config.boot.cmdline = self.cmdline.or(config.boot.cmdline);
        if let Some(vcpus) = self.vcpus {
            config.machine.vcpus = vcpus;
        }
        if let Some(mib) = self.memory {
            config.machine.memory_mib = mib;
        }
        config.machine.memory_dir = self.memory_dir.or(config.machine.memory_dir);
        config.machine.huge_pages &= !self.no_huge_pages;
        config.console = self.console.or(config.console);
        config.vsock = self.vsock.or(config.vsock);
        config.block.extend(self.block);
        config.rng |= self.rng;
        config.net.extend(self.net);
        config.api_socket = self.api_socket.or(config.api_socket);
        Ok(config)
    }
}

fn number(flag: &str, value: &str) -> Result<u64, String> {
    value.parse().map_err(|_| format!("{flag} takes a number, not `{value}`"))
}

/// `key=value` pairs separated by commas; bare words are flags.
fn pairs(spec: &str) -> Vec<(&str, Option<&str>)> {
    spec.split(',').map(|part| part.split_once('=').map_or((part, None), |(k, v)| (k, Some(v)))).collect()
}

fn parse_vsock(spec: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut path) = (None, None);
    for (key, value) in pairs(spec) {
        match (key, value) {
            ("cid", Some(v)) => cid = Some(number("--vsock cid", v)?),
            ("path", Some(v)) => path = Some(PathBuf::from(v)),
            _ => return Err(format!("--vsock: unknown part `{key}` (expected cid=N,path=SOCKET)")),
        }
    }
    match (cid, path) {
        (Some(guest_cid), Some(uds_path)) => Ok(VsockConfig { guest_cid, uds_path }),
        _ => Err("--vsock needs cid=N,path=SOCKET".into()),
    }
}

fn parse_net(spec: &str) -> Result<NetConfig, String> {
    let (mut fd, mut mac, mut mtu) = (None, None, u64::from(DEFAULT_MTU));
    for (key, value) in pairs(spec) {
        match (key, value) {
            ("tap-fd", Some(v)) => fd = Some(number("--net tap-fd", v)?),
            ("mac", Some(v)) => mac = Some(v.parse::<MacAddr>().map_err(|e| format!("--{e}"))?),
            ("mtu", Some(v)) => mtu = number("--net mtu", v)?,
            _ => return Err(format!("--net: unknown part `{key}` (expected tap-fd=N,mac=MAC[,mtu=N])")),
        }
    }
    match (fd, mac) {
        (Some(fd), Some(mac)) => Ok(NetConfig {
            tap_fd: i32::try_from(fd).map_err(|_| format!("--net tap-fd {fd} is not a descriptor"))?,
            mac,
            mtu: u16::try_from(mtu).map_err(|_| format!("--net mtu {mtu} is more than 65535"))?,
        }),
        _ => Err("--net needs tap-fd=N,mac=MAC".into()),
    }
}

fn parse_block(spec: &str) -> Result<BlockConfig, String> {
    let mut block = BlockConfig { path: PathBuf::new(), read_only: false, serial: None };
    for (key, value) in pairs(spec) {
        match (key, value) {
            ("path", Some(v)) => block.path = PathBuf::from(v),
            ("ro", None) => block.read_only = true,
            ("serial", Some(v)) => block.serial = Some(v.to_owned()),
            _ => return Err(format!("--block: unknown part `{key}` (expected path=IMAGE[,ro][,serial=ID])")),
        }
    }
    if block.path.as_os_str().is_empty() {
        return Err("--block needs path=IMAGE".into());
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VmConfig, String> {
        let args = std::iter::once("brig-vmm").chain(s.split_whitespace());
        Cli::try_parse_from(args).map_err(|e| e.to_string())?.into_config()
    }

    #[test]
    fn flags_build_a_config() {
        let config = parse(
            "--kernel /k --vcpus 2 --memory 256 --vsock cid=3,path=/tmp/v.sock \
             --block path=/d.img,ro,serial=root --block path=/e.img --rng \
             --net tap-fd=5,mac=02:00:00:00:00:01 --net tap-fd=6,mac=02:00:00:00:00:02,mtu=9000",
        )
        .expect("parse");
        assert_eq!(config.machine, MachineConfig::new(2, 256));
        assert_eq!(config.vsock, Some(VsockConfig { guest_cid: 3, uds_path: "/tmp/v.sock".into() }));
        assert_eq!(config.block.len(), 2);
        assert!(config.block[0].read_only && !config.block[1].read_only);
        assert_eq!(config.block[0].serial.as_deref(), Some("root"));
        assert!(config.rng);
        assert_eq!(
            config.net,
            [
                NetConfig { tap_fd: 5, mac: MacAddr([2, 0, 0, 0, 0, 1]), mtu: 1500 },
                NetConfig { tap_fd: 6, mac: MacAddr([2, 0, 0, 0, 0, 2]), mtu: 9000 },
            ]
        );
        let small = parse("--kernel /k --memory-dir /memory --no-huge-pages").expect("parse");
        assert_eq!(small.machine.memory_dir.as_deref(), Some(std::path::Path::new("/memory")));
        assert!(!small.machine.huge_pages);
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse("--kernel /k --vcpus two").expect_err("bad");
        assert!(err.contains("invalid value 'two' for '--vcpus <N>'"), "{err}");
        assert!(parse("--kernel /k --block ro").expect_err("bad").contains("path=IMAGE"));
        assert!(parse("--kernel /k --vsock cid=3").expect_err("bad").contains("cid=N,path=SOCKET"));
        assert!(parse("--kernel /k --net tap-fd=5").expect_err("bad").contains("tap-fd=N,mac=MAC"));
        assert!(parse("--kernel /k --net tap-fd=5,mac=02:00").expect_err("bad").contains("is not a MAC address"));
        assert!(parse("--kernel /k --net tap-fd=5,mac=02:00:00:00:00:01,mtu=70000")
            .expect_err("bad")
            .contains("more than 65535"));
        assert!(parse("--frob").expect_err("bad").contains("unexpected argument '--frob'"));
        assert_eq!(parse("--vcpus 2").expect_err("no kernel"), "--kernel (or --config) is required");
    }

    #[test]
    fn the_generated_help_lists_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--config",
            "--kernel",
            "--initramfs",
            "--cmdline",
            "--vcpus",
            "--memory",
            "--memory-dir",
            "--no-huge-pages",
            "--console",
            "--vsock",
            "--block",
            "--rng",
            "--net",
            "--api-socket",
            "--log-level",
            "--no-seccomp",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
        assert!(help.contains("Exit status"), "{help}");
    }
}
