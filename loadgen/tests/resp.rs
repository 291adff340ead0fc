//! `loadgen`'s resp driver against Redis-protocol servers the tests start themselves: a small
//! one written here (a map behind `GET`/`SET`, with faults on demand), and `redis-server`
//! itself when it is installed (`.ci/run` installs it; there it must be found). Every wait
//! is bounded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynacore_client::Quorum;
use dynacore_loadgen::driver::DriverKind;
use dynacore_loadgen::recording::Latencies;
use dynacore_loadgen::resp::{self, Reply};
use dynacore_loadgen::run::{run, PhaseReport, RunConfig};
use dynacore_loadgen::workload::{OpKind, Workload};

fn config(target: SocketAddr, workload: Workload) -> RunConfig {
    RunConfig {
        targets: vec![target],
        driver: DriverKind::Resp,
        workload,
        distribution: None,
        records: 300,
        operations: None,
        duration: Duration::from_secs(2),
        value_size: 1024,
        key_prefix: "user".into(),
        connections: 4,
        pipeline: 1,
        threads: 1,
        pin: false,
        rate: None,
        w: Quorum::Default,
        r: Quorum::Default,
        load: true,
        run: true,
        seed: 3,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(2),
    }
}

fn go(config: &RunConfig) -> (Option<PhaseReport>, Option<PhaseReport>) {
    run(config, &mut |_| {}).expect("the run starts")
}

/// Faults a [`MiniServer`] injects.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Every `fail_every`-th `SET` is refused with `-OOM` (0: none).
    fail_every: u64,
    /// Before answering its `n`-th command (counted over all connections), the server
    /// stalls for this long, once.
    stall: Option<(u64, Duration)>,
}

