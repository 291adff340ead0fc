//! Crash-consistency checker for one shard.
//!
//! ```text
//! crash_check write  [--dir D] [--seed S] [--count N] [--writers 16] [--blob-threshold 4096]
//!                    [--overwrite-percent 30]
//! crash_check verify [--dir D] --acked FILE
//! ```
//! `write` opens the shard with `Sync` durability and writes random keys from many concurrent
//! tasks until killed (or until N writes were acknowledged): new keys, and overwrites of keys the
//! same task wrote before (so that compaction drops versions and the value log collects
//! garbage). Values over the blob threshold go to the value log. Before each write it prints
//! `try <key-hex> <value-crc32c-hex>`, after its acknowledgement `acked <key-hex> <crc>`, and
//! flushes stdout, so whatever killed it, every `acked` line is a write the shard promised to
//! keep.
//!
//! `verify` reopens the shard and checks every key with an acknowledged write: it must hold the
//! value of its last acknowledged write, or of a write tried after it (which may or may not have
//! landed before the kill). It prints `verified <N> acked writes (<K> keys)` and exits 0, or
//! prints the first violations and exits 1 (2 for operational errors). A line cut short by the
//! kill is ignored.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dynacore_engine::{Durability, Shard, ShardId, ShardOptions};
use dynacore_runtime as runtime;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Write acknowledged data until killed, then verify none of it was lost")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write random keys (new ones and overwrites) with Sync durability, printing `try` and `acked` lines.
    Write {
        /// The shard's data directory.
        #[arg(long, default_value = "./dynacore-data")]
        dir: PathBuf,
        /// Seed for keys and values; each run on a directory needs its own (default: the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Stop after this many acknowledged writes (default: run until killed).
        #[arg(long)]
        count: Option<u64>,
        /// Concurrent writer tasks.
        #[arg(long, default_value_t = 16)]
        writers: u16,
        /// Memtable size; small so that flushes happen while writing.
        #[arg(long, default_value_t = 1 << 20)]
        memtable_bytes: usize,
        /// WAL segment size; small so that segments rotate and get deleted while writing.
        #[arg(long, default_value_t = 1 << 20)]
        segment_bytes: u64,
        /// Values longer than this go to the value log (about one value in eight is).
        #[arg(long, default_value_t = 4096)]
        blob_threshold: usize,
        /// Percentage of writes that overwrite a key the same task wrote before.
        #[arg(long, default_value_t = 30)]
        overwrite_percent: u32,
    },
    /// Reopen the shard and check every acknowledged write.
    Verify {
        /// The shard's data directory.
        #[arg(long, default_value = "./dynacore-data")]
        dir: PathBuf,
        /// The output of one or more `write` runs.
        #[arg(long)]
        acked: PathBuf,
    },
}

fn options(
    dir: PathBuf,
    memtable_bytes: usize,
    segment_bytes: u64,
    blob_threshold: usize,
) -> ShardOptions {
    let mut o = ShardOptions::new(dir, ShardId(0));
    o.durability = Durability::Sync;
    o.memtable_bytes_max = memtable_bytes;
    o.wal_segment_bytes = segment_bytes;
    o.block_cache_bytes = 8 << 20;
    o.blob_threshold_bytes = Some(blob_threshold);
    // Fewer than the files a run makes, so that handles are evicted and reopened.
    o.blob_open_files_max = 16;
    o
}

/// Writes one line to stdout and flushes it (one write: a kill cannot interleave lines).
fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).context("stdout")?;
    out.flush().context("stdout")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a `write` run does.
struct WritePlan {
    seed: u64,
    count: Option<u64>,
    writers: u16,
    overwrite_percent: u32,
}

