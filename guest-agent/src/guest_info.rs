//! Facts about the guest for `GuestInfo` and `DescribeGuest`, read from /proc.

use std::sync::OnceLock;

/// The guest's `CLOCK_BOOTTIME` (time since its kernel began) in ns, 0 if unreadable.
pub fn boottime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(0, |t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
}

static STARTED_NS: OnceLock<u64> = OnceLock::new();

/// Notes [`boottime_ns`] as the moment the agent began; the first call counts.
pub fn note_start() {
    STARTED_NS.get_or_init(boottime_ns);
}

/// The moment [`note_start`] noted (0 if it was never called), reported by `Ping`.
pub fn started_ns() -> u64 {
    STARTED_NS.get().copied().unwrap_or(0)
}

/// The most processes and mounts `DescribeGuest` sends.
pub const MAX_ENTRIES: usize = 4096;
/// A command line is cut at this many bytes.
pub const MAX_CMDLINE: usize = 1024;

/// `(comm, state, ppid)` from /proc/PID/stat text. The name is between the first
/// `(` and the last `)`: it may hold spaces and parentheses itself.
pub fn stat(text: &str) -> Option<(String, String, u32)> {
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The real uid from /proc/PID/status text.
pub fn uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

/// A command line as one string: NULs as spaces, at most [`MAX_CMDLINE`] bytes.
pub fn cmdline(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(MAX_CMDLINE)];
    String::from_utf8_lossy(cut).replace('\0', " ").trim_end().to_owned()
}

/// `(source, target, fstype, options)` of each line of /proc/mounts text.
pub fn mounts(text: &str) -> Vec<(String, String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.to_owned(), f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .take(MAX_ENTRIES)
        .collect()
}

/// `(total, available)` bytes from /proc/meminfo text.
pub fn memory(meminfo: &str) -> (u64, u64) {
    let kib = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (kib("MemTotal:") * 1024, kib("MemAvailable:") * 1024)
}

/// Milliseconds since boot from /proc/uptime text.
pub fn uptime_ms(uptime: &str) -> u64 {
    uptime.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()).map_or(0, |s| (s * 1000.0) as u64)
}

/// Online CPUs from /proc/stat text.
pub fn cpus(stat: &str) -> u32 {
    stat.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let meminfo = "MemTotal:         114848 kB\nMemFree:  100000 kB\nMemAvailable:     104000 kB\n";
        assert_eq!(memory(meminfo), (114848 * 1024, 104000 * 1024));
        assert_eq!(uptime_ms("1.25 2.50\n"), 1250);
        assert_eq!(cpus("cpu  1 2 3\ncpu0 1 2 3\ncpu1 4 5 6\nintr 1\n"), 2);
        assert_eq!(memory(""), (0, 0));
        assert_eq!(uptime_ms("garbage"), 0);
    }

    #[test]
    fn parses_what_describe_guest_reports() {
        let (comm, state, ppid) = stat("61 (a (b) c) S 54 61 1 0 -1 4194560").expect("stat");
        assert_eq!((comm.as_str(), state.as_str(), ppid), ("a (b) c", "S", 54));
        assert_eq!(stat("61 no parens S 1"), None);
        assert_eq!(uid("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(cmdline(b"sh\0-c\0sleep 1\0"), "sh -c sleep 1");
        assert_eq!(cmdline(&vec![b'x'; 5000]).len(), MAX_CMDLINE);
        let m = mounts("proc /proc proc rw,nosuid 0 0\nbad\n/dev/vda / ext4 ro 0 0\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1], ("/dev/vda".into(), "/".into(), "ext4".into(), "ro".into()));
    }
}
