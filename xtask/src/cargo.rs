//! Driving cargo from xtask.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::workspace_root());
    cmd
}

/// Runs cargo with `args`, failing with `what` if it fails.
pub fn run(what: &str, args: &[&str]) -> Result<()> {
    let status = cargo().args(args).status().with_context(|| format!("starting cargo for {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds with `--message-format=json` and returns the executables cargo reports,
/// keeping only those `keep(target_kind, profile_is_test)` accepts.
pub fn build_executables(args: &[&str], keep: impl Fn(&str, bool) -> bool) -> Result<Vec<PathBuf>> {
    let out = cargo()
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else { continue };
        let kind = msg["target"]["kind"][0].as_str().unwrap_or_default();
        let test = msg["profile"]["test"].as_bool().unwrap_or(false);
        if keep(kind, test) {
            found.push(PathBuf::from(exe));
        }
    }
    Ok(found)
}
