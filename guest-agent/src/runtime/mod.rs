//! Code that runs in the container's own process, between `clone` and the
//! workload's `execve`.
pub mod seccomp;
