//! placeholder replaced by the seccomp helper