/// A Redis-protocol server: `GET` and `SET` over a shared map, on a free loopback port,
/// with [`Faults`]; `stop` closes every connection and refuses new ones.
struct MiniServer {
    addr: SocketAddr,
    map: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl MiniServer {
    fn start(fail_every: u64) -> MiniServer {
        MiniServer::with_faults(Faults {
            fail_every,
            stall: None,
        })
    }

    fn with_faults(faults: Faults) -> MiniServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let map = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let (m, s) = (map.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (m, s, counts) = (m.clone(), s.clone(), counts.clone());
                        std::thread::spawn(move || serve(stream, &m, &s, &counts, faults));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        MiniServer { addr, map, stop }
    }
}

impl Drop for MiniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut stream: TcpStream,
    map: &Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    stop: &AtomicBool,
    (sets, commands): &(AtomicU64, AtomicU64),
    faults: Faults,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let mut out = Vec::new();
        // Commands are arrays of bulk strings: the reply parser reads them too.
        while let Ok(Some((cmd, used))) = resp::parse(&buf) {
            buf.drain(..used);
            let Reply::Array(Some(args)) = cmd else {
                return;
            };
            let n = commands.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some((at, pause)) = faults.stall {
                if n == at {
                    std::thread::sleep(pause);
                }
            }
            let args: Vec<Vec<u8>> = args
                .into_iter()
                .filter_map(|a| match a {
                    Reply::Bulk(Some(b)) => Some(b),
                    _ => None,
                })
                .collect();
            match args.first().map(Vec::as_slice) {
                Some(b"GET") if args.len() == 2 => match map.lock().expect("map").get(&args[1]) {
                    Some(v) => {
                        out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
                        out.extend_from_slice(v);
                        out.extend_from_slice(b"\r\n");
                    }
                    None => out.extend_from_slice(b"$-1\r\n"),
                },
                Some(b"SET") if args.len() == 3 => {
                    let n = sets.fetch_add(1, Ordering::Relaxed) + 1;
                    if faults.fail_every > 0 && n.is_multiple_of(faults.fail_every) {
                        out.extend_from_slice(b"-OOM command not allowed\r\n");
                    } else {
                        map.lock()
                            .expect("map")
                            .insert(args[1].clone(), args[2].clone());
                        out.extend_from_slice(b"+OK\r\n");
                    }
                }
                _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
            }
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

#[test]
fn a_workload_runs_pipelined_against_a_resp_server() {
    let server = MiniServer::start(0);
    let mut c = config(server.addr, Workload::A);
    c.pipeline = 8;
    let (load, ran) = go(&c);
    let load = load.expect("load phase");
    assert_eq!(load.ops[&OpKind::Insert].count(), 300);
    assert!(load.ops[&OpKind::Insert].errors().is_empty());
    // Every record is on the server, with a value of the configured size.
    {
        let map = server.map.lock().expect("map");
        assert_eq!(map.len(), 300);
        assert!(map.values().all(|v| v.len() == 1024));
    }
    let ran = ran.expect("run phase");
    for op in [OpKind::Read, OpKind::Update] {
        let l = &ran.ops[&op];
        assert!(l.count() > 10, "{op:?}: {}", l.count());
        assert!(l.errors().is_empty(), "{op:?}: {:?}", l.errors());
    }
    assert_eq!(ran.not_found, 0);

    // Open loop, workload F: 2 s at 250/s, each on schedule.
    let mut f = config(server.addr, Workload::F);
    f.load = false;
    f.rate = Some(250.0);
    f.pipeline = 4;
    let (_, ran) = go(&f);
    let ran = ran.expect("run phase");
    let total: u64 = ran.ops.values().map(Latencies::count).sum();
    let failed: u64 = ran.ops.values().flat_map(|l| l.errors().values()).sum();
    assert_eq!(failed, 0);
    assert!((500..=501).contains(&total), "{total} operations");
    assert!(ran.ops.contains_key(&OpKind::ReadModifyWrite));

    // Workload D inserts new keys: two threads never insert the same one.
    let mut d = config(server.addr, Workload::D);
    d.load = false;
    d.threads = 2;
    d.operations = Some(2000);
    let before = server.map.lock().expect("map").len();
    let (_, ran) = go(&d);
    let inserts = ran.expect("run phase").ops[&OpKind::Insert].count();
    assert!(inserts > 50, "{inserts}");
    let after = server.map.lock().expect("map").len();
    assert_eq!(
        after - before,
        usize::try_from(inserts).expect("fits"),
        "distinct keys"
    );
}

#[test]
fn server_errors_and_a_dead_server_are_counted_by_kind() {
    // Every 10th SET is refused: the refusals are `oom` errors, the rest succeed.
    let server = MiniServer::start(10);
    let mut c = config(server.addr, Workload::A);
    c.operations = Some(400);
    c.pipeline = 3;
    let (load, ran) = go(&c);
    let inserts = &load.expect("load phase").ops[&OpKind::Insert];
    assert_eq!(
        inserts.errors().get("oom"),
        Some(&30),
        "{:?}",
        inserts.errors()
    );
    assert_eq!(inserts.count(), 270);
    let ran = ran.expect("run phase");
    let updates = &ran.ops[&OpKind::Update];
    assert!(updates.errors().get("oom").is_some_and(|&n| n > 0));
    // Reads of the refused records find nothing: counted, not failed.
    assert!(ran.ops[&OpKind::Read].errors().is_empty());

    // The server goes away in the middle of a run: the run ends on time, and what failed is
    // counted as connection or connect errors.
    let server = MiniServer::start(0);
    let mut c = config(server.addr, Workload::C);
    c.load = false;
    c.duration = Duration::from_secs(2);
    let stop = server.stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let (_, ran) = go(&c);
    assert!(started.elapsed() < Duration::from_secs(20));
    let reads = &ran.expect("run phase").ops[&OpKind::Read];
    let failed: u64 = reads.errors().values().sum();
    assert!(failed > 0, "{:?}", reads.errors());
    assert!(
        reads
            .errors()
            .keys()
            .all(|k| ["connection", "connect", "timeout"].contains(&k.as_str())),
        "{:?}",
        reads.errors()
    );
    drop(server);

    // No target at all is an error before anything starts, not a panic.
    let mut none = config(SocketAddr::from(([127, 0, 0, 1], 1)), Workload::C);
    none.targets.clear();
    let e = run(&none, &mut |_| {}).expect_err("no target");
    assert!(e.to_string().contains("no target"), "{e}");
}

#[test]
fn a_stall_counts_against_every_request_it_held_back_and_a_timeout_fails_only_its_batch() {
    // One connection, open loop at 200/s for 2 s; the server stalls 500 ms once, a quarter
    // of the way in. Measured from their due times, the ~100 requests due during the stall
    // waited up to 500 ms: p99 is at least 400 ms. (A closed loop would show one slow request.)
    let server = MiniServer::with_faults(Faults {
        fail_every: 0,
        stall: Some((300 + 100, Duration::from_millis(500))),
    });
    let mut c = config(server.addr, Workload::C);
    c.connections = 1;
    let (_, _) = go(&RunConfig {
        run: false,
        ..c.clone()
    });
    c.load = false;
    c.rate = Some(200.0);
    let (_, ran) = go(&c);
    let reads = &ran.expect("run phase").ops[&OpKind::Read];
    assert!(reads.errors().is_empty(), "{:?}", reads.errors());
    assert!((400..=401).contains(&reads.count()), "{}", reads.count());
    assert!(
        reads.quantile(0.99) >= Duration::from_millis(400),
        "p99 {:?}",
        reads.quantile(0.99)
    );

    // A stall longer than the timeout, in the middle of a pipelined batch: that batch's
    // operations fail as timeouts, the connection is opened again, and everything else
    // succeeds; nothing is lost from the counts.
    let server = MiniServer::with_faults(Faults {
        fail_every: 0,
        stall: Some((300 + 50, Duration::from_millis(1500))),
    });
    let mut c = config(server.addr, Workload::C);
    c.timeout = Duration::from_millis(500);
    c.pipeline = 4;
    c.connections = 2;
    c.operations = Some(200);
    let (load, ran) = go(&c);
    assert_eq!(load.expect("load").ops[&OpKind::Insert].count(), 300);
    let reads = &ran.expect("run phase").ops[&OpKind::Read];
    let timeouts = reads.errors().get("timeout").copied().unwrap_or(0);
    assert!((1..=4).contains(&timeouts), "{:?}", reads.errors());
    assert_eq!(reads.errors().len(), 1, "{:?}", reads.errors());
    assert_eq!(reads.count() + timeouts, 200);
}

/// `redis-server` on a free loopback port, stopped when dropped.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn the_same_workload_runs_against_redis_itself() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        // CI installs redis-server: there, its absence is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed (apt-get install -y redis-server)"
        );
        eprintln!("redis-server is not installed: the test against Redis itself is skipped");
        return;
    }
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let _redis = Redis(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = config(addr, Workload::A);
    c.pipeline = 4;
    let (load, ran) = go(&c);
    assert_eq!(load.expect("load phase").ops[&OpKind::Insert].count(), 300);
    let ran = ran.expect("run phase");
    for op in [OpKind::Read, OpKind::Update] {
        let l = &ran.ops[&op];
        assert!(l.count() > 10, "{op:?}: {}", l.count());
        assert!(l.errors().is_empty(), "{op:?}: {:?}", l.errors());
    }
    assert_eq!(ran.not_found, 0);
    // Open loop, workload C, through the binary.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--driver", "resp", "--target", &addr.to_string()])
        .args(["--workload", "c", "--records", "300", "--rate", "300"])
        .args(["--duration", "2s", "--quiet"])
        .output()
        .expect("loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("resp driver") && text.contains("read"),
        "{text}"
    );
    // The resp driver has no quorums: asking for one is a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--driver",
            "resp",
            "--target",
            &addr.to_string(),
            "--w",
            "2",
        ])
        .output()
        .expect("loadgen");
    assert_eq!(out.status.code(), Some(2));
}
