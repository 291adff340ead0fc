//! The value log: values over the threshold live in blob files, reads and scans return them,
//! compaction copies references and collects garbage, unreferenced files are deleted (after a
//! compaction, and at open after a crash), and a damaged or missing blob file is a typed error.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run, small_options, temp_dir, with_temp_dir};
use dynacore_engine::version::VersionVector;
use dynacore_engine::{Error, Shard, ShardOptions, Token, VALUE_BYTES_MAX};

const LIMIT: Duration = Duration::from_secs(120);
/// Values longer than this go to the value log in these tests.
const THRESHOLD: usize = 2048;

fn options(path: &Path) -> ShardOptions {
    let mut o = small_options(path);
    o.blob_threshold_bytes = Some(THRESHOLD);
    o.memtable_bytes_max = 4 << 20;
    // Few open files, so that reads open and evict handles.
    o.blob_open_files_max = 2;
    o
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

/// Value `i` of `round`: large for even `i` (in the value log), small for odd `i` (inline).
fn value(i: u32, round: u32) -> Vec<u8> {
    let len = if i.is_multiple_of(2) {
        THRESHOLD + 1 + (i as usize * 997) % 20_000
    } else {
        100
    };
    (0..len)
        .map(|j| (j as u32 ^ i.wrapping_mul(31) ^ round.wrapping_mul(7)) as u8)
        .collect()
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .collect();
    v.sort();
    v
}

async fn put_all(shard: &Shard, keys: impl Iterator<Item = u32>, round: u32) {
    for i in keys {
        shard.put(&key(i), &value(i, round)).await.expect("put");
    }
}

/// Every key reads back as `round_of(i)`'s value, by get and by a full scan.
async fn check(shard: &Shard, n: u32, round_of: impl Fn(u32) -> u32) {
    for i in 0..n {
        let got = common::value_of(shard, &key(i)).await;
        assert_eq!(got, Some(value(i, round_of(i))), "key {i}");
    }
    let scanned = shard
        .scan(Token(0), Token(u64::MAX))
        .collect()
        .await
        .expect("scan");
    let scanned: Vec<_> = scanned
        .into_iter()
        .filter(|r| r.key.starts_with(b"key-"))
        .collect();
    assert_eq!(scanned.len(), n as usize);
    for r in scanned {
        let i: u32 = std::str::from_utf8(&r.key[4..])
            .expect("utf-8")
            .parse()
            .expect("number");
        assert_eq!(r.value, Some(value(i, round_of(i))), "scanned key {i}");
    }
}

#[test]
fn large_values_live_in_blob_files_and_read_back_everywhere() {
    with_temp_dir(LIMIT, |path| async move {
        let shard = Shard::open(options(&path)).await.expect("open");
        put_all(&shard, 0..200, 0).await;
        // A versioned object with a large value goes through the same path.
        let big = vec![7u8; 50_000];
        shard
            .coordinate_write(
                b"object",
                &VersionVector::default(),
                Some(&big),
                None,
                1,
                None,
            )
            .await
            .expect("versioned write");
        shard.flush().await.expect("flush");
        let s = shard.stats();
        assert_eq!(s.blob_files, 1, "{s:?}");
        assert_eq!(blob_files(&path).len(), 1);
        assert!(s.blob_bytes_written > 100 * THRESHOLD as u64, "{s:?}");
        assert_eq!(
            s.blob_live_bytes + 4096,
            s.blob_file_bytes,
            "no garbage yet: {s:?}"
        );
        // The table holds references, not the values.
        assert!(s.table_bytes < s.blob_file_bytes / 10, "{s:?}");
        check(&shard, 200, |_| 0).await;
        let obj = shard
            .read_object(b"object")
            .await
            .expect("read object")
            .expect("present");
        assert_eq!(obj.values().next().and_then(|v| v.value.clone()), Some(big));
        // Tools see values too, never references.
        let records: usize = shard
            .scan_tables()
            .await
            .expect("scan tables")
            .iter()
            .flatten()
            .map(|r| {
                assert!(r.value.as_ref().is_some_and(|v| v.len() >= 100), "{r:?}");
                1
            })
            .sum();
        assert_eq!(records, 201);
        shard.close().await.expect("close");
        let mut o = options(&path);
        o.block_cache_bytes = 8 << 20;
        let shard = Shard::open(o).await.expect("reopen");
        check(&shard, 200, |_| 0).await;
        assert_eq!(shard.stats().blob_files, 1);
        // Values that gets read from the value log are cached like blocks (scans do not fill the
        // cache, so the object, which only the scan reads, is read once by a get first): a
        // second pass reads nothing.
        shard.read_object(b"object").await.expect("read object");
        let misses = shard.stats().block_cache_misses;
        check(&shard, 200, |_| 0).await;
        let s = shard.stats();
        assert_eq!(s.block_cache_misses, misses, "{s:?}");
        shard.close().await.expect("close");
    });
}

#[test]
fn compaction_deletes_blob_files_nothing_points_at() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = options(&path);
        o.compaction.enabled = false;
        let shard = Shard::open(o.clone()).await.expect("open");
        for round in 0..3 {
            put_all(&shard, 0..100, round).await;
            shard.flush().await.expect("flush");
        }
        assert_eq!(shard.stats().blob_files, 3);
        let before = shard.stats().compaction_bytes_written;
        let cached_before = shard.stats().block_cache_bytes;
        shard.compact_all().await.expect("compact");
        let s = shard.stats();
        // The deleted files' cached values left the cache with them.
        assert!(
            s.block_cache_bytes < cached_before / 2,
            "{cached_before} before: {s:?}"
        );
        // Every value of the first two rounds was overwritten: their files go, whole.
        assert_eq!(s.tables, 1, "{s:?}");
        assert_eq!(s.blob_files, 1, "{s:?}");
        assert_eq!(s.blob_files_deleted, 2, "{s:?}");
        assert_eq!(
            s.blob_bytes_relocated, 0,
            "nothing needed relocating: {s:?}"
        );
        assert_eq!(blob_files(&path).len(), 1);
        // Compaction copied references: it wrote far fewer bytes than the values.
        assert!(
            s.compaction_bytes_written - before < s.blob_file_bytes / 5,
            "{s:?}"
        );
        check(&shard, 100, |_| 2).await;
        shard.close().await.expect("close");
        let shard = Shard::open(o).await.expect("reopen");
        check(&shard, 100, |_| 2).await;
        shard.close().await.expect("close");
    });
}

