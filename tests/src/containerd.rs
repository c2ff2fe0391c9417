//! A real containerd (Debian's 1.6) for shim tests, inside kvm-host: its own
//! config, root and sockets under a scratch directory, the busybox test image
//! imported, brig installed with `cargo xtask install --no-build`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::scratch::Scratch;

/// The image the shim tests run (xtask/src/artifacts.rs builds and names it).
pub const IMAGE: &str = "docker.io/library/brig-busybox:latest";
pub const RUNTIME: &str = "io.containerd.brig.v2";

#[derive(Debug)]
pub struct Containerd {
    child: Child,
    pub dir: Scratch,
    pub address: PathBuf,
}

/// A command's standard output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", out.status, stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// Installs brig into the (test host's) system paths, as a user would.
pub fn install_brig() {
    let out = Command::new(crate::artifact("BRIG_XTASK_BIN"))
        .args(["install", "--no-build"])
        .output()
        .expect("xtask install");
    assert!(
        out.status.success(),
        "install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The exec id of [`Containerd::hold_marker`]'s process.
const MARKER_EXEC: &str = "marker";

/// A string only a guest process's memory holds, and the `ctr task exec` holding it.
#[derive(Debug)]
pub struct Marker {
    pub text: String,
    holder: Child,
}

impl Marker {
    /// Asserts the marker is somewhere in `file` (a memory dump).
    pub fn assert_in(&self, file: &Path) {
        let found = Command::new("grep").args(["-c", "-a", "-F", &self.text]).arg(file).output().expect("grep");
        assert!(
            found.status.success(),
            "the guest's marker {} is in {}: {}",
            self.text,
            file.display(),
            describe(&found)
        );
    }
}

impl Containerd {
    /// Starts containerd and imports the test image.
    pub fn start() -> Containerd {
        Self::launch(None)
    }

    /// [`Containerd::start`] with brig's configuration replaced by `config` (TOML): it
    /// is written to containerd's scratch directory and named by `BRIG_CONFIG`, which
    /// containerd's shims inherit.
    pub fn start_with_brig_config(config: &str) -> Containerd {
        Self::launch(Some(config))
    }

    fn launch(brig_config: Option<&str>) -> Containerd {
        install_brig();
        let dir = Scratch::new("containerd");
        let mut env = Vec::new();
        if let Some(text) = brig_config {
            let path = dir.join("brig-config.toml");
            std::fs::write(&path, text).expect("brig config");
            env.push(("BRIG_CONFIG", path));
        }
        let address = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [debug]\n  level = \"debug\"\n\
             [grpc]\n  address = \"{address}\"\n[ttrpc]\n  address = \"{address}.ttrpc\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            address = address.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd is installed (apt-get install containerd; cargo xtask test does)");
        let mut containerd = Containerd { child, dir, address };
        let deadline = Instant::now() + Duration::from_secs(60);
        while containerd.ctr(&["version"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "containerd did not come up:\n{}", containerd.log_for_failure());
            if let Ok(Some(status)) = containerd.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", containerd.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let image = crate::artifact("BRIG_OCI_IMAGE");
        let out = containerd.ctr(&["image", "import", &image.to_string_lossy()]);
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        containerd
    }

    /// Asserts that a `ctr` command succeeded; shows its output and containerd's log.
    #[track_caller]
    pub fn assert_ok(&self, out: &Output) {
        assert!(out.status.success(), "{}\ncontainerd's log:\n{}", describe(out), self.log_for_failure());
    }

    /// `ctr task kill -s SIGKILL`, then, once the task is stopped, `ctr task delete`
    /// and `ctr container delete`, each asserted. Returns `task delete`'s output: its
    /// stderr has the exit-status warning.
    pub fn kill_and_delete(&self, id: &str) -> Output {
        self.assert_ok(&self.ctr(&["task", "kill", "-s", "SIGKILL", id]));
        self.wait_for_status(id, "STOPPED");
        let delete = self.ctr(&["task", "delete", id]);
        self.assert_ok(&delete);
        self.assert_ok(&self.ctr(&["container", "delete", id]));
        delete
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The log without containerd's start-up chatter (a line per plugin), for failure
    /// messages: what the shim and the runtime said comes first in a truncated report.
    pub fn log_for_failure(&self) -> String {
        const STARTUP: [&str; 3] =
            ["msg=\"loading plugin ", "msg=\"skip loading plugin ", "msg=\"failed to load plugin "];
        let log = self.log();
        log.lines().filter(|line| !STARTUP.iter().any(|noise| line.contains(noise))).collect::<Vec<_>>().join("\n")
    }

    /// A `ctr` command against this containerd.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.address).args(args).stdin(Stdio::null());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ctr runs")
    }

    /// The wall time of `ctr run --rm --runtime RUNTIME IMAGE ID true`, which must succeed
    /// (the benchmarks' unit of work).
    pub fn time_run(&self, runtime: &str, id: &str) -> Duration {
        let start = Instant::now();
        let out = self.ctr(&["run", "--rm", "--runtime", runtime, IMAGE, id, "true"]);
        let took = start.elapsed();
        self.assert_ok(&out);
        took
    }

    /// `ctr run --rm --runtime io.containerd.brig.v2 IMAGE ID ARGS…`.
    pub fn run(&self, id: &str, args: &[&str]) -> Output {
        self.run_with(&["--rm"], id, args)
    }

    /// `ctr run OPTIONS… --runtime io.containerd.brig.v2 IMAGE ID ARGS…`.
    pub fn run_with(&self, options: &[&str], id: &str, args: &[&str]) -> Output {
        self.run_command(options, id, args).output().expect("ctr runs")
    }

    /// Starts task `id` detached, running `sleep 1000`, and waits until it runs;
    /// returns its pid (brig-vmm's, for a brig task).
    pub fn run_idle(&self, id: &str) -> u32 {
        self.assert_ok(&self.run_with(&["-d"], id, &["sleep", "1000"]));
        self.wait_for_status(id, "RUNNING")
    }

    /// Starts a process in task `id` that holds a marker whole only in guest memory:
    /// the shell joins its two halves into a variable, so neither the exec request
    /// nor argv carries it. [`Containerd::release_marker`] ends it.
    pub fn hold_marker(&self, id: &str) -> Marker {
        let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let text = format!("brig-marker-{id}-{suffix}");
        let script = format!("m=\"brig-mark\"\"er-{id}-{suffix}\"; while :; do sleep 1; done");
        let holder = self
            .command(&["task", "exec", "--exec-id", MARKER_EXEC, id, "sh", "-c", &script])
            .spawn()
            .expect("exec the marker holder");
        // The shell has set its variable by the time the exec is a second old.
        std::thread::sleep(Duration::from_secs(1));
        Marker { text, holder }
    }

    /// SIGKILLs the marker's process and waits for its `ctr task exec`.
    pub fn release_marker(&self, id: &str, mut marker: Marker) {
        let _ = self.ctr(&["task", "kill", "--exec-id", MARKER_EXEC, "--signal", "SIGKILL", id]);
        let _ = marker.holder.wait();
    }

    /// The `ctr run` command of [`Containerd::run_with`], to spawn.
    pub fn run_command(&self, options: &[&str], id: &str, args: &[&str]) -> Command {
        let mut all = vec!["run"];
        all.extend_from_slice(options);
        all.extend_from_slice(&["--runtime", RUNTIME, IMAGE, id]);
        all.extend_from_slice(args);
        self.command(&all)
    }

    /// A task's `PID` and `STATUS` columns from `ctr task ls`.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols[..] {
                [task, pid, status] if task == id => Some((pid.parse().ok()?, status.to_owned())),
                _ => None,
            }
        })
    }

    /// Waits until `ctr task ls` shows the task with `status` (e.g. `RUNNING`).
    pub fn wait_for_status(&self, id: &str, status: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.task(id) {
                Some((pid, s)) if s == status => return pid,
                other => {
                    assert!(Instant::now() < deadline, "task {id} is not {status} after 60s: {other:?}\n{}", self.log())
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr run -t`: the command on a terminal of `rows`×`cols`, fed `input`; returns
    /// ctr's exit code and everything the terminal showed.
    pub fn run_in_terminal(
        &self,
        id: &str,
        args: &[&str],
        input: &[u8],
        rows: u16,
        cols: u16,
    ) -> (Option<i32>, String) {
        use std::io::{Read, Write};
        let size = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = std::fs::File::from(pty.slave);
        let mut cmd = self.run_command(&["--rm", "-t"], id, args);
        cmd.stdin(slave.try_clone().expect("pty")).stdout(slave.try_clone().expect("pty")).stderr(slave);
        let mut child = cmd.spawn().expect("ctr runs");
        drop(cmd);
        let mut master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().expect("pty");
        let output = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // EIO: every slave descriptor is closed (ctr exited).
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        // Typed once the shell is up: a terminal echoes what it is given.
        self.wait_for_status(id, "RUNNING");
        master.write_all(input).expect("type into the terminal");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait ctr") {
                break status;
            }
            assert!(Instant::now() < deadline, "ctr run -t did not finish\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(master);
        (status.code(), output.join().expect("terminal reader"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test reports its leftovers itself; removed here, they do not
            // fail the tests after it in the same host too.
            self.remove_everything();
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshot mounts under root/ would keep the scratch directory busy.
        for line in std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines() {
            if let Some(target) = line.split(' ').nth(1).filter(|t| t.starts_with(&*self.dir.path().to_string_lossy()))
            {
                let _ = nix::mount::umount2(Path::new(target), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Containerd {
    /// Every task killed and deleted, every container deleted (best effort).
    fn remove_everything(&self) {
        let ids = |kind: &str| -> Vec<String> {
            let out = self.ctr(&[kind, "ls", "-q"]);
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
        };
        for task in ids("task") {
            let _ = self.ctr(&["task", "delete", "--force", &task]);
        }
        for container in ids("container") {
            let _ = self.ctr(&["container", "delete", &container]);
        }
    }

    /// [`assert_no_leftovers`], with containerd's log (it holds the shims' logs) on failure.
    pub fn assert_no_leftovers(&self, context: &str) {
        if let Err(found) = wait_for_no_leftovers() {
            panic!("{context}: left behind {found:#?}\ncontainerd's log:\n{}", self.log_for_failure());
        }
    }
}

/// The pid of the shim serving task `id` (its command line has `-id ID`).
pub fn shim_pid(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = argv.first()?.ends_with(b"containerd-shim-brig-v2");
        let serves = argv.windows(2).any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
        (is_shim && serves).then_some(pid)
    })
}

/// What a finished test must not leave behind (brig's and containerd's leftovers).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub vmm_processes: Vec<String>,
    pub shim_processes: Vec<String>,
    pub task_dirs: Vec<String>,
    /// Jail uid leases (`/run/brig/uids/<uid>`) and sandbox cgroups (`/sys/fs/cgroup/brig/*`).
    pub jail_uids: Vec<String>,
    pub cgroups: Vec<String>,
    pub rootfs_mounts: Vec<String>,
    /// Tasks' own network namespaces (`/run/brig/<task>/netns`, nsfs bind mounts).
    pub netns_mounts: Vec<String>,
    pub private_images: Vec<String>,
}

/// Everything of brig still around right now.
pub fn leftovers() -> Leftovers {
    let mut found = Leftovers::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        if argv0.ends_with("brig-vmm") || argv0.ends_with("brig-jailer") {
            found.vmm_processes.push(format!("{} {argv0}", entry.file_name().to_string_lossy()));
        }
        if argv0.ends_with("containerd-shim-brig-v2") {
            found.shim_processes.push(format!("{} {argv0}", entry.file_name().to_string_lossy()));
        }
    }
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path().display().to_string()).collect()
    };
    found.task_dirs = names("/run/brig").into_iter().filter(|d| d != "/run/brig/uids").collect();
    found.jail_uids = names("/run/brig/uids");
    found.cgroups = std::fs::read_dir("/sys/fs/cgroup/brig")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path().display().to_string())
        .collect();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    found.rootfs_mounts = mounts
        .lines()
        .filter(|l| l.contains("io.containerd.runtime.v2.task") && l.contains("/rootfs "))
        .map(str::to_owned)
        .collect();
    found.netns_mounts = mounts
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|target| target.starts_with("/run/brig/")))
        .filter(|l| l.split(' ').nth(2) == Some("nsfs"))
        .map(str::to_owned)
        .collect();
    found.private_images = std::fs::read_dir("/var/lib/brig/images")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    found
}

/// Waits (a few seconds: shims exit asynchronously) until nothing of brig is left.
pub fn assert_no_leftovers(context: &str) {
    if let Err(found) = wait_for_no_leftovers() {
        panic!("{context}: left behind {found:#?}");
    }
}

fn wait_for_no_leftovers() -> Result<(), Box<Leftovers>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = leftovers();
        if found == Leftovers::default() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Box::new(found));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The rootfs images in brig's cache, sorted.
pub fn cached_images() -> Vec<String> {
    std::fs::read_dir("/var/lib/brig/images")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ext4"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
