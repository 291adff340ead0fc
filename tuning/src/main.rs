//! `dynacore-tuning`: hardware tuning experiments. Each subcommand answers one question about
//! this machine (the disk, the WAL, the executor, the engine, the network), writes its
//! measurements as JSON, a chart (SVG) and a Markdown section, and says which Dynacore setting
//! its result bears on.
//!
//! ```text
//! cargo run --release -p dynacore-tuning -- all --quick     # every experiment, < 5 minutes
//! cargo run --release -p dynacore-tuning -- all             # the full run
//! cargo run --release -p dynacore-tuning -- device          # one experiment
//! ```
//! Results go to `tuning/results/` (`--out`); scratch files to `target/tuning-scratch`
//! (`--scratch`, which must be on a disk: tmpfs refuses O_DIRECT).

mod device;
mod engine;
mod executor;
mod network;
mod report;
mod wal;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use report::Scale;

/// The experiments, in the order `all` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Experiment {
    /// The disk through io_uring: queue depth, block size, sync method, registered buffers,
    /// SQPOLL, preallocated space.
    Device,
    /// The WAL: group-commit window and segment size against durable-write throughput and p99.
    Wal,
    /// The executor: spin before park, pinning, one against two executors.
    Executor,
    /// The engine: memtable size and Bloom bits per key against write and read amplification.
    Engine,
    /// The network: the loopback round-trip floor against frames per syscall.
    Network,
    /// Every experiment above.
    All,
}

#[derive(Parser, Debug)]
#[command(
    name = "dynacore-tuning",
    version,
    about = "Dynacore's hardware tuning experiments"
)]
struct Cli {
    /// Which experiment.
    #[arg(value_enum)]
    experiment: Experiment,
    /// Fewer points and shorter runs (`all --quick` takes under 5 minutes).
    #[arg(long)]
    quick: bool,
    /// Where the JSON, charts and Markdown sections go.
    #[arg(long, default_value = "tuning/results")]
    out: PathBuf,
    /// A directory on the disk to measure (not tmpfs) for scratch files.
    #[arg(long, default_value = "target/tuning-scratch")]
    scratch: PathBuf,
}

fn run_one(e: Experiment, scale: Scale, scratch: &Path) -> Result<report::Report> {
    match e {
        Experiment::Device => device::run(scale, scratch),
        Experiment::Wal => wal::run(scale, scratch),
        Experiment::Executor => executor::run(scale),
        Experiment::Engine => engine::run(scale, scratch),
        Experiment::Network => network::run(scale),
        Experiment::All => unreachable!("`all` is expanded by the caller"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynacore-tuning: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let scale = Scale { quick: cli.quick };
    std::fs::create_dir_all(&cli.scratch)
        .with_context(|| format!("creating {}", cli.scratch.display()))?;
    let list: Vec<Experiment> = if cli.experiment == Experiment::All {
        vec![
            Experiment::Device,
            Experiment::Wal,
            Experiment::Executor,
            Experiment::Engine,
            Experiment::Network,
        ]
    } else {
        vec![cli.experiment]
    };
    let begin = Instant::now();
    let mut sections = String::new();
    for e in list {
        let t = Instant::now();
        let r = run_one(e, scale, &cli.scratch)?;
        r.write(&cli.out)?;
        sections.push_str(&r.markdown());
        println!(
            "== {} ({:.1} s): {}\n   finding: {}\n   setting: {}\n   wrote {}/{}.{{json,svg,md}}",
            r.name,
            t.elapsed().as_secs_f64(),
            r.question,
            r.finding,
            r.recommendation,
            cli.out.display(),
            r.name
        );
    }
    if cli.experiment == Experiment::All {
        let path = cli.out.join("sections.md");
        std::fs::write(&path, sections).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "all {} in {:.1} s; sections for tuning/README.md in {}",
            if cli.quick { "(quick)" } else { "(full)" },
            begin.elapsed().as_secs_f64(),
            path.display()
        );
    }
    Ok(())
}
