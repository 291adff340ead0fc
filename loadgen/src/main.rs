//! `loadgen`: runs a YCSB workload against Dynacore and prints latency and throughput per
//! operation. So far the `native` driver (the Rust SDK, token- and shard-aware); see the
//! README's status table for what is still to come.
//!
//! ```sh
//! loadgen --target 127.0.0.1:7400 --workload a --records 100000 --load --run --duration 30s
//! loadgen --target 127.0.0.1:7400 --workload c --records 100000 --run --rate 20000 --json c.json
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dynacore_loadgen::recording::Latencies;
use dynacore_loadgen::run::{run, PhaseReport, RunConfig};
use dynacore_loadgen::workload::{Distribution, OpKind, Workload};
use dynacore_net::client::Quorum;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Dynacore's benchmark harness (YCSB workloads)"
)]
struct Args {
    /// Nodes to connect through, comma-separated (host:port of their binary protocol).
    #[arg(long, default_value = "127.0.0.1:7400")]
    target: String,
    /// How requests are sent: native (the Rust SDK).
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
    /// Requests in flight at once per thread in the closed loop (and in the load phase).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Client threads (one executor and SDK client each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin thread i to CPU i.
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
    json: Option<std::path::PathBuf>,
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
    if a.driver != "native" {
        return Err(format!(
            "--driver {}: this build has the native driver only",
            a.driver
        ));
    }
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
    if a.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be a positive number".into());
    }
    Ok(RunConfig {
        targets,
        workload: a.workload.parse()?,
        distribution,
        records: a.records,
        operations: a.operations,
        duration: duration("duration", &a.duration)?,
        value_size: a.value_size,
        key_prefix: a.key_prefix.clone(),
        connections: a.connections.max(1),
        threads: a.threads.max(1),
        pin: a.pin,
        rate: a.rate,
        w: quorum("w", &a.w)?,
        r: quorum("r", &a.r)?,
        load: a.load,
        run: a.run || !a.load,
        seed: a.seed,
        warmup: duration("warmup", &a.warmup)?,
        timeout: duration("timeout", &a.timeout)?,
    })
}

fn name(op: OpKind) -> &'static str {
    match op {
        OpKind::Read => "read",
        OpKind::Update => "update",
        OpKind::Insert => "insert",
        OpKind::Scan => "scan",
        OpKind::ReadModifyWrite => "read-modify-write",
    }
}

fn us(l: &Latencies, q: f64) -> u128 {
    l.quantile(q).as_micros()
}

fn print_phase(title: &str, p: &PhaseReport) {
    println!("{title} ({:.1} s):", p.elapsed.as_secs_f64());
    println!(
        "  {:<18} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}  errors",
        "operation", "count", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    for (op, l) in &p.ops {
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        let errors: Vec<String> = l.errors().iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!(
            "  {:<18} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>9}  {}",
            name(*op),
            l.count(),
            l.count() as f64 / secs,
            us(l, 0.5),
            us(l, 0.9),
            us(l, 0.99),
            us(l, 0.999),
            l.histogram().max(),
            if errors.is_empty() {
                "-".to_owned()
            } else {
                errors.join(" ")
            }
        );
    }
    if p.not_found > 0 {
        println!("  reads of absent keys: {}", p.not_found);
    }
}

fn phase_json(p: &PhaseReport) -> serde_json::Value {
    let ops: serde_json::Map<String, serde_json::Value> = p
        .ops
        .iter()
        .map(|(op, l)| {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            (
                name(*op).to_owned(),
                serde_json::json!({
                    "count": l.count(),
                    "ops_per_s": l.count() as f64 / secs,
                    "p50_us": us(l, 0.5),
                    "p90_us": us(l, 0.9),
                    "p99_us": us(l, 0.99),
                    "p999_us": us(l, 0.999),
                    "max_us": l.histogram().max(),
                    "errors": l.errors(),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "elapsed_s": p.elapsed.as_secs_f64(),
        "not_found": p.not_found,
        "skipped": p.skipped,
        "operations": ops,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if config.run && config.workload == Workload::E {
        eprintln!(
            "loadgen: workload E's scans (95 %) are skipped: the native driver cannot scan; its inserts run"
        );
    }
    let (load, ran) = match run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = match config.rate {
        Some(r) => format!("open loop at {r} ops/s (latency from each request's due time)"),
        None => format!(
            "closed loop, {} in flight per thread (latency from each send)",
            config.connections
        ),
    };
    println!(
        "workload {:?}, {} records, {} B values, {} thread(s), {mode}",
        config.workload, config.records, config.value_size, config.threads
    );
    if let Some(l) = &load {
        print_phase("load", l);
    }
    if let Some(r) = &ran {
        print_phase("run", r);
        if r.skipped > 0 {
            println!("  scans skipped: {}", r.skipped);
        }
    }
    if let Some(path) = &args.json {
        let out = serde_json::json!({
            "config": {
                "targets": config.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "driver": args.driver,
                "workload": format!("{:?}", config.workload),
                "records": config.records,
                "operations": config.operations,
                "duration_s": config.duration.as_secs_f64(),
                "value_size": config.value_size,
                "connections": config.connections,
                "threads": config.threads,
                "rate": config.rate,
                "w": args.w,
                "r": args.r,
                "seed": config.seed,
                "warmup_s": config.warmup.as_secs_f64(),
            },
            "load": load.as_ref().map(phase_json),
            "run": ran.as_ref().map(phase_json),
        });
        if let Err(e) = std::fs::write(path, out.to_string()) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
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
}
