//! Damage on disk: a torn WAL tail is cut off, damage before valid WAL data is refused with the
//! file and offset, and a damaged SSTable block or manifest is reported, never read as data.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::{run, small_options, temp_dir};
use dynacore_engine::{Error, Shard};

const LIMIT: Duration = Duration::from_secs(120);
const BLOCK: u64 = 4096;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}").repeat(3).into_bytes()
}

fn write_keys(path: &Path, range: std::ops::Range<u32>) {
    let path = path.to_path_buf();
    run(LIMIT, move || async move {
        let mut o = small_options(&path);
        o.memtable_bytes_max = 64 << 20; // keep everything in the WAL
        let shard = Shard::open(o).await.expect("open");
        for i in range {
            shard.put(&key(i), &value(i)).await.expect("put");
        }
        shard.close().await.expect("close");
    });
}

/// The newest WAL segment that holds a batch (a prepared spare holds none).
fn last_segment_with_data(dir: &Path) -> std::path::PathBuf {
    common::wal_segments(dir)
        .into_iter()
        .rev()
        .find(|p| {
            std::fs::read(p).expect("read")[BLOCK as usize..]
                .iter()
                .any(|&b| b != 0)
        })
        .expect("a segment with data")
}

/// Offset just past the last non-zero block of `file`.
fn end_of_data(file: &Path) -> u64 {
    let bytes = std::fs::read(file).expect("read");
    let last = bytes.iter().rposition(|&b| b != 0).expect("has data") as u64;
    (last / BLOCK + 1) * BLOCK
}

fn patch(file: &Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(data).expect("write");
    f.sync_all().expect("sync");
}

fn flip_bit(file: &Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .expect("open");
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0x10;
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&b).expect("write");
    f.sync_all().expect("sync");
}

/// Opens `path`, which must fail with a corruption or checksum error; returns its message.
fn open_error(path: &Path) -> String {
    let path = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(LIMIT, move || async move {
        let Err(err) = Shard::open(small_options(&path)).await else {
            panic!("a damaged shard must refuse to open");
        };
        assert!(
            matches!(
                err,
                Error::Corruption { .. } | Error::ChecksumMismatch { .. }
            ),
            "{err:?}"
        );
        tx.send(err.to_string()).expect("send");
    });
    rx.recv().expect("message")
}

#[test]
fn torn_tail_is_truncated_and_writing_resumes() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_keys(&path, 0..300);
    let segment = last_segment_with_data(&path);
    let end = end_of_data(&segment);
    // A torn batch after the last valid one: a plausible header followed by junk.
    let mut torn = b"DWB1".to_vec();
    torn.extend((0..2000u32).map(|i| (i * 7 + 3) as u8));
    patch(&segment, end, &torn);
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(small_options(&p))
            .await
            .expect("open after torn tail");
        for i in 0..300 {
            let got = shard.get(&key(i)).await.expect("get").and_then(|r| r.value);
            assert_eq!(got, Some(value(i)), "key {i}");
        }
        for i in 300..400 {
            shard
                .put(&key(i), &value(i))
                .await
                .expect("put after truncation");
        }
        shard.close().await.expect("close");
        let shard = Shard::open(small_options(&p)).await.expect("reopen");
        for i in 0..400 {
            let got = shard.get(&key(i)).await.expect("get").and_then(|r| r.value);
            assert_eq!(got, Some(value(i)), "key {i} after resumed writing");
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn torn_last_batch_loses_only_that_batch() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_keys(&path, 0..50);
    let segment = last_segment_with_data(&path);
    let end = end_of_data(&segment);
    // Tear the last batch (one record: key 49) at a 512-byte boundary: its second sector never
    // reached the disk, the first did.
    patch(&segment, end - BLOCK + 16, &[0xAB; 8]);
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(small_options(&p)).await.expect("open");
        for i in 0..49 {
            assert!(shard.get(&key(i)).await.expect("get").is_some(), "key {i}");
        }
        assert!(shard.get(&key(49)).await.expect("get").is_none());
        shard.close().await.expect("close");
    });
}

#[test]
fn damage_before_valid_wal_data_is_refused_with_file_and_offset() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_keys(&path, 0..100);
    let segment = common::wal_segments(&path)[0].clone();
    // The first batch starts at offset 4096; damage its body.
    flip_bit(&segment, BLOCK + 40);
    let message = open_error(&path);
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(message.contains("offset 4096"), "{message}");
}

/// Writes keys `0..count` into one SSTable (compaction off) and returns the table files.
fn write_one_table(path: &Path, count: u32) -> Vec<std::path::PathBuf> {
    let p = path.to_path_buf();
    run(LIMIT, move || async move {
        let mut o = small_options(&p);
        o.memtable_bytes_max = 64 << 20;
        o.compaction.enabled = false;
        let shard = Shard::open(o).await.expect("open");
        for i in 0..count {
            shard.put(&key(i), &value(i)).await.expect("put");
        }
        shard.flush().await.expect("flush");
        shard.close().await.expect("close");
    });
    let tables = common::tables(path);
    assert_eq!(tables.len(), 1);
    tables
}

