//! Progress for long build steps: a command's output goes to a log file, and a
//! line like `[guest kernel] 41% (680/1650 steps), 1m05s` is printed every few
//! seconds. On failure the tail of the log is part of the error.

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a progress line is printed.
const INTERVAL: Duration = Duration::from_secs(10);

/// Lines of the log shown when a step fails.
const TAIL_LINES: usize = 30;

/// Runs `cmd`, sending stdout and stderr to `log`, and prints progress lines
/// labelled `label`. `expected_lines` (the output length of a typical run) turns
/// the line count into a percentage.
pub fn run_logged(label: &str, mut cmd: Command, log: &Path, expected_lines: usize) -> Result<()> {
    let mut log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let writer_err = writer.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    // `cmd` holds our copies of the pipe's write end: drop it so EOF arrives when the child exits.
    drop(cmd);

    let start = Instant::now();
    let mut last = Instant::now();
    let mut lines = 0usize;
    eprintln!("[{label}] started (log: {})", log.display());
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        log_file.write_all(&line)?;
        log_file.write_all(b"\n")?;
        lines += 1;
        if last.elapsed() >= INTERVAL {
            last = Instant::now();
            eprintln!("[{label}] {}, {}", percent(lines, expected_lines), elapsed(start));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{label} failed ({status}); last lines of {}:\n{}", log.display(), tail(log, TAIL_LINES));
    }
    eprintln!("[{label}] done in {}", elapsed(start));
    Ok(())
}

fn percent(lines: usize, expected: usize) -> String {
    if expected == 0 {
        return format!("{lines} lines");
    }
    let pct = (lines * 100 / expected).min(99);
    format!("{pct}% ({lines}/{expected} steps)")
}

/// `1m05s` style.
pub fn elapsed(start: Instant) -> String {
    let secs = start.elapsed().as_secs();
    format!("{}m{:02}s", secs / 60, secs % 60)
}

/// The last `n` lines of a text file, or a note that it can't be read.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_never_claims_done_before_the_end() {
        assert_eq!(percent(5000, 1650), "99% (5000/1650 steps)");
        assert_eq!(percent(825, 1650), "50% (825/1650 steps)");
        assert_eq!(percent(7, 0), "7 lines");
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn run_logged_keeps_output_and_reports_failure_with_tail() {
        let dir = std::env::temp_dir().join(format!("brig-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("ok.log");
        run_logged("ok", sh("echo one; echo two >&2"), &log, 2).expect("a succeeding command");
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("one") && text.contains("two"), "{text}");

        let log = dir.join("fail.log");
        let err = run_logged("fail", sh("echo boom; exit 3"), &log, 0).expect_err("a failing command");
        let msg = format!("{err:#}");
        assert!(msg.contains("boom") && msg.contains("exit status: 3"), "{msg}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