#[test]
fn garbage_collection_relocates_the_live_values_of_mostly_dead_files() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = options(&path);
        o.compaction.enabled = false;
        o.compaction.tombstone_grace_ms = 0;
        let shard = Shard::open(o.clone()).await.expect("open");
        put_all(&shard, 0..100, 0).await;
        shard.flush().await.expect("flush");
        // Overwrite 70 of the 100 keys, and delete 10 more.
        put_all(&shard, 0..70, 1).await;
        for i in 70..80 {
            shard.delete(&key(i)).await.expect("delete");
        }
        shard.flush().await.expect("flush");
        let first = blob_files(&path)[0].clone();
        // The first merge drops the shadowed references; the first file is then mostly
        // garbage (and the tombstones, past a zero grace period, go too).
        shard.compact_all().await.expect("compact");
        let s = shard.stats();
        assert_eq!(s.blob_files, 2, "{s:?}");
        assert!(
            s.blob_file_bytes > s.blob_live_bytes * 5 / 4,
            "garbage is visible now: {s:?}"
        );
        // The next full merge relocates its live values and deletes it.
        shard.compact_all().await.expect("compact");
        let s = shard.stats();
        assert!(s.blob_bytes_relocated > 0, "{s:?}");
        assert!(!first.exists(), "the mostly dead file is gone");
        assert!(
            s.blob_file_bytes <= s.blob_live_bytes * 5 / 4 + 4096 * s.blob_files as u64,
            "garbage collected: {s:?}"
        );
        let round_of = |i: u32| u32::from(i < 70);
        let live = |shard: Shard| async move {
            for i in 0..100 {
                let got = common::value_of(&shard, &key(i)).await;
                if (70..80).contains(&i) {
                    assert_eq!(got, None, "key {i} was deleted");
                } else {
                    assert_eq!(got, Some(value(i, round_of(i))), "key {i}");
                }
            }
            shard
        };
        let shard = live(shard).await;
        shard.close().await.expect("close");
        let shard = live(Shard::open(o).await.expect("reopen")).await;
        assert_eq!(blob_files(&path).len(), shard.stats().blob_files);
        shard.close().await.expect("close");
    });
}

