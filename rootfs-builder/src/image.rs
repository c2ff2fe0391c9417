//! Container images for tests and demos, built without root:
//!
//! - [`busybox_rootfs`]: a minimal root file system around Debian's static busybox;
//! - [`ext4_image`]: an ext4 image of a directory (`mkfs.ext4 -d`, nothing mounted);
//! - [`oci_image_layout`]: an OCI image-layout tarball of a directory, one gzip layer,
//!   which `ctr image import` (containerd 1.6) takes.
//!
//! Layers and layouts are reproducible: tar entries are sorted, owned by 0:0 and dated
//! [`source_date_epoch`], gzip stores no name or time. ext4 images get a fixed UUID,
//! hash seed and creation time, but mke2fs 1.47.0 copies each file's times (ctime
//! included, which cannot be set) from the directory, so only images of the same
//! directory are byte-identical.

use std::fs::{self, File};
use std::io::Read as _;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Debian's `busybox-static` installs its binary here.
const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// e2fsprogs' tools, by path: `/sbin` is not on an unprivileged user's `PATH`.
const MKFS_EXT4: &str = "/sbin/mkfs.ext4";

/// The unprivileged user of [`busybox_rootfs`].
pub const USER: (&str, u32) = ("brig", 1000);

/// UUID and directory-hash seed of every [`ext4_image`].
const EXT4_UUID: &str = "5b7e6a0c-2f4d-4c1e-9a8b-62726967e4a1";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds a minimal root file system in `dir` (created if missing, refused if not
/// empty): `/bin/busybox` with a symlink per applet from `busybox --list-full`,
/// `/etc/passwd` and `/etc/group` with root and [`USER`], an empty `/etc/hostname`,
/// empty `/proc`, `/sys`, `/dev`, `/run`, `/tmp` (1777). Each `(host file, path in
/// rootfs)` of `extra` is copied in with its mode, e.g.
/// `(checker, "usr/bin/brig-oci-check")`.
pub fn busybox_rootfs(dir: &Path, extra: &[(PathBuf, &str)]) -> Result<()> {
    require_package(BUSYBOX_PACKAGE, BUSYBOX)?;
    make_dir(dir, 0o755)?;
    if fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty; a root file system is built into an empty directory", dir.display());
    }
    for (name, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
    ] {
        make_dir(&dir.join(name), mode)?;
    }
    let (user, id) = USER;
    make_dir(&dir.join("home").join(user), 0o755)?;
    let busybox = dir.join("bin/busybox");
    fs::copy(BUSYBOX, &busybox).with_context(|| format!("copying {BUSYBOX}"))?;
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755))?;
    for applet in applets()? {
        let link = dir.join(&applet);
        if applet == Path::new("bin/busybox") || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink("/bin/busybox", &link).with_context(|| format!("linking {}", link.display()))?;
    }

    write_file(
        &dir.join("etc/passwd"),
        &format!("root:x:0:0:root:/root:/bin/sh\n{user}:x:{id}:{id}:{user}:/home/{user}:/bin/sh\n"),
        0o644,
    )?;
    write_file(&dir.join("etc/group"), &format!("root:x:0:\n{user}:x:{id}:\n"), 0o644)?;
    write_file(&dir.join("etc/hostname"), "", 0o644)?;

    for (host, inside) in extra {
        let target = dir.join(relative(inside)?);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(host, &target).with_context(|| format!("copying {} to {inside}", host.display()))?;
    }
    Ok(())
}

/// The applet paths busybox installs, relative (`bin/sh`, `usr/bin/awk`).
fn applets() -> Result<Vec<PathBuf>> {
    let out = Command::new(BUSYBOX).arg("--list-full").output().with_context(|| format!("running {BUSYBOX}"))?;
    ensure!(out.status.success(), "{BUSYBOX} --list-full failed ({})", out.status);
    let list = String::from_utf8(out.stdout).context("busybox --list-full printed non-UTF-8")?;
    list.lines().filter(|l| !l.is_empty()).map(|l| relative(l).map(Path::to_path_buf)).collect()
}

