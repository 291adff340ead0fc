//! Crash-consistency checker for one shard.
//!
//! ```text
//! crash_check write  [--dir D] [--seed S] [--count N] [--writers 16]
//! crash_check verify [--dir D] --acked FILE
//! ```
//! `write` opens the shard with `Sync` durability and writes unique random keys from many
//! concurrent tasks until killed (or until N writes were acknowledged). After each acknowledged
//! write it prints `acked <key-hex> <value-crc32c-hex>` and flushes stdout, so whatever killed
//! it, every printed line is a write the shard promised to keep.
//!
//! `verify` reopens the shard and checks that every acknowledged key holds a value with that
//! checksum: it prints `verified <N> acked writes` and exits 0, or prints the first violations
//! and exits 1 (2 for operational errors). A line cut short by the kill is ignored: the write
//! was acknowledged but its line never completed, so it cannot be checked.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dynacore_engine::{runtime, Durability, Shard, ShardId, ShardOptions};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Write acknowledged data until killed, then verify none of it was lost")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write unique random keys with Sync durability, printing one line per acknowledged write.
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

fn options(dir: PathBuf, memtable_bytes: usize, segment_bytes: u64) -> ShardOptions {
    let mut o = ShardOptions::new(dir, ShardId(0));
    o.durability = Durability::Sync;
    o.memtable_bytes_max = memtable_bytes;
    o.wal_segment_bytes = segment_bytes;
    o.block_cache_bytes = 8 << 20;
    o
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

async fn write(
    dir: PathBuf,
    seed: u64,
    count: Option<u64>,
    writers: u16,
    memtable_bytes: usize,
    segment_bytes: u64,
) -> anyhow::Result<()> {
    let shard = Shard::open(options(dir, memtable_bytes, segment_bytes))
        .await
        .context("open shard")?;
    let acked = Rc::new(std::cell::Cell::new(0u64));
    let mut tasks = Vec::new();
    for writer in 0..writers.max(1) {
        let shard = shard.clone();
        let acked = acked.clone();
        tasks.push(runtime::spawn_detached(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(writer) << 48));
            for n in 0u32.. {
                if count.is_some_and(|c| acked.get() >= c) {
                    return Ok(());
                }
                // Unique by construction: seed, writer and counter, then random bytes.
                let mut key = Vec::with_capacity(64);
                key.extend_from_slice(&seed.to_be_bytes());
                key.extend_from_slice(&writer.to_be_bytes());
                key.extend_from_slice(&n.to_be_bytes());
                let extra = rng.gen_range(0..40);
                key.extend((0..extra).map(|_| rng.gen::<u8>()));
                let len = if rng.gen_ratio(1, 50) {
                    rng.gen_range(8 << 10..64 << 10)
                } else {
                    rng.gen_range(0..2048)
                };
                let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                shard.put(&key, &value).await.context("put")?;
                acked.set(acked.get() + 1);
                let line = format!("acked {} {:08x}\n", hex(&key), crc32c::crc32c(&value));
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).context("stdout")?;
                out.flush().context("stdout")?;
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

async fn verify(dir: PathBuf, acked: PathBuf) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(&acked).with_context(|| format!("read {}", acked.display()))?;
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut want: HashMap<Vec<u8>, u32> = HashMap::new();
    for (i, line) in complete.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let (Some("acked"), Some(k), Some(c), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!(
                "{}:{}: not an `acked` line: {line:?}",
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
        want.insert(key, crc);
    }
    let shard = Shard::open(options(dir, 1 << 20, 1 << 20))
        .await
        .context("reopen shard")?;
    let mut violations = 0usize;
    for (key, crc) in &want {
        let problem = match shard.get(key).await {
            Ok(Some(r)) => {
                let actual = crc32c::crc32c(r.value.as_deref().unwrap_or_default());
                (actual != *crc).then(|| format!("value crc {actual:08x}, acked {crc:08x}"))
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
        println!("{violations} of {} acked writes violated", want.len());
        return Ok(false);
    }
    println!("verified {} acked writes", want.len());
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let executor = match runtime::build_unbound_executor(4 << 20) {
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
            } => {
                let seed = seed.unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| (d.as_secs() << 30) ^ u64::from(d.subsec_nanos()))
                });
                eprintln!("crash_check: writing to {} with seed {seed}", dir.display());
                write(dir, seed, count, writers, memtable_bytes, segment_bytes)
                    .await
                    .map(|()| true)
            }
            Command::Verify { dir, acked } => verify(dir, acked).await,
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
