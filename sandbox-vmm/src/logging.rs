//! brig-vmm's log: env_logger at the configured level (never overridden by
//! `RUST_LOG`), written to stderr (the shim's `vmm.log`) up to [`LOG_LIMIT`], with
//! the lines of the rust-vmm crates a guest can make log (virtio-queue logs every
//! bad queue setup and ring index it sees) rate-limited like `guest_warn!`.

use std::io::Write;
use std::sync::Mutex;

use crate::metrics::RateLimit;

/// stderr stops growing here; one last line says so.
pub const LOG_LIMIT: u64 = 16 << 20;

/// Crates whose log lines a guest can trigger at will.
const GUEST_REACHABLE: &[&str] = &["virtio_queue", "vm_memory", "vm_superio", "linux_loader"];

/// A writer that passes at most `limit` bytes on, then one notice, then nothing.
#[derive(Debug)]
pub struct Capped<W: Write> {
    inner: W,
    written: u64,
    limit: u64,
    noticed: bool,
}

impl<W: Write> Capped<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        Capped { inner, written: 0, limit, noticed: false }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 <= self.limit {
            self.inner.write_all(buf)?;
            self.written += buf.len() as u64;
        } else if !self.noticed {
            self.noticed = true;
            let notice = format!("brig-vmm: the log reached {} MiB; later lines are dropped\n", self.limit >> 20);
            self.inner.write_all(notice.as_bytes())?;
        }
        // Dropped lines are still "written": logging must never fail the VMM.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Guarded {
    inner: env_logger::Logger,
    /// One limit per guest-reachable crate.
    limits: Vec<RateLimit>,
}

impl log::Log for Guarded {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let krate = record.target().split("::").next().unwrap_or_default();
        if let Some(i) = GUEST_REACHABLE.iter().position(|c| *c == krate) {
            if self.limits[i].allow().is_none() {
                return;
            }
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger at `level` (`error`, `warn`, `info`, `debug`, `trace`).
pub fn init(level: &str) {
    let inner = env_logger::Builder::new()
        .parse_filters(level)
        .target(env_logger::Target::Pipe(Box::new(Capped::new(LockedStderr, LOG_LIMIT))))
        .build();
    let max = inner.filter();
    let limits = GUEST_REACHABLE.iter().map(|_| RateLimit::new()).collect();
    if log::set_boxed_logger(Box::new(Guarded { inner, limits })).is_ok() {
        log::set_max_level(max);
    }
}

/// stderr, written a record at a time.
struct LockedStderr;

static STDERR: Mutex<()> = Mutex::new(());

impl Write for LockedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _guard = STDERR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stops_at_its_limit_with_one_notice() {
        let mut out = Capped::new(Vec::new(), 100);
        for _ in 0..50 {
            out.write_all(b"0123456789\n").expect("never fails");
        }
        let text = String::from_utf8(out.inner).expect("utf-8");
        assert!(text.len() <= 100 + 80, "{}", text.len());
        assert_eq!(text.matches("later lines are dropped").count(), 1, "{text}");
        assert!(text.starts_with("0123456789\n"));
    }
}
