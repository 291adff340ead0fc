//! Scale-out: nodes join, leave, are replaced and removed while writes go on; every
//! acknowledged key ends up on every replica `/cluster/endpoints/{key}` lists (checked through
//! `/internal/local/{key}`), and two changes started at once leave one going on.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{dynacore, http, start, start_on, temp_dir, wait_exit, wait_within, HttpConn, Node};

/// Moves stream and settle; each wait is bounded by this.
const MOVE_BOUND: Duration = Duration::from_secs(90);

fn cluster(http_addr: SocketAddr) -> serde_json::Value {
    http(http_addr, "GET", "/cluster", &[], b"").json()
}

fn node_id(n: &Node) -> String {
    cluster(n.http)["nodes"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// The ring as `http_addr` sees it is `want` nodes, all up and normal, with no change in
/// progress.
fn settled(http_addr: SocketAddr, want: usize) -> bool {
    let c = cluster(http_addr);
    let ring: Vec<&serde_json::Value> = c["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["in_ring"].as_bool() == Some(true))
        .collect();
    c["moving"].is_null()
        && ring.len() == want
        && ring
            .iter()
            .all(|n| n["up"].as_bool() == Some(true) && n["state"] == "normal")
}

fn wait_settled(nodes: &[&Node], want: usize, what: &str) {
    for n in nodes {
        wait_within(what, MOVE_BOUND, || settled(n.http, want));
    }
}

/// Three nodes of `cores` cores in `dir` (b and c join through a), settled; and a's address
/// for later nodes to join through.
fn three(dir: &std::path::Path, cores: u32) -> (Node, Node, Node, String) {
    three_on("127.0.0.1", dir, cores)
}

/// As [`three`], every port on loopback address `ip`.
fn three_on(ip: &str, dir: &std::path::Path, cores: u32) -> (Node, Node, Node, String) {
    let a = start_on(ip, &dir.join("a"), cores, &[]);
    let seed = a.addr.to_string();
    let b = start_on(ip, &dir.join("b"), cores, &["--seeds", &seed]);
    let c = start_on(ip, &dir.join("c"), cores, &["--seeds", &seed]);
    wait_settled(&[&a, &b, &c], 3, "three nodes form a ring");
    (a, b, c, seed)
}

/// Kills `node` with -9 and waits until `seen_by` holds it as down; its id.
fn kill_until_down(mut node: Node, seen_by: &Node) -> String {
    let id = node_id(&node);
    node.child.kill().expect("kill -9");
    let _ = node.child.wait();
    wait_within(&format!("{id} is down"), MOVE_BOUND, || {
        cluster(seen_by.http)["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == id.as_str() && n["up"] == false)
    });
    id
}

/// Writes `prefix{i}` for `0..count` through `via`; the keys acknowledged.
fn write_keys(via: SocketAddr, prefix: &str, count: usize) -> Vec<String> {
    let mut conn = HttpConn::open(via);
    let mut acked = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let body = format!("{{\"value\": \"v-{key}\"}}");
        let r = conn.request("PUT", &format!("/keys/{key}"), &[], body.as_bytes());
        if r.status < 300 {
            acked.push(key);
        }
    }
    acked
}

/// Writes keys through `via` until `stop`, recording the acknowledged ones (a bounded count).
fn writer(
    via: SocketAddr,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = HttpConn::open(via);
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) && i < 200_000 {
            let key = format!("{prefix}{i}");
            let body = format!("{{\"value\": \"v-{key}\"}}");
            if conn
                .request("PUT", &format!("/keys/{key}"), &[], body.as_bytes())
                .status
                < 300
            {
                acked.lock().expect("lock").push(key);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// Every replica `/cluster/endpoints/{key}` lists (asked of `via`) holds each key.
fn assert_on_every_replica(via: SocketAddr, keys: &[String]) {
    let mut conns: std::collections::HashMap<String, HttpConn> = Default::default();
    let mut ask = HttpConn::open(via);
    let mut missing = Vec::new();
    for key in keys {
        let e = ask
            .request("GET", &format!("/cluster/endpoints/{key}"), &[], b"")
            .json();
        let replicas = e["replicas"].as_array().cloned().unwrap_or_default();
        assert!(!replicas.is_empty(), "{key} has replicas");
        assert!(
            e["pending"].as_array().is_some_and(Vec::is_empty),
            "no move in progress: {e}"
        );
        for r in replicas {
            let h = r["http"].as_str().expect("http").to_owned();
            let conn = conns
                .entry(h.clone())
                .or_insert_with(|| HttpConn::open(h.parse().expect("addr")));
            let copy = conn.request("GET", &format!("/internal/local/{key}"), &[], b"");
            if copy.status != 200 || !copy.text().contains(&format!("v-{key}")) {
                missing.push(format!("{key} on {h} ({})", copy.status));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} keys' copies missing, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Runs `dynacore ARGS`, which must succeed; its standard output.
fn cli(args: &[&str]) -> String {
    let out = dynacore().args(args).output().expect("run");
    assert!(
        out.status.success(),
        "dynacore {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Node `node` holds each key that `/cluster/endpoints/{key}` lists it a replica of, and no
/// other.
fn assert_only_on_replicas(node: SocketAddr, keys: &[String]) {
    let mut conn = HttpConn::open(node);
    let (mut held, mut wrong) = (0, Vec::new());
    for key in keys {
        let e = conn
            .request("GET", &format!("/cluster/endpoints/{key}"), &[], b"")
            .json();
        let replica = e["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["http"].as_str() == Some(&node.to_string()));
        let copy = conn.request("GET", &format!("/internal/local/{key}"), &[], b"");
        held += usize::from(copy.status == 200);
        if (copy.status == 200) != replica {
            wrong.push(format!(
                "{key}: replica {replica}, local copy {}",
                copy.status
            ));
        }
    }
    assert!(held > 0, "the node holds keys");
    assert!(
        wrong.is_empty(),
        "{} of {} keys misplaced, e.g. {:?}",
        wrong.len(),
        keys.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn a_node_joins_a_loaded_ring_and_another_is_decommissioned_while_writes_go_on() {
    let dir = temp_dir("dynacore-scale-join-");
    let (a, b, c, seed) = three(dir.path(), 2);
    let mut keys = write_keys(b.http, "before-", 1500);
    assert_eq!(keys.len(), 1500);
    // A full repair first: afterwards every range b replicates has a last repair.
    let repaired = http(b.http, "POST", "/admin/repair", &[], b"");
    assert_eq!(repaired.status, 200, "{}", repaired.text());
    let never = |node: SocketAddr| {
        http(node, "GET", "/admin/repair", &[], b"").json()["never_repaired"].as_u64()
    };
    assert_eq!(never(b.http), Some(0));
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Mutex::new(Vec::new()));
    let w = writer(b.http, "during-", stop.clone(), live.clone());
    // A fourth node joins: it streams its ranges and becomes normal.
    let d = start(&dir.path().join("d"), 2, &["--seeds", &seed]);
    wait_settled(&[&b, &d], 4, "the fourth node joins");
    assert!(
        d.log_text().contains("every range streamed in"),
        "the joiner streamed: {}",
        d.log_text()
    );
    // The old owners drop what the joiner took (`dynacore cleanup`), keeping what they still
    // replicate; the joiner itself holds only its own ranges and drops nothing.
    for node in [&b, &d] {
        let out = cli(&["cleanup", "--addr", &node.http.to_string()]);
        let done: serde_json::Value = serde_json::from_str(&out).expect("cleanup answers JSON");
        let dropped = done["keys_dropped"].as_u64().expect("keys_dropped");
        if node.http == b.http {
            assert!(dropped > 100, "b gave ranges to the joiner: {done}");
        } else {
            assert_eq!(dropped, 0, "the joiner holds only its own ranges: {done}");
        }
    }
    assert_only_on_replicas(b.http, &keys);
    // The repair history followed the ranges the join moved: each of b's new ranges is a piece
    // of a repaired one, held since by replicas that were in sync then or streamed from them.
    wait_within("b's repair history follows the join", MOVE_BOUND, || {
        never(b.http) == Some(0)
    });
    // Node a is decommissioned: it streams its ranges away, leaves and stops.
    let mut a = a;
    let out = cli(&["decommission", "--addr", &a.http.to_string()]);
    assert!(out.contains("leaving"), "{out}");
    let status = wait_exit(&mut a.child, MOVE_BOUND).expect("the decommissioned node stops");
    assert!(status.success(), "{status:?}: {}", a.log_text());
    wait_settled(&[&b, &c, &d], 3, "three nodes are left");
    stop.store(true, Ordering::SeqCst);
    w.join().expect("writer");
    let c_view = cluster(c.http);
    let left: Vec<&serde_json::Value> = c_view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["state"] == "left")
        .collect();
    assert_eq!(
        left.len(),
        1,
        "the decommissioned node shows as left: {c_view}"
    );
    keys.extend(live.lock().expect("lock").iter().cloned());
    assert!(keys.len() > 1500, "writes went on during the moves");
    assert_on_every_replica(c.http, &keys);
    // `dynacore endpoints` names a key's replicas, primary first.
    let out = cli(&["endpoints", "before-7", "--addr", &c.http.to_string()]);
    assert_eq!(out.lines().filter(|l| l.starts_with("replica ")).count(), 3);
}

#[test]
fn a_dead_node_is_replaced_and_another_removed() {
    let dir = temp_dir("dynacore-scale-replace-");
    let a = start(&dir.path().join("a"), 1, &[]);
    let seed = a.addr.to_string();
    let b = start(&dir.path().join("b"), 1, &["--seeds", &seed]);
    let c = start(&dir.path().join("c"), 1, &["--seeds", &seed]);
    let d = start(&dir.path().join("d"), 1, &["--seeds", &seed]);
    wait_settled(&[&a, &b, &c, &d], 4, "four nodes form a ring");
    let keys = write_keys(a.http, "k-", 1200);
    assert_eq!(keys.len(), 1200);
    // d dies: a new node takes over its tokens and streams its ranges.
    let dead = kill_until_down(d, &a);
    let e = start(
        &dir.path().join("e"),
        1,
        &["--seeds", &seed, "--replace", &dead],
    );
    wait_settled(&[&a, &e], 4, "the replacement takes d's place");
    let view = cluster(a.http);
    assert!(
        view["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == dead.as_str() && n["state"] == "removed"),
        "the replaced node is removed for good: {view}"
    );
    assert_on_every_replica(a.http, &keys);
    // c dies: it is removed, its ranges rebuilt on their next owners.
    let gone = kill_until_down(c, &a);
    cli(&["removenode", &gone, "--addr", &a.http.to_string()]);
    wait_settled(&[&a, &b, &e], 3, "c's ranges are rebuilt");
    assert_on_every_replica(b.http, &keys);
    // A removed node cannot come back with its old data: it learns it was removed and stops
    // (or, when its own file says so, is refused at start).
    match common::try_start(&dir.path().join("c"), 1, &["--seeds", &seed]) {
        Ok(mut node) => {
            let status = wait_exit(&mut node.child, MOVE_BOUND).expect("it stops");
            assert!(status.success(), "{status:?}");
            assert!(node.log_text().contains("was removed from the ring"));
        }
        Err((_, log)) => assert!(log.contains("removed"), "{log}"),
    }
}

#[test]
fn one_topology_change_at_a_time() {
    let dir = temp_dir("dynacore-scale-exclusive-");
    let a = start(&dir.path().join("a"), 1, &[]);
    let seed = a.addr.to_string();
    let others: Vec<Node> = ["b", "c", "d"]
        .iter()
        .map(|n| start(&dir.path().join(n), 1, &["--seeds", &seed]))
        .collect();
    let all: Vec<&Node> = std::iter::once(&a).chain(others.iter()).collect();
    wait_settled(&all, 4, "four nodes form a ring");
    // Two decommissions asked at once: one goes on; the other is refused, or called off.
    let (x, y) = (others[1].http, others[2].http);
    let ask = |addr: SocketAddr| {
        std::thread::spawn(move || http(addr, "POST", "/admin/decommission", &[], b"").status)
    };
    let (sx, sy) = (ask(x), ask(y));
    let (sx, sy) = (sx.join().expect("x"), sy.join().expect("y"));
    assert!(
        [sx, sy].contains(&202),
        "one decommission is accepted: {sx} {sy}"
    );
    // While one moves, a third change is refused with a clear message.
    let third = http(others[0].http, "POST", "/admin/decommission", &[], b"");
    assert_eq!(third.status, 409, "{}", third.text());
    assert!(third
        .text()
        .contains("another topology change is in progress"));
    // So is a cleanup: the new owners must hold the ranges before anyone drops them.
    let cleanup = http(others[0].http, "POST", "/admin/cleanup", &[], b"");
    assert_eq!(cleanup.status, 409, "{}", cleanup.text());
    assert!(cleanup.text().contains("topology change is in progress"));
    wait_within("one node leaves", MOVE_BOUND, || {
        let c = cluster(a.http);
        let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
        c["moving"].is_null() && nodes.iter().filter(|n| n["state"] == "left").count() >= 1
    });
    let c = cluster(a.http);
    let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
    let left = nodes.iter().filter(|n| n["state"] == "left").count();
    let normal = nodes
        .iter()
        .filter(|n| n["state"] == "normal" && n["in_ring"] == true)
        .count();
    assert_eq!((left, normal), (1, 3), "one change, whole: {c}");
}

#[test]
fn a_node_killed_while_joining_starts_again_and_finishes() {
    let dir = temp_dir("dynacore-scale-rejoin-");
    // An address of its own: the killed joiner starts again on its ports, which a node of a
    // test running beside it could otherwise take meanwhile.
    let ip = "127.0.0.71";
    let (a, _b, _c, seed) = three_on(ip, dir.path(), 1);
    let keys = write_keys(a.http, "j-", 3000);
    assert_eq!(keys.len(), 3000);
    // A slow stream (the repair budget at a trickle), killed once it is under way.
    let config = dir.path().join("slow.toml");
    std::fs::write(&config, "anti_entropy_keys_per_s = 200\n").expect("config");
    let config = config.to_str().expect("utf-8").to_owned();
    let d_dir = dir.path().join("d");
    let d = start_on(ip, &d_dir, 1, &["--seeds", &seed, "--config", &config]);
    wait_within("d streams", MOVE_BOUND, || {
        d.log_text().contains("streaming ranges in")
    });
    // `dynacore status` shows the change and the joiner's progress.
    wait_within(
        "dynacore status shows the join's progress",
        MOVE_BOUND,
        || {
            let out = dynacore()
                .args([
                    "status",
                    "--addr",
                    &a.addr.to_string(),
                    "--http",
                    &a.http.to_string(),
                ])
                .output()
                .expect("status");
            let text = String::from_utf8_lossy(&out.stdout);
            text.contains("(join), driven by") && text.contains(" streaming: ")
        },
    );
    let (listen, web) = (d.addr, d.http);
    let mut d = d;
    d.child.kill().expect("kill -9");
    let _ = d.child.wait();
    assert!(
        cluster(a.http)["moving"]["node"].is_string(),
        "the join is still in progress"
    );
    // It starts again on its data directory and finishes the join.
    let d = common::start_at(listen, web, &d_dir, 1, &["--seeds", &seed]);
    wait_settled(&[&a, &d], 4, "the restarted joiner finishes");
    assert_on_every_replica(a.http, &keys);
}
