//! `executor`: how the glommio executor's settings change a request's round trip, measured with
//! a 64-byte echo over loopback between a server executor and a client executor: spinning
//! before parking, pinning to CPUs, and one against two server executors.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dynacore_runtime::{self as runtime, ExecutorSpec};
use serde_json::json;

use crate::report::{rate, Chart, Latencies, Report, Scale, Series, Table};

const FRAME: usize = 64;
const IO_MEMORY: usize = 512 << 10;

/// One executor configuration.
#[derive(Clone, Copy, Debug)]
struct Setting {
    spin: Option<Duration>,
    pinned: bool,
    servers: usize,
    connections: usize,
}

#[derive(Debug)]
struct Point {
    ops_per_s: f64,
    lat: Latencies,
}

/// Serves `connections` echo connections on one executor, then returns when they all closed.
async fn serve(listener: runtime::TcpListener, connections: usize) -> Result<()> {
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut s = runtime::timeout(Duration::from_secs(10), listener.accept())
            .await
            .ok_or_else(|| anyhow!("no client connected within 10 s"))??;
        tasks.push(runtime::spawn(async move {
            let mut buf = [0u8; FRAME];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    Ok(())
}

fn measure(s: Setting, time: Duration) -> Result<Point> {
    let cpus = runtime::online_cpus().context("online CPUs")?;
    let cpu = |i: usize| s.pinned.then(|| cpus[i % cpus.len()]);
    // Servers on the first CPUs, the client on the last.
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..s.servers {
        let per = s.connections / s.servers + usize::from(i < s.connections % s.servers);
        let (tx, rx) = mpsc::channel::<std::io::Result<SocketAddr>>();
        let spec = ExecutorSpec {
            name: format!("tuning-echo-{i}"),
            cpu: cpu(i),
            io_memory_bytes: IO_MEMORY,
            spin_before_park: s.spin,
        };
        servers.push(runtime::spawn_executor_with(&spec, move || async move {
            let bound = runtime::TcpListener::bind("127.0.0.1:0".parse().expect("an address"));
            let listener = match bound.and_then(|l| l.local_addr().map(|a| (l, a))) {
                Ok((l, a)) => {
                    let _ = tx.send(Ok(a));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            serve(listener, per).await
        })?);
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .context("echo server did not start")??;
        addrs.push((addr, per));
    }
    let client = ExecutorSpec {
        name: "tuning-client".into(),
        cpu: cpu(s.servers),
        io_memory_bytes: IO_MEMORY,
        spin_before_park: s.spin,
    };
    let handle = runtime::spawn_executor_with(&client, move || async move {
        let total = Rc::new(RefCell::new(Latencies::new()));
        let mut streams = Vec::new();
        for (addr, per) in addrs {
            for _ in 0..per {
                streams.push(runtime::TcpStream::connect(addr, Duration::from_secs(5)).await?);
            }
        }
        let begin = Instant::now();
        let mut tasks = Vec::new();
        for mut st in streams {
            let total = total.clone();
            tasks.push(runtime::spawn(async move {
                let mut lat = Latencies::new();
                let mut buf = [7u8; FRAME];
                while begin.elapsed() < time {
                    let t = Instant::now();
                    st.write_all(&buf).await?;
                    st.read_exact(&mut buf).await?;
                    lat.record(t.elapsed());
                }
                total.borrow_mut().merge(&lat);
                Ok::<(), std::io::Error>(())
            }));
        }
        for t in tasks {
            t.await?;
        }
        let secs = begin.elapsed().as_secs_f64();
        let lat = Rc::try_unwrap(total)
            .map_err(|_| anyhow!("a connection task outlived the run"))?
            .into_inner();
        Ok::<(f64, Latencies), anyhow::Error>((lat.count() as f64 / secs, lat))
    })?;
    let (ops_per_s, lat) = handle.join()??;
    for s in servers {
        s.join()??;
    }
    Ok(Point { ops_per_s, lat })
}

/// Runs the executor experiments.
///
/// # Errors
/// When an executor cannot start or a connection fails.
pub fn run(scale: Scale) -> Result<Report> {
    let time = scale.pick(Duration::from_millis(1000), Duration::from_secs(3));
    let many = 32;
    let base = Setting {
        spin: None,
        pinned: false,
        servers: 1,
        connections: 1,
    };
    let mut raw = Vec::new();
    let mut m = |label: &str, s: Setting| -> Result<Point> {
        let p = measure(s, time)?;
        raw.push(json!({
            "label": label, "spin_us": s.spin.map(|d| d.as_micros()), "pinned": s.pinned,
            "servers": s.servers, "connections": s.connections,
            "ops_per_s": p.ops_per_s, "latency": p.lat.summary(),
        }));
        Ok(p)
    };
    let mut spin_t = Table::new(
        "Spin before park (client and server executors alike, pinned: glommio ignores spinning for unpinned executors)",
        &["spin", "connections", "round trips/s", "p50 µs", "p99 µs"],
    );
    let spins: &[u64] = scale.pick(&[0, 50, 200], &[0, 10, 50, 100, 200, 500]);
    let mut series = Vec::new();
    let mut rtt_by_spin = Vec::new();
    for conns in [1, many] {
        let mut line = Vec::new();
        for &us in spins {
            let spin = (us > 0).then(|| Duration::from_micros(us));
            let p = m(
                "spin",
                Setting {
                    spin,
                    pinned: true,
                    connections: conns,
                    ..base
                },
            )?;
            spin_t.row(vec![
                if us == 0 {
                    "none".into()
                } else {
                    format!("{us} µs")
                },
                conns.to_string(),
                rate(p.ops_per_s),
                p.lat.us(0.5).to_string(),
                p.lat.us(0.99).to_string(),
            ]);
            line.push((us as f64, p.ops_per_s));
            rtt_by_spin.push((conns, us, p.lat.us(0.5), p.ops_per_s));
        }
        series.push(Series {
            label: format!("{conns} connection(s)"),
            points: line,
        });
    }
    let mut pin_t = Table::new(
        "Pinning, and one against two server executors",
        &[
            "setting",
            "connections",
            "round trips/s",
            "p50 µs",
            "p99 µs",
        ],
    );
    let mut pin_rates = Vec::new();
    for (label, s) in [
        (
            "unpinned, 1 server executor",
            Setting {
                connections: many,
                ..base
            },
        ),
        (
            "pinned, 1 server executor",
            Setting {
                pinned: true,
                connections: many,
                ..base
            },
        ),
        (
            "unpinned, 2 server executors",
            Setting {
                servers: 2,
                connections: many,
                ..base
            },
        ),
        (
            "pinned, 2 server executors",
            Setting {
                pinned: true,
                servers: 2,
                connections: many,
                ..base
            },
        ),
        ("unpinned, 1 connection", base),
        (
            "pinned, 1 connection",
            Setting {
                pinned: true,
                ..base
            },
        ),
    ] {
        let p = m(label, s)?;
        pin_t.row(vec![
            label.to_string(),
            s.connections.to_string(),
            rate(p.ops_per_s),
            p.lat.us(0.5).to_string(),
            p.lat.us(0.99).to_string(),
        ]);
        pin_rates.push((label, p.ops_per_s, p.lat.us(0.5)));
    }
    let of = |l: &str| pin_rates.iter().find(|p| p.0 == l).map_or(0.0, |p| p.1);
    let one_no_spin = rtt_by_spin
        .iter()
        .find(|r| r.0 == 1 && r.1 == 0)
        .map_or(0, |r| r.2);
    let best_spin = rtt_by_spin
        .iter()
        .filter(|r| r.0 == 1)
        .min_by_key(|r| r.2)
        .copied()
        .unwrap_or((1, 0, 0, 0.0));
    let finding = format!(
        "One connection's median round trip is {one_no_spin} µs without spinning and {} µs \
         spinning {} µs. With {many} connections, pinning gives {:.2}× the round trips of \
         unpinned, and two server executors {:.2}× one (unpinned) on this {}-CPU machine, where \
         the client takes a CPU too.",
        best_spin.2,
        best_spin.1,
        of("pinned, 1 server executor") / of("unpinned, 1 server executor").max(1e-9),
        of("unpinned, 2 server executors") / of("unpinned, 1 server executor").max(1e-9),
        runtime::online_cpus().map_or(0, |c| c.len())
    );
    let spin_gain = one_no_spin as f64 / (best_spin.2 as f64).max(1.0);
    let pin_gain = of("pinned, 1 server executor") / of("unpinned, 1 server executor").max(1e-9);
    let recommendation = format!(
        "Pinning (`pin = true`, the node's default; `--no-pin`) {}. Spinning before park {}: the \
         node has it as `spin_before_park_us` (`--spin-before-park-us`), default 0 — on this \
         2-CPU machine a node spinning 50 µs served YCSB C at 0.92× the rate and 5× the \
         open-loop p99 of one that parks (README, \"Performance (issue 18)\"): its spinning took \
         the CPU its load generator needed. On cores of its own a node may gain from it. One \
         executor per CPU (`cores`) stays the default; on a machine shared with its load \
         generator `--cores 1` leaves a CPU to the client, which is how `vs-redis.sh` runs.",
        if pin_gain >= 1.03 {
            format!("gave {pin_gain:.2}× the round trips: keep it")
        } else if pin_gain >= 0.97 {
            format!("made no difference here ({pin_gain:.2}×); it stays on for nodes on cores of their own (no migrations, warm caches)")
        } else {
            format!("gave {pin_gain:.2}× here, where the client shares the two CPUs with the pinned executors; it stays on for nodes on cores of their own (no migrations, warm caches)")
        },
        if spin_gain >= 1.2 {
            format!("cut a lone request's median round trip {spin_gain:.2}×")
        } else {
            format!("changed a lone request's median round trip by {spin_gain:.2}×")
        }
    );
    Ok(Report {
        name: "executor".into(),
        question:
            "How do spinning before park, pinning and the number of executors change a round trip?"
                .into(),
        method: format!(
            "A {FRAME}-byte echo over loopback TCP between glommio executors (our runtime \
             module's `spawn_executor_with`); `connections` client connections each send a \
             frame and wait for it back, one after another, for {} ms.",
            time.as_millis()
        ),
        quick: scale.quick,
        tables: vec![spin_t, pin_t],
        chart: Chart {
            title: "Echo round trips/s against spin before park".into(),
            x_label: "spin before park (µs)".into(),
            y_label: "round trips/s".into(),
            log2_x: false,
            series,
        },
        finding,
        recommendation,
        raw: serde_json::Value::Array(raw),
    })
}
