//! Running libtest binaries and reading their verdicts.
//!
//! A run passes only if every binary exits 0, reports at least one passed test,
//! and reports nothing ignored: an ignored test is a skipped test, and a skip in
//! CI is a failure.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// One `test result:` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub filtered: u32,
}

impl Summary {
    /// Parses `test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; …`.
    pub fn parse(line: &str) -> Option<Summary> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let mut summary = Summary::default();
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else { continue };
            let (count, kind) = match kind {
                "out" => (words.next(), "filtered"),
                _ => (Some(count), kind),
            };
            let Some(count) = count.and_then(|c| c.parse().ok()) else { continue };
            match kind {
                "passed" => summary.passed = count,
                "failed" => summary.failed = count,
                "ignored" => summary.ignored = count,
                "filtered" => summary.filtered = count,
                _ => {}
            }
        }
        Some(summary)
    }

    pub fn add(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.filtered += other.filtered;
    }
}

/// Reads a command's combined output line by line, echoing it, and totals its summaries.
pub fn run_and_summarize(mut cmd: Command) -> Result<(bool, Summary)> {
    let (reader, writer) = std::io::pipe()?;
    let writer_err = writer.try_clone()?;
    let mut child = cmd
        .stdout(writer)
        .stderr(writer_err)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    drop(cmd);
    let mut total = Summary::default();
    for line in BufReader::new(reader).lines() {
        let line = line?;
        // `println!`, not a raw stdout handle: under libtest it is captured.
        println!("{line}");
        if let Some(summary) = Summary::parse(&line) {
            total.add(summary);
        }
    }
    let status = child.wait()?;
    Ok((status.success(), total))
}

/// Runs test binaries one after another (inside kvm-host) and fails on any failure,
/// ignored test or binary without tests.
pub fn run_binaries(binaries: &[String], threads: u32, filter: Option<&str>) -> Result<()> {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for binary in binaries {
        let name = Path::new(binary).file_name().map_or(binary.clone(), |n| n.to_string_lossy().into_owned());
        let mut cmd = Command::new(binary);
        cmd.args(["--include-ignored", "--color", "never", "--test-threads", &threads.to_string()]);
        if let Some(filter) = filter {
            cmd.arg(filter);
        }
        let start = Instant::now();
        let (ok, summary) = run_and_summarize(cmd)?;
        let secs = start.elapsed().as_secs_f64();
        if !ok || summary.failed > 0 {
            bad.push(format!("{name}: failed"));
        } else if summary.ignored > 0 {
            bad.push(format!("{name}: {} test(s) ignored (a skip counts as a failure)", summary.ignored));
        } else if summary.passed == 0 && filter.is_none() {
            bad.push(format!("{name}: ran no tests"));
        }
        rows.push(format!(
            "  {name:<40} {:>3} passed {:>3} failed {:>3} ignored {secs:>7.1}s",
            summary.passed, summary.failed, summary.ignored
        ));
    }
    println!("\nkvm-host test binaries:\n{}", rows.join("\n"));
    if !bad.is_empty() {
        bail!("{}", bad.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_libtest_summary() {
        let s = Summary::parse(
            "test result: ok. 12 passed; 1 failed; 3 ignored; 0 measured; 4 filtered out; finished in 0.33s",
        )
        .expect("a summary line");
        assert_eq!(s, Summary { passed: 12, failed: 1, ignored: 3, filtered: 4 });
    }

    #[test]
    fn other_lines_are_not_summaries() {
        assert_eq!(Summary::parse("test foo ... ok"), None);
        assert_eq!(Summary::parse("running 2 tests"), None);
    }

    #[test]
    fn an_ignored_test_fails_the_run() {
        let dir = std::env::temp_dir().join(format!("brig-libtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fake = dir.join("fake-test");
        // Written by a child process, so no descriptor of ours can keep it busy at exec.
        let script = "#!/bin/sh\necho 'test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out'\n";
        let status = Command::new("sh")
            .args(["-c", "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"", "sh", script])
            .arg(&fake)
            .status()
            .expect("sh");
        assert!(status.success());
        let err = run_binaries(&[fake.to_string_lossy().into_owned()], 1, None).expect_err("ignored");
        assert!(format!("{err}").contains("1 test(s) ignored"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