#[test]
fn automatic_compaction_keeps_the_value_log_bounded_under_overwrites() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = options(&path);
        o.durability = dynacore_engine::Durability::None;
        o.memtable_bytes_max = 256 << 10;
        let shard = Shard::open(o).await.expect("open");
        for round in 0..8 {
            put_all(&shard, 0..200, round).await;
        }
        shard.flush().await.expect("flush");
        shard.wait_for_compactions().await;
        let s = shard.stats();
        assert!(s.compactions > 0 && s.blob_files_deleted > 0, "{s:?}");
        let live_values: u64 = (0..200u32)
            .filter(|i| i.is_multiple_of(2))
            .map(|i| value(i, 7).len() as u64)
            .sum();
        // Blob bytes stay within a small multiple of the live values (8 rounds were written).
        assert!(s.blob_file_bytes < live_values * 3, "{s:?}");
        check(&shard, 200, |_| 7).await;
        shard.close().await.expect("close");
    });
}

#[test]
fn a_scan_keeps_reading_blob_files_that_compaction_deleted() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = options(&path);
        o.compaction.enabled = false;
        let shard = Shard::open(o).await.expect("open");
        put_all(&shard, 0..100, 0).await;
        shard.flush().await.expect("flush");
        let mut scan = shard.scan(Token(0), Token(u64::MAX));
        let first = scan.next().await.expect("scan").expect("a record");
        // Overwrite everything and merge: the first file is deleted once the scan lets go.
        put_all(&shard, 0..100, 1).await;
        shard.flush().await.expect("flush");
        let compacting = {
            let shard = shard.clone();
            dynacore_runtime::spawn_detached(async move { shard.compact_all().await })
        };
        dynacore_runtime::sleep(Duration::from_millis(50)).await;
        let mut n = 1;
        while let Some(r) = scan.next().await.expect("scan") {
            let i: u32 = std::str::from_utf8(&r.key[4..])
                .expect("utf-8")
                .parse()
                .expect("number");
            assert_eq!(r.value, Some(value(i, 0)), "the scan sees its snapshot");
            n += 1;
        }
        assert_eq!(n, 100);
        assert!(first.value.is_some());
        drop(scan);
        compacting.await.expect("task").expect("compact");
        assert_eq!(shard.stats().blob_files, 1);
        check(&shard, 100, |_| 1).await;
        shard.close().await.expect("close");
    });
}

#[test]
fn orphan_blob_files_are_removed_and_missing_ones_refuse_to_open() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(options(&p)).await.expect("open");
        put_all(&shard, 0..50, 0).await;
        shard.flush().await.expect("flush");
        shard.close().await.expect("close");
    });
    let live = blob_files(&path);
    assert_eq!(live.len(), 1);
    // A blob file a crash left before its table reached the manifest.
    let orphan = path.join("blob-00000000000000ff.blob");
    std::fs::copy(&live[0], &orphan).expect("copy");
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(options(&p)).await.expect("open");
        check(&shard, 50, |_| 0).await;
        shard.close().await.expect("close");
    });
    assert!(!orphan.exists(), "the orphan is removed at open");
    assert_eq!(blob_files(&path), live);
    // A blob file a table points at, missing: refuse to open, naming it.
    std::fs::remove_file(&live[0]).expect("remove");
    let p = path.clone();
    run(LIMIT, move || async move {
        let Err(err) = Shard::open(options(&p)).await else {
            panic!("opened with a missing blob file");
        };
        assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
        assert!(err.to_string().contains("blob-"), "{err}");
    });
}

#[test]
fn a_damaged_blob_entry_is_a_checksum_mismatch_never_wrong_bytes() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(options(&p)).await.expect("open");
        put_all(&shard, 0..50, 0).await;
        shard.flush().await.expect("flush");
        shard.close().await.expect("close");
    });
    let file = &blob_files(&path)[0];
    let mut bytes = std::fs::read(file).expect("read");
    // Inside the first entry's value (the header block is 4 KiB, the entry header 16 bytes).
    bytes[4096 + 16 + 9 + 500] ^= 0x20;
    std::fs::write(file, &bytes).expect("write");
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(options(&p)).await.expect("open");
        let mut mismatches = 0;
        for i in 0..50 {
            match shard.get(&key(i)).await {
                Ok(got) => assert_eq!(got.and_then(|r| r.value), Some(value(i, 0)), "key {i}"),
                Err(Error::ChecksumMismatch { path, .. }) => {
                    assert!(path.to_string_lossy().contains("blob-"), "{path:?}");
                    mismatches += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(mismatches, 1, "exactly the damaged value is refused");
        // A scan over it fails the same way rather than skipping or inventing data.
        let scanned = shard.scan(Token(0), Token(u64::MAX)).collect().await;
        assert!(
            matches!(scanned, Err(Error::ChecksumMismatch { .. })),
            "{scanned:?}"
        );
        shard.close().await.expect("close");
    });
}

