//! The cluster at scale, simulated (see `dynacore_net::cluster::simulation`): prints the figures
//! `docs/scale.md` reports as a Markdown table.
//!
//! ```text
//! cargo run --release -p dynacore-net --example scale_sim              # 1,000 nodes (minutes)
//! cargo run --release -p dynacore-net --example scale_sim -- --short   # what CI runs
//! cargo run --release -p dynacore-net --example scale_sim -- --nodes 300 --ring-nodes 64 --seed 7
//! ```

use dynacore_net::cluster::simulation::{run, SimOptions};

fn main() {
    let mut opts = SimOptions::full();
    opts.verbose = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> usize {
            match args.next().map(|v| v.parse::<usize>()) {
                Some(Ok(v)) if v > 0 => v,
                _ => {
                    eprintln!("{what} takes a positive number");
                    std::process::exit(2);
                }
            }
        };
        match arg.as_str() {
            "--short" => {
                opts = SimOptions {
                    verbose: true,
                    ..SimOptions::short()
                }
            }
            "--nodes" => opts.nodes = number("--nodes"),
            "--ring-nodes" => opts.ring_nodes = number("--ring-nodes"),
            "--seed" => opts.seed = number("--seed") as u64,
            "--vnodes" => {
                opts.vnodes = u16::try_from(number("--vnodes")).unwrap_or(u16::MAX);
            }
            other => {
                eprintln!(
                    "unknown argument {other:?}; use --short, --nodes N, --ring-nodes N, \
                     --vnodes N, --seed S"
                );
                std::process::exit(2);
            }
        }
    }
    let started = std::time::Instant::now();
    let report = run(&opts);
    print!("{report}");
    eprintln!("(simulated in {:.1} s)", started.elapsed().as_secs_f64());
}
