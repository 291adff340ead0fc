//! A tokio application using Dynacore: 1,000 concurrent tasks on a multi-thread runtime share
//! one client, each writing its own keys (`w=quorum`) and reading them back (`r=quorum`).
//!
//! ```sh
//! cargo run --release --bin dynacore -- serve            # in one terminal
//! cargo run --release -p dynacore-client --example tokio_app -- 127.0.0.1:7400
//! ```
//!
//! Prints how many values were read back as written, and exits 0 only if all were.

mod workload;

use std::net::SocketAddr;
use std::process::ExitCode;

use dynacore_client::Client;

const TASKS: usize = 1_000;
const KEYS_PER_TASK: usize = 10;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let seeds: Vec<SocketAddr> = match std::env::args()
        .skip(1)
        .map(|a| a.parse::<SocketAddr>().map_err(|e| format!("{a:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(seeds) if !seeds.is_empty() => seeds,
        Ok(_) => {
            eprintln!("usage: tokio_app HOST:PORT [HOST:PORT …]  (a node's binary port)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("tokio_app: not an address: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match Client::connect(&seeds).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokio_app: cannot connect: {e}");
            return ExitCode::from(2);
        }
    };
    // A tag of this run, so that a second run against the same node writes new values.
    let tag = format!(
        "tokio-app-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let outcome = match workload::write_and_read_back(&client, &tag, TASKS, KEYS_PER_TASK).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tokio_app: a task failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let total = TASKS * KEYS_PER_TASK;
    println!(
        "{} of {total} values read back as written ({TASKS} concurrent tasks, w=quorum, r=quorum)",
        outcome.matched
    );
    for (key, why) in outcome.failures.iter().take(10) {
        eprintln!("  {key}: {why}");
    }
    if outcome.matched == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