#[test]
fn blob_files_beyond_the_open_file_limit_are_opened_on_demand() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = options(&path);
        o.compaction.enabled = false;
        o.blob_open_files_max = 1;
        // No value cache: every read goes to the files.
        o.block_cache_bytes = 0;
        let shard = Shard::open(o).await.expect("open");
        for part in 0..4u32 {
            put_all(&shard, part * 25..(part + 1) * 25, 0).await;
            shard.flush().await.expect("flush");
        }
        assert_eq!(shard.stats().blob_files, 4);
        check(&shard, 100, |_| 0).await;
        check(&shard, 100, |_| 0).await;
        let s = shard.stats();
        // Four files through one open handle: each pass reopens them.
        assert!(s.blob_file_opens >= 8, "{s:?}");
        shard.close().await.expect("close");
    });
}

/// A damaged value in a file being collected does not stop compaction: the merge keeps the
/// file's references (reads of the damaged one report the damage; moving the others would free
/// nothing while it holds the file), and the file is not chosen again.
#[test]
fn a_damaged_value_does_not_stop_garbage_collection() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let gc_options = |p: &Path| {
        let mut o = options(p);
        o.compaction.enabled = false;
        o
    };
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(gc_options(&p)).await.expect("open");
        put_all(&shard, 0..100, 0).await;
        shard.flush().await.expect("flush");
        put_all(&shard, 0..80, 1).await;
        shard.flush().await.expect("flush");
        // Drops the shadowed references: the first file is now mostly garbage.
        shard.compact_all().await.expect("compact");
        assert_eq!(shard.stats().blob_bytes_relocated, 0);
        shard.close().await.expect("close");
    });
    // Damage key 80's value, which lives in the first file.
    let first = blob_files(&path)[0].clone();
    let mut bytes = std::fs::read(&first).expect("read");
    let at = bytes
        .windows(9)
        .position(|w| w == key(80).as_slice())
        .expect("key 80 is in the first file");
    bytes[at + 9 + 100] ^= 0x01;
    std::fs::write(&first, &bytes).expect("write");
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(gc_options(&p)).await.expect("reopen");
        shard.compact_all().await.expect("compact");
        let s = shard.stats();
        assert_eq!(s.compactions, 1, "the merge went through: {s:?}");
        assert_eq!(
            s.blob_bytes_relocated, 0,
            "the file was given up whole: {s:?}"
        );
        assert!(first.exists(), "the file with the damaged value stays");
        assert!(matches!(
            shard.get(&key(80)).await,
            Err(Error::ChecksumMismatch { .. })
        ));
        for i in (0..100).filter(|&i| i != 80) {
            let got = common::value_of(&shard, &key(i)).await;
            assert_eq!(got, Some(value(i, u32::from(i < 80))), "key {i}");
        }
        // Not chosen again: another full merge tries no relocation (it would count a miss).
        let misses = shard.stats().block_cache_misses;
        shard.compact_all().await.expect("compact");
        let s = shard.stats();
        assert_eq!(s.compactions, 2, "{s:?}");
        assert_eq!(s.blob_bytes_relocated, 0, "{s:?}");
        assert_eq!(s.block_cache_misses, misses, "{s:?}");
        shard.close().await.expect("close");
    });
}

#[test]
fn without_a_threshold_values_stay_in_the_tables() {
    with_temp_dir(LIMIT, |path| async move {
        let mut o = options(&path);
        o.blob_threshold_bytes = None;
        let shard = Shard::open(o.clone()).await.expect("open");
        put_all(&shard, 0..50, 0).await;
        // The largest value too, in a table block of its own.
        let max_value: Vec<u8> = (0..VALUE_BYTES_MAX).map(|i| (i % 253) as u8).collect();
        shard.put(b"max", &max_value).await.expect("put");
        shard.flush().await.expect("flush");
        assert_eq!(shard.stats().blob_files, 0);
        assert!(blob_files(&path).is_empty());
        shard.close().await.expect("close");
        let shard = Shard::open(o).await.expect("reopen");
        check(&shard, 50, |_| 0).await;
        assert_eq!(
            common::value_of(&shard, b"max").await.as_deref(),
            Some(max_value.as_slice())
        );
        shard.close().await.expect("close");
    });
}
