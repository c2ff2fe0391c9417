//! One verdict per check, printed as `PASS <check>` or `FAIL <check>: want … got …`.
//!
//! The text is deterministic (no pids, addresses or timestamps) so that the lines two
//! runtimes produce for the same bundle can be compared one by one.

use std::fmt;
use std::io;

use nix::errno::Errno;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    name: String,
    /// `(want, got)` when the check failed.
    failure: Option<(String, String)>,
}

impl Check {
    pub fn pass(name: impl Into<String>) -> Check {
        Check { name: name.into(), failure: None }
    }

    pub fn fail(name: impl Into<String>, want: impl Into<String>, got: impl Into<String>) -> Check {
        Check { name: name.into(), failure: Some((want.into(), got.into())) }
    }

    /// Passes when what the process sees is what the spec asks for.
    pub fn compare(name: impl Into<String>, want: impl Into<String>, got: impl Into<String>) -> Check {
        let (want, got) = (want.into(), got.into());
        if want == got {
            Check::pass(name)
        } else {
            Check::fail(name, want, got)
        }
    }

    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    #[cfg(test)]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(f, "PASS {}", self.name),
            Some((want, got)) => write!(f, "FAIL {}: want {want} got {got}", self.name),
        }
    }
}

/// An I/O error as its errno name (`EACCES`), which is the same on every run.
pub fn errno_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => format!("{:?}", Errno::from_raw(code)),
        None => err.kind().to_string(),
    }
}

/// The value of a `Key:\tvalue` line of `/proc/self/status`.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_shape() {
        assert_eq!(Check::pass("cwd").to_string(), "PASS cwd");
        assert_eq!(Check::fail("cwd", "/tmp", "/").to_string(), "FAIL cwd: want /tmp got /");
        assert!(Check::compare("x", "1", "1").passed());
        assert_eq!(Check::compare("x", "1", "2").to_string(), "FAIL x: want 1 got 2");
    }

    #[test]
    fn errors_are_named_by_errno() {
        assert_eq!(errno_name(&io::Error::from_raw_os_error(libc::EROFS)), "EROFS");
        assert_eq!(errno_name(&io::Error::from(io::ErrorKind::InvalidData)), "invalid data");
    }

    #[test]
    fn status_fields_are_found_by_exact_key() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\nNoNewPrivs:\t1\n";
        assert_eq!(status_field(status, "CapEff"), Some("00000000a80425fb"));
        assert_eq!(status_field(status, "NoNewPrivs"), Some("1"));
        assert_eq!(status_field(status, "Cap"), None, "a prefix of a key is not the key");
        assert_eq!(status_field(status, "Seccomp"), None);
    }
}
