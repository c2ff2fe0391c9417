//! What the shim creates on the host for a task: a state directory only its owner
//! can enter, and files in it that are owner-only and never opened through a
//! symlink. The task's sockets grant access to the agent and to brig-vmm, so nobody
//! else may reach them, or swap the directory under the shim.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::ShimError;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot create {path}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error(
        "the state directory {path} belongs to uid {owner}, not to this shim's uid {uid}: \
         refusing to use it (remove it, or check who else writes to state_dir)"
    )]
    NotOurs { path: PathBuf, owner: u32, uid: u32 },
    #[error("{path} is in the way of the task's state directory (it is not a directory)")]
    NotADirectory { path: PathBuf },
}

impl From<FilesError> for ShimError {
    fn from(e: FilesError) -> Self {
        match e {
            FilesError::Create { path, source } => {
                ShimError::Io { what: format!("creating {}", path.display()), source }
            }
            FilesError::NotOurs { .. } | FilesError::NotADirectory { .. } => {
                ShimError::FailedPrecondition(e.to_string())
            }
        }
    }
}

/// Creates `dir` (and missing parents) mode 0700, or takes over an existing one that
/// is a real directory owned by this process's uid (narrowing its mode to 0700).
/// A directory of another uid, or a symlink, is refused: whoever owns it could read
/// the task's sockets or replace them.
pub fn private_dir(dir: &Path) -> Result<(), FilesError> {
    private_dir_of(dir, nix::unistd::geteuid().as_raw())
}

/// [`private_dir`] for a directory that must belong to `uid`.
fn private_dir_of(dir: &Path, uid: u32) -> Result<(), FilesError> {
    let create = |source| FilesError::Create { path: dir.to_path_buf(), source };
    if let Some(parent) = dir.parent() {
        DirBuilder::new().recursive(true).mode(DIR_MODE).create(parent).map_err(create)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(create)?;
    if !meta.file_type().is_dir() {
        return Err(FilesError::NotADirectory { path: dir.to_path_buf() });
    }
    if meta.uid() != uid {
        return Err(FilesError::NotOurs { path: dir.to_path_buf(), owner: meta.uid(), uid });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(create)?;
    }
    Ok(())
}

/// Creates (or truncates) `path` for writing, mode 0600, refusing to follow a
/// symlink in its place (`O_NOFOLLOW`).
pub fn private_file(path: &Path) -> Result<File, FilesError> {
    let create = |source| FilesError::Create { path: path.to_path_buf(), source };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(create)?;
    // A file left from before keeps its mode through O_CREAT: narrow it.
    file.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(create)?;
    Ok(file)
}

/// [`private_file`] with `contents`.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), FilesError> {
    let mut file = private_file(path)?;
    file.write_all(contents.as_ref()).map_err(|source| FilesError::Create { path: path.to_path_buf(), source })
}

/// Files brig-vmm makes in its jail's `state/` (the sandbox uid's: a hostile
/// brig-vmm could put a symlink, a FIFO or a device there) are opened only
/// as what they must be, never through a symlink, and never blocking.
///
/// The last `max` bytes of a regular file (`O_NOFOLLOW | O_NONBLOCK`), as text;
/// anything else reads as a note saying what it is.
pub fn read_tail(path: &Path, max: u64) -> String {
    match read_tail_bytes(path, max) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => format!("({} is not a regular file: not read)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("({} cannot be read: {e})", path.display()),
    }
}

/// The last `max` bytes of a regular file, opened `O_NOFOLLOW | O_NONBLOCK`;
/// `None` when it is something else (a FIFO, a device, a socket).
pub fn read_tail_bytes(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(meta.len().saturating_sub(max)))?;
    file.take(max).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// A Unix socket in a jail's `state/`, held open with `O_PATH | O_NOFOLLOW` and
