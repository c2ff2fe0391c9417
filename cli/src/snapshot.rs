//! `brig snapshot`: freeze a sandbox through its brig-vmm, capture memory and
//! state, resume it, and write a manifest of every file with its SHA-256.
//!
//! Every step is host-side: the vCPUs are paused through brig-vmm's control
//! socket, never through the guest agent, and brig-vmm writes into pipes this
//! command reads, hashing what arrives (brig-vmm's own digest is compared, not
//! trusted), so brig-vmm never needs write access to the output directory.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use brig_shim::config::Config;
use brig_shim::files::SocketPath;
use brig_shim::record::{self, TaskRecord};
use brig_vmm_api::client::Client;
use brig_vmm_api::{RunState, VmState};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::custody;
use crate::kernel::{self, Vmlinux};
use crate::signing::{self, file_sha256, hex};

/// How long ordinary control requests may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a log file (console, vmm.log) taken: they are the sandbox's to fill.
const MAX_LOG: u64 = 64 << 20;
/// Made first in the output directory and removed only once the manifest and the
/// custody log are written: a capture that failed or was cut short keeps it.
pub const INCOMPLETE: &str = "INCOMPLETE";

/// Capture a forensic snapshot of a running sandbox into DIR.
///
/// Pauses the vCPUs through brig-vmm's control socket (never through the guest
/// agent), writes memory.elf (guest RAM and every vCPU's registers as an ELF core)
/// and state.bin (vCPU, VM and device state), resumes the VM unless --keep-paused,
/// then adds the container's OCI config.json, the console and VMM logs, brig-vmm's
/// metrics and manifest.json: every file with its size and SHA-256 (hashed as it
/// was written), the pause instant and the reason. DIR is created 0700, files
/// 0600. manifest.json is an in-toto Statement in a DSSE envelope signed with this
/// host's key (`brig keygen`); custody.log records the capture (who, when, why),
/// signed and hash-chained. `brig verify DIR` checks both.
///
/// memory.elf carries the guest kernel's own VMCOREINFO note (found through the
/// booted vmlinux's symbols), and the manifest names the booted and the debug
/// vmlinux (digests, build-id): `crash <prefix>/share/brig/vmlinux.debug memory.elf`
/// opens it. After the VM runs again the guest agent is asked, for at most a second,
/// what processes and mounts it sees: agent-view.json, labelled as its claim. A
/// capture that fails leaves DIR/INCOMPLETE, signs nothing, and resumes the VM.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The container (task) id, as `ctr task ls` or `brig ps` shows it.
    id: String,
    /// Where to write the snapshot: a new or empty directory.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
    /// Why it is taken (recorded in the manifest).
    #[arg(long, default_value = "")]
    reason: String,
    /// Who takes it (recorded beside the uid running brig).
    #[arg(long)]
    operator: Option<String>,
    /// Leave the vCPUs paused after the capture.
    #[arg(long)]
    keep_paused: bool,
    /// The ed25519 key the manifest is signed with.
    #[arg(long, value_name = "FILE", default_value_os_t = Path::new(signing::KEY_DIR).join(signing::SECRET_FILE))]
    key: PathBuf,
}

/// One captured file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Subject {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) digest: Digests,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Digests {
    pub(crate) sha256: String,
}

/// The output directory and what has been written to it.
pub(crate) struct Evidence {
    pub(crate) dir: PathBuf,
    pub(crate) subjects: Vec<Subject>,
}