/// A path inside the root file system: relative, without `..`.
fn relative(path: &str) -> Result<&Path> {
    let path = Path::new(path);
    ensure!(
        path.components().all(|c| matches!(c, Component::Normal(_))),
        "{} must be a relative path inside the root file system",
        path.display()
    );
    Ok(path)
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    // Set explicitly: the umask would otherwise decide (and clear 1777's sticky bit).
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes an ext4 image of `dir` to `image` (replaced if it exists), `size_mib` MiB,
/// with `mkfs.ext4 -d`: no mount, no root needed. The root directory is owned by 0:0;
/// everything else keeps the owner it has in `dir`. Inode times are copied from `dir`,
/// access times included, so the same tree gives the same bytes only with the same
/// timestamps: reading `dir` in between (as building an image does) can change them.
pub fn ext4_image(dir: &Path, image: &Path, size_mib: u64) -> Result<()> {
    ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    require_package("e2fsprogs", MKFS_EXT4)?;
    let file = File::create(image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size_mib.checked_mul(1 << 20).context("image size overflows")?)
        .with_context(|| format!("sizing {} to {size_mib} MiB", image.display()))?;
    drop(file);
    // e2fsprogs reads a fake time of 0 as "none" and stamps the superblock with the
    // clock (two builds a second apart then differ): the earliest time it keeps is 1.
    let epoch = source_date_epoch().max(1).to_string();
    let mut cmd = Command::new(MKFS_EXT4);
    cmd.args(["-q", "-F", "-m", "0", "-U", EXT4_UUID])
        .arg("-E")
        .arg(format!("root_owner=0:0,hash_seed={EXT4_UUID}"))
        .arg("-d")
        .arg(dir)
        .arg(image)
        // Creation and check times of the superblock (newer e2fsprogs also read SOURCE_DATE_EPOCH).
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .env("SOURCE_DATE_EPOCH", &epoch);
    run(&mut cmd, "mkfs.ext4").inspect_err(|_| {
        let _ = fs::remove_file(image);
    })
}

/// Writes an OCI image-layout tarball of `dir` to `out_tar`: `oci-layout`,
/// `index.json` naming the image `reference` (`org.opencontainers.image.ref.name`,
/// a full reference such as `docker.io/library/brig-busybox:latest`, which
/// `ctr image import` keeps as the image name) and `blobs/sha256/` with the manifest,
/// the config and one gzip layer holding `dir`, every entry owned by 0:0.
pub fn oci_image_layout(dir: &Path, out_tar: &Path, reference: &str) -> Result<()> {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name for {other}"),
    };
    let staging = out_tar.with_extension("layout.tmp");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing stale {}", staging.display()))?;
    }
    let blobs = staging.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let result = (|| {
        let layer_tar = staging.join("layer.tar");
        let mut entries: Vec<String> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        ensure!(!entries.is_empty(), "{} is empty; an image needs at least one file", dir.display());
        entries.sort();
        tar(dir, &entries, &layer_tar)?;
        let diff_id = sha256_file(&layer_tar)?;

        let layer_gz = staging.join("layer.tar.gz");
        let gz = File::create(&layer_gz)?;
        let mut gzip = Command::new("gzip");
        gzip.args(["-n", "-9", "-c"]).arg(&layer_tar).stdout(gz);
        run(&mut gzip, "gzip")?;
        fs::remove_file(&layer_tar)?;
        let layer = Blob::from_file(&layer_gz, "application/vnd.oci.image.layer.v1.tar+gzip")?;
        fs::rename(&layer_gz, blobs.join(&layer.hex))?;

        let mut config = json!({"Env": [PATH_ENV], "WorkingDir": "/"});
        if dir.join("bin/sh").symlink_metadata().is_ok() {
            config["Cmd"] = json!(["/bin/sh"]);
        }
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{"created_by": "brig-rootfs-builder image::oci_image_layout"}],
        });
        let config = Blob::write(&blobs, &config, "application/vnd.oci.image.config.v1+json")?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let manifest = Blob::write(&blobs, &manifest, "application/vnd.oci.image.manifest.v1+json")?;
        let mut entry = manifest.descriptor();
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
        entry["platform"] = json!({"architecture": architecture, "os": "linux"});
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        });
        fs::write(staging.join("index.json"), serde_json::to_vec(&index)?)?;
        fs::write(staging.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;

        let partial = out_tar.with_extension("tar.tmp");
        tar(&staging, &["blobs".into(), "index.json".into(), "oci-layout".into()], &partial)?;
        fs::rename(&partial, out_tar).with_context(|| format!("renaming {} into place", out_tar.display()))
    })();
    let cleanup = fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()));
    result.and(cleanup)
}

/// A content-addressed blob and its OCI descriptor.
#[derive(Debug)]
struct Blob {
    media_type: &'static str,
    hex: String,
    size: u64,
}

impl Blob {
    fn from_file(path: &Path, media_type: &'static str) -> Result<Blob> {
        let size = fs::metadata(path)?.len();
        Ok(Blob { media_type, hex: sha256_file(path)?, size })
    }

    /// Serialises `value` into `blobs/<sha256>`.
    fn write(blobs: &Path, value: &serde_json::Value, media_type: &'static str) -> Result<Blob> {
        let bytes = serde_json::to_vec(value)?;
        let hex = hex(&Sha256::digest(&bytes));
        fs::write(blobs.join(&hex), &bytes)?;
        Ok(Blob { media_type, hex, size: bytes.len() as u64 })
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": format!("sha256:{}", self.hex), "size": self.size})
    }
}

