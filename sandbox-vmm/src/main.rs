//! `brig-vmm`: boots one micro-VM and runs it until the guest resets, powers off,
//! panics, or is told to stop.
//!
//! Exit status: 0 guest reset/power-off or `shutdown` request; 1 the VM could not
//! be started (the message says why); 2 guest kernel panic; 3 a vCPU failed;
//! 128+N stopped by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use brig_vmm::builder;
use brig_vmm::config::{BlockConfig, BootConfig, MachineConfig, VmConfig, VsockConfig};
use brig_vmm::vmm::{error_chain, ExitReason};

const USAGE: &str = "\
usage: brig-vmm [--config FILE] --kernel VMLINUX [--initramfs FILE] [--cmdline ARGS]
                [--vcpus N] [--memory MIB] [--console FILE]
                [--vsock cid=N,path=SOCKET] [--block path=IMAGE[,ro][,serial=ID]]...
                [--rng] [--api-socket SOCKET] [--log-level error|warn|info|debug]

Flags override the values of --config (JSON, the same fields as docs/control-socket.md
describes under \"Configuration\").";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(Some((config, log_level))) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(log_level)).init();
            config
        }
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("brig-vmm: {message}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    let vmm = match builder::build(config) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("brig-vmm: cannot start the VM: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let outcome = match vmm.run() {
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

/// Parses flags into a configuration and log level; `Ok(None)` for `--help`.
fn parse(args: &[String]) -> Result<Option<(VmConfig, String)>, String> {
    let mut iter = args.iter();
    let mut file: Option<VmConfig> = None;
    let mut kernel = None;
    let mut initramfs = None;
    let mut cmdline = None;
    let mut machine = None::<MachineConfig>;
    let mut vcpus = None;
    let mut memory = None;
    let mut console = None;
    let mut vsock = None;
    let mut blocks = Vec::new();
    let mut rng = false;
    let mut api = None;
    let mut log_level = "warn".to_owned();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--config" => {
                let path = PathBuf::from(value()?);
                file = Some(VmConfig::from_file(&path).map_err(|e| e.to_string())?);
            }
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initramfs" => initramfs = Some(PathBuf::from(value()?)),
            "--cmdline" => cmdline = Some(value()?),
            "--vcpus" => vcpus = Some(number(flag, &value()?)?),
            "--memory" => memory = Some(number(flag, &value()?)?),
            "--console" => console = Some(PathBuf::from(value()?)),
            "--vsock" => vsock = Some(parse_vsock(&value()?)?),
            "--block" => blocks.push(parse_block(&value()?)?),
            "--rng" => rng = true,
            "--api-socket" => api = Some(PathBuf::from(value()?)),
            "--log-level" => log_level = value()?,
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    let mut config = match (file, kernel.clone()) {
        (Some(config), _) => config,
        (None, Some(kernel)) => VmConfig {
            machine: MachineConfig::default(),
            boot: BootConfig { kernel, initramfs: None, cmdline: None },
            console: None,
            vsock: None,
            block: Vec::new(),
            rng: false,
            api_socket: None,
        },
        (None, None) => return Err("--kernel (or --config) is required".into()),
    };
    if let Some(kernel) = kernel {
        config.boot.kernel = kernel;
    }
    config.boot.initramfs = initramfs.or(config.boot.initramfs);
    config.boot.cmdline = cmdline.or(config.boot.cmdline);
    let m = machine.get_or_insert(config.machine.clone());
    if let Some(v) = vcpus {
        m.vcpus = u8::try_from(v).map_err(|_| format!("--vcpus {v} is too large"))?;
    }
    if let Some(mib) = memory {
        m.memory_mib = mib;
    }
    config.machine = m.clone();
    config.console = console.or(config.console);
    config.vsock = vsock.or(config.vsock);
    config.block.extend(blocks);
    config.rng |= rng;
    config.api_socket = api.or(config.api_socket);
    Ok(Some((config, log_level)))
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

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_build_a_config() {
        let config = parse(&args(
            "--kernel /k --vcpus 2 --memory 256 --vsock cid=3,path=/tmp/v.sock \
             --block path=/d.img,ro,serial=root --block path=/e.img --rng",
        ))
        .expect("parse")
        .expect("config")
        .0;
        assert_eq!(config.machine, MachineConfig { vcpus: 2, memory_mib: 256 });
        assert_eq!(config.vsock, Some(VsockConfig { guest_cid: 3, uds_path: "/tmp/v.sock".into() }));
        assert_eq!(config.block.len(), 2);
        assert!(config.block[0].read_only && !config.block[1].read_only);
        assert_eq!(config.block[0].serial.as_deref(), Some("root"));
        assert!(config.rng);
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse(&args("--vcpus two")).expect_err("bad"), "--vcpus takes a number, not `two`");
        assert!(parse(&args("--kernel /k --block ro")).expect_err("bad").contains("path=IMAGE"));
        assert!(parse(&args("--kernel /k --vsock cid=3")).expect_err("bad").contains("cid=N,path=SOCKET"));
        assert!(parse(&args("--frob")).expect_err("bad").contains("unknown flag `--frob`"));
    }
}