impl Evidence {
    pub(crate) fn create(dir: &Path) -> Result<Evidence> {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    bail!("{} exists and is not empty: give a new or empty directory", dir.display());
                }
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        }
        let marker = dir.join(INCOMPLETE);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&marker)
            .and_then(|mut f| f.write_all(b"capture in progress\n"))
            .with_context(|| format!("creating {}", marker.display()))?;
        Ok(Evidence { dir: dir.to_path_buf(), subjects: Vec::new() })
    }

    /// Says in the marker why the capture stopped (best effort: the disk may be full).
    pub(crate) fn mark_failed(dir: &Path, error: &anyhow::Error) {
        let _ = std::fs::write(dir.join(INCOMPLETE), format!("capture failed: {error:#}\n"));
    }

    /// The capture is whole: the marker goes.
    pub(crate) fn complete(&self) -> Result<()> {
        let marker = self.dir.join(INCOMPLETE);
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", self.dir.display()))
    }

    /// Copies `from` into a new file `name`, hashing what is written.
    pub(crate) fn stream(&mut self, name: &str, from: impl Read) -> Result<Subject> {
        let subject = self.write_file(name, from)?;
        self.subjects.push(subject.clone());
        Ok(subject)
    }

    /// Like [`Evidence::stream`], for a file the manifest does not list (a copy's
    /// manifest.json and custody.log).
    pub(crate) fn copy_unlisted(&mut self, name: &str, from: impl Read) -> Result<Subject> {
        self.write_file(name, from)
    }

    fn write_file(&mut self, name: &str, mut from: impl Read) -> Result<Subject> {
        let path = self.dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let (mut sha, mut size, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let n = from.read(&mut buf).with_context(|| format!("reading what goes into {name}"))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            file.write_all(&buf[..n]).with_context(|| format!("writing {}", path.display()))?;
            size += n as u64;
        }
        file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        Ok(Subject { name: name.into(), size, digest: Digests { sha256: hex(&sha.finalize()) } })
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<Subject> {
        self.stream(name, bytes)
    }
}

