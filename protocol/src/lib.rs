//! The agent API.
#![forbid(unsafe_code)]
