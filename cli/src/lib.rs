//! brig-cli: the operator's command line (`brig`), as a library so that its
//! parsers of evidence (manifest, custody log) can be fuzzed (fuzz/`evidence`).

pub mod agent_view;
pub mod copy;
pub mod custody;
pub mod kernel;
pub mod ps;
pub mod signing;
pub mod snapshot;
pub mod verify;