async fn write(options: ShardOptions, plan: WritePlan) -> anyhow::Result<()> {
    let WritePlan {
        seed,
        count,
        writers,
        overwrite_percent,
    } = plan;
    let shard = Shard::open(options).await.context("open shard")?;
    let acked = Rc::new(std::cell::Cell::new(0u64));
    let mut tasks = Vec::new();
    for writer in 0..writers.max(1) {
        let shard = shard.clone();
        let acked = acked.clone();
        tasks.push(runtime::spawn_detached(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(writer) << 48));
            // Keys this task wrote (one task writes a key at a time, so its writes to one key
            // are ordered).
            let mut mine: Vec<Vec<u8>> = Vec::new();
            for n in 0u32.. {
                if count.is_some_and(|c| acked.get() >= c) {
                    return Ok(());
                }
                let key = if !mine.is_empty() && rng.gen_ratio(overwrite_percent.min(100), 100) {
                    mine[rng.gen_range(0..mine.len())].clone()
                } else {
                    // Unique by construction: seed, writer and counter, then random bytes.
                    let mut key = Vec::with_capacity(64);
                    key.extend_from_slice(&seed.to_be_bytes());
                    key.extend_from_slice(&writer.to_be_bytes());
                    key.extend_from_slice(&n.to_be_bytes());
                    let extra = rng.gen_range(0..40);
                    key.extend((0..extra).map(|_| rng.gen::<u8>()));
                    if mine.len() < 1024 {
                        mine.push(key.clone());
                    }
                    key
                };
                let len = if rng.gen_ratio(1, 8) {
                    rng.gen_range(4 << 10..64 << 10)
                } else {
                    rng.gen_range(0..2048)
                };
                let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let crc = crc32c::crc32c(&value);
                print_line(&format!("try {} {crc:08x}\n", hex(&key)))?;
                shard.put(&key, &value).await.context("put")?;
                acked.set(acked.get() + 1);
                print_line(&format!("acked {} {crc:08x}\n", hex(&key)))?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("writer task vanished")??;
    }
    shard.close().await.context("close shard")?;
    Ok(())
}

/// What a key may hold: its last acknowledged value, or one tried after it.
#[derive(Default)]
struct Allowed {
    acked: Option<u32>,
    tried_after: Option<u32>,
}

async fn verify(options: ShardOptions, acked: PathBuf) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(&acked).with_context(|| format!("read {}", acked.display()))?;
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut allowed: HashMap<Vec<u8>, Allowed> = HashMap::new();
    let mut acks = 0usize;
    for (i, line) in complete.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let (Some(kind @ ("acked" | "try")), Some(k), Some(c), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!(
                "{}:{}: not an `acked` or `try` line: {line:?}",
                acked.display(),
                i + 1
            );
        };
        let (Some(key), Ok(crc)) = (unhex(k), u32::from_str_radix(c, 16)) else {
            bail!(
                "{}:{}: bad key or checksum: {line:?}",
                acked.display(),
                i + 1
            );
        };
        let entry = allowed.entry(key).or_default();
        if kind == "acked" {
            acks += 1;
            entry.acked = Some(crc);
            entry.tried_after = None;
        } else {
            entry.tried_after = Some(crc);
        }
    }
    allowed.retain(|_, a| a.acked.is_some());
    let shard = Shard::open(options).await.context("reopen shard")?;
    let mut violations = 0usize;
    for (key, a) in &allowed {
        let crc = a.acked.expect("INVARIANT: only acknowledged keys are kept");
        let problem = match shard.get(key).await {
            Ok(Some(r)) => {
                let actual = crc32c::crc32c(r.value.as_deref().unwrap_or_default());
                (actual != crc && a.tried_after != Some(actual)).then(|| {
                    format!(
                        "value crc {actual:08x}, acked {crc:08x}, tried after {:?}",
                        a.tried_after.map(|c| format!("{c:08x}"))
                    )
                })
            }
            Ok(None) => Some("missing".to_owned()),
            Err(e) => Some(format!("read error: {e}")),
        };
        if let Some(problem) = problem {
            violations += 1;
            if violations <= 10 {
                println!("violation: key {} {problem}", hex(key));
            }
        }
    }
    shard.close().await.context("close shard")?;
    if violations > 0 {
        println!(
            "{violations} of {} acknowledged keys violated",
            allowed.len()
        );
        return Ok(false);
    }
    println!("verified {acks} acked writes ({} keys)", allowed.len());
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let executor = match runtime::Executor::new_unbound(4 << 20) {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("crash_check: cannot start executor: {e}");
            return ExitCode::from(2);
        }
    };
    let result = executor.run(async move {
        match cli.command {
            Command::Write {
                dir,
                seed,
                count,
                writers,
                memtable_bytes,
                segment_bytes,
                blob_threshold,
                overwrite_percent,
            } => {
                let seed = seed.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| (d.as_secs() << 30) ^ u64::from(d.subsec_nanos()))
                });
                eprintln!("crash_check: writing to {} with seed {seed}", dir.display());
                let plan = WritePlan {
                    seed,
                    count,
                    writers,
                    overwrite_percent,
                };
                let o = options(dir, memtable_bytes, segment_bytes, blob_threshold);
                write(o, plan).await.map(|()| true)
            }
            Command::Verify { dir, acked } => {
                verify(options(dir, 1 << 20, 1 << 20, 4096), acked).await
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("crash_check: {e:#}");
            ExitCode::from(2)
        }
    }
}
