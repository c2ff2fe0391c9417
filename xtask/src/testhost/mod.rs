//! `cargo xtask kvm-host`: run a command as root on a host whose `/dev/kvm` can boot Linux.
//!
//! Where the CPU shows `vmx` or `svm`, that is this machine, and the command runs
//! directly. Otherwise it runs inside the nested KVM test host of
//! `shared/TESTHOST.md`: QEMU in software emulation (TCG) presenting an AMD CPU
//! with SVM, booting Debian's generic kernel with a small busybox initramfs
//! (`init.sh`). Inside, the host's `/` is the read-only lower layer of a tmpfs
//! overlay; the work tree and a per-run directory are shared read-write at their
//! own paths, so the command sees the same files and its outputs come back.
//!
//! The kernel package and the initramfs are cached under the artifact cache,
//! keyed by the package version, the busybox binary, the init script and the
//! module list.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brig_rootfs_builder::cache::{self, EntryLock, Key};
use brig_rootfs_builder::initramfs::{self, Entry};
use brig_rootfs_builder::progress;

use crate::apt;

const INIT: &str = include_str!("init.sh");
const RECIPE: &str = "brig-testhost/1";
/// Modules the test host loads, dependencies first (resolved by `modprobe --show-depends`).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_console",
    "overlay",
    "kvm-amd",
    "tun",
    "veth",
    "bridge",
    // The shim's tc redirects between CNI's interface and the tap (crate::network).
    "sch_ingress",
    "cls_u32",
    "act_mirred",
    "ext4",
    "loop",
    // For benchmarks that compare with QEMU, whose vsock needs the vhost backend.
    "vhost_vsock",
];
/// Console lines shown when the test host fails or hangs.
const CONSOLE_TAIL: usize = 40;
/// How long the test host's heartbeat (written every 5 s by init.sh) may be silent
/// before kvm-host calls it wedged: an emulator hang, not a slow test.
/// `BRIG_KVM_HOST_HEARTBEAT_SECS` overrides it (kvm-host's own test does).
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(120);
/// How long the test host may take to boot (write `ready`) before kvm-host calls it
/// wedged in boot. It boots in 13–17 s in CI; CI once saw it sit at boot with both vCPUs
/// spinning with IF=0 (ADR 006), which the heartbeat, written only after boot, cannot see.
/// `BRIG_KVM_HOST_BOOT_SECS` overrides it (kvm-host's own test does).
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// The test host's CPU: QEMU's `max` (svm, npt, xsave). `max,la57=off,vgif=off` was
/// tried against the test host's wedges and made brig's guests fail instead (ADR 006).
/// `BRIG_KVM_HOST_CPU` overrides it (for such experiments).
const CPU_MODEL: &str = "max";

/// Where the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This machine's own KVM can boot Linux (`vmx`/`svm` present).
    Direct,
    /// Inside the nested test host.
    Nested,
}

impl Mode {
    /// `BRIG_KVM_HOST_MODE=direct|nested` overrides the choice made from `/proc/cpuinfo`.
    pub fn detect() -> Result<Mode> {
        match std::env::var("BRIG_KVM_HOST_MODE").as_deref() {
            Ok("direct") => return Ok(Mode::Direct),
            Ok("nested") => return Ok(Mode::Nested),
            Ok(other) => bail!("BRIG_KVM_HOST_MODE must be `direct` or `nested`, not `{other}`"),
            Err(_) => {}
        }
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let hw = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        Ok(if hw { Mode::Direct } else { Mode::Nested })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Nested => "nested",
        }
    }
}

/// How to run the command.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The directory shared read-write at its own path (the work tree).
    pub worktree: PathBuf,
    /// Variables set for the command on top of the caller's environment.
    pub env: Vec<(String, String)>,
    /// The emulator: `BRIG_KVM_HOST_QEMU`, else bookworm-backports' (ADR 009).
    pub qemu: Option<String>,
    /// The test host's kernel package: `BRIG_KVM_HOST_KERNEL`, else [`kernel_package`]'s.
    pub kernel: Option<String>,
}

impl Options {
    pub fn new(worktree: PathBuf) -> Options {
        let env_u64 = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            timeout: Duration::from_secs(env_u64("BRIG_KVM_HOST_TIMEOUT").unwrap_or(600)),
            memory_mib: env_u64("BRIG_KVM_HOST_MEMORY").map_or(4096, |m| m as u32),
            cpus: env_u64("BRIG_KVM_HOST_CPUS").map_or(cpus as u32, |c| c as u32),
            worktree,
            env: Vec::new(),
            qemu: std::env::var("BRIG_KVM_HOST_QEMU").ok(),
            kernel: std::env::var("BRIG_KVM_HOST_KERNEL").ok(),
        }
    }
}