#[test]
fn flipped_bit_in_sstable_block_is_a_checksum_mismatch() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let tables = write_one_table(&path, 500);
    flip_bit(&tables[0], 100);
    let p = path.clone();
    run(LIMIT, move || async move {
        let shard = Shard::open(small_options(&p)).await.expect("open");
        let mut mismatches = 0;
        for i in 0..500 {
            match shard.get(&key(i)).await {
                Ok(got) => assert_eq!(got.and_then(|r| r.value), Some(value(i)), "key {i}"),
                Err(Error::ChecksumMismatch { offset, .. }) => {
                    assert_eq!(offset, 0, "the first block is the damaged one");
                    mismatches += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert!(mismatches > 0, "no read noticed the damage");
        shard.close().await.expect("close");
    });
}

#[test]
fn compaction_over_a_damaged_block_fails_and_keeps_the_tables() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let tables = write_one_table(&path, 2_000);
    // Damage a block in the middle of the table: compaction reads it in a read-ahead batch.
    flip_bit(&tables[0], 5 * BLOCK + 100);
    let p = path.clone();
    run(LIMIT, move || async move {
        let mut o = small_options(&p);
        o.compaction.enabled = false;
        let shard = Shard::open(o).await.expect("open");
        shard.compact_all().await.expect("compact_all returns");
        let s = shard.stats();
        assert_eq!(s.compactions, 0, "the merge must fail: {s:?}");
        assert_eq!(s.tables, 1, "{s:?}");
        // The damaged table is still there and still refuses to hand out damaged bytes.
        let mut mismatches = 0;
        for i in 0..2_000 {
            match shard.get(&key(i)).await {
                Ok(got) => assert_eq!(got.and_then(|r| r.value), Some(value(i)), "key {i}"),
                Err(Error::ChecksumMismatch { .. }) => mismatches += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert!(mismatches > 0, "no read noticed the damage");
        shard.close().await.expect("close");
    });
    assert_eq!(
        common::tables(&path),
        tables,
        "the failed merge's output is removed, the input kept"
    );
}

#[test]
fn damaged_footer_and_manifest_refuse_to_open() {
    for target in ["footer", "manifest"] {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        let p = path.clone();
        run(LIMIT, move || async move {
            let shard = Shard::open(small_options(&p)).await.expect("open");
            for i in 0..200 {
                shard.put(&key(i), &value(i)).await.expect("put");
            }
            shard.flush().await.expect("flush");
            shard.close().await.expect("close");
        });
        let file = if target == "footer" {
            common::tables(&path).pop().expect("a table")
        } else {
            path.join("MANIFEST")
        };
        let len = std::fs::metadata(&file).expect("stat").len();
        let offset = if target == "footer" { len - 100 } else { 20 };
        flip_bit(&file, offset);
        let message = open_error(&path);
        assert!(
            message.contains(&file.display().to_string()),
            "{target}: {message}"
        );
    }
}

#[test]
fn refusing_to_open_leaves_the_damage_in_place() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    // Small segments: the log spans several; damage the last batch of the first one, so that
    // valid data follows in later segments.
    write_keys(&path, 0..100);
    let segments = common::wal_segments(&path);
    assert!(segments.len() >= 3, "{segments:?}");
    let first = &segments[0];
    flip_bit(first, end_of_data(first) - BLOCK + 40);
    let message = open_error(&path);
    assert!(message.contains(&first.display().to_string()), "{message}");
    // A second open must refuse too: the first attempt may not have "repaired" anything.
    let again = open_error(&path);
    assert_eq!(message, again);
}

#[test]
fn zeroed_block_before_valid_data_is_refused() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_keys(&path, 0..100);
    let first = common::wal_segments(&path)[0].clone();
    // A lost write: the second batch of the first segment reads back as zeros.
    patch(&first, 2 * BLOCK, &[0u8; BLOCK as usize]);
    let message = open_error(&path);
    assert!(message.contains(&first.display().to_string()), "{message}");
}

/// Writes keys through a flush (tables and blob files exist) and more after it (in the WAL).
fn write_flushed_and_logged(path: &Path) {
    let p = path.to_path_buf();
    run(LIMIT, move || async move {
        let mut o = small_options(&p);
        o.blob_threshold_bytes = Some(1024);
        let shard = Shard::open(o).await.expect("open");
        for i in 0..400 {
            shard.put(&key(i), &value(i)).await.expect("put");
        }
        shard.put(b"large", &vec![7u8; 4096]).await.expect("put");
        shard.flush().await.expect("flush");
        for i in 400..450 {
            shard.put(&key(i), &value(i)).await.expect("put");
        }
        shard.close().await.expect("close");
    });
}

#[test]
fn a_missing_manifest_is_refused_and_nothing_is_deleted() {
    // With tables and blob files beside it.
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_flushed_and_logged(&path);
    let before: Vec<_> = common::files_with(&path, "", "");
    assert!(!common::tables(&path).is_empty());
    assert!(!common::files_with(&path, "blob-", ".blob").is_empty());
    std::fs::remove_file(path.join("MANIFEST")).expect("remove the manifest");
    let message = open_error(&path);
    assert!(message.contains("MANIFEST"), "{message}");
    let table = common::tables(&path)[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(message.contains(&table), "{message}");
    let mut after = common::files_with(&path, "", "");
    after.retain(|p| !p.ends_with("LOCK"));
    let mut expected = before;
    expected.retain(|p| !p.ends_with("MANIFEST") && !p.ends_with("LOCK"));
    assert_eq!(after, expected, "refusing to open deleted files");

    // With WAL segments only (never flushed).
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    write_keys(&path, 0..50);
    assert!(common::tables(&path).is_empty());
    std::fs::remove_file(path.join("MANIFEST")).expect("a new shard has a manifest");
    let message = open_error(&path);
    assert!(
        message.contains("MANIFEST") && message.contains("wal-"),
        "{message}"
    );
}

#[test]
fn a_lost_wal_segment_is_refused() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    // Small segments, no flush: the log spans several segments from sequence 1.
    write_keys(&path, 0..300);
    let segments = common::wal_segments(&path);
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[0]).expect("lose the oldest segment");
    let message = open_error(&path);
    assert!(message.contains("sequence"), "{message}");
}
