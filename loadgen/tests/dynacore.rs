//! `loadgen`'s native and http drivers against a real node (started in this process, on free
//! loopback ports, data in a disk-backed temporary directory): 2-second closed- and open-loop
//! runs, pipelining, the binary's reports (JSON, `.hgrm`, plot, comparison) and its exit code
//! for an unreachable target. Every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use dynacore_client::Quorum;
use dynacore_loadgen::driver::DriverKind;
use dynacore_loadgen::recording::Latencies;
use dynacore_loadgen::run::{run, PhaseReport, RunConfig};
use dynacore_loadgen::workload::{OpKind, Workload};
use dynacore_net::node::{self, NodeConfig};

fn config(target: SocketAddr, workload: Workload) -> RunConfig {
    RunConfig {
        targets: vec![target],
        driver: DriverKind::Native,
        workload,
        distribution: None,
        records: 500,
        operations: None,
        duration: Duration::from_secs(2),
        value_size: 1024,
        key_prefix: "lg".into(),
        connections: 8,
        pipeline: 1,
        threads: 1,
        pin: false,
        rate: None,
        w: Quorum::Default,
        r: Quorum::Default,
        load: true,
        run: true,
        seed: 7,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(5),
    }
}

fn go(config: &RunConfig) -> Result<(Option<PhaseReport>, Option<PhaseReport>), String> {
    run(config, &mut |_| {}).map_err(|e| e.to_string())
}