/// The task called `id`, or an error naming the ones there are.
fn find(config: &Config, id: &str) -> Result<TaskRecord> {
    let tasks = record::list(config)?;
    let mut matching: Vec<&TaskRecord> = tasks.iter().filter(|t| t.id == id).collect();
    match matching.len() {
        1 => Ok(matching.remove(0).clone()),
        0 => {
            let known: Vec<String> = tasks.iter().map(|t| format!("{}/{}", t.namespace, t.id)).collect();
            bail!(
                "no brig sandbox `{id}`; there are: {}",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )
        }
        _ => bail!(
            "`{id}` is in several namespaces: {}",
            matching.iter().map(|t| t.namespace.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The thread that copies a pipe into the evidence directory; it hands the
/// directory back with what it wrote.
type Copier = std::thread::JoinHandle<(Evidence, Result<Subject>)>;

/// One snapshot of a sandbox at a time: an exclusive `flock` on
/// `<task dir>/snapshot.lock`, held until the command ends (the kernel drops it
/// if brig dies). A second one is refused, not queued behind the first's resume.
fn lock(dir: &Path, id: &str) -> Result<nix::fcntl::Flock<File>> {
    let path = dir.join("snapshot.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => {
            anyhow::anyhow!("a snapshot of {id} is already running: wait for it to finish")
        }
        other => anyhow::anyhow!("locking {}: {other}", path.display()),
    })
}

/// A pipe whose read end a thread copies into `name` in `evidence`.
fn piped(evidence: Evidence, name: &'static str) -> Result<(std::os::fd::OwnedFd, Copier)> {
    let (read, write) = nix::unistd::pipe().context("making a pipe")?;
    let mut evidence = evidence;
    let copier = std::thread::spawn(move || {
        let subject = evidence.stream(name, File::from(read));
        (evidence, subject)
    });
    Ok((write, copier))
}

/// Reads a file the sandbox can write (its console): never through a symlink, only a
/// regular file, at most `MAX_LOG` bytes (the last ones).
fn untrusted_log(path: &Path) -> Vec<u8> {
    match brig_shim::files::read_tail_bytes(path, MAX_LOG) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => format!("({} is not a regular file: not read)\n", path.display()).into_bytes(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        // ELOOP: a symlink, which is never followed.
        Err(e) => format!("({}: not read: {e})\n", path.display()).into_bytes(),
    }
}

/// What the manifest says about the capture (an in-toto Statement's predicate).
#[derive(Debug, Serialize)]
struct Predicate {
    sandbox: Sandbox,
    reason: String,
    operator: Option<String>,
    uid: u32,
    host: String,
    paused_at_utc: String,
    paused_at_unix_ns: u128,
    /// CLOCK_MONOTONIC of this host at the pause, ns.
    paused_at_monotonic_ns: u128,
    vcpus_paused_ms: u64,
    resumed: bool,
    versions: Versions,
    /// brig-vmm's own SHA-256 of memory.elf, equal to the one computed here.
    vmm_reported_memory_sha256: String,
    guest_kernel: GuestKernel,
    /// Whether agent-view.json was written, and if not why.
    agent_view: String,
}

#[derive(Debug, Serialize)]
struct GuestKernel {
    /// The vmlinux brig-vmm booted (read where brig-vmm sees it).
    booted: Option<Vmlinux>,
    /// The same kernel with its DWARF, to open memory.elf with (crash, gdb).
    debug: Option<Vmlinux>,
    /// Whether the two share a build-id.
    debug_matches: bool,
    /// Bytes of the guest's own VMCOREINFO note in memory.elf (0: none).
    vmcoreinfo_bytes: u32,
    /// Why it is not there, when it is not.
    vmcoreinfo_missing: Option<String>,
    /// Problems reading either file.
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Sandbox {
    id: String,
    namespace: String,
    vmm_pid: Option<u32>,
    rootfs_image: Option<String>,
    /// SHA-256 of the rootfs image file, computed after the VM was resumed.
    rootfs_image_sha256: Option<String>,
    /// Image name and digest as containerd put them in the spec (CRI does).
    image_annotations: std::collections::BTreeMap<String, String>,
    jailed: bool,
}

#[derive(Debug, Serialize)]
struct Versions {
    brig: String,
    brig_vmm: String,
    /// The shim that started the sandbox, as it wrote in the task directory.
    shim: Option<String>,
    /// The initramfs the guest booted (its agent): path, size and SHA-256.
    initramfs: Option<FileDigest>,
    vmm_control_api: String,
    host_kernel: String,
    cpu_model: String,
}

pub fn run(args: &Args) -> Result<()> {
    let config = Config::load().context("reading brig's configuration")?;
    let task = find(&config, &args.id)?;
    // Before anything is paused: a snapshot that cannot be signed is not taken.
    let key = signing::load_secret(&args.key)?;
    let _lock = lock(&task.dir, &args.id)?;
    if let Some(pid) = task.vmm_pid.filter(|_| !task.vmm_alive()) {
        bail!("the VM of {} has exited (brig-vmm {pid} is gone): nothing to capture", args.id);
    }
    let socket = SocketPath::open(&task.api)
        .with_context(|| format!("{} has no control socket (has its VM exited?)", args.id))?;
    let mut control = Client::connect(socket.path(), CONTROL_TIMEOUT).context("brig-vmm's control socket")?;
    let before = control.state().context("asking brig-vmm for the VM's state")?;
    // Read and hashed before the pause, which is the workload's to pay for.
    let (kernel, vmcoreinfo_note_symbol) = guest_kernel(&config, &task);
    let evidence = Evidence::create(&args.output)?;
    let dir = evidence.dir.clone();
    let capture = Capture { args, config: &config, task: &task, key: &key, kernel, vmcoreinfo_note_symbol };
    let captured = capture.run(&mut control, &before, evidence);
    if let Err(e) = &captured {
        Evidence::mark_failed(&dir, e);
    }
    captured
}

/// The booted kernel (where brig-vmm sees it: through its root, for a jailed one)
/// and the debug vmlinux installed beside the configured one.
fn guest_kernel(config: &Config, task: &TaskRecord) -> (GuestKernel, Option<u64>) {
    let booted_path = match task.vmm_pid {
        Some(pid) if task.jailed => PathBuf::from(format!("/proc/{pid}/root{}", brig_shim::jail::JAIL_KERNEL)),
        _ => config.kernel.clone(),
    };
    let debug_path = PathBuf::from(format!("{}.debug", config.kernel.display()));
    let mut errors = Vec::new();
    let booted = kernel::inspect(&booted_path).map_err(|e| errors.push(format!("{e:#}"))).ok();
    let debug = kernel::inspect_debug(&debug_path).map_err(|e| errors.push(format!("{e:#}"))).ok();
    let symbol = booted.as_ref().and_then(|b| b.vmcoreinfo_note_symbol);
    let booted = booted.map(|b| b.vmlinux);
    let debug_matches =
        matches!((&booted, &debug), (Some(b), Some(d)) if b.build_id.is_some() && b.build_id == d.build_id);
    let missing =
        (symbol.is_none() && booted.is_some()).then(|| "the booted kernel has no vmcoreinfo_note symbol".to_owned());
    let kernel = GuestKernel { booted, debug, debug_matches, vmcoreinfo_bytes: 0, vmcoreinfo_missing: missing, errors };
    (kernel, symbol)
}

/// One capture, from the pause to the signed manifest.
struct Capture<'a> {
    args: &'a Args,
    config: &'a Config,
    task: &'a TaskRecord,
    key: &'a ed25519_dalek::SigningKey,
    kernel: GuestKernel,
    vmcoreinfo_note_symbol: Option<u64>,
}

impl Capture<'_> {
    fn run(self, control: &mut Client, before: &VmState, evidence: Evidence) -> Result<()> {
        let Capture { args, config, task, key, mut kernel, vmcoreinfo_note_symbol } = self;
        let was_paused = before.state == RunState::Paused;
        let started = Instant::now();
        control.pause().context("pausing the vCPUs")?;
        let paused_wall = SystemTime::now();
        let paused_mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).context("CLOCK_MONOTONIC")?;
        let captured = capture(control, evidence, before.memory_mib, vmcoreinfo_note_symbol);
        // Resume whatever happened, unless asked not to: the workload must not stay frozen by a failed capture.
        let resumed = !args.keep_paused && !was_paused;
        if resumed {
            control.resume().context("resuming the vCPUs")?;
        }
        let paused_for = started.elapsed();
        let (mut evidence, dumped) = captured?;
        kernel.vmcoreinfo_bytes = dumped.vmcoreinfo_bytes;
        if dumped.vmcoreinfo_missing.is_some() {
            kernel.vmcoreinfo_missing = dumped.vmcoreinfo_missing.clone();
        }

        evidence.write("config.json", &std::fs::read(task.bundle.join("config.json")).unwrap_or_default())?;
        evidence.write("console.log", &untrusted_log(&task.console))?;
        evidence.write("vmm.log", &untrusted_log(&task.dir.join("vmm.log")))?;
        let metrics = control.metrics().map(|m| serde_json::to_vec_pretty(&m)).context("brig-vmm's metrics")??;
        evidence.write("metrics.json", &metrics)?;
        // Only once the VM runs again, and never for long: the capture does not wait
        // on the guest, and what it says is kept apart, labelled as its claim.
        let agent_view = if resumed {
            match crate::agent_view::ask(&task.vsock, &custody::utc(SystemTime::now())) {
                Ok(view) => {
                    evidence.write("agent-view.json", &serde_json::to_vec_pretty(&view)?)?;
                    "written (the guest's claim)".to_owned()
                }
                Err(why) => format!("not written: {why}"),
            }
        } else {
            "not written: the VM was left paused".to_owned()
        };

        let image_annotations = task.annotations().into_iter().filter(|(k, _)| k.contains("image")).collect();
        let predicate = Predicate {
            sandbox: Sandbox {
                id: task.id.clone(),
                namespace: task.namespace.clone(),
                vmm_pid: task.vmm_pid,
                rootfs_image: task.rootfs.as_ref().map(|p| p.display().to_string()),
                rootfs_image_sha256: task.rootfs.as_deref().and_then(|p| file_sha256(p).ok()).map(|(_, d)| d),
                image_annotations,
                jailed: task.jailed,
            },
            reason: args.reason.clone(),
            operator: args.operator.clone(),
            uid: nix::unistd::getuid().as_raw(),
            host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            paused_at_utc: custody::utc(paused_wall),
            paused_at_unix_ns: paused_wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            paused_at_monotonic_ns: Duration::from(paused_mono).as_nanos(),
            vcpus_paused_ms: paused_for.as_millis() as u64,
            resumed,
            versions: versions(control, config, task),
            vmm_reported_memory_sha256: dumped.sha256,
            guest_kernel: kernel,
            agent_view: agent_view.clone(),
        };
        let statement = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": evidence.subjects,
            "predicateType": "urn:brig:snapshot:v1",
            "predicate": predicate,
        });
        let path = evidence.dir.join("manifest.json");
        let mut manifest = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        let envelope = signing::sign(key, &serde_json::to_vec(&statement)?);
        manifest.write_all(&serde_json::to_vec_pretty(&envelope)?)?;
        manifest.sync_all()?;
        let event =
            custody::Event { action: "captured", operator: args.operator.as_deref(), reason: &args.reason, copy: None };
        custody::append(&evidence.dir, key, &event).context("starting custody.log")?;
        evidence.complete()?;
        println!(
            "snapshot of {}/{} in {}: {} files, signed by key {}; vCPUs paused for {} ms{}; agent-view.json {agent_view}",
            task.namespace,
            task.id,
            evidence.dir.display(),
            evidence.subjects.len() + 2,
            signing::key_id(&key.verifying_key()),
            paused_for.as_millis(),
            if resumed { ", resumed" } else { "; left paused" }
        );
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct FileDigest {
    path: PathBuf,
    size: u64,
    sha256: String,
}