/// The cached kernel and initramfs of the test host.
#[derive(Debug)]
struct Artifacts {
    kernel: PathBuf,
    initrd: PathBuf,
    package: String,
}

/// How a kvm-host run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran to its end with this exit status.
    Exited(i32),
    /// The command was still running at the timeout.
    TimedOut,
    /// The nested test host itself failed under the command: its clock stopped (an
    /// emulator wedge) or its kernel died. See docs/adr/006-nested-test-host-failures.md.
    HostFailed,
}

impl Outcome {
    /// The exit status `cargo xtask kvm-host` reports: the command's own, 124 for a
    /// timeout (as timeout(1)), 125 when the test host failed.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Exited(code) => code,
            Outcome::TimedOut => 124,
            Outcome::HostFailed => 125,
        }
    }
}

/// Runs `argv` as root on a KVM-capable host and returns its exit code.
pub fn run(argv: &[String], opts: &Options) -> Result<i32> {
    run_outcome(argv, opts).map(Outcome::code)
}

/// Runs `argv` as root on a KVM-capable host and says how it ended.
pub fn run_outcome(argv: &[String], opts: &Options) -> Result<Outcome> {
    if argv.is_empty() {
        bail!("usage: cargo xtask kvm-host [--timeout SECS] -- COMMAND [ARGS...]");
    }
    match Mode::detect()? {
        Mode::Direct => run_direct(argv, opts),
        Mode::Nested => run_nested(argv, opts),
    }
}

