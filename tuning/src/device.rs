//! `device`: the disk under the WAL, driven through io_uring directly (the `io-uring` crate; the
//! glommio executor Dynacore runs on hides these knobs). 4 KiB O_DIRECT write + `fdatasync`
//! latency and throughput against queue depth; block sizes; `fdatasync` against `RWF_DSYNC` and
//! `O_DSYNC`; registered buffers; SQPOLL; preallocated against fresh space.
//!
//! Every measurement keeps `depth` independent "slots" in flight, each writing its own region of
//! the file sequentially; a slot's write may be linked (`IOSQE_IO_LINK`) to an `fdatasync`, and
//! the slot's latency is from submitting the write to completing its last operation.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use io_uring::{opcode, squeue, types, IoUring};
use serde_json::json;

use crate::report::{rate, Chart, Latencies, Report, Scale, Series, Table};

const ALIGN: usize = 4096;

/// How a slot makes its write durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncMode {
    /// Not at all (O_DIRECT alone: in the device's cache).
    None,
    /// A write linked to an `fdatasync` of the file.
    Fdatasync,
    /// The write carries `RWF_DSYNC`.
    RwfDsync,
    /// The file is opened `O_DSYNC`.
    ODsync,
}

/// The space the writes land in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    /// An empty file that every write extends (the size changes: metadata to sync).
    Fresh,
    /// `posix_fallocate`d space (unwritten extents: converting them is metadata too).
    Fallocated,
    /// Space written with zeros and synced before (what a recycled WAL segment is).
    Written,
}

/// One measured setting.
#[derive(Clone, Copy, Debug)]
struct Setting {
    depth: usize,
    block: usize,
    sync: SyncMode,
    space: Space,
    fixed_buffers: bool,
    sqpoll: bool,
}

impl Setting {
    fn base() -> Setting {
        Setting {
            depth: 1,
            block: 4096,
            sync: SyncMode::Fdatasync,
            space: Space::Written,
            fixed_buffers: false,
            sqpoll: false,
        }
    }
}

/// What one setting measured.
#[derive(Debug)]
struct Measured {
    ops_per_s: f64,
    mib_per_s: f64,
    lat: Latencies,
}

impl Measured {
    fn json(&self, s: &Setting) -> serde_json::Value {
        json!({
            "depth": s.depth, "block": s.block, "sync": format!("{:?}", s.sync),
            "space": format!("{:?}", s.space), "fixed_buffers": s.fixed_buffers,
            "sqpoll": s.sqpoll, "ops_per_s": self.ops_per_s, "mib_per_s": self.mib_per_s,
            "latency": self.lat.summary(),
        })
    }
}

/// A buffer of `len` bytes aligned for O_DIRECT, carved out of a larger `Vec` (no unsafe
/// allocation).
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let mut storage = vec![fill; len + ALIGN];
        let start = storage.as_mut_ptr().align_offset(ALIGN);
        assert!(start < ALIGN, "alignment offset within one page");
        Aligned {
            storage,
            start,
            len,
        }
    }

    fn ptr(&self) -> *const u8 {
        self.storage[self.start..self.start + self.len].as_ptr()
    }
}

fn open(path: &Path, sync: SyncMode, create: bool) -> Result<File> {
    let mut flags = libc::O_DIRECT;
    if sync == SyncMode::ODsync {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(flags)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} with O_DIRECT (the scratch directory must be on a disk, not tmpfs)",
                path.display()
            )
        })
}

