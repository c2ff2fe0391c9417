//! Facts about the guest for `GuestInfo`, read from /proc.

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
}