/// checked to be a socket, reached through `/proc/self/fd/N`: a symlink put in its
/// place (to containerd's socket, say) is refused, and cannot be swapped in
/// between the check and the connect.
#[derive(Debug)]
pub struct SocketPath {
    _fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl SocketPath {
    pub fn open(socket: &Path) -> std::io::Result<SocketPath> {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW).open(socket)?;
        let meta = file.metadata()?;
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(std::io::Error::other(format!("{} is not a socket: not connecting", socket.display())));
        }
        let fd = std::os::fd::OwnedFd::from(file);
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(SocketPath { _fd: fd, path })
    }

    /// The path to connect to, valid while `self` lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brig-shim-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn state_directories_are_owner_only() {
        let root = scratch("dirs");
        let dir = root.join("state").join("task");
        private_dir(&dir).expect("create");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.join("state")), 0o700, "a missing state_dir is made owner-only too");
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).expect("chmod");
        private_dir(&dir).expect("an existing directory of ours is taken over");
        assert_eq!(mode(&dir), 0o700, "and narrowed");

        let elsewhere = root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("dir");
        let link = root.join("state").join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
        let err = private_dir(&link).expect_err("a symlink");
        assert!(matches!(err, FilesError::NotADirectory { .. }), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_state_directory_of_another_uid_is_refused() {
        let root = scratch("owner");
        let dir = root.join("task");
        private_dir(&dir).expect("create");
        // As a shim of another uid sees it (no chown needed: the test need not be root).
        let ours = nix::unistd::geteuid().as_raw();
        let shim = ours.wrapping_add(1);
        let err = private_dir_of(&dir, shim).expect_err("not the shim's");
        assert!(matches!(err, FilesError::NotOurs { owner, uid, .. } if owner == ours && uid == shim), "{err}");
        let message = ShimError::from(err).to_string();
        assert!(message.contains(&format!("belongs to uid {ours}")) && message.contains("refusing"), "{message}");
        assert_eq!(mode(&dir), 0o700, "a refused directory is left as it was");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn files_are_owner_only_and_never_followed_through_a_symlink() {
        let root = scratch("files");
        private_dir(&root).expect("dir");
        let file = root.join("vm.json");
        write_private(&file, b"{}").expect("write");
        assert_eq!((mode(&file), std::fs::read(&file).expect("read")), (0o600, b"{}".to_vec()));
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).expect("chmod");
        write_private(&file, b"{\"a\":1}").expect("rewrite");
        assert_eq!(mode(&file), 0o600, "a leftover file is narrowed");

        let target = root.join("target");
        std::fs::write(&target, b"keep").expect("target");
        let link = root.join("vmm.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = private_file(&link).expect_err("a symlink in the file's place");
        let FilesError::Create { source, .. } = &err else { panic!("{err:?}") };
        assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert_eq!(std::fs::read(&target).expect("target"), b"keep", "the link's target is untouched");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn jail_files_are_read_only_as_regular_files_and_sockets() {
        let root = scratch("jail");
        private_dir(&root).expect("dir");
        let console = root.join("console.log");
        std::fs::write(&console, "boot\nline two\n").expect("console");
        assert_eq!(read_tail(&console, 9), "line two\n", "the last bytes only");
        assert_eq!(read_tail(&root.join("absent"), 9), "");
        let secret = root.join("secret");
        std::fs::write(&secret, "host secret").expect("secret");
        let link = root.join("link.log");
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        let text = read_tail(&link, 100);
        assert!(!text.contains("host secret") && text.contains("cannot be read"), "{text}");
        let fifo = root.join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        assert!(read_tail(&fifo, 100).contains("not a regular file"), "a FIFO is not read (nor waited on)");

        let sock = root.join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let path = SocketPath::open(&sock).expect("a socket");
        std::os::unix::net::UnixStream::connect(path.path()).expect("connect through /proc/self/fd");
        assert!(listener.accept().is_ok());
        let to_sock = root.join("link.sock");
        std::os::unix::fs::symlink(&sock, &to_sock).expect("symlink");
        let err = SocketPath::open(&to_sock).expect_err("a symlink to a socket");
        assert!(err.to_string().contains("not a socket"), "the link itself is opened, and refused: {err}");
        let err = SocketPath::open(&console).expect_err("a regular file");
        assert!(err.to_string().contains("not a socket"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