/// Prepares the file a setting writes: empty, fallocated or written with zeros, `bytes` long.
fn prepare(path: &Path, space: Space, bytes: u64) -> Result<()> {
    let f = open(path, SyncMode::None, true)?;
    match space {
        Space::Fresh => {}
        Space::Fallocated => {
            let len = libc::off_t::try_from(bytes).context("file size")?;
            // SAFETY: posix_fallocate takes a valid open descriptor and a range; it touches no
            // memory of ours.
            let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
            if rc != 0 {
                bail!(
                    "posix_fallocate {}: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(rc)
                );
            }
        }
        Space::Written => {
            use std::os::unix::fs::FileExt as _;
            let chunk = Aligned::new(1 << 20, 0);
            let data = &chunk.storage[chunk.start..chunk.start + chunk.len];
            let mut off = 0;
            while off < bytes {
                f.write_all_at(data, off)
                    .with_context(|| format!("zero-filling {}", path.display()))?;
                off += data.len() as u64;
            }
        }
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Runs one setting for `time` against a file prepared at `path` of `bytes` bytes.
fn measure(path: &Path, s: Setting, bytes: u64, time: Duration) -> Result<Measured> {
    prepare(path, s.space, bytes)?;
    let file = open(path, s.sync, false)?;
    let fd = types::Fd(file.as_raw_fd());
    let entries = u32::try_from(2 * s.depth.max(1))
        .context("depth")?
        .next_power_of_two();
    let mut ring: IoUring = if s.sqpoll {
        IoUring::builder()
            .setup_sqpoll(2000)
            .build(entries)
            .context("io_uring with SQPOLL")?
    } else {
        IoUring::new(entries).context("io_uring")?
    };
    let buffers: Vec<Aligned> = (0..s.depth)
        .map(|i| Aligned::new(s.block, 0x5a ^ (i as u8)))
        .collect();
    if s.fixed_buffers {
        let iovecs: Vec<libc::iovec> = buffers
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.ptr().cast_mut().cast(),
                iov_len: b.len,
            })
            .collect();
        // SAFETY: the buffers live in `buffers`, which outlives the ring's use of them (the ring
        // is dropped, and every operation completed, before `buffers` at the end of this
        // function).
        unsafe { ring.submitter().register_buffers(&iovecs) }.context("registering buffers")?;
    }
    // Each slot writes sequentially within its own region.
    let region = (bytes / s.depth as u64) / s.block as u64 * s.block as u64;
    if region < s.block as u64 {
        bail!(
            "file of {bytes} bytes too small for {} slots of {} B",
            s.depth,
            s.block
        );
    }
    let mut cursor = vec![0u64; s.depth];
    let len = u32::try_from(s.block).context("block size")?;
    let linked = s.sync == SyncMode::Fdatasync;
    let rw_flags = if s.sync == SyncMode::RwfDsync {
        libc::RWF_DSYNC
    } else {
        0
    };
    let submit_slot = |ring: &mut IoUring, slot: usize, cursor: &mut [u64]| -> Result<()> {
        let off = slot as u64 * region + cursor[slot];
        cursor[slot] = (cursor[slot] + u64::from(len)) % region;
        let ptr = buffers[slot].ptr();
        let write = if s.fixed_buffers {
            let index = u16::try_from(slot).context("slot")?;
            opcode::WriteFixed::new(fd, ptr, len, index)
                .offset(off)
                .rw_flags(rw_flags)
                .build()
        } else {
            opcode::Write::new(fd, ptr, len)
                .offset(off)
                .rw_flags(rw_flags)
                .build()
        };
        let user = (slot as u64) << 1;
        let mut sq = ring.submission();
        // SAFETY: the buffer at `ptr` lives in `buffers` until every operation completed
        // (the loop below drains the ring before returning).
        unsafe {
            if linked {
                sq.push(&write.flags(squeue::Flags::IO_LINK).user_data(user))
                    .ok()
                    .context("submission queue full")?;
                let sync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(user | 1);
                sq.push(&sync).ok().context("submission queue full")?;
            } else {
                sq.push(&write.user_data(user | 1))
                    .ok()
                    .context("submission queue full")?;
            }
        }
        Ok(())
    };
    let mut lat = Latencies::new();
    let begin = Instant::now();
    let mut started = vec![begin; s.depth];
    for slot in 0..s.depth {
        submit_slot(&mut ring, slot, &mut cursor)?;
    }
    let mut in_flight = s.depth;
    let mut done = 0u64;
    let mut cqes = Vec::with_capacity(2 * s.depth);
    while in_flight > 0 {
        ring.submit_and_wait(1).context("io_uring_enter")?;
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user, res) in &cqes {
            if res < 0 {
                bail!(
                    "{:?} of {}: {}",
                    if user & 1 == 1 && linked {
                        "fdatasync"
                    } else {
                        "write"
                    },
                    path.display(),
                    std::io::Error::from_raw_os_error(-res)
                );
            }
            if user & 1 == 0 {
                continue; // the write of a linked pair; its fdatasync completes the slot
            }
            let slot = usize::try_from(user >> 1).context("slot")?;
            lat.record(started[slot].elapsed());
            done += 1;
            if begin.elapsed() < time {
                started[slot] = Instant::now();
                submit_slot(&mut ring, slot, &mut cursor)?;
            } else {
                in_flight -= 1;
            }
        }
    }
    let secs = begin.elapsed().as_secs_f64();
    drop(ring);
    drop(buffers);
    Ok(Measured {
        ops_per_s: done as f64 / secs,
        mib_per_s: done as f64 * s.block as f64 / secs / f64::from(1 << 20),
        lat,
    })
}

