//! `loadgen`: runs a YCSB workload against Dynacore (its binary protocol through the SDK, or
//! its HTTP API) or any Redis-protocol server, and reports latency and throughput per
//! operation: a table, `--json`, `--hdr` percentile distributions and a `--plot`.
//!
//! ```sh
//! loadgen --target 127.0.0.1:7400 --workload a --records 100000 --load --run --duration 30s
//! loadgen --target 127.0.0.1:7400 --workload c --run --rate 20000 --json c.json --plot c.svg
//! loadgen --driver resp --target 127.0.0.1:6379 --workload a --load --run --json redis.json
//! loadgen --compare c.json redis.json
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dynacore_client::Quorum;
use dynacore_loadgen::cpu::{CpuSample, CpuUse};
use dynacore_loadgen::driver::DriverKind;
use dynacore_loadgen::recording::Latencies;
use dynacore_loadgen::report::{compare, hgrm, op_name, phase_json, phase_table};
use dynacore_loadgen::run::{run, Live, Phase, RunConfig};
use dynacore_loadgen::workload::{Distribution, Workload};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Dynacore's benchmark harness (YCSB workloads)"
)]
struct Args {
    /// Where to send requests, comma-separated ip:port: Dynacore's binary protocol (native),
    /// its HTTP API (http, e.g. 127.0.0.1:8400) or Redis-protocol servers (resp, e.g.
    /// 127.0.0.1:6379).
    #[arg(long, default_value = "127.0.0.1:7400")]
    target: String,
    /// How requests are sent: native (Dynacore's Rust SDK, token- and shard-aware), http
    /// (Dynacore's HTTP API) or resp (GET/SET of the Redis protocol).
    #[arg(long, default_value = "native")]
    driver: String,
    /// YCSB workload: a, b, c, d, e or f.
    #[arg(long, default_value = "a")]
    workload: String,
    /// Key distribution instead of the workload's: uniform, zipfian or latest.
    #[arg(long)]
    distribution: Option<String>,
    /// Records loaded and read over.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Operations in the run phase (instead of --duration).
    #[arg(long)]
    operations: Option<u64>,
    /// Length of the run phase: 30s, 2m, 500ms.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Prefix of every key.
    #[arg(long, default_value = "user")]
    key_prefix: String,
    /// Connections per thread (native: requests in flight on the thread's SDK client).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests written at once on a connection before their answers are read.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Client threads (one executor and set of connections each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin thread i to the i-th CPU this process may use (core_affinity).
    #[arg(long)]
    pin: bool,
    /// Open loop at this many operations a second in total (latency from each request's due
    /// time); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Write quorum: 1..RF, quorum, all, or default (the server's: 2 with RF 3).
    #[arg(long, default_value = "default")]
    w: String,
    /// Read quorum: 1..RF, quorum, all, or default (the server's: 2 with RF 3).
    #[arg(long, default_value = "default")]
    r: String,
    /// Insert the records first.
    #[arg(long)]
    load: bool,
    /// Run the workload (the default when neither --load nor --run is given).
    #[arg(long)]
    run: bool,
    /// Seed of the operation sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time at the start of the run phase not counted: 5s.
    #[arg(long, default_value = "0s")]
    warmup: String,
    /// Deadline of each request.
    #[arg(long, default_value = "5s")]
    timeout: String,
    /// Write every figure and the configuration as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the run phase's percentile distribution (HdrHistogram .hgrm text, ms) to this
    /// file, all operations together, and each operation's beside it (FILE.read.hgrm, …).
    #[arg(long)]
    hdr: Option<PathBuf>,
    /// Draw the run phase's latency percentiles over time and its percentile spectrum to
    /// this .svg or .png file (may be given more than once).
    #[arg(long)]
    plot: Vec<PathBuf>,
    /// Print two --json reports side by side with ratios (B/A), and run nothing.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    compare: Option<Vec<PathBuf>>,
    /// Process ids of the server(s), comma-separated: their CPU use over the run phase is
    /// reported beside loadgen's own (which is always reported).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    quiet: bool,
}

