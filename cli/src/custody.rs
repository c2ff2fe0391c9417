//! `custody.log`: who did what with a snapshot, when and why, as append-only JSON
//! lines. Each line holds the SHA-256 of the line before it (the first: of
//! nothing, 64 zeros) and the manifest's digest, and is signed with the host's
//! key, so a removed, reordered or edited line breaks the chain at that line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signing::{self, hex, key_id};

pub const FILE: &str = "custody.log";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event in a snapshot's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// SHA-256 of the previous line (without its newline), hex.
    pub prev_sha256: String,
    pub at_utc: String,
    /// `captured`, `verified`, …
    pub action: String,
    pub uid: u32,
    pub user: String,
    pub operator: Option<String>,
    pub reason: String,
    pub host: String,
    pub brig_version: String,
    /// SHA-256 of manifest.json as it was at this event.
    pub manifest_sha256: String,
    /// `copied`: the directory copied from and the one copied to (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_to: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    entry: Entry,
    keyid: String,
    /// ed25519 over the entry's JSON, base64.
    sig: String,
}

/// What the caller says about an event; the rest is filled in.
#[derive(Debug)]
pub struct Event<'a> {
    pub action: &'a str,
    pub operator: Option<&'a str>,
    pub reason: &'a str,
    /// For `copied`: from where to where.
    pub copy: Option<(&'a Path, &'a Path)>,
}

/// Appends `event` to `dir`'s custody log, signed with `key`.
pub fn append(dir: &Path, key: &SigningKey, event: &Event<'_>) -> Result<()> {
    let path = dir.join(FILE);
    let lines = read_lines(&path)?;
    let prev_sha256 = lines.last().map_or(GENESIS.to_owned(), |l| hex(&Sha256::digest(l.as_bytes())));
    let manifest = std::fs::read(dir.join("manifest.json")).context("reading manifest.json")?;
    let uid = nix::unistd::getuid();
    let entry = Entry {
        seq: lines.len() as u64,
        prev_sha256,
        at_utc: utc(std::time::SystemTime::now()),
        action: event.action.into(),
        uid: uid.as_raw(),
        user: nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_default(),
        operator: event.operator.map(str::to_owned),
        reason: event.reason.into(),
        host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        brig_version: env!("CARGO_PKG_VERSION").into(),
        manifest_sha256: hex(&Sha256::digest(&manifest)),
        copied_from: event.copy.map(|(from, _)| from.display().to_string()),
        copied_to: event.copy.map(|(_, to)| to.display().to_string()),
    };
    let body = serde_json::to_vec(&entry)?;
    let line = Line { entry, keyid: key_id(&key.verifying_key()), sig: signing::sign_base64(key, &body) };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut text = serde_json::to_vec(&line)?;
    text.push(b'\n');
    file.write_all(&text)?;
    file.sync_all()?;
    Ok(())
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Checks the chain and every signature; returns the entries.
pub fn verify(dir: &Path, key: &VerifyingKey) -> Result<Vec<Entry>> {
    verify_lines(&read_lines(&dir.join(FILE))?, key)
}

/// [`verify`] of custody.log's `lines`, as read.
pub fn verify_lines(lines: &[String], key: &VerifyingKey) -> Result<Vec<Entry>> {
    if lines.is_empty() {
        bail!("{FILE}: missing or empty (every snapshot records its capture)");
    }
    let mut entries = Vec::new();
    let mut prev = GENESIS.to_owned();
    for (i, text) in lines.iter().enumerate() {
        let n = i + 1;
        let line: Line =
            serde_json::from_str(text).with_context(|| format!("{FILE}: line {n} is not a custody entry"))?;
        if line.entry.prev_sha256 != prev || line.entry.seq != i as u64 {
            bail!("{FILE}: broken chain at line {n} (a line before it was removed, reordered or changed)");
        }
        let body = serde_json::to_vec(&line.entry)?;
        let valid = signing::check_base64(key, &body, &line.sig)
            .with_context(|| format!("{FILE}: line {n}: the signature is not 64 base64 bytes"))?;
        if line.keyid != key_id(key) || !valid {
            bail!("{FILE}: bad signature at line {n}");
        }
        prev = hex(&Sha256::digest(text.as_bytes()));
        entries.push(line.entry);
    }
    Ok(entries)
}

/// `2026-12-02T19:20:31.123456789Z`.
pub fn utc(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = (d.as_secs() / 86_400, d.as_secs() % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn utc_times_are_rfc3339() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_796_239_231, 5);
        assert_eq!(utc(t), "2026-12-02T19:20:31.000000005Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29), "a leap day");
    }

    #[test]
    fn the_chain_holds_and_a_removed_or_edited_line_breaks_it() {
        let dir = std::env::temp_dir().join(format!("brig-custody-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("manifest.json"), "{}").expect("manifest");
        let key = SigningKey::from_bytes(&[3u8; 32]);
        for action in ["captured", "copied", "verified"] {
            append(&dir, &key, &Event { action, operator: Some("alice"), reason: "test", copy: None }).expect("append");
        }
        let entries = verify(&dir, &key.verifying_key()).expect("valid chain");
        assert_eq!(entries.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["captured", "copied", "verified"]);
        let text = std::fs::read_to_string(dir.join(FILE)).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(dir.join(FILE), format!("{}\n{}\n", lines[0], lines[2])).expect("remove line 2");
        let err = verify(&dir, &key.verifying_key()).expect_err("removed");
        assert!(err.to_string().contains("broken chain at line 2"), "{err}");
        let edited = lines[1].replace("copied", "deleted");
        std::fs::write(dir.join(FILE), format!("{}\n{edited}\n{}\n", lines[0], lines[2])).expect("edit line 2");
        let err = verify(&dir, &key.verifying_key()).expect_err("edited");
        assert!(err.to_string().contains("bad signature at line 2"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