fn versions(control: &Client, config: &Config, task: &TaskRecord) -> Versions {
    // Where brig-vmm sees it (its jail), as for the kernel.
    let initramfs = match task.vmm_pid {
        Some(pid) if task.jailed => PathBuf::from(format!("/proc/{pid}/root{}", brig_shim::jail::JAIL_INITRAMFS)),
        _ => config.initramfs.clone(),
    };
    let initramfs = file_sha256(&initramfs).ok().map(|(size, sha256)| FileDigest { path: initramfs, size, sha256 });
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
    });
    Versions {
        brig: env!("CARGO_PKG_VERSION").into(),
        brig_vmm: control.version.vmm_version.clone(),
        shim: task.shim_version.clone(),
        initramfs,
        vmm_control_api: control.version.api.to_string(),
        host_kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        cpu_model: cpu_model.unwrap_or_default(),
    }
}

/// memory.elf and state.bin, through pipes; returns brig-vmm's digest of memory.elf
/// once it matched what arrived.
fn capture(
    control: &mut Client,
    evidence: Evidence,
    memory_mib: u64,
    vmcoreinfo_note_symbol: Option<u64>,
) -> Result<(Evidence, brig_vmm_api::MemoryDumped)> {
    // Scaled to the guest: at 20 MB/s (a slow disk) plus a margin.
    let timeout = Duration::from_secs(30 + memory_mib / 20);
    let (pipe, copier) = piped(evidence, "memory.elf")?;
    let dumped = control.dump_memory_to(&pipe, vmcoreinfo_note_symbol, timeout);
    drop(pipe);
    let (evidence, subject) = copier.join().map_err(|_| anyhow::anyhow!("the memory.elf copier panicked"))?;
    // The copier's failure (a full disk) first: brig-vmm's is then only the broken pipe.
    let subject = subject?;
    let dumped = dumped.context("dump-memory-fd")?;
    if dumped.sha256 != subject.digest.sha256 || dumped.bytes != subject.size {
        bail!(
            "memory.elf: brig-vmm reports {} bytes with SHA-256 {}, but {} bytes with {} arrived",
            dumped.bytes,
            dumped.sha256,
            subject.size,
            subject.digest.sha256
        );
    }
    let (pipe, copier) = piped(evidence, "state.bin")?;
    let saved = control.save_state_to(&pipe);
    drop(pipe);
    let (evidence, subject) = copier.join().map_err(|_| anyhow::anyhow!("the state.bin copier panicked"))?;
    let (saved, subject) = (saved.context("save-state-fd")?, subject?);
    if saved.bytes != subject.size {
        bail!("state.bin: brig-vmm wrote {} bytes, {} arrived", saved.bytes, subject.size);
    }
    Ok((evidence, dumped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_snapshot_of_the_same_sandbox_is_refused_while_one_runs() {
        let dir = std::env::temp_dir().join(format!("brig-cli-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let held = lock(&dir, "web").expect("the first");
        let err = lock(&dir, "web").expect_err("the second");
        assert!(err.to_string().contains("a snapshot of web is already running"), "{err}");
        drop(held);
        lock(&dir, "web").expect("free again once the first ends");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_output_directory_must_be_new_or_empty_and_files_are_hashed_as_written() {
        let root = std::env::temp_dir().join(format!("brig-cli-evidence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut evidence = Evidence::create(&root).expect("new directory");
        let subject = evidence.write("a.txt", b"abc").expect("write");
        assert_eq!(subject.digest.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(subject.size, 3);
        let mode = |p: &Path| std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(p).expect("stat")) & 0o777;
        assert_eq!((mode(&root), mode(&root.join("a.txt"))), (0o700, 0o600));
        assert!(evidence.write("a.txt", b"again").is_err(), "a file is never overwritten");
        let err = Evidence::create(&root).err().expect("not empty");
        assert!(err.to_string().contains("not empty"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
