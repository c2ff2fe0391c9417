//! A snapshot directory's manifest.json and custody.log from anywhere: `brig
//! verify`'s parsers refuse them with a message, never panic, and never accept a
//! subject name that leaves the directory, signed or not.
#![no_main]

use brig_cli::{custody, signing, verify};
use ed25519_dalek::SigningKey;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    // As an envelope: parsed, its signature checked.
    if let Ok(envelope) = serde_json::from_slice::<signing::Envelope>(data) {
        let _ = signing::open(&envelope, &public);
    }
    // As a payload signed by the key, so the statement parser is reached.
    let signed = signing::sign(&key, data);
    let payload = signing::open(&signed, &public).expect("a fresh signature verifies");
    if let Ok(statement) = verify::statement(&payload) {
        for name in statement.subject_names() {
            assert!(!name.contains('/') && !name.starts_with('.') && !name.is_empty(), "{name:?} passed");
        }
    }
    // As custody.log's lines.
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let _ = custody::verify_lines(&lines, &public);
});
