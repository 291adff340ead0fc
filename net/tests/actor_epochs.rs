//! A dot is never minted twice (issue 15 §1), on real nodes: each of the four ways a replica's
//! copy can forget the dots it minted — a tombstone purged on it alone, an expired value purged
//! on it alone, its data directory lost (restarted with the same node id), its WAL tail lost
//! under `durability = "none"` — is followed by a write through that replica, and an `r=all`
//! read through another node must return that last acknowledged write. Three nodes on loopback,
//! data in disk-backed temporary directories, every wait bounded.

mod common;

use std::path::Path;

use common::{dynacore, http, ring_up, start, start_at, temp_dir, wait_until, HttpResponse, Node};

/// The purge rule named explicitly, with a grace short enough for a test.
const GRACE_S: u64 = 2;

fn config(dir: &Path) -> String {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!("tombstone_gc = \"grace\"\ntombstone_grace_s = {GRACE_S}\n"),
    )
    .expect("config");
    path.to_str().expect("utf-8").to_owned()
}

/// Node ids given explicitly, so that a node restarted on an empty directory keeps its id.
const IDS: [&str; 3] = ["a1", "b2", "c3"];

/// Three one-core nodes with the short grace; `second` holds extra flags for node 2 (index 1).
fn three(dir: &Path, second: &[&str]) -> Vec<Node> {
    let config = config(dir);
    let a = start(
        &dir.join("a"),
        1,
        &["--config", &config, "--node-id", IDS[0]],
    );
    let seed = a.addr.to_string();
    let mut args = vec!["--config", &config, "--seeds", &seed, "--node-id", IDS[1]];
    args.extend_from_slice(second);
    let b = start(&dir.join("b"), 1, &args);
    let c = start(
        &dir.join("c"),
        1,
        &["--config", &config, "--seeds", &seed, "--node-id", IDS[2]],
    );
    let nodes = vec![a, b, c];
    all_up(&nodes);
    nodes
}

fn all_up(nodes: &[Node]) {
    for n in nodes {
        wait_until(&format!("{} sees 3 ring nodes up", n.http), || {
            ring_up(n.http) == (3, 3)
        });
    }
}

