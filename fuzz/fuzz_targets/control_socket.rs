//! What reaches brig-vmm's control socket and its configuration file, and what a
//! client reads back: parsing never panics, and what parses re-encodes to itself.
#![no_main]

use brig_vmm_api::config::VmConfig;
use brig_vmm_api::wire;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = brig_vmm::api::parse(data) {
        let line = wire::request_line(&request);
        assert_eq!(wire::parse_request(&line[..line.len() - 1]).ok(), Some(request), "a request re-encodes to itself");
    }
    if let Ok(answer) = wire::parse_response(data) {
        let line = wire::response_line(&answer);
        assert!(wire::parse_response(&line[..line.len() - 1]).is_ok(), "an answer re-encodes");
    }
    if let Ok(config) = serde_json::from_slice::<VmConfig>(data) {
        // Validation touches the filesystem read-only (metadata); it must not panic either.
        let _ = config.validate();
    }
});
