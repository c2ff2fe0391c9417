//! The stdio port: how the host attaches a process's standard streams.
//!
//! The host opens a vsock connection to [`STDIO_VSOCK_PORT`] (through brig-vmm's
//! hybrid socket: `CONNECT 1025\n`) and sends one header line:
//!
//! ```text
//! STDIO <container id> <exec id or -> <stdin|stdout|stderr>\n
//! ```
//!
//! The agent answers `OK\n`, or `ERR <reason>\n` and closes. After `OK` the
//! connection carries the stream's raw bytes: host → guest for stdin (closing the
//! host's write side closes the process's stdin), guest → host for stdout and
//! stderr (the agent closes the connection at end of stream). With a terminal,
//! `stdin` and `stdout` carry the pty.

use std::fmt;

/// The vsock port of the stdio service.
pub const STDIO_VSOCK_PORT: u32 = 1025;
/// Header lines longer than this are refused.
pub const MAX_HEADER: usize = 256;
/// Container and exec ids: containerd's rules (alphanumerics separated by single
/// `.`, `_` or `-`), at most this long.
pub const MAX_ID: usize = 76;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdin => "stdin",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub container_id: String,
    /// Empty for the container's own process.
    pub exec_id: String,
    pub stream: Stream,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exec = if self.exec_id.is_empty() { "-" } else { &self.exec_id };
        writeln!(f, "STDIO {} {exec} {}", self.container_id, self.stream.as_str())
    }
}

/// Whether `id` is a valid container or exec id (also: no path separators, no `..`).
pub fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_ID || !bytes[0].is_ascii_alphanumeric() {
        return false;
    }
    let mut previous_separator = false;
    for &b in bytes {
        let separator = matches!(b, b'.' | b'_' | b'-');
        if !(b.is_ascii_alphanumeric() || separator) || (separator && previous_separator) {
            return false;
        }
        previous_separator = separator;
    }
    !previous_separator
}

impl Header {
    /// Parses a header line (without its newline).
    pub fn parse(line: &str) -> Result<Header, String> {
        let parts: Vec<&str> = line.trim_end_matches('\r').split(' ').collect();
        let ["STDIO", container_id, exec_id, stream] = parts.as_slice() else {
            return Err("expected `STDIO <container> <exec|-> <stream>`".into());
        };
        if !valid_id(container_id) {
            return Err(format!("invalid container id {container_id:?}"));
        }
        let exec_id = if *exec_id == "-" { "" } else { exec_id };
        if !exec_id.is_empty() && !valid_id(exec_id) {
            return Err(format!("invalid exec id {exec_id:?}"));
        }
        let stream = match *stream {
            "stdin" => Stream::Stdin,
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            other => return Err(format!("unknown stream {other:?}")),
        };
        Ok(Header { container_id: (*container_id).to_owned(), exec_id: exec_id.to_owned(), stream })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header { container_id: "web-1".into(), exec_id: "".into(), stream: Stream::Stdout };
        assert_eq!(h.to_string(), "STDIO web-1 - stdout\n");
        assert_eq!(Header::parse(h.to_string().trim_end()), Ok(h));
        let h = Header { container_id: "c".into(), exec_id: "exec.2".into(), stream: Stream::Stdin };
        assert_eq!(Header::parse(h.to_string().trim_end()), Ok(h));
    }

    #[test]
    fn hostile_ids_are_refused() {
        for id in ["", "../etc", "a/b", "a..b", ".hidden", "trailing-", "sp ace", "x".repeat(77).as_str()] {
            assert!(!valid_id(id), "{id:?} must be invalid");
        }
        for id in ["a", "web-1", "k8s_pod.sandbox-0", "0abc"] {
            assert!(valid_id(id), "{id:?} must be valid");
        }
        assert!(Header::parse("STDIO ../x - stdout").is_err());
        assert!(Header::parse("STDIO c - stdwhat").is_err());
        assert!(Header::parse("HELLO").is_err());
    }
}