fn put(node: &Node, key: &str, value: &str, query: &str) -> HttpResponse {
    let body = serde_json::json!({ "value": value }).to_string();
    http(
        node.http,
        "PUT",
        &format!("/keys/{key}?{query}"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn ok(r: &HttpResponse) {
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The value an `r=all` read through `node` returns.
fn read_all(node: &Node, key: &str) -> String {
    let r = http(node.http, "GET", &format!("/keys/{key}?r=all"), &[], b"");
    assert_eq!(
        r.status,
        200,
        "the last acknowledged write is gone: {}",
        r.text()
    );
    r.json()["value"].as_str().expect("value").to_owned()
}

/// Siblings of `node`'s own copy of `key`, tombstones and expired values included (0 without
/// a copy).
fn held(node: &Node, key: &str) -> usize {
    let r = http(
        node.http,
        "GET",
        &format!("/internal/local/{key}"),
        &[],
        b"",
    );
    match r.status {
        404 => 0,
        200 => r.json()["siblings"].as_array().map_or(0, Vec::len),
        other => panic!("{other}: {}", r.text()),
    }
}

/// `dynacore compact` against `node` alone.
fn compact(node: &Node) {
    let out = dynacore()
        .args(["compact", "--addr", &node.http.to_string()])
        .output()
        .expect("dynacore compact");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compacts `node` until its copy of `key` is purged, while the other replicas keep theirs.
fn purge_on_one(nodes: &[Node], purged: usize, key: &str) {
    wait_until("the grace passes and compaction purges the copy", || {
        compact(&nodes[purged]);
        held(&nodes[purged], key) == 0
    });
    for (i, n) in nodes.iter().enumerate() {
        if i != purged {
            assert_eq!(held(n, key), 1, "node {i} still holds the older copy");
        }
    }
}

#[test]
fn a_write_after_a_tombstone_purged_on_its_coordinator_alone_is_kept() {
    let dir = temp_dir("dynacore-epoch-tomb-");
    let nodes = three(dir.path(), &[]);
    ok(&put(&nodes[1], "k", "v1", "w=all"));
    ok(&http(nodes[1].http, "DELETE", "/keys/k?w=all", &[], b""));
    purge_on_one(&nodes, 1, "k");
    ok(&put(&nodes[1], "k", "v2", "w=2"));
    assert_eq!(read_all(&nodes[0], "k"), "v2");
    assert_eq!(read_all(&nodes[2], "k"), "v2");
}

#[test]
fn a_write_after_an_expired_value_purged_on_its_coordinator_alone_is_kept() {
    let dir = temp_dir("dynacore-epoch-ttl-");
    let nodes = three(dir.path(), &[]);
    ok(&put(&nodes[1], "k", "v1", "w=all&ttl_seconds=1"));
    wait_until("the value expires", || {
        http(nodes[0].http, "GET", "/keys/k?r=all", &[], b"").status == 404
    });
    purge_on_one(&nodes, 1, "k");
    ok(&put(&nodes[1], "k", "v2", "w=2"));
    assert_eq!(read_all(&nodes[0], "k"), "v2");
    assert_eq!(read_all(&nodes[2], "k"), "v2");
}

#[test]
fn a_write_through_a_node_restarted_on_an_empty_directory_is_kept() {
    let dir = temp_dir("dynacore-epoch-wiped-");
    let mut nodes = three(dir.path(), &[]);
    ok(&put(&nodes[1], "k", "v1", "w=all"));
    // Node 2 loses its data directory and comes back with the same id and addresses.
    let b = nodes.remove(1);
    let (listen, web) = (b.addr, b.http);
    let _ = b.stop();
    std::fs::remove_dir_all(dir.path().join("b")).expect("wipe");
    let config = config(dir.path());
    let seed = nodes[0].addr.to_string();
    let b = start_at(
        listen,
        web,
        &dir.path().join("b"),
        1,
        &["--config", &config, "--seeds", &seed, "--node-id", IDS[1]],
    );
    nodes.insert(1, b);
    all_up(&nodes);
    // It replaces itself: writes reach it at once (it may not hold the key yet, and mints
    // under a new actor epoch), reads wait until it streamed its ranges back.
    ok(&put(&nodes[1], "k", "v2", "w=2"));
    for n in &nodes {
        wait_until(&format!("{} sees every node normal", n.http), || {
            let c = http(n.http, "GET", "/cluster", &[], b"").json();
            c["moving"].is_null()
                && c["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().all(|m| m["state"] == "normal"))
        });
    }
    assert!(
        held(&nodes[1], "k") > 0,
        "the wiped node streamed its ranges back"
    );
    assert_eq!(read_all(&nodes[0], "k"), "v2");
    assert_eq!(read_all(&nodes[2], "k"), "v2");
}

#[test]
fn a_write_through_a_node_that_lost_its_wal_tail_is_kept() {
    let dir = temp_dir("dynacore-epoch-tail-");
    let mut nodes = three(dir.path(), &["--durability", "none"]);
    ok(&put(&nodes[1], "k", "v1", "w=all"));
    // Killed, and what was never synced is gone (as after a power failure): here, all of its
    // log.
    let b = nodes.remove(1);
    let (listen, web) = (b.addr, b.http);
    b.signal("KILL");
    drop(b);
    let shard = dir.path().join("b").join("shard-0");
    for entry in std::fs::read_dir(&shard).expect("shard directory") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("wal-") && name.ends_with(".log") {
            std::fs::remove_file(&path).expect("remove a segment");
        }
    }
    let config = config(dir.path());
    let seed = nodes[0].addr.to_string();
    let b = start_at(
        listen,
        web,
        &dir.path().join("b"),
        1,
        &[
            "--config",
            &config,
            "--seeds",
            &seed,
            "--node-id",
            IDS[1],
            "--durability",
            "none",
        ],
    );
    nodes.insert(1, b);
    all_up(&nodes);
    assert_eq!(held(&nodes[1], "k"), 0, "the lost tail held the only copy");
    ok(&put(&nodes[1], "k", "v2", "w=2"));
    assert_eq!(read_all(&nodes[0], "k"), "v2");
    assert_eq!(read_all(&nodes[2], "k"), "v2");
}
