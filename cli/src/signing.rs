//! The host's snapshot key and DSSE envelopes (the in-toto signing wrapper).
//!
//! The key is an ed25519 key made once per host (`brig keygen`, run by
//! `cargo xtask install`): `/etc/brig/keys/snapshot.key` (the 32-byte secret,
//! hex, mode 0600) and `snapshot.pub` (the public key, hex). Its key id is the
//! SHA-256 of the public key's 32 bytes, hex.
//!
//! A DSSE envelope signs `PAE(payloadType, payload)` =
//! `"DSSEv1" SP len(type) SP type SP len(payload) SP payload` (lengths in decimal).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const KEY_DIR: &str = "/etc/brig/keys";
pub const SECRET_FILE: &str = "snapshot.key";
pub const PUBLIC_FILE: &str = "snapshot.pub";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// `brig keygen`: make this host's snapshot signing key (once).
///
/// Writes DIR/snapshot.key (the ed25519 secret, hex, mode 0600; DIR is made 0700)
/// and DIR/snapshot.pub (the public key, hex), and prints the public key and its
/// key id (the SHA-256 of the public key). An existing key is kept and printed:
/// snapshots signed with it must stay verifiable.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where the key lives.
    #[arg(long, value_name = "DIR", default_value = KEY_DIR)]
    dir: PathBuf,
}

pub fn keygen(args: &KeygenArgs) -> Result<()> {
    let (secret, public) = (args.dir.join(SECRET_FILE), args.dir.join(PUBLIC_FILE));
    if secret.exists() {
        let key = load_secret(&secret)?;
        println!("kept the existing key {}", secret.display());
        print_public(&key.verifying_key());
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed).context("reading /dev/urandom")?;
    let key = SigningKey::from_bytes(&seed);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("creating {}", secret.display()))?;
    file.write_all(format!("{}\n", hex(&seed)).as_bytes())?;
    file.sync_all()?;
    std::fs::write(&public, format!("{}\n", hex(key.verifying_key().as_bytes())))
        .with_context(|| format!("writing {}", public.display()))?;
    println!("made the snapshot signing key {} (public: {})", secret.display(), public.display());
    print_public(&key.verifying_key());
    Ok(())
}

fn print_public(key: &VerifyingKey) {
    println!("public key {}\nkey id     {}", hex(key.as_bytes()), key_id(key));
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file's size and SHA-256 (hex), read once.
pub fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut sha = Sha256::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut sha)?;
    Ok((size, hex(&sha.finalize())))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    text.len().is_multiple_of(2).then_some(())?;
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The key id: SHA-256 of the public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

pub fn load_secret(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the snapshot key {} (make one with `brig keygen`)", path.display()))?;
    let seed: [u8; 32] = unhex(&text)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a 32-byte hex ed25519 secret", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn load_public(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the public key {}", path.display()))?;
    let bytes: [u8; 32] = unhex(&text)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a 32-byte hex ed25519 public key", path.display()))?;
    VerifyingKey::from_bytes(&bytes).with_context(|| format!("{} is not a valid ed25519 public key", path.display()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    /// base64
    pub payload: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    /// base64
    pub sig: String,
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// `key`'s ed25519 signature of `message`, base64 (envelopes and custody lines).
pub fn sign_base64(key: &SigningKey, message: &[u8]) -> String {
    BASE64.encode(key.sign(message).to_bytes())
}

/// Whether `sig` (base64) is `key`'s signature of `message`; `None` when `sig` is
/// not 64 base64 bytes.
pub fn check_base64(key: &VerifyingKey, message: &[u8], sig: &str) -> Option<bool> {
    let sig: [u8; 64] = BASE64.decode(sig).ok()?.try_into().ok()?;
    Some(key.verify(message, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok())
}

pub fn sign(key: &SigningKey, payload: &[u8]) -> Envelope {
    Envelope {
        payload_type: PAYLOAD_TYPE.into(),
        payload: BASE64.encode(payload),
        signatures: vec![Signature {
            keyid: key_id(&key.verifying_key()),
            sig: sign_base64(key, &pae(PAYLOAD_TYPE, payload)),
        }],
    }
}

/// The payload, if `envelope` carries a valid signature by `key`; otherwise what is wrong.
pub fn open(envelope: &Envelope, key: &VerifyingKey) -> Result<Vec<u8>> {
    if envelope.payload_type != PAYLOAD_TYPE {
        bail!("manifest.json: payload type {:?}, expected {PAYLOAD_TYPE:?}", envelope.payload_type);
    }
    let payload = BASE64.decode(&envelope.payload).context("manifest.json: the payload is not base64")?;
    let id = key_id(key);
    let Some(signature) = envelope.signatures.iter().find(|s| s.keyid == id) else {
        let ids: Vec<&str> = envelope.signatures.iter().map(|s| s.keyid.as_str()).collect();
        bail!("manifest.json: no signature by key {id} (signed by: {})", ids.join(", "));
    };
    let valid = check_base64(key, &pae(&envelope.payload_type, &payload), &signature.sig)
        .context("manifest.json: the signature is not 64 base64 bytes")?;
    if !valid {
        bail!("manifest.json: bad signature by key {id} (the manifest was changed after signing)");
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_envelope_opens_and_any_change_is_refused() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let envelope = sign(&key, b"{\"subject\":[]}");
        assert_eq!(open(&envelope, &key.verifying_key()).expect("valid"), b"{\"subject\":[]}");
        let mut edited = envelope.clone();
        edited.payload = BASE64.encode(b"{\"subject\":[1]}");
        assert!(open(&edited, &key.verifying_key()).expect_err("edited").to_string().contains("bad signature"));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(open(&envelope, &other.verifying_key())
            .expect_err("other key")
            .to_string()
            .contains("no signature by key"));
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab");
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = std::env::temp_dir().join(format!("brig-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        keygen(&KeygenArgs { dir: dir.clone() }).expect("keygen");
        let secret = load_secret(&dir.join(SECRET_FILE)).expect("secret");
        let public = load_public(&dir.join(PUBLIC_FILE)).expect("public");
        assert_eq!(secret.verifying_key(), public);
        let mode = |p: &Path| std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(p).expect("stat")) & 0o777;
        assert_eq!((mode(&dir), mode(&dir.join(SECRET_FILE))), (0o700, 0o600));
        keygen(&KeygenArgs { dir: dir.clone() }).expect("again");
        assert_eq!(
            load_secret(&dir.join(SECRET_FILE)).expect("kept").verifying_key(),
            public,
            "an existing key is kept"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
