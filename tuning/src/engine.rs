//! `engine`: memtable size and Bloom filter bits per key against write amplification (bytes the
//! shard wrote per byte the user wrote) and read amplification (data blocks read from disk per
//! get, with the block cache off).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dynacore_engine::sstable::bloom::BITS_PER_KEY_DEFAULT;
use dynacore_engine::{Durability, Shard, ShardId, ShardOptions, ShardStats};
use dynacore_runtime as runtime;
use serde_json::json;

use crate::report::{rate, Chart, Report, Scale, Series, Table};

const VALUE_BYTES: usize = 100;

/// A fixed bijection of `u64` (splitmix64's finaliser): keys spread over the token ring.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

#[derive(Debug)]
struct Point {
    load_puts_per_s: f64,
    write_amp: f64,
    write_amp_tables: f64,
    space_amp: f64,
    tables: usize,
    reads_per_hit: f64,
    reads_per_miss: f64,
    gets_per_s: f64,
}

/// Waits until the shard has had no compaction running for a few polls in a row (at most
/// `bound`).
async fn settle(shard: &Shard, bound: Duration) -> Result<()> {
    let begin = Instant::now();
    let mut quiet = 0;
    while quiet < 5 {
        if begin.elapsed() > bound {
            bail!("compactions still running after {} s", bound.as_secs());
        }
        runtime::sleep(Duration::from_millis(100)).await;
        quiet = if shard.stats().compacting {
            0
        } else {
            quiet + 1
        };
    }
    Ok(())
}

fn written(s: &ShardStats) -> u64 {
    s.flush_bytes_written + s.compaction_bytes_written + s.blob_bytes_written
}

fn measure(scratch: &Path, keys: u64, gets: u64, memtable: usize, bloom: u32) -> Result<Point> {
    let dir = tempfile::Builder::new()
        .prefix("engine-")
        .tempdir_in(scratch)
        .with_context(|| format!("scratch directory in {}", scratch.display()))?;
    let mut o = ShardOptions::new(dir.path(), ShardId(0));
    o.durability = Durability::None;
    o.memtable_bytes_max = memtable;
    o.bloom_bits_per_key = bloom;
    o.block_cache_bytes = 0;
    let handle = runtime::spawn_executor("tuning-engine", None, 8 << 20, move || async move {
        let err = |what: &'static str| move |e: dynacore_engine::Error| anyhow!("{what}: {e}");
        let shard = Shard::open(o).await.map_err(err("opening the shard"))?;
        let value = [b'v'; VALUE_BYTES];
        let begin = Instant::now();
        for i in 0..keys {
            shard.put(&key(i), &value).await.map_err(err("put"))?;
        }
        shard.flush().await.map_err(err("flush"))?;
        let load_secs = begin.elapsed().as_secs_f64();
        settle(&shard, Duration::from_secs(120)).await?;
        let loaded = shard.stats();
        let user = keys * (16 + VALUE_BYTES as u64);
        let read = Instant::now();
        let before = shard.stats().block_cache_misses;
        for g in 0..gets {
            let i = mix(g ^ 0x5555) % keys;
            if shard.get(&key(i)).await.map_err(err("get"))?.is_none() {
                bail!("key {i} written but not found");
            }
        }
        let hit_reads = shard.stats().block_cache_misses - before;
        let before = shard.stats().block_cache_misses;
        for g in 0..gets {
            let absent = key(keys + 1 + g);
            if shard.get(&absent).await.map_err(err("get"))?.is_some() {
                bail!("a key never written was found");
            }
        }
        let miss_reads = shard.stats().block_cache_misses - before;
        let read_secs = read.elapsed().as_secs_f64();
        shard.close().await.map_err(err("closing the shard"))?;
        Ok::<Point, anyhow::Error>(Point {
            load_puts_per_s: keys as f64 / load_secs,
            write_amp: (written(&loaded) + loaded.wal.bytes_written) as f64 / user as f64,
            write_amp_tables: written(&loaded) as f64 / user as f64,
            space_amp: loaded.table_bytes as f64 / user as f64,
            tables: loaded.tables,
            reads_per_hit: hit_reads as f64 / gets as f64,
            reads_per_miss: miss_reads as f64 / gets as f64,
            gets_per_s: (2 * gets) as f64 / read_secs,
        })
    })?;
    handle.join()?
}

