//! Benchmark: the harness's ring-0 guest (10⁸ instructions), timed on whatever
//! `/dev/kvm` this process sees. `cargo xtask bench ring0` runs it on this machine's
//! own KVM and inside the nested test host, and prints both.

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BRIG_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let where_ = std::env::var("BRIG_KVM_HOST").unwrap_or_else(|_| "this machine's /dev/kvm".into());
    let mut times = Vec::new();
    for run in 0..runs {
        let report = brig_tests::ring0::run_checked(run as u64)?;
        times.push(report.elapsed.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "ring0_loop [{where_}]: {} instructions, median {:.3}s, min {:.3}s, max {:.3}s over {runs} runs",
        brig_tests::ring0::ITERATIONS * 3,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}
