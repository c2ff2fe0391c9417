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

/// The host's users, groups and subordinate id ranges: the files' contents
/// (an absent file is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIds {
    pub passwd: String,
    pub group: String,
    pub subuid: String,
    pub subgid: String,
}

impl HostIds {
    pub fn read() -> HostIds {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        HostIds {
            passwd: read("/etc/passwd"),
            group: read("/etc/group"),
            subuid: read("/etc/subuid"),
            subgid: read("/etc/subgid"),
        }
    }
}

impl UidRange {
    /// Checks the range: never root, no overflow, no user or group the host has,
    /// and no overlap with a subordinate range (a rootless container's ids).
    pub fn check(&self, host: &HostIds) -> Result<(), String> {
        let last = self.first.checked_add(self.count.saturating_sub(1)).filter(|_| self.count > 0);
        let Some(last) = last else {
            return Err(format!("jail uid range {}+{} is empty or overflows", self.first, self.count));
        };
        if self.first == 0 {
            return Err("the jail uid range must not include 0 (root)".into());
        }
        let ours = self.first..=last;
        let clash = |what: String, file: &str| {
            Err(format!(
                "the jail uid range {}-{last} overlaps {what} of {file}: pick another jail_uid_first",
                self.first
            ))
        };
        for (file, text) in [("/etc/passwd", &host.passwd), ("/etc/group", &host.group)] {
            for line in text.lines() {
                let mut fields = line.split(':');
                let (name, id) = (fields.next().unwrap_or(""), fields.nth(1).and_then(|id| id.parse::<u32>().ok()));
                if let Some(id) = id.filter(|id| ours.contains(id)) {
                    return clash(format!("`{name}` ({id})"), file);
                }
            }
        }
        // name:first:count
        for (file, text) in [("/etc/subuid", &host.subuid), ("/etc/subgid", &host.subgid)] {
            for line in text.lines() {
                let mut fields = line.split(':');
                let name = fields.next().unwrap_or("");
                let (Some(first), Some(count)) = (
                    fields.next().and_then(|n| n.parse::<u32>().ok()),
                    fields.next().and_then(|n| n.parse::<u32>().ok()),
                ) else {
                    continue;
                };
                let their_last = first.saturating_add(count.saturating_sub(1));
                if count > 0 && first <= last && self.first <= their_last {
                    return clash(format!("`{name}`'s subordinate ids {first}-{their_last}"), file);
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
    /// The sandbox it is leased to (the lease file's content).
    pub owner: String,
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
                    return Ok(Lease { uid, path, owner: owner.to_owned() });
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
            (std::fs::read(entry.path()).ok()? == owner.as_bytes()).then(|| Lease {
                uid,
                path: entry.path(),
                owner: owner.to_owned(),
            })
        })
    }

    /// Gives the uid back, if the lease file still names this owner (a second
    /// release, after another sandbox took the uid, leaves that one's alone).
    pub fn release(&self) {
        if std::fs::read(&self.path).is_ok_and(|held| held == self.owner.as_bytes()) {
            let _ = std::fs::remove_file(&self.path);
        }
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
        b.release();
        assert_eq!(Lease::find(&dir, "c"), Some(c), "a late second release of b's lease leaves c's alone");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_range_over_root_a_host_user_or_subordinate_ids_is_refused() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let host = HostIds { passwd: passwd.into(), ..HostIds::default() };
        assert!(UidRange { first: 0, count: 10 }.check(&HostIds::default()).expect_err("root").contains("root"));
        let err = UidRange { first: 999, count: 10 }.check(&host).expect_err("alice");
        assert!(err.contains("alice") && err.contains("1000") && err.contains("jail_uid_first"), "{err}");
        assert!(UidRange { first: u32::MAX, count: 2 }.check(&HostIds::default()).is_err());
        let sub = HostIds { subuid: "alice:100000:65536\n".into(), subgid: "bob:300000:10\n".into(), ..host.clone() };
        let err = UidRange { first: 165_535, count: 10 }.check(&sub).expect_err("alice's last subordinate uid");
        assert!(err.contains("/etc/subuid") && err.contains("100000-165535"), "{err}");
        let err = UidRange { first: 299_000, count: 1001 }.check(&sub).expect_err("bob's first subordinate gid");
        assert!(err.contains("/etc/subgid") && err.contains("bob"), "{err}");
        UidRange { first: 200_000, count: 65_536 }.check(&sub).expect("between the subordinate ranges");
        let group = HostIds { group: "users:x:100:\n".into(), ..sub };
        UidRange { first: 200_000, count: 65_536 }.check(&group).expect("free range");
    }
}
