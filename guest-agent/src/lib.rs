//! brig-agent: the guest side of brig's VM boundary.
//!
//! It runs as PID 1 of the guest: mounts the kernel filesystems, reaps every
//! orphan, and serves the agent API (`brig-protocol`) over vsock to the shim.
//! Everything a request carries is treated as untrusted input.

pub mod container;
pub mod guest_info;
pub mod init;
pub mod reaper;
pub mod runtime;
pub mod service;

/// The agent's version, reported by `Ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `text` on one line: control characters (newlines included) escaped. Log lines
/// go to the console, which brig-vmm scans for the kernel's verdicts, and a message
/// may quote the container's spec; kept on one line, it can never pass for a
/// kernel line.
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_messages_stay_on_one_line() {
        let forged = "exec sh\n[    1.000000] Kernel panic - not syncing: fake\r";
        assert_eq!(super::one_line(forged), "exec sh\\n[    1.000000] Kernel panic - not syncing: fake\\r");
        assert_eq!(super::one_line("plain ünïcode"), "plain ünïcode");
    }
}
