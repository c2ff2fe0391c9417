//! The serial console's sink: bytes go to the console file (capped, so a guest
//! cannot fill the host's disk), the last few KiB stay in memory for error
//! messages, and complete lines are scanned for the kernel's panic and power-off
//! messages.
//!
//! Only a line as the kernel formats it counts (`[ seconds.micros] message`, the
//! guest kernel has `CONFIG_PRINTK_TIME`), with the marker at the start of the
//! message: the agent also writes to the console, and its lines can carry text the
//! container's spec chose, which must not end the VM.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::devices::bus::lock;
use crate::events::{EventSender, VmEvent};
use crate::metrics::METRICS;

/// The console file stops growing here.
const FILE_LIMIT: u64 = 64 << 20;
/// Bytes kept in memory for [`Console::tail`].
const TAIL_BYTES: usize = 16 << 10;
/// Longer lines are scanned in pieces.
const LINE_MAX: usize = 1024;

const MARKERS: &[(&str, VmEvent)] = &[
    ("Kernel panic - not syncing", VmEvent::Panic),
    ("reboot: Power down", VmEvent::PowerOff),
    ("reboot: System halted", VmEvent::PowerOff),
];

#[derive(Debug)]
struct State {
    file: Option<File>,
    written: u64,
    tail: VecDeque<u8>,
    line: Vec<u8>,
    events: Option<EventSender>,
    seen: Vec<VmEvent>,
}

/// Shared handle: the serial device writes through [`Console::sink`], the VMM reads
/// [`Console::tail`].
#[derive(Debug, Clone)]
pub struct Console(Arc<Mutex<State>>);

impl Console {
    pub fn new(file: Option<File>, events: Option<EventSender>) -> Console {
        Console(Arc::new(Mutex::new(State {
            file,
            written: 0,
            tail: VecDeque::with_capacity(TAIL_BYTES),
            line: Vec::new(),
            events,
            seen: Vec::new(),
        })))
    }

    pub fn sink(&self) -> ConsoleSink {
        ConsoleSink(self.clone())
    }

    /// The last `lines` lines the guest printed.
    pub fn tail(&self, lines: usize) -> String {
        let state = lock(&self.0);
        let bytes: Vec<u8> = state.tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes).replace('\r', "");
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// `Write` end given to the serial device.
#[derive(Debug)]
pub struct ConsoleSink(Console);

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = lock(&(self.0).0);
        METRICS.console_bytes.add(buf.len() as u64);
        if state.written < FILE_LIMIT {
            let room = (FILE_LIMIT - state.written).min(buf.len() as u64) as usize;
            if let Some(file) = state.file.as_mut() {
                // A failing console file must not stop the guest.
                let _ = file.write_all(&buf[..room]);
            }
            state.written += room as u64;
            METRICS.console_bytes_dropped.add((buf.len() - room) as u64);
        } else {
            METRICS.console_bytes_dropped.add(buf.len() as u64);
        }
        for &byte in buf {
            if state.tail.len() == TAIL_BYTES {
                state.tail.pop_front();
            }
            state.tail.push_back(byte);
            if byte == b'\n' || state.line.len() >= LINE_MAX {
                scan_line(&mut state);
            } else {
                state.line.push(byte);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The message of a kernel log line (`[    1.234567] message`), or None for any
/// other line.
fn kernel_message(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches('\r').strip_prefix('[')?;
    let (stamp, message) = rest.split_once("] ")?;
    let (seconds, fraction) = stamp.trim_start_matches(' ').split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(seconds) && digits(fraction)).then_some(message)
}

fn scan_line(state: &mut State) {
    let line = std::mem::take(&mut state.line);
    let text = String::from_utf8_lossy(&line);
    let Some(message) = kernel_message(&text) else { return };
    for (marker, event) in MARKERS {
        if message.starts_with(marker) && !state.seen.contains(event) {
            state.seen.push(event.clone());
            if let Some(events) = &state.events {
                events.send(event.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::channel_pair;

    #[test]
    fn a_panic_line_is_reported_once_and_kept_in_the_tail() {
        let (tx, rx) = channel_pair().expect("channel");
        let console = Console::new(None, Some(tx));
        let mut sink = console.sink();
        sink.write_all(b"[    0.5] booting\r\n[    1.0] Kernel panic - not syncing: VFS: Unable to mount\r\n")
            .expect("write");
        sink.write_all(b"[    1.1] Kernel panic - not syncing: again\n").expect("write");
        assert_eq!(rx.rx.try_recv(), Ok(VmEvent::Panic));
        assert!(rx.rx.try_recv().is_err(), "reported once");
        let tail = console.tail(2);
        assert!(tail.starts_with("[    1.0] Kernel panic"), "{tail}");
        assert!(!tail.contains('\r'));
    }

    #[test]
    fn only_kernel_formatted_lines_are_verdicts() {
        let (tx, rx) = channel_pair().expect("channel");
        let console = Console::new(None, Some(tx));
        let mut sink = console.sink();
        for forged in [
            &b"[2026-12-01T20:00:00Z INFO  guest_agent] exec Kernel panic - not syncing\n"[..],
            b"Kernel panic - not syncing: from a workload\n",
            b"[    1.0] brig-agent: container said reboot: Power down\n",
            b"[ x.0] Kernel panic - not syncing: not a timestamp\n",
            b"[    1.0]Kernel panic - not syncing: no space\n",
        ] {
            sink.write_all(forged).expect("write");
        }
        assert!(rx.rx.try_recv().is_err(), "no verdict from text the kernel did not format");
        sink.write_all(b"\r[   12.345678] reboot: System halted\r\n").expect("write");
        assert_eq!(rx.rx.try_recv(), Ok(VmEvent::PowerOff));
    }

    #[test]
    fn power_off_is_reported() {
        let (tx, rx) = channel_pair().expect("channel");
        let console = Console::new(None, Some(tx));
        console.sink().write_all(b"[    2.0] reboot: Power down\n").expect("write");
        assert_eq!(rx.rx.try_recv(), Ok(VmEvent::PowerOff));
    }

    #[test]
    fn the_file_is_capped_but_the_tail_keeps_going() {
        let path = std::env::temp_dir().join(format!("brig-console-{}", std::process::id()));
        let console = Console::new(Some(File::create(&path).expect("file")), None);
        let mut sink = console.sink();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(FILE_LIMIT >> 20) + 2 {
            sink.write_all(&chunk).expect("write");
        }
        sink.write_all(b"\nlast line\n").expect("write");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), FILE_LIMIT);
        assert!(console.tail(1).ends_with("last line"));
        std::fs::remove_file(&path).expect("cleanup");
    }
}
