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
}
