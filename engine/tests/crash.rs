//! Crash test: a writer process is killed with SIGKILL at random moments, again and again, on
//! the same directory; after each kill, every write it acknowledged must be there (or a later
//! write to the same key that it tried). Writes overwrite keys and put large values in the
//! value log, so compactions and value-log garbage collection run while it is killed.
//!
//! Uses the `crash_check` example, which `cargo test` builds alongside the tests. Iterations
//! default to 12; `DYNACORE_CRASH_ITERATIONS` raises them for a longer run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn crash_check_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("examples").join("crash_check");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        bin.display()
    );
    bin
}

/// The `acked` lines among a writer's output (the others are `try` lines).
fn acks(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.starts_with("acked ")).count()
}

#[test]
fn acknowledged_writes_survive_repeated_sigkill() {
    let iterations: u64 = std::env::var("DYNACORE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("DYNACORE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash test seed {seed} (set DYNACORE_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bin = crash_check_binary();
    let dir = common::temp_dir();
    let data = dir.path().join("shard");
    let acked_path = dir.path().join("acked.txt");
    let mut acked_file = std::fs::File::create(&acked_path).expect("acked file");
    let mut total_acked = 0usize;

    for i in 0..iterations {
        let mut child = Command::new(&bin)
            .args(["write", "--dir"])
            .arg(&data)
            .args(["--seed", &(seed.wrapping_add(i)).to_string()])
            .args(["--memtable-bytes", "262144", "--segment-bytes", "131072"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill either after a random number of acks or after a random delay (which may land in
        // recovery, in a flush, or in a segment rotation).
        let kill_after_acks = rng.gen_range(1..600usize);
        let kill_after = Duration::from_millis(rng.gen_range(0..400));
        let by_time = rng.gen_bool(0.3);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let mut lines = Vec::new();
        loop {
            if by_time && started.elapsed() >= kill_after {
                break;
            }
            if !by_time && acks(&lines) >= kill_after_acks {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {i}: writer made no progress in 60 s"
            );
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "iteration {i}: writer exited on its own: {:?}",
                        child.wait()
                    )
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // Lines already in the pipe were acknowledged too.
        reader.join().expect("reader");
        lines.extend(rx.try_iter());
        for line in &lines {
            writeln!(acked_file, "{line}").expect("record ack");
        }
        acked_file.flush().expect("flush acks");
        total_acked += acks(&lines);

        let out = Command::new(&bin)
            .args(["verify", "--dir"])
            .arg(&data)
            .arg("--acked")
            .arg(&acked_path)
            .output()
            .expect("run verify");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "iteration {i} (seed {seed}): verify failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("verified {total_acked} acked writes")),
            "iteration {i}: {stdout}"
        );
    }
    assert!(total_acked > 0, "no write was ever acknowledged");
}