#[test]
fn workloads_run_against_a_real_node_closed_and_open_loop() {
    let dir = tempfile::Builder::new()
        .prefix("dynacore-loadgen-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let c = NodeConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
        cores: Some(1),
        pin: false,
        ..NodeConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let node = std::thread::spawn(move || {
        node::run(c, |ready| {
            let _ = tx.send((ready.listen, ready.http));
        })
    });
    let (target, http) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the node started");

    // Workload A, closed loop: the load inserts every record, the run reads and updates.
    let (load, ran) = go(&config(target, Workload::A)).expect("run");
    let load = load.expect("load phase");
    let inserts = &load.ops[&OpKind::Insert];
    assert_eq!(inserts.count(), 500);
    assert!(inserts.errors().is_empty(), "{:?}", inserts.errors());
    let ran = ran.expect("run phase");
    for op in [OpKind::Read, OpKind::Update] {
        let l = &ran.ops[&op];
        assert!(l.count() > 10, "{op:?}: {}", l.count());
        assert!(l.errors().is_empty(), "{op:?}: {:?}", l.errors());
    }
    assert_eq!(ran.not_found, 0, "every read finds a loaded record");
    assert!(ran.elapsed >= Duration::from_secs(2));

    // Workload F, open loop at 300/s for 2 s: about 600 operations, each on schedule.
    let mut open = config(target, Workload::F);
    open.load = false;
    open.rate = Some(300.0);
    let (_, ran) = go(&open).expect("run");
    let ran = ran.expect("run phase");
    let total: u64 = ran.ops.values().map(Latencies::count).sum();
    let failed: u64 = ran.ops.values().flat_map(|l| l.errors().values()).sum();
    assert_eq!(failed, 0, "{:?}", ran.ops);
    assert!((600..=601).contains(&total), "{total} operations");
    assert!(ran.ops.contains_key(&OpKind::ReadModifyWrite));
    // The client's own lateness is measured for every operation the schedule sent.
    let lag = ran
        .schedule_lag
        .as_ref()
        .expect("open loop measures its lag");
    assert_eq!(lag.len(), total);

    // Workload E: scans are skipped (the native driver cannot scan), inserts run.
    let mut e = config(target, Workload::E);
    e.load = false;
    e.operations = Some(200);
    let (_, ran) = go(&e).expect("run");
    let ran = ran.expect("run phase");
    assert_eq!(ran.skipped, 190);
    assert_eq!(ran.ops[&OpKind::Insert].count(), 10);

    // The http driver, closed loop with 4 requests pipelined on each connection: the same
    // records, read and updated through the HTTP API.
    let mut h = config(http, Workload::A);
    h.driver = DriverKind::Http;
    h.load = false;
    h.pipeline = 4;
    h.connections = 4;
    h.w = Quorum::Count(1);
    let (_, ran) = go(&h).expect("run");
    let ran = ran.expect("run phase");
    for op in [OpKind::Read, OpKind::Update] {
        let l = &ran.ops[&op];
        assert!(l.count() > 10, "{op:?}: {}", l.count());
        assert!(l.errors().is_empty(), "{op:?}: {:?}", l.errors());
    }
    assert_eq!(ran.not_found, 0, "every read finds a loaded record");
    assert!(!ran.timeline.is_empty());
    // Open loop over HTTP, workload F (read-modify-writes as a pipelined GET and PUT).
    let mut h = config(http, Workload::F);
    h.driver = DriverKind::Http;
    h.load = false;
    h.rate = Some(200.0);
    let (_, ran) = go(&h).expect("run");
    let ran = ran.expect("run phase");
    let total: u64 = ran.ops.values().map(Latencies::count).sum();
    assert!((400..=401).contains(&total), "{total} operations");
    assert!(ran.ops.values().all(|l| l.errors().is_empty()));
    // A quorum the node cannot meet is an error counted by kind, not a crash.
    let mut h = config(http, Workload::C);
    h.driver = DriverKind::Http;
    h.load = false;
    h.operations = Some(20);
    h.r = Quorum::Count(3);
    let (_, ran) = go(&h).expect("run");
    let reads = &ran.expect("run phase").ops[&OpKind::Read];
    assert_eq!(
        reads.errors().values().sum::<u64>(),
        20,
        "{:?}",
        reads.errors()
    );
    assert_eq!(reads.count(), 0);

    // The binary: an unreachable target is a message and exit code 2; so is a bad flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", "127.0.0.1:1", "--duration", "1s"])
        .output()
        .expect("loadgen");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--workload", "z"])
        .output()
        .expect("loadgen");
    assert_eq!(out.status.code(), Some(2));
    // The binary against the node, with a JSON report.
    let json = dir.path().join("c.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            &target.to_string(),
            "--workload",
            "c",
            "--records",
            "500",
        ])
        .args(["--key-prefix", "lg", "--operations", "300", "--json"])
        .arg(&json)
        .output()
        .expect("loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("read"), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    assert_eq!(report["run"]["operations"]["read"]["count"], 300);
    assert_eq!(report["config"]["workload"], "C");

    // The same through HTTP, with every report: .hgrm distributions, a plot, a comparison.
    let json_http = dir.path().join("c-http.json");
    let hdr = dir.path().join("c-http.hgrm");
    let svg = dir.path().join("c-http.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--driver", "http", "--target", &http.to_string()])
        .args(["--workload", "c", "--records", "500", "--key-prefix", "lg"])
        .args(["--operations", "300", "--pipeline", "2", "--json"])
        .arg(&json_http)
        .arg("--hdr")
        .arg(&hdr)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hgrm = std::fs::read_to_string(&hdr).expect("hgrm");
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("Total count    =          300"),
        "{hgrm}"
    );
    assert!(dir.path().join("c-http.hgrm.read.hgrm").exists());
    let plot = std::fs::read_to_string(&svg).expect("plot");
    assert!(plot.starts_with("<svg") && plot.contains("read"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--compare")
        .arg(&json)
        .arg(&json_http)
        .output()
        .expect("loadgen");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run / read:") && text.contains("B/A"),
        "{text}"
    );
    assert!(text.contains("http driver"), "{text}");

    // Stop the node (its handler takes this process's SIGTERM) and wait for it.
    let me = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &me])
        .status();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(node.join());
    });
    let stopped = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node stops");
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
}