/// Runs the engine experiments.
///
/// # Errors
/// When a shard fails.
pub fn run(scale: Scale, scratch: &Path) -> Result<Report> {
    let keys: u64 = scale.pick(200_000, 1_000_000);
    let gets: u64 = scale.pick(20_000, 100_000);
    let memtables: &[usize] = scale.pick(
        &[1 << 20, 4 << 20, 16 << 20],
        &[1 << 20, 4 << 20, 16 << 20, 64 << 20],
    );
    let blooms: &[u32] = scale.pick(&[4, 10, 14], &[2, 4, 7, 10, 14, 20]);
    let bloom_memtable = 4 << 20;
    let mut raw = Vec::new();
    let mut m = |memtable: usize, bloom: u32| -> Result<Point> {
        let p = measure(scratch, keys, gets, memtable, bloom)?;
        raw.push(json!({
            "keys": keys, "value_bytes": VALUE_BYTES, "memtable_bytes": memtable,
            "bloom_bits_per_key": bloom, "load_puts_per_s": p.load_puts_per_s,
            "write_amp": p.write_amp, "write_amp_tables": p.write_amp_tables,
            "space_amp": p.space_amp, "tables": p.tables, "reads_per_hit": p.reads_per_hit,
            "reads_per_miss": p.reads_per_miss, "gets_per_s": p.gets_per_s,
        }));
        Ok(p)
    };
    let mut mem_t = Table::new(
        &format!("Memtable size ({keys} keys of 16 + {VALUE_BYTES} B, {BITS_PER_KEY_DEFAULT} Bloom bits per key)"),
        &["memtable", "load puts/s", "write amp (WAL + tables)", "tables only", "space amp", "tables", "block reads per hit"],
    );
    let mut wa = Vec::new();
    for &mt in memtables {
        let p = m(mt, BITS_PER_KEY_DEFAULT)?;
        mem_t.row(vec![
            format!("{} MiB", mt >> 20),
            rate(p.load_puts_per_s),
            format!("{:.2}", p.write_amp),
            format!("{:.2}", p.write_amp_tables),
            format!("{:.2}", p.space_amp),
            p.tables.to_string(),
            format!("{:.2}", p.reads_per_hit),
        ]);
        wa.push((mt, p.write_amp_tables, p.load_puts_per_s));
    }
    let mut bloom_t = Table::new(
        &format!(
            "Bloom bits per key ({} MiB memtables)",
            bloom_memtable >> 20
        ),
        &[
            "bits per key",
            "block reads per absent-key get",
            "per present-key get",
            "gets/s",
            "space amp",
        ],
    );
    let mut miss_line = Vec::new();
    let mut by_bits = Vec::new();
    for &b in blooms {
        let p = m(bloom_memtable, b)?;
        bloom_t.row(vec![
            b.to_string(),
            format!("{:.4}", p.reads_per_miss),
            format!("{:.2}", p.reads_per_hit),
            rate(p.gets_per_s),
            format!("{:.3}", p.space_amp),
        ]);
        miss_line.push((f64::from(b), p.reads_per_miss * 1000.0));
        by_bits.push((b, p.reads_per_miss, p.space_amp));
    }
    let small = wa.first().copied().unwrap_or((1, 0.0, 0.0));
    let large = wa.last().copied().unwrap_or((1, 0.0, 0.0));
    // The fewest bits that keep absent-key reads under 1 in 100 gets.
    let enough = by_bits.iter().find(|b| b.1 < 0.01).map(|b| b.0);
    let finding = format!(
        "Tables wrote {:.2}× the user's bytes with {} MiB memtables and {:.2}× with {} MiB ({} \
         load puts/s against {}): larger memtables mean fewer, larger flushes and less \
         rewriting by compaction. Absent-key gets read {:.1} blocks per 1,000 gets at {} bits per \
         key and {:.1} at {} bits.",
        small.1,
        small.0 >> 20,
        large.1,
        large.0 >> 20,
        rate(small.2),
        rate(large.2),
        by_bits.first().map_or(0.0, |b| b.1 * 1000.0),
        by_bits.first().map_or(0, |b| b.0),
        by_bits.last().map_or(0.0, |b| b.1 * 1000.0),
        by_bits.last().map_or(0, |b| b.0),
    );
    let least = wa.iter().map(|w| w.1).fold(f64::MAX, f64::min);
    let enough_memtable = wa
        .iter()
        .find(|w| w.1 <= least * 1.05)
        .map_or(0, |w| w.0 >> 20);
    let recommendation = format!(
        "`memtable_bytes_max` stays 64 MiB per shard: write amplification stopped falling at {} \
         MiB here, for {} MB of data; a larger data set keeps gaining from larger memtables \
         (fewer tables to merge), and memory is the bound. `bloom_bits_per_key` {}: {} bits is \
         the fewest that keep absent-key disk reads under 1 per 100 gets here.",
        enough_memtable,
        keys * (16 + VALUE_BYTES as u64) / 1_000_000,
        match enough {
            Some(b) if b == BITS_PER_KEY_DEFAULT => format!("stays {b}"),
            Some(b) if b > BITS_PER_KEY_DEFAULT =>
                format!("should rise to {b} (it is {BITS_PER_KEY_DEFAULT})"),
            Some(b) => format!("could fall to {b} (it is {BITS_PER_KEY_DEFAULT})"),
            None => "should rise past the largest measured".to_string(),
        },
        enough.map_or("none measured".to_string(), |b| b.to_string()),
    );
    Ok(Report {
        name: "engine".into(),
        question: "How do memtable size and Bloom bits per key trade write amplification against read amplification?".into(),
        method: format!(
            "A shard (no sync, block cache off so that every data block read is a disk read) \
             loads {keys} keys of 16 bytes with {VALUE_BYTES}-byte values in random token order, \
             flushes, waits for compaction to settle, then gets {gets} present and {gets} absent \
             keys. Write amplification is bytes written (WAL, flushes, compactions, value log) \
             over the user's key and value bytes; read amplification is block-cache misses per \
             get."
        ),
        quick: scale.quick,
        tables: vec![mem_t, bloom_t],
        chart: Chart {
            title: "Disk block reads per 1,000 absent-key gets against Bloom bits per key".into(),
            x_label: "Bloom bits per key".into(),
            y_label: "block reads per 1,000 gets".into(),
            log2_x: false,
            series: vec![Series {
                label: "absent keys".into(),
                points: miss_line,
            }],
        },
        finding,
        recommendation,
        raw: serde_json::Value::Array(raw),
    })
}
