//! `brig copy`: a snapshot directory copied whole, each file checked against the
//! signed manifest as it is copied, and the copy recorded in both custody logs.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::custody;
use crate::signing;
use crate::snapshot::Evidence;
use crate::verify;

/// Copy a snapshot directory to a new one, checking as it goes.
///
/// SRC must verify (signature, custody chain, no file missing or added). Every
/// file is hashed while it is copied and compared with the manifest; manifest.json
/// and custody.log are copied as they are, and a signed `copied` entry (from, to,
/// who, why) is appended to the custody log of both. DEST is made 0700 with 0600
/// files and keeps an INCOMPLETE marker unless all of it succeeded.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot directory to copy.
    src: PathBuf,
    /// Where to: a new or empty directory.
    dest: PathBuf,
    /// Who copies it.
    #[arg(long)]
    operator: Option<String>,
    /// Why (recorded in both custody logs).
    #[arg(long, default_value = "")]
    reason: String,
    /// The public key SRC's manifest must be signed with.
    #[arg(long, value_name = "PUB", default_value_os_t = Path::new(signing::KEY_DIR).join(signing::PUBLIC_FILE))]
    key: PathBuf,
    /// The key the custody entries are signed with.
    #[arg(long, value_name = "FILE", default_value_os_t = Path::new(signing::KEY_DIR).join(signing::SECRET_FILE))]
    sign_key: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let key = signing::load_public(&args.key)?;
    let sign_key = signing::load_secret(&args.sign_key)?;
    let (statement, _) = verify::check_signed(&args.src, &key)?;
    let (src, dest) = (absolute(&args.src)?, absolute(&args.dest)?);
    let mut evidence = Evidence::create(&dest)?;
    let event = custody::Event {
        action: "copied",
        operator: args.operator.as_deref(),
        reason: &args.reason,
        copy: Some((&src, &dest)),
    };
    let copied = (|| {
        for name in statement.subject_names() {
            let from = File::open(src.join(name)).with_context(|| format!("missing file {name}"))?;
            let subject = evidence.stream(name, from)?;
            statement.check(name, subject.size, &subject.digest.sha256)?;
        }
        for name in ["manifest.json", custody::FILE] {
            let from = File::open(src.join(name)).with_context(|| format!("opening {}", src.join(name).display()))?;
            evidence.copy_unlisted(name, from)?;
        }
        custody::append(&dest, &sign_key, &event).context("recording the copy in the copy's custody.log")?;
        evidence.complete()
    })();
    if let Err(e) = &copied {
        Evidence::mark_failed(&dest, e);
        return copied;
    }
    let source_note = match custody::append(&src, &sign_key, &event) {
        Ok(()) => "recorded in both custody logs".to_owned(),
        Err(e) => format!("recorded in the copy's custody log only: the source's could not be written ({e:#})"),
    };
    println!(
        "{} copied to {}: {} files checked against the signed manifest; {source_note}",
        src.display(),
        dest.display(),
        statement.subject_names().count()
    );
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
