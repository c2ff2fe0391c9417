//! `brig verify`: checks a snapshot directory against its signed manifest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::custody;
use crate::signing::{self, hex, Envelope};

/// Check a snapshot directory: its manifest's signature, every file's size and
/// SHA-256, that no file is missing or added, and custody.log's chain and
/// signatures.
///
/// Says in one line what is wrong (the file, expected against found; a missing or
/// extra file; a bad signature; a broken custody chain at line N) and exits 1;
/// exits 0 when everything matches. With --record, appends a `verified` entry to
/// custody.log (signed with this host's key).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory `brig snapshot -o` wrote.
    dir: PathBuf,
    /// The public key to check the signature with (hex, as `brig keygen` wrote it).
    #[arg(long, value_name = "PUB", default_value_os_t = Path::new(signing::KEY_DIR).join(signing::PUBLIC_FILE))]
    key: PathBuf,
    /// Append a `verified` entry to custody.log once everything checks out.
    #[arg(long)]
    record: bool,
    /// The key --record signs with.
    #[arg(long, value_name = "FILE", default_value_os_t = Path::new(signing::KEY_DIR).join(signing::SECRET_FILE))]
    sign_key: PathBuf,
    /// Who verifies (for --record).
    #[arg(long)]
    operator: Option<String>,
    /// Why (for --record).
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, Deserialize)]
struct Statement {
    subject: Vec<Subject>,
    predicate: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Subject {
    name: String,
    size: u64,
    digest: Digests,
}

#[derive(Debug, Deserialize)]
struct Digests {
    sha256: String,
}

/// Files in a snapshot directory that are not subjects of the manifest.
const NOT_SUBJECTS: [&str; 2] = ["manifest.json", "custody.log"];

pub fn run(args: &Args) -> Result<()> {
    let key = signing::load_public(&args.key)?;
    let text = std::fs::read(args.dir.join("manifest.json"))
        .with_context(|| format!("{}: no manifest.json (an incomplete or foreign directory)", args.dir.display()))?;
    let envelope: Envelope = serde_json::from_slice(&text).context("manifest.json is not a DSSE envelope")?;
    let payload = signing::open(&envelope, &key)?;
    let statement: Statement = serde_json::from_slice(&payload).context("manifest.json: the statement is not valid")?;
    for subject in &statement.subject {
        let plain = Path::new(&subject.name).components().count() == 1 && !subject.name.starts_with('.');
        if !plain {
            bail!("manifest.json names {:?}, which is not a plain file name", subject.name);
        }
        let path = args.dir.join(&subject.name);
        let (size, sha256) = hash(&path).with_context(|| format!("missing file {}", subject.name))?;
        if (size, sha256.as_str()) != (subject.size, subject.digest.sha256.as_str()) {
            bail!(
                "{}: expected {} bytes with SHA-256 {}, found {} bytes with {}",
                subject.name,
                subject.size,
                subject.digest.sha256,
                size,
                sha256
            );
        }
    }
    for entry in std::fs::read_dir(&args.dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !NOT_SUBJECTS.contains(&name.as_str()) && !statement.subject.iter().any(|s| s.name == name) {
            bail!("extra file {name} (not in the manifest)");
        }
    }
    let entries = custody::verify(&args.dir, &key)?;
    if args.record {
        let sign_key = signing::load_secret(&args.sign_key)?;
        let event = custody::Event { action: "verified", operator: args.operator.as_deref(), reason: &args.reason };
        custody::append(&args.dir, &sign_key, &event)?;
    }
    let p = &statement.predicate;
    println!(
        "{}: {} files verified, signed by key {}, {} custody entries{}; {}/{} paused at {}, reason {:?}",
        args.dir.display(),
        statement.subject.len(),
        signing::key_id(&key),
        entries.len(),
        if args.record { " (+1 verified)" } else { "" },
        p["sandbox"]["namespace"].as_str().unwrap_or("?"),
        p["sandbox"]["id"].as_str().unwrap_or("?"),
        p["paused_at_utc"].as_str().unwrap_or("?"),
        p["reason"].as_str().unwrap_or("")
    );
    Ok(())
}

fn hash(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let size = std::io::copy(&mut file, &mut sha)?;
    Ok((size, hex(&sha.finalize())))
}