fn duration(name: &str, s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--{name} must look like 10s, 500ms or 2m, not {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("--{name}: unknown unit {unit:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("--{name}: {e}"))
}

fn quorum(name: &str, s: &str) -> Result<Quorum, String> {
    match s {
        "default" => Ok(Quorum::Default),
        "quorum" => Ok(Quorum::Quorum),
        "all" => Ok(Quorum::All),
        n => n
            .parse::<u8>()
            .ok()
            .filter(|&n| n > 0)
            .map(Quorum::Count)
            .ok_or_else(|| format!("--{name} must be 1..255, quorum, all or default, not {s:?}")),
    }
}

fn config(a: &Args) -> Result<RunConfig, String> {
    let driver: DriverKind = a.driver.parse()?;
    let targets = a
        .target
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("--target must be host:port[,host:port…], not {t:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let distribution = a
        .distribution
        .as_deref()
        .map(|d| match d {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            "latest" => Ok(Distribution::Latest),
            other => Err(format!(
                "--distribution must be uniform, zipfian or latest, not {other:?}"
            )),
        })
        .transpose()?;
    if a.records == 0 {
        return Err("--records must be at least 1".into());
    }
    if a.rate
        .is_some_and(|r| !(r.is_finite() && (0.01..=10_000_000.0).contains(&r)))
    {
        return Err("--rate must be 0.01 to 10000000 operations a second".into());
    }
    if a.operations.is_some() && a.warmup != "0s" {
        return Err(
            "--warmup applies to --duration runs; with --operations every one counts".into(),
        );
    }
    let (run_for, warmup, timeout) = (
        duration("duration", &a.duration)?,
        duration("warmup", &a.warmup)?,
        duration("timeout", &a.timeout)?,
    );
    let week = Duration::from_secs(7 * 24 * 3600);
    if run_for > week || warmup > week || timeout > week {
        return Err("--duration, --warmup and --timeout must each be under a week".into());
    }
    if timeout.is_zero() {
        return Err("--timeout must be more than 0".into());
    }
    if driver == DriverKind::Resp && (a.w != "default" || a.r != "default") {
        return Err("--w and --r are Dynacore's quorums: the resp driver has none".into());
    }
    if a.pipeline == 0 || a.pipeline > 4096 {
        return Err("--pipeline must be 1 to 4096".into());
    }
    Ok(RunConfig {
        targets,
        driver,
        workload: a.workload.parse()?,
        distribution,
        records: a.records,
        operations: a.operations,
        duration: run_for,
        value_size: a.value_size,
        key_prefix: a.key_prefix.clone(),
        connections: a.connections.max(1),
        pipeline: a.pipeline,
        threads: a.threads.max(1),
        pin: a.pin,
        rate: a.rate,
        w: quorum("w", &a.w)?,
        r: quorum("r", &a.r)?,
        load: a.load,
        run: a.run || !a.load,
        seed: a.seed,
        warmup,
        timeout,
    })
}

/// The progress bar's line: phase, completions, the last interval's rate and p99.
fn progress(
    live: &Live,
    bar: &ProgressBar,
    config: &RunConfig,
    last: &mut (u64, std::time::Instant),
) {
    let (done, errors) = live.done();
    let now = std::time::Instant::now();
    let interval = live.take_interval();
    if done < last.0 {
        *last = (0, last.1);
    }
    let rate = (done - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-3);
    *last = (done, now);
    let p99 = if interval.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.2} ms", interval.value_at_quantile(0.99) as f64 / 1000.0)
    };
    match live.phase() {
        Phase::Starting => {}
        Phase::Load => {
            bar.set_length(config.records);
            bar.set_position(done);
            bar.set_prefix("load");
        }
        Phase::Run => {
            bar.set_prefix("run ");
            match config.operations {
                Some(n) => {
                    bar.set_length(n);
                    bar.set_position(done);
                }
                None => {
                    let total = config.warmup + config.duration;
                    let elapsed = live.run_started().map_or(Duration::ZERO, |s| s.elapsed());
                    bar.set_length(total.as_millis() as u64);
                    bar.set_position(elapsed.min(total).as_millis() as u64);
                }
            }
        }
    }
    bar.set_message(format!(
        "{done} done, {rate:.0} ops/s, p99 {p99}, {errors} errors"
    ));
}

fn write_hdr(
    path: &Path,
    run: &dynacore_loadgen::run::PhaseReport,
) -> std::io::Result<Vec<PathBuf>> {
    let mut all = Latencies::new();
    for l in run.ops.values() {
        all.merge(l);
    }
    std::fs::write(path, hgrm(all.histogram()))?;
    let mut written = vec![path.to_path_buf()];
    for (op, l) in &run.ops {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.hgrm", op_name(*op)));
        let p = PathBuf::from(name);
        std::fs::write(&p, hgrm(l.histogram()))?;
        written.push(p);
    }
    Ok(written)
}

fn compare_files(paths: &[PathBuf]) -> ExitCode {
    let read = |p: &PathBuf| -> Result<serde_json::Value, String> {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", p.display()))
    };
    let (a, b) = match (read(&paths[0]), read(&paths[1])) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    match compare(
        &a,
        &b,
        &paths[0].display().to_string(),
        &paths[1].display().to_string(),
    ) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(paths) = &args.compare {
        return compare_files(paths);
    }
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if config.run && config.workload == Workload::E {
        eprintln!(
            "loadgen: workload E's scans (95 %) are skipped: the {} driver cannot scan; its inserts run",
            config.driver.name()
        );
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last = (0, std::time::Instant::now());
    let mut cpu_start = None;
    // When the run phase started, on the wall clock (so that its per-second timeline can be
    // lined up with what the server did: flushes, compactions, moves).
    let mut run_started_unix_ms: Option<u128> = None;
    let outcome = run(&config, &mut |live| {
        if let (None, Some(at)) = (cpu_start.as_ref(), live.run_started()) {
            cpu_start = Some(CpuSample::now(&args.server_pid));
            run_started_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|now| now.saturating_sub(at.elapsed()).as_millis());
        }
        progress(live, &bar, &config, &mut last);
    });
    let cpu = cpu_start.map(|s| CpuUse::between(&s, &CpuSample::now(&args.server_pid)));
    bar.finish_and_clear();
    let (load, ran) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = match config.rate {
        Some(r) => format!("open loop at {r} ops/s (latency from each request's due time)"),
        None => format!(
            "closed loop, {} connections per thread (latency from each send)",
            config.connections
        ),
    };
    println!(
        "{} driver, workload {:?}, {} records, {} B values, {} thread(s), pipeline {}, {mode}",
        config.driver.name(),
        config.workload,
        config.records,
        config.value_size,
        config.threads,
        config.pipeline
    );
    if let Some(l) = &load {
        print!("{}", phase_table("load", l));
    }
    if let Some(r) = &ran {
        print!("{}", phase_table("run", r));
    }
    if let Some(c) = &cpu {
        println!("{}", c.line());
    }
    let mut failed = false;
    if let Some(path) = &args.json {
        let out = serde_json::json!({
            "config": {
                "targets": config.targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                "driver": config.driver.name(),
                "workload": format!("{:?}", config.workload),
                "distribution": config.distribution.map(|d| format!("{d:?}")),
                "records": config.records,
                "operations": config.operations,
                "duration_s": config.duration.as_secs_f64(),
                "value_size": config.value_size,
                "key_prefix": config.key_prefix,
                "connections": config.connections,
                "pipeline": config.pipeline,
                "threads": config.threads,
                "pin": config.pin,
                "rate": config.rate,
                "w": args.w,
                "r": args.r,
                "seed": config.seed,
                "warmup_s": config.warmup.as_secs_f64(),
                "timeout_s": config.timeout.as_secs_f64(),
            },
            "load": load.as_ref().map(phase_json),
            "run": ran.as_ref().map(phase_json),
            "cpu": cpu.as_ref().map(CpuUse::json),
            "run_started_unix_ms": run_started_unix_ms,
        });
        if let Err(e) = std::fs::write(path, format!("{out:#}\n")) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            failed = true;
        }
    }
    if let (Some(path), Some(r)) = (&args.hdr, &ran) {
        match write_hdr(path, r) {
            Ok(files) => println!(
                "percentile distributions: {}",
                files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => {
                eprintln!("loadgen: cannot write {}: {e}", path.display());
                failed = true;
            }
        }
    }
    for (path, r) in args.plot.iter().filter_map(|p| Some((p, ran.as_ref()?))) {
        let title = format!(
            "{} driver, workload {:?}, {}",
            config.driver.name(),
            config.workload,
            match config.rate {
                Some(rate) => format!("open loop at {rate} ops/s"),
                None => format!(
                    "closed loop, {} connections",
                    config.connections * config.threads
                ),
            }
        );
        match dynacore_loadgen::plot::plot(path, &title, r) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => {
                eprintln!("loadgen: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_quorums_parse_or_say_why_not() {
        assert_eq!(duration("d", "10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("d", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("d", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("d", "3"), Ok(Duration::from_secs(3)));
        assert!(duration("d", "x").is_err());
        assert!(duration("d", "5h").is_err());
        assert_eq!(quorum("w", "all"), Ok(Quorum::All));
        assert_eq!(quorum("w", "2"), Ok(Quorum::Count(2)));
        assert!(quorum("w", "0").is_err());
    }

    #[test]
    fn flags_that_cannot_run_are_refused_with_a_reason() {
        let check = |flags: &[&str]| {
            let args =
                Args::try_parse_from(std::iter::once("loadgen").chain(flags.iter().copied()))
                    .expect("flags parse");
            config(&args)
        };
        assert!(check(&["--rate", "1000", "--threads", "2"]).is_ok());
        for bad in [
            &["--rate", "0"][..],
            &["--rate", "1e-30"],
            &["--rate", "5e9"],
            &["--rate", "NaN"],
            &["--timeout", "0s"],
            &["--duration", "9999999999999999999s"],
            &["--operations", "10", "--warmup", "2s"],
            &["--pipeline", "0"],
            &["--driver", "resp", "--w", "2"],
            &["--driver", "grpc"],
            &["--target", "localhost"],
            &["--records", "0"],
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
