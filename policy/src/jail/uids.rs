//! Each sandbox gets a uid/gid of its own from a configured range, leased by
//! creating `<leases>/<uid>` exclusively (it names the sandbox) and released by
//! removing it. A sandbox's uid owns only its jail's `state/` and device nodes.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A configured range of uids (and the same gids) for jails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl UidRange {
    /// Checks the range: never root, no overflow, and no overlap with a user or
    /// group the host already has (`passwd`, `group`: the files' contents).
    pub fn check(&self, passwd: &str, group: &str) -> Result<(), String> {
        let last = self.first.checked_add(self.count.saturating_sub(1)).filter(|_| self.count > 0);
        let Some(last) = last else {
            return Err(format!("jail uid range {}+{} is empty or overflows", self.first, self.count));
        };
        if self.first == 0 {
            return Err("the jail uid range must not include 0 (root)".into());
        }
        for (file, text) in [("/etc/passwd", passwd), ("/etc/group", group)] {
            for line in text.lines() {
                let mut fields = line.split(':');
                let (name, id) = (fields.next().unwrap_or(""), fields.nth(1).and_then(|id| id.parse::<u32>().ok()));
                if let Some(id) = id.filter(|id| (self.first..=last).contains(id)) {
                    return Err(format!(
                        "the jail uid range {}-{last} holds `{name}` ({id}) of {file}: pick another jail_uid_first",
                        self.first
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A leased uid; [`Lease::release`] gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub uid: u32,
    pub path: PathBuf,
}

impl Lease {
    /// Leases a free uid for `owner`, starting at a place derived from `owner` so
    /// that sandboxes rarely probe each other's.
    pub fn take(leases: &Path, range: UidRange, owner: &str) -> std::io::Result<Lease> {
        std::fs::create_dir_all(leases)?;
        let start = owner.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % range.count.max(1);
        for i in 0..range.count {
            let uid = range.first + (start + i) % range.count;
            let path = leases.join(uid.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(owner.as_bytes())?;
                    return Ok(Lease { uid, path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "all {} jail uids from {} are in use: widen jail_uid_count",
            range.count, range.first
        )))
    }

    /// The lease `owner` holds in `leases`, if any (cleanup after the shim died).
    pub fn find(leases: &Path, owner: &str) -> Option<Lease> {
        std::fs::read_dir(leases).ok()?.flatten().find_map(|entry| {
            let uid = entry.file_name().to_str()?.parse().ok()?;
            (std::fs::read(entry.path()).ok()? == owner.as_bytes()).then(|| Lease { uid, path: entry.path() })
        })
    }

    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_and_come_back() {
        let dir = std::env::temp_dir().join(format!("brig-uid-leases-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let range = UidRange { first: 500_000, count: 2 };
        let a = Lease::take(&dir, range, "a").expect("first");
        let b = Lease::take(&dir, range, "b").expect("second");
        assert_ne!(a.uid, b.uid);
        assert!((500_000..500_002).contains(&a.uid) && (500_000..500_002).contains(&b.uid));
        let full = Lease::take(&dir, range, "c").expect_err("range exhausted");
        assert!(full.to_string().contains("jail_uid_count"), "{full}");
        assert_eq!(Lease::find(&dir, "b"), Some(b.clone()));
        b.release();
        assert_eq!(Lease::find(&dir, "b"), None);
        let c = Lease::take(&dir, range, "c").expect("b's uid is free again");
        assert_eq!(c.uid, b.uid);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_range_over_root_or_a_host_user_is_refused() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert!(UidRange { first: 0, count: 10 }.check("", "").expect_err("root").contains("root"));
        let err = UidRange { first: 999, count: 10 }.check(passwd, "").expect_err("alice");
        assert!(err.contains("alice") && err.contains("1000"), "{err}");
        assert!(UidRange { first: u32::MAX, count: 2 }.check("", "").is_err());
        UidRange { first: 200_000, count: 65_536 }.check(passwd, "users:x:100:\n").expect("free range");
    }
}