fn kib(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

/// Runs the device experiments in a scratch directory under `scratch`.
///
/// # Errors
/// When the scratch file cannot be opened with O_DIRECT or an I/O fails.
pub fn run(scale: Scale, scratch: &Path) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("device-")
        .tempdir_in(scratch)
        .with_context(|| format!("scratch directory in {}", scratch.display()))?;
    let path: PathBuf = dir.path().join("device.dat");
    let time = scale.pick(Duration::from_millis(500), Duration::from_secs(2));
    let bytes: u64 = scale.pick(64 << 20, 256 << 20);
    let mut raw = Vec::new();
    let mut m = |s: Setting| -> Result<Measured> {
        let r = measure(&path, s, bytes, time)?;
        raw.push(r.json(&s));
        Ok(r)
    };

    // Queue depth.
    let depths: &[usize] = scale.pick(&[1, 4, 16], &[1, 2, 4, 8, 16, 32, 64]);
    let mut qd = Table::new(
        "4 KiB O_DIRECT writes against queue depth (written space)",
        &[
            "depth",
            "write+fdatasync ops/s",
            "p50 µs",
            "p99 µs",
            "write only ops/s",
            "p99 µs ",
        ],
    );
    let (mut synced, mut plain) = (Vec::new(), Vec::new());
    let mut qd1_sync = 0.0;
    let mut best_sync = (1usize, 0f64);
    for &depth in depths {
        let a = m(Setting {
            depth,
            ..Setting::base()
        })?;
        let b = m(Setting {
            depth,
            sync: SyncMode::None,
            ..Setting::base()
        })?;
        if depth == 1 {
            qd1_sync = a.ops_per_s;
        }
        if a.ops_per_s > best_sync.1 {
            best_sync = (depth, a.ops_per_s);
        }
        synced.push((depth as f64, a.ops_per_s));
        plain.push((depth as f64, b.ops_per_s));
        qd.row(vec![
            depth.to_string(),
            rate(a.ops_per_s),
            a.lat.us(0.5).to_string(),
            a.lat.us(0.99).to_string(),
            rate(b.ops_per_s),
            b.lat.us(0.99).to_string(),
        ]);
    }

    // Block size.
    let blocks: &[usize] = scale.pick(
        &[4 << 10, 64 << 10, 1 << 20],
        &[4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20],
    );
    let mut bs = Table::new(
        "Write + fdatasync at depth 1 against block size",
        &["block", "ops/s", "MiB/s", "p50 µs", "p99 µs"],
    );
    let mut bs_lat = Vec::new();
    for &block in blocks {
        let r = m(Setting {
            block,
            ..Setting::base()
        })?;
        bs_lat.push((block, r.lat.us(0.5)));
        bs.row(vec![
            kib(block),
            rate(r.ops_per_s),
            format!("{:.1}", r.mib_per_s),
            r.lat.us(0.5).to_string(),
            r.lat.us(0.99).to_string(),
        ]);
    }

    // How to sync.
    let mut how = Table::new(
        "Making a 4 KiB write durable, depth 1",
        &["method", "ops/s", "p50 µs", "p99 µs"],
    );
    let mut sync_rates = Vec::new();
    for (label, sync) in [
        ("write, then linked fdatasync", SyncMode::Fdatasync),
        ("write with RWF_DSYNC", SyncMode::RwfDsync),
        ("file opened O_DSYNC", SyncMode::ODsync),
    ] {
        let r = m(Setting {
            sync,
            ..Setting::base()
        })?;
        sync_rates.push((label, r.ops_per_s));
        how.row(vec![
            label.to_string(),
            rate(r.ops_per_s),
            r.lat.us(0.5).to_string(),
            r.lat.us(0.99).to_string(),
        ]);
    }

    // Registered buffers and SQPOLL.
    let mut knobs = Table::new(
        "Registered buffers and SQPOLL (4 KiB)",
        &["setting", "depth", "durable", "ops/s", "p99 µs"],
    );
    let mut knob_gain = Vec::new();
    for (depth, sync) in [(1, SyncMode::Fdatasync), (16, SyncMode::None)] {
        let plain = m(Setting {
            depth,
            sync,
            ..Setting::base()
        })?;
        let fixed = m(Setting {
            depth,
            sync,
            fixed_buffers: true,
            ..Setting::base()
        })?;
        let sqpoll = m(Setting {
            depth,
            sync,
            sqpoll: true,
            ..Setting::base()
        });
        let durable = if sync == SyncMode::None { "no" } else { "yes" };
        for (label, r) in [("plain", &plain), ("registered buffers", &fixed)] {
            knobs.row(vec![
                label.to_string(),
                depth.to_string(),
                durable.to_string(),
                rate(r.ops_per_s),
                r.lat.us(0.99).to_string(),
            ]);
        }
        knob_gain.push((
            "registered buffers",
            depth,
            fixed.ops_per_s / plain.ops_per_s,
        ));
        match sqpoll {
            Ok(r) => {
                knob_gain.push(("SQPOLL", depth, r.ops_per_s / plain.ops_per_s));
                knobs.row(vec![
                    "SQPOLL".to_string(),
                    depth.to_string(),
                    durable.to_string(),
                    rate(r.ops_per_s),
                    r.lat.us(0.99).to_string(),
                ]);
            }
            Err(e) => knobs.row(vec![
                format!("SQPOLL: unavailable ({e:#})"),
                depth.to_string(),
                durable.to_string(),
                "—".into(),
                "—".into(),
            ]),
        }
    }

    // Space.
    let mut space = Table::new(
        "4 KiB write + fdatasync at depth 1, by the space written",
        &["space", "ops/s", "p50 µs", "p99 µs"],
    );
    let mut space_rates = Vec::new();
    for (label, sp) in [
        ("fresh (the file grows)", Space::Fresh),
        ("fallocated (unwritten extents)", Space::Fallocated),
        ("written before (zero-filled)", Space::Written),
    ] {
        let r = m(Setting {
            space: sp,
            ..Setting::base()
        })?;
        space_rates.push((sp, r.ops_per_s));
        space.row(vec![
            label.to_string(),
            rate(r.ops_per_s),
            r.lat.us(0.5).to_string(),
            r.lat.us(0.99).to_string(),
        ]);
    }

    let written = space_rates
        .iter()
        .find(|(s, _)| *s == Space::Written)
        .map_or(0.0, |r| r.1);
    let fresh = space_rates
        .iter()
        .find(|(s, _)| *s == Space::Fresh)
        .map_or(0.0, |r| r.1);
    let fallocated = space_rates
        .iter()
        .find(|(s, _)| *s == Space::Fallocated)
        .map_or(0.0, |r| r.1);
    let best_method = sync_rates
        .iter()
        .copied()
        .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let big = bs_lat.last().copied().unwrap_or((4096, 0));
    let small = bs_lat.first().copied().unwrap_or((4096, 0));
    let finding = format!(
        "One stream of durable 4 KiB writes makes {} ops/s; {} concurrent ones make {} ops/s ({:.1}×), \
         so the device overlaps syncs. A {} write syncs in {} µs against {} µs for {} (median): \
         {:.0}× the bytes for {:.1}× the time, which is what group commit exploits. \
         Written-before space syncs at {} ops/s, fallocated at {} ({:.2}×) and growing files at {} \
         ({:.2}×): a sync into new extents commits metadata too. The fastest way to make a write \
         durable here was \"{}\" ({} ops/s). Registered buffers and SQPOLL changed throughput by \
         {}.",
        rate(qd1_sync),
        best_sync.0,
        rate(best_sync.1),
        best_sync.1 / qd1_sync.max(1e-9),
        kib(big.0),
        big.1,
        small.1,
        kib(small.0),
        big.0 as f64 / small.0 as f64,
        big.1 as f64 / (small.1 as f64).max(1.0),
        rate(written),
        rate(fallocated),
        fallocated / written.max(1e-9),
        rate(fresh),
        fresh / written.max(1e-9),
        best_method.0,
        rate(best_method.1),
        knob_gain
            .iter()
            .map(|(k, d, g)| format!("{g:.2}× ({k}, depth {d})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dsync = sync_rates
        .iter()
        .find(|r| r.0 == "file opened O_DSYNC")
        .map_or(0.0, |r| r.1);
    let fdatasync = sync_rates
        .iter()
        .find(|r| r.0 == "write, then linked fdatasync")
        .map_or(0.0, |r| r.1);
    let recommendation =
        format!(
        "The WAL under `sync` writes its segments O_DSYNC (a write is durable when it completes) \
         — {:.2}× the rate of a write followed by fdatasync here: {}. Segments are zero-filled \
         before use and recycled (`wal_segment_bytes`, 64 MiB; the next one is prepared off the \
         write path) — keep it: fresh or fallocated space gives {:.2}×/{:.2}× of the durable rate. \
         The WAL keeps one batch in flight and gathers the next behind it; with {:.1}× more \
         throughput at depth {} the device would reward two batches in flight (a WAL change, not \
         a setting). Registered buffers and SQPOLL stay off: their gains were {}.",
        dsync / fdatasync.max(1e-9),
        if dsync >= 0.97 * fdatasync { "keep it" } else { "reconsider it" },
        fresh / written.max(1e-9),
        fallocated / written.max(1e-9),
        best_sync.1 / qd1_sync.max(1e-9),
        best_sync.0,
        knob_gain
            .iter()
            .map(|(k, d, g)| format!("{g:.2}× ({k}, depth {d})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Report {
        name: "device".into(),
        question: "What does this disk do with small durable writes, and which way of issuing them is fastest?".into(),
        method: format!(
            "io_uring (the `io-uring` crate) on an O_DIRECT file in the scratch directory; each \
             point runs {} ms with `depth` independent writers, each writing its own region \
             sequentially; `fdatasync` is linked to its write (IOSQE_IO_LINK) and latency runs \
             from submitting the write to completing its sync. Files are {} MiB, zero-filled \
             and synced first unless the row says otherwise.",
            time.as_millis(),
            bytes >> 20
        ),
        quick: scale.quick,
        tables: vec![qd, bs, how, knobs, space],
        chart: Chart {
            title: "4 KiB O_DIRECT writes against queue depth".into(),
            x_label: "queue depth".into(),
            y_label: "ops/s".into(),
            log2_x: true,
            series: vec![
                Series {
                    label: "write + fdatasync".into(),
                    points: synced,
                },
                Series {
                    label: "write only".into(),
                    points: plain,
                },
            ],
        },
        finding,
        recommendation,
        raw: serde_json::Value::Array(raw),
    })
}
