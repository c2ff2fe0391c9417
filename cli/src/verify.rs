//! `brig verify`: checks a snapshot directory against its signed manifest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::custody;
use crate::signing::{self, Envelope};
use ed25519_dalek::VerifyingKey;

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
pub struct Statement {
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

impl Statement {
    /// The names of the files it lists.
    pub fn subject_names(&self) -> impl Iterator<Item = &str> {
        self.subject.iter().map(|s| s.name.as_str())
    }
}

/// The statement in a manifest's signed `payload`, its subjects checked to be plain
/// file names (a signed manifest still never reaches outside its directory).
pub fn statement(payload: &[u8]) -> Result<Statement> {
    let statement: Statement = serde_json::from_slice(payload).context("manifest.json: the statement is not valid")?;
    for subject in &statement.subject {
        let plain = Path::new(&subject.name).components().count() == 1
            && !subject.name.starts_with('.')
            && !subject.name.contains('/');
        if !plain || NOT_SUBJECTS.contains(&subject.name.as_str()) {
            bail!("manifest.json names {:?}, which is not a plain file name it may list", subject.name);
        }
    }
    Ok(statement)
}

/// Files in a snapshot directory that are not subjects of the manifest.
const NOT_SUBJECTS: [&str; 2] = ["manifest.json", "custody.log"];

/// A snapshot directory whose manifest is signed by the key, that lists exactly the
/// files there are, and whose custody log holds: everything but the files' contents.
pub fn check_signed(dir: &Path, key: &VerifyingKey) -> Result<(Statement, Vec<custody::Entry>)> {
    if let Ok(why) = std::fs::read_to_string(dir.join(crate::snapshot::INCOMPLETE)) {
        bail!("{}: an incomplete capture ({}): nothing in it is signed", dir.display(), why.trim());
    }
    let text = std::fs::read(dir.join("manifest.json"))
        .with_context(|| format!("{}: no manifest.json (an incomplete or foreign directory)", dir.display()))?;
    let envelope: Envelope = serde_json::from_slice(&text).context("manifest.json is not a DSSE envelope")?;
    let payload = signing::open(&envelope, key)?;
    let statement = statement(&payload)?;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !NOT_SUBJECTS.contains(&name.as_str()) && !statement.subject.iter().any(|s| s.name == name) {
            bail!("extra file {name} (not in the manifest)");
        }
    }
    let entries = custody::verify(dir, key)?;
    Ok((statement, entries))
}

impl Statement {
    /// Whether `name`'s `size` and `sha256` are what the manifest says; the message
    /// names the file, what was expected and what was found.
    pub fn check(&self, name: &str, size: u64, sha256: &str) -> Result<()> {
        let subject =
            self.subject.iter().find(|s| s.name == name).with_context(|| format!("{name} is not in the manifest"))?;
        if (size, sha256) != (subject.size, subject.digest.sha256.as_str()) {
            bail!(
                "{name}: expected {} bytes with SHA-256 {}, found {size} bytes with {sha256}",
                subject.size,
                subject.digest.sha256,
            );
        }
        Ok(())
    }
}

pub fn run(args: &Args) -> Result<()> {
    let key = signing::load_public(&args.key)?;
    let (statement, entries) = check_signed(&args.dir, &key)?;
    for subject in &statement.subject {
        let (size, sha256) = signing::file_sha256(&args.dir.join(&subject.name))
            .with_context(|| format!("missing file {}", subject.name))?;
        statement.check(&subject.name, size, &sha256)?;
    }
    if args.record {
        let sign_key = signing::load_secret(&args.sign_key)?;
        let event =
            custody::Event { action: "verified", operator: args.operator.as_deref(), reason: &args.reason, copy: None };
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