fn run_direct(argv: &[String], opts: &Options) -> Result<Outcome> {
    eprintln!("kvm-host: this CPU has hardware virtualization; running the command directly");
    if !Path::new("/dev/kvm").exists() {
        bail!("this CPU has vmx/svm but /dev/kvm is missing: load kvm-intel or kvm-amd");
    }
    let mut cmd = apt::as_root(&argv[0]);
    cmd.args(&argv[1..]).envs(opts.env.iter().cloned()).env("BRIG_KVM_HOST", "direct");
    let mut child = cmd.spawn().with_context(|| format!("starting {}", argv[0]))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Outcome::Exited(status.code().unwrap_or(128)));
        }
        if start.elapsed() > opts.timeout {
            child.kill()?;
            child.wait()?;
            eprintln!("kvm-host: the command did not finish within {}s; killed it", opts.timeout.as_secs());
            return Ok(Outcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_nested(argv: &[String], opts: &Options) -> Result<Outcome> {
    let host = prepare(opts.kernel.as_deref())?;
    let run_dir = new_run_dir()?;
    let cwd = std::env::current_dir()?;
    fs::write(run_dir.join("run.sh"), run_script(argv, &cwd, &opts.env))?;
    for path in [&run_dir, &opts.worktree] {
        let text = path.to_string_lossy();
        if text.contains(char::is_whitespace) || text.contains(',') {
            bail!("kvm-host cannot share {text}: the path must not contain spaces or commas");
        }
    }

    let console = run_dir.join("console.log");
    let mut qemu = Command::new(match &opts.qemu {
        Some(qemu) => qemu.clone(),
        None => backports_qemu()?,
    });
    let cpu_model = std::env::var("BRIG_KVM_HOST_CPU").unwrap_or_else(|_| CPU_MODEL.to_owned());
    qemu.args(["-accel", "tcg,thread=multi", "-M", "q35", "-cpu", &cpu_model])
        .args(["-smp", &opts.cpus.to_string(), "-m", &opts.memory_mib.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&host.kernel)
        .arg("-initrd")
        .arg(&host.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet brig.run={} brig.worktree={}",
            run_dir.display(),
            opts.worktree.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(share("hostroot", Path::new("/"), true))
        .args(share("run", &run_dir, false))
        .args(share("worktree", &opts.worktree, false))
        .args(["-device", "virtio-serial-pci", "-chardev", "stdio,id=out,signal=off"])
        .args(["-device", "virtconsole,chardev=out"])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", run_dir.join("monitor.sock").display()))
        .stdin(Stdio::null());

    eprintln!(
        "kvm-host: no vmx/svm on this CPU; starting the nested test host ({}, {} vCPUs, {} MiB)",
        host.package, opts.cpus, opts.memory_mib
    );
    let heartbeat_limit = std::env::var("BRIG_KVM_HOST_HEARTBEAT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(HEARTBEAT_LIMIT, Duration::from_secs);
    let boot_limit = std::env::var("BRIG_KVM_HOST_BOOT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(BOOT_LIMIT, Duration::from_secs);
    let start = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let mut booted = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !booted {
            if let Ok(uptime) = fs::read_to_string(run_dir.join("ready")) {
                booted = true;
                eprintln!(
                    "kvm-host: test host booted in {:.1}s (guest uptime {}s)",
                    start.elapsed().as_secs_f64(),
                    uptime.trim()
                );
            }
        }
        let wedged = if booted {
            heartbeat_age(&run_dir).filter(|age| *age > heartbeat_limit).map(|age| {
                format!(
                    "the test host is wedged (no heartbeat for {}s: its clock stopped, see docs/testing.md)",
                    age.as_secs()
                )
            })
        } else {
            (start.elapsed() > boot_limit).then(|| {
                format!("the test host is wedged in boot (not up after {}s, see docs/testing.md)", boot_limit.as_secs())
            })
        };
        if start.elapsed() > opts.timeout || wedged.is_some() {
            let failed = wedged.is_some();
            let why =
                wedged.unwrap_or_else(|| format!("the command did not finish within {}s", opts.timeout.as_secs()));
            let cpus = monitor(&run_dir.join("monitor.sock"), &["info cpus", "info registers -a"]);
            child.kill()?;
            child.wait()?;
            eprintln!(
                "kvm-host: {why}; stopped the test host.\nvCPUs:\n{cpus}\nConsole tail ({}):\n{}",
                console.display(),
                progress::tail(&console, CONSOLE_TAIL)
            );
            return Ok(if failed { Outcome::HostFailed } else { Outcome::TimedOut });
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    match fs::read_to_string(run_dir.join("status")).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        Some(code) => {
            eprintln!("kvm-host: command exited with {code} after {:.1}s", start.elapsed().as_secs_f64());
            if code == 0 {
                fs::remove_dir_all(&run_dir)?;
            } else {
                eprintln!("kvm-host: kept {} for inspection", run_dir.display());
            }
            Ok(Outcome::Exited(code))
        }
        None => {
            eprintln!(
                "kvm-host: the test host stopped ({status}) before the command finished. Console tail ({}):\n{}",
                console.display(),
                progress::tail(&console, CONSOLE_TAIL)
            );
            Ok(Outcome::HostFailed)
        }
    }
}

/// How long ago the test host last wrote its heartbeat (None before the first one).
fn heartbeat_age(run_dir: &Path) -> Option<Duration> {
    let modified = fs::metadata(run_dir.join("heartbeat")).ok()?.modified().ok()?;
    Some(modified.elapsed().unwrap_or_default())
}

/// Asks QEMU's human monitor `commands` (for the report of a hung test host).
fn monitor(socket: &Path, commands: &[&str]) -> String {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(socket) else {
        return format!("(no monitor at {})", socket.display());
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    for command in commands {
        let _ = conn.write_all(format!("{command}\n").as_bytes());
    }
    let _ = conn.write_all(b"quit\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text.lines().filter(|l| !l.starts_with("QEMU ") && !l.contains("(qemu)")).collect::<Vec<_>>().join("\n")
}

/// `-fsdev`/`-device` arguments for one 9p share.
fn share(tag: &str, path: &Path, readonly: bool) -> Vec<String> {
    let ro = if readonly { ",readonly=on" } else { "" };
    vec![
        "-fsdev".into(),
        format!("local,id={tag},path={}{ro},security_model=none,multidevs=remap", path.display()),
        "-device".into(),
        format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}"),
    ]
}

fn new_run_dir() -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let dir = cache::root()?.join("kvm-host").join("runs").join(format!("{stamp}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A bash script that recreates the caller's environment and working directory, then execs argv.
fn run_script(argv: &[String], cwd: &Path, extra: &[(String, String)]) -> String {
    let mut script = String::from("# written by cargo xtask kvm-host\n");
    let inherited = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    for (key, value) in inherited.chain(extra.iter().cloned()) {
        let (key, value) = (key.as_str(), value.as_str());
        let skip = ["_", "PWD", "OLDPWD", "SHLVL", "BRIG_KVM_HOST"].contains(&key);
        if skip || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let _ = writeln!(script, "export {key}={}", quote(value));
    }
    let _ = writeln!(script, "export BRIG_KVM_HOST=nested");
    let _ = writeln!(script, "cd {} || exit 125", quote(&cwd.to_string_lossy()));
    let args: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    let _ = writeln!(script, "exec {}", args.join(" "));
    script
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Builds (or finds in the cache) the test host's kernel and initramfs, from
/// `kernel` (a package name) or the default [`kernel_package`].
fn prepare(kernel: Option<&str>) -> Result<Artifacts> {
    apt::ensure(&["qemu-system-x86", "kmod", "cpio", "busybox-static", "xz-utils"])?;
    apt::ensure_lists()?;
    let package = match kernel {
        Some(package) => package.to_owned(),
        None => kernel_package()?,
    };
    let version = package_version(&package)?;
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (package busybox-static)")?;
    let mut key = Key::new("testhost");
    key.add("package", package.as_bytes())
        .add("version", version.as_bytes())
        .add("busybox", &busybox)
        .add("init", INIT.as_bytes())
        .add("modules", MODULES.join(" ").as_bytes())
        .add("recipe", RECIPE.as_bytes());
    let entry = cache::root()?.join("testhost").join(key.hex());
    let artifacts = Artifacts {
        kernel: entry.join("vmlinuz"),
        initrd: entry.join("initrd.cpio"),
        package: format!("{package} {version}"),
    };
    if artifacts.initrd.is_file() {
        return Ok(artifacts);
    }
    let _lock = EntryLock::acquire(&entry)?;
    if artifacts.initrd.is_file() {
        return Ok(artifacts);
    }
    eprintln!("kvm-host: building the test host from {package} {version} into {}", entry.display());
    let staging = entry.with_extension("tmp");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    build(&staging, &package, busybox)?;
    fs::remove_dir_all(staging.join("pkg"))?;
    fs::rename(&staging, &entry)?;
    Ok(artifacts)
}

/// bookworm-backports' QEMU (ADR 009), unpacked from Debian's packages into the cache
/// (not installed: Debian's 7.2 stays, and brings the libraries both need); returns a
/// wrapper that points it at its own firmware.
pub fn backports_qemu() -> Result<String> {
    apt::ensure_backports()?;
    const PACKAGES: [&str; 3] = ["qemu-system-x86", "qemu-system-common", "qemu-system-data"];
    let out =
        Command::new("apt-cache").args(["show", "--no-all-versions", "qemu-system-x86/bookworm-backports"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version =
        text.lines().find_map(|l| l.strip_prefix("Version: ")).context("bookworm-backports has no qemu-system-x86")?;
    let mut key = Key::new("qemu-backports");
    key.add("version", version.as_bytes());
    let entry = cache::root()?.join("qemu-backports").join(key.hex());
    let wrapper = entry.join("qemu-system-x86_64");
    if wrapper.is_file() {
        return Ok(wrapper.to_string_lossy().into_owned());
    }
    let staging = entry.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("pkg"))?;
    let status = Command::new("apt-get")
        .current_dir(staging.join("pkg"))
        .args(["download", "-q"])
        .args(PACKAGES.map(|p| format!("{p}/bookworm-backports")))
        .status()?;
    if !status.success() {
        bail!("apt-get download of bookworm-backports' QEMU {version} failed ({status})");
    }
    for deb in std::fs::read_dir(staging.join("pkg"))? {
        let status = Command::new("dpkg-deb").arg("-x").arg(deb?.path()).arg(staging.join("root")).status()?;
        if !status.success() {
            bail!("dpkg-deb -x failed ({status})");
        }
    }
    let root = entry.join("root/usr");
    std::fs::write(
        staging.join("qemu-system-x86_64"),
        format!(
            "#!/bin/sh\nexec {0}/bin/qemu-system-x86_64 -L {0}/share/qemu -L {0}/share/seabios \"$@\"\n",
            root.display()
        ),
    )?;
    std::fs::set_permissions(staging.join("qemu-system-x86_64"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::remove_dir_all(staging.join("pkg"))?;
    std::fs::rename(&staging, &entry)?;
    Ok(wrapper.to_string_lossy().into_owned())
}

/// The test host's default kernel package: the versioned image package behind
/// `linux-image-amd64` (the generic flavour: the `cloud` one has no 9p).
pub fn kernel_package() -> Result<String> {
    kernel_package_in("linux-image-amd64").context("apt-cache does not know linux-image-amd64; run `apt-get update`")
}

/// The versioned image package `meta` (`linux-image-amd64`, optionally `/suite`)
/// depends on.
pub fn kernel_package_in(meta: &str) -> Result<String> {
    let out = Command::new("apt-cache").args(["depends", meta]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .with_context(|| format!("apt-cache knows no kernel package behind {meta}"))
}

fn package_version(package: &str) -> Result<String> {
    let out = Command::new("apt-cache").args(["show", "--no-all-versions", package]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(str::to_owned)
        .with_context(|| format!("apt-cache has no version for {package}"))
}

fn build(staging: &Path, package: &str, busybox: Vec<u8>) -> Result<()> {
    let pkg = staging.join("pkg");
    fs::create_dir_all(&pkg)?;
    let log = staging.join("build.log");
    let mut download = Command::new("apt-get");
    download.current_dir(&pkg).args(["download", "-q", package]);
    progress::run_logged("download test host kernel", download, &log, 0)?;
    let deb = fs::read_dir(&pkg)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = pkg.join("root");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(&root);
    progress::run_logged("unpack test host kernel", extract, &log, 0)?;

    let release = fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no lib/modules")?;
    fs::copy(root.join(format!("boot/vmlinuz-{release}")), staging.join("vmlinuz"))?;
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(&root).arg(&release);
    progress::run_logged("depmod", depmod, &log, 0)?;

    let mut entries = vec![
        Entry::Dir { path: "bin".into(), mode: 0o755 },
        Entry::File { path: "bin/busybox".into(), mode: 0o755, data: busybox },
        Entry::File { path: "init".into(), mode: 0o755, data: INIT.as_bytes().to_vec() },
        Entry::Dir { path: "dev".into(), mode: 0o755 },
        Entry::CharDev { path: "dev/console".into(), mode: 0o600, major: 5, minor: 1 },
        Entry::Dir { path: "modules".into(), mode: 0o755 },
    ];
    for dir in ["proc", "sys", "lower", "upper", "newroot"] {
        entries.push(Entry::Dir { path: dir.into(), mode: 0o755 });
    }
    let mut order = String::new();
    for path in module_load_order(&root, &release)? {
        let file = path.file_name().context("module path")?.to_string_lossy().into_owned();
        // Kernels after 6.1 ship `.ko.xz`; the test host's busybox insmod needs plain `.ko`.
        let (name, data) = match file.strip_suffix(".xz") {
            Some(name) => (name.to_owned(), unxz(&path)?),
            None => (file, fs::read(&path)?),
        };
        if !name.ends_with(".ko") {
            bail!("{} is neither a .ko nor a .ko.xz module", path.display());
        }
        order.push_str(&name);
        order.push('\n');
        entries.push(Entry::File { path: format!("modules/{name}"), mode: 0o644, data });
    }
    entries.push(Entry::File { path: "modules/order".into(), mode: 0o644, data: order.into_bytes() });
    cache::write_atomic(&staging.join("initrd.cpio"), &initramfs::write_newc(&entries)?)?;
    Ok(())
}

/// The decompressed bytes of an `.xz` file (package xz-utils).
fn unxz(path: &Path) -> Result<Vec<u8>> {
    let out = Command::new("xz").arg("-dc").arg(path).output().context("running xz (package xz-utils)")?;
    if !out.status.success() {
        bail!("xz -dc {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// Module files to `insmod`, in dependency order, without repeats.
fn module_load_order(root: &Path, release: &str) -> Result<Vec<PathBuf>> {
    let mut order: Vec<PathBuf> = Vec::new();
    for module in MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(root)
            .args(["-S", release, "--show-depends", module])
            .output()
            .context("running modprobe (package kmod)")?;
        if !out.status.success() {
            bail!("modprobe cannot resolve {module}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("a b"), "'a b'");
    }

    #[test]
    fn run_script_execs_the_argv_in_the_callers_directory() {
        let script = run_script(
            &["grep".into(), "-c".into(), "a b".into()],
            Path::new("/work/x"),
            &[("BRIG_X".into(), "it's".into())],
        );
        assert!(script.contains("\nexport BRIG_X='it'\\''s'\n"), "{script}");
        assert!(script.contains("\ncd '/work/x' || exit 125\n"), "{script}");
        assert!(script.ends_with("exec 'grep' '-c' 'a b'\n"), "{script}");
        assert!(script.contains("export BRIG_KVM_HOST=nested\n"), "{script}");
    }

    #[test]
    fn share_is_read_only_only_when_asked() {
        let ro = share("hostroot", Path::new("/"), true).join(" ");
        assert!(ro.contains("path=/,readonly=on,"), "{ro}");
        let rw = share("run", Path::new("/r"), false).join(" ");
        assert!(!rw.contains("readonly"), "{rw}");
    }
}