/// A reproducible tar of `names` (relative to `dir`): sorted, GNU format (no PAX
/// atime/ctime records), owned by 0:0, dated [`source_date_epoch`].
fn tar(dir: &Path, names: &[String], out: &Path) -> Result<()> {
    let mut cmd = Command::new("tar");
    cmd.args(["--create", "--sort=name", "--format=gnu", "--numeric-owner", "--owner=0", "--group=0"])
        .arg(format!("--mtime=@{}", source_date_epoch()))
        .arg("--file")
        .arg(out)
        .arg("--directory")
        .arg(dir)
        .arg("--")
        .args(names);
    run(&mut cmd, "tar")
}

/// `$SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else 0.
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a tool to completion; its stderr is part of the error.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Fails with what to install when `path` (from Debian package `package`) is missing.
fn require_package(package: &str, path: &str) -> Result<()> {
    ensure!(
        Path::new(path).exists(),
        "{path} is missing: run `apt-get install {package}` (`cargo xtask test` installs it)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("brig-image-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn output(cmd: &mut Command) -> String {
        let out = cmd.output().expect("command starts");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    #[test]
    fn busybox_rootfs_has_applets_users_and_extras() {
        let tmp = TempDir::new("rootfs");
        let extra = tmp.0.join("tool");
        fs::write(&extra, "#!/bin/sh\necho tool\n").expect("write");
        fs::set_permissions(&extra, fs::Permissions::from_mode(0o755)).expect("chmod");
        let root = tmp.0.join("rootfs");
        busybox_rootfs(&root, &[(extra, "usr/bin/brig-tool")]).expect("rootfs");

        assert_eq!(fs::read_link(root.join("bin/sh")).expect("bin/sh"), Path::new("/bin/busybox"));
        let applets = output(Command::new(BUSYBOX).arg("--list-full"));
        for applet in applets.lines().filter(|a| *a != "bin/busybox") {
            assert!(root.join(applet).symlink_metadata().is_ok(), "{applet} is missing");
        }
        // The copied busybox is static: it runs from the rootfs without the host's libc.
        assert_eq!(output(Command::new(root.join("bin/busybox")).args(["echo", "hi"])), "hi\n");

        let passwd = fs::read_to_string(root.join("etc/passwd")).expect("passwd");
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        assert!(passwd.contains("\nbrig:x:1000:1000:"), "{passwd}");
        assert!(fs::read_to_string(root.join("etc/group")).expect("group").contains("brig:x:1000:"));
        assert_eq!(fs::read(root.join("etc/hostname")).expect("hostname"), b"");
        assert_eq!(fs::metadata(root.join("tmp")).expect("tmp").mode() & 0o7777, 0o1777);
        for empty in ["proc", "sys", "dev", "run"] {
            assert_eq!(fs::read_dir(root.join(empty)).expect(empty).count(), 0, "{empty}");
        }
        let tool = fs::metadata(root.join("usr/bin/brig-tool")).expect("extra file");
        assert_eq!(tool.mode() & 0o777, 0o755, "the extra file keeps its mode");

        let err = busybox_rootfs(&root, &[]).expect_err("not empty");
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn extras_must_stay_inside_the_rootfs() {
        let tmp = TempDir::new("escape");
        for bad in ["/etc/passwd", "../outside", "usr/../../outside"] {
            let root = tmp.0.join(bad.replace('/', "_"));
            let err = busybox_rootfs(&root, &[(PathBuf::from("/etc/hostname"), bad)]).expect_err(bad);
            assert!(err.to_string().contains("must be a relative path"), "{err}");
        }
        assert!(!tmp.0.join("outside").exists());
    }

    fn sample_dir(tmp: &TempDir) -> PathBuf {
        let dir = tmp.0.join("content");
        fs::create_dir_all(dir.join("etc")).expect("dir");
        fs::write(dir.join("etc/greeting"), "hello from ext4\n").expect("write");
        fs::write(dir.join("top"), "x").expect("write");
        symlink("/etc/greeting", dir.join("link")).expect("symlink");
        dir
    }

    #[test]
    fn ext4_image_holds_the_files_and_repeats_exactly() {
        let tmp = TempDir::new("ext4");
        let dir = sample_dir(&tmp);
        let image = tmp.0.join("disk.img");
        pin_times(&dir);
        ext4_image(&dir, &image, 8).expect("image");
        assert_eq!(fs::metadata(&image).expect("image").len(), 8 << 20);

        let debugfs = |request: &str| output(Command::new("/sbin/debugfs").arg("-R").arg(request).arg(&image));
        let listing = debugfs("ls -l /");
        for name in ["etc", "top", "link", "lost+found"] {
            assert!(listing.contains(name), "{name} missing from:\n{listing}");
        }
        assert_eq!(debugfs("cat /etc/greeting"), "hello from ext4\n");
        let root = debugfs("stat /");
        assert!(root.contains("User:     0   Group:     0"), "{root}");
        let fs_info = output(Command::new("/sbin/dumpe2fs").arg("-h").arg(&image));
        assert!(fs_info.contains(EXT4_UUID), "{fs_info}");

        // The tree is not touched again: that would move its change times, which the
        // image records in whole seconds (a second build a second later then differed).
        let again = tmp.0.join("again.img");
        ext4_image(&dir, &again, 8).expect("image");
        assert!(fs::read(&image).expect("read") == fs::read(&again).expect("read"), "same tree and times, same bytes");
    }

    /// Sets every entry's modification time under `dir` to one instant, and its access
    /// time to one in the future: later than both the modification and the change
    /// (which this touch sets to now), so that reading it does not move it (relatime
    /// updates an access time not after either), and the next build sees the same times.
    fn pin_times(dir: &Path) {
        for touch in [&["-m", "-d", "@1000000000"][..], &["-a", "-d", "@4000000000"][..]] {
            let status = Command::new("find")
                .arg(dir)
                .args(["-exec", "touch", "-h"])
                .args(touch)
                .args(["{}", "+"])
                .status()
                .expect("find");
            assert!(status.success(), "touch failed");
        }
    }

    #[test]
    fn ext4_image_reports_a_too_small_size() {
        let tmp = TempDir::new("ext4-small");
        let dir = tmp.0.join("big");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("blob"), vec![7u8; 3 << 20]).expect("write");
        let image = tmp.0.join("small.img");
        let err = ext4_image(&dir, &image, 2).expect_err("3 MiB do not fit in 2");
        assert!(err.to_string().contains("mkfs.ext4 failed"), "{err}");
        assert!(!image.exists(), "a failed image is removed");
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).expect("read")).expect("json")
    }

    /// The blob a descriptor names exists, has the descriptor's size and digest.
    fn blob(layout: &Path, descriptor: &serde_json::Value) -> PathBuf {
        let digest = descriptor["digest"].as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = layout.join("blobs/sha256").join(hex);
        assert_eq!(sha256_file(&path).expect("blob"), hex, "{digest}");
        assert_eq!(fs::metadata(&path).expect("blob").len(), descriptor["size"].as_u64().expect("size"));
        path
    }

    #[test]
    fn oci_layout_digests_match_their_blobs() {
        let tmp = TempDir::new("oci");
        let dir = sample_dir(&tmp);
        let out = tmp.0.join("image.tar");
        let reference = "docker.io/library/brig-test:latest";
        oci_image_layout(&dir, &out, reference).expect("layout");
        assert!(!out.with_extension("layout.tmp").exists(), "staging is removed");

        let layout = tmp.0.join("layout");
        fs::create_dir_all(&layout).expect("dir");
        output(Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&layout));
        assert_eq!(read_json(&layout.join("oci-layout")), json!({"imageLayoutVersion": "1.0.0"}));
        let index = read_json(&layout.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        let entry = &index["manifests"][0];
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], reference);
        assert_eq!(entry["mediaType"], "application/vnd.oci.image.manifest.v1+json");

        let manifest = read_json(&blob(&layout, entry));
        let config = read_json(&blob(&layout, &manifest["config"]));
        assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("amd64"), Some("linux")));
        let layer = blob(&layout, &manifest["layers"][0]);
        assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");

        let unzipped = tmp.0.join("layer.tar");
        let out_file = File::create(&unzipped).expect("create");
        let status = Command::new("gzip").arg("-dc").arg(&layer).stdout(out_file).status().expect("gzip");
        assert!(status.success());
        let diff_id = format!("sha256:{}", sha256_file(&unzipped).expect("hash"));
        assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": [diff_id]}));

        let listing = output(Command::new("tar").args(["-tvf"]).arg(&unzipped));
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(lines.iter().all(|l| l.contains(" 0/0 ")), "owned by root: {listing}");
        assert!(lines.iter().any(|l| l.ends_with("link -> /etc/greeting")), "{listing}");
        assert!(lines.iter().any(|l| l.ends_with(" etc/greeting")), "no ./ prefix: {listing}");
    }

    #[test]
    fn oci_layout_is_reproducible() {
        let tmp = TempDir::new("oci-repro");
        let dir = sample_dir(&tmp);
        let (a, b) = (tmp.0.join("a.tar"), tmp.0.join("b.tar"));
        oci_image_layout(&dir, &a, "docker.io/library/x:1").expect("a");
        // A touched file with the same content must not change the image.
        fs::write(dir.join("top"), "x").expect("rewrite");
        oci_image_layout(&dir, &b, "docker.io/library/x:1").expect("b");
        assert!(fs::read(&a).expect("a") == fs::read(&b).expect("b"));
    }
}
