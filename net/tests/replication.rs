//! Three real `dynacore` processes on loopback replicating keys (RF=3): quorum writes and reads
//! through different coordinators, a killed node covered by hints that are handed back when it
//! returns, strict quorums failing with how many acknowledged, siblings, read repair. Every
//! wait is bounded.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{http, metric_sum, ring_up, start, temp_dir, wait_until, HttpResponse, Node};

/// Starts three nodes (the first with two cores) joined through the first, and waits until
/// each sees all three in its ring, up.
fn three(dir: &Path, extra: &[&str]) -> Vec<Node> {
    let a = start(&dir.join("a"), 2, extra);
    let seed = a.addr.to_string();
    let mut args = vec!["--seeds", seed.as_str()];
    args.extend_from_slice(extra);
    let b = start(&dir.join("b"), 1, &args);
    let c = start(&dir.join("c"), 1, &args);
    let nodes = vec![a, b, c];
    for n in &nodes {
        wait_until(&format!("{} sees 3 ring nodes up", n.http), || {
            ring_up(n.http) == (3, 3)
        });
    }
    nodes
}

fn put(node: &Node, key: &str, value: &str, query: &str) -> HttpResponse {
    put_with(node, key, value, query, &[])
}

fn put_with(
    node: &Node,
    key: &str,
    value: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let body = serde_json::json!({ "value": value }).to_string();
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http(
        node.http,
        "PUT",
        &format!("/keys/{key}?{query}"),
        &h,
        body.as_bytes(),
    )
}

fn get(node: &Node, key: &str, query: &str) -> HttpResponse {
    http(node.http, "GET", &format!("/keys/{key}?{query}"), &[], b"")
}

/// The live values of `node`'s own copy of `key` (empty when it holds none).
fn local_values(node: &Node, key: &str) -> Vec<String> {
    let r = http(
        node.http,
        "GET",
        &format!("/internal/local/{key}"),
        &[],
        b"",
    );
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["siblings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["value"].as_str().map(str::to_owned))
        .collect()
}

fn value_of(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["value"].as_str().expect("value").to_owned()
}

#[test]
fn a_quorum_write_through_one_node_is_read_through_another_and_reaches_every_replica() {
    let dir = temp_dir("dynacore-repl-quorum-");
    let nodes = three(dir.path(), &[]);
    let r = put(&nodes[0], "greeting", "hello", "w=2");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(value_of(&get(&nodes[2], "greeting", "r=2")), "hello");
    // Every node is a replica with RF=3 and three nodes: the third copy arrives too.
    for n in &nodes {
        wait_until("every replica holds the write", || {
            local_values(n, "greeting") == ["hello"]
        });
    }
    // Many keys through every coordinator, read back through another with R=all.
    for i in 0..60 {
        let r = put(
            &nodes[i % 3],
            &format!("k{i}"),
            &format!("v{i}"),
            "w=quorum",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for i in 0..60 {
        let got = get(&nodes[(i + 1) % 3], &format!("k{i}"), "r=all");
        assert_eq!(value_of(&got), format!("v{i}"));
    }
    // A quorum above RF is refused; a delete through one node hides the key everywhere.
    assert_eq!(put(&nodes[1], "x", "y", "w=4").status, 400);
    let r = http(nodes[1].http, "DELETE", "/keys/greeting?w=all", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&nodes[0], "greeting", "r=1").status, 404);
    // The SDK, routed by the topology, reads what HTTP wrote.
    let seed = nodes[1].addr;
    let got = common::on_executor(move || async move {
        let client = dynacore_client::glommio::Client::connect(&[seed])
            .await
            .expect("connect");
        assert_eq!(client.cluster().replication_factor, 3);
        client
            .consistent_put(b"sdk", b"typed", dynacore_client::Quorum::All)
            .await
            .expect("put");
        client.get(b"k7").await.expect("get").map(|v| v.value)
    });
    assert_eq!(got, Some(b"v7".to_vec()));
    assert_eq!(value_of(&get(&nodes[2], "sdk", "r=all")), "typed");
}

#[test]
fn a_killed_node_is_covered_by_hints_that_are_handed_back_when_it_returns() {
    let dir = temp_dir("dynacore-repl-hints-");
    let mut nodes = three(dir.path(), &[]);
    let c = nodes.pop().expect("c");
    let c_id = http(c.http, "GET", "/cluster", &[], b"").json()["nodes"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    c.signal("KILL");
    drop(c);
    // W=2 writes and R=2 reads through the two others keep succeeding, before and after the
    // failure detector declares c down.
    let mut written = Vec::new();
    for i in 0..40 {
        let (key, value) = (format!("h{i}"), format!("while-down-{i}"));
        let r = put(&nodes[i % 2], &key, &value, "w=2");
        assert_eq!(r.status, 200, "write {i}: {}", r.text());
        assert_eq!(value_of(&get(&nodes[(i + 1) % 2], &key, "r=2")), value);
        written.push((key, value));
        if i == 19 {
            for n in &nodes {
                wait_until("c is declared down", || ring_up(n.http) == (3, 2));
            }
        }
    }
    let pending = |nodes: &[Node]| {
        nodes
            .iter()
            .map(|n| metric_sum(n.http, "dynacore_hints_pending"))
            .sum::<u64>()
    };
    wait_until("the hints are counted", || pending(&nodes) >= 40);
    // c comes back (same data, a later generation, new ports): its hints are replayed.
    let seed = nodes[0].addr.to_string();
    let c = start(&dir.path().join("c"), 1, &["--seeds", &seed]);
    let id_again = http(c.http, "GET", "/cluster", &[], b"").json()["nodes"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(id_again, c_id);
    wait_until("every hint is handed back", || pending(&nodes) == 0);
    for (key, value) in &written {
        assert_eq!(
            local_values(&c, key),
            std::slice::from_ref(value),
            "c's own copy of {key}"
        );
    }
    let replayed: u64 = nodes
        .iter()
        .map(|n| metric_sum(n.http, "dynacore_hints_replayed_total"))
        .sum();
    assert!(replayed >= 40, "{replayed} hints replayed");
}

#[test]
fn strict_quorums_fail_with_how_many_acknowledged_when_two_nodes_are_down() {
    let dir = temp_dir("dynacore-repl-strict-");
    let mut nodes = three(dir.path(), &["--no-sloppy-quorum"]);
    let c = nodes.pop().expect("c");
    let b = nodes.pop().expect("b");
    c.signal("KILL");
    b.signal("KILL");
    drop((b, c));
    let a = &nodes[0];
    let check = |r: &HttpResponse| {
        assert_eq!(r.status, 503, "{}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "unavailable");
        assert_eq!(
            (j["acks"].as_u64(), j["required"].as_u64()),
            (Some(1), Some(2))
        );
    };
    // Before the failure detector notices (the replicas refuse connections) and after.
    check(&put(a, "s1", "v", "w=2"));
    wait_until("b and c are declared down", || ring_up(a.http) == (3, 1));
    check(&put(a, "s2", "v", "w=2"));
    // W=1 still succeeds; R=2 fails the same way.
    assert_eq!(put(a, "s3", "v", "w=1").status, 200);
    let r = get(a, "s3", "r=2");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["acks"].as_u64(), Some(1));
    assert_eq!(value_of(&get(a, "s3", "r=1")), "v");
}

#[test]
fn concurrent_writes_become_siblings_and_a_write_with_the_merged_version_replaces_them() {
    let dir = temp_dir("dynacore-repl-siblings-");
    let nodes = three(dir.path(), &[]);
    let r = put(&nodes[0], "doc", "v0", "w=all");
    assert_eq!(r.status, 200, "{}", r.text());
    let base = r.json()["version"].as_str().expect("version").to_owned();
    // Two writes from the same context through different coordinators.
    let r = put_with(
        &nodes[0],
        "doc",
        "from-a",
        "w=all",
        &[("X-Dynacore-Context", &base)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(5));
    let r = put_with(
        &nodes[1],
        "doc",
        "from-b",
        "w=all",
        &[("X-Dynacore-Context", &base)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Siblings mode: 300 with both values and one merged version.
    let r = get(&nodes[2], "doc", "r=all&conflicts=siblings");
    assert_eq!(r.status, 300, "{}", r.text());
    let j = r.json();
    let mut values: Vec<String> = j["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["value"].as_str().expect("value").to_owned())
        .collect();
    values.sort();
    assert_eq!(values, ["from-a", "from-b"]);
    let merged = j["version"].as_str().expect("version").to_owned();
    assert_eq!(r.header("X-Dynacore-Version"), Some(merged.as_str()));
    // LWW mode (the default): the later timestamp wins.
    assert_eq!(value_of(&get(&nodes[2], "doc", "r=all")), "from-b");
    // A write with the merged version replaces both.
    let r = put_with(
        &nodes[2],
        "doc",
        "resolved",
        "w=all",
        &[("X-Dynacore-Context", &merged)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&nodes[0], "doc", "r=all&conflicts=siblings");
    assert_eq!(value_of(&r), "resolved");
    for n in &nodes {
        wait_until("every replica holds only the resolution", || {
            local_values(n, "doc") == ["resolved"]
        });
    }
    // The SDK sees the same through the binary protocol.
    let seed = nodes[1].addr;
    let (siblings, after) = common::on_executor(move || async move {
        use dynacore_client::glommio::Client;
        use dynacore_client::{Quorum, WriteOptions};
        let client = Client::connect(&[seed]).await.expect("connect");
        let base = client.put(b"sdk-doc", b"v0").await.expect("put");
        for v in [&b"x"[..], b"y"] {
            let options = WriteOptions {
                context: Some(base.clone()),
                w: Some(Quorum::All),
                ..WriteOptions::default()
            };
            client.put_with(b"sdk-doc", v, &options).await.expect("put");
        }
        let s = client
            .get_siblings(b"sdk-doc", Quorum::All)
            .await
            .expect("get")
            .expect("found");
        let options = WriteOptions {
            context: Some(s.version.clone()),
            w: Some(Quorum::All),
            ..WriteOptions::default()
        };
        client
            .put_with(b"sdk-doc", b"z", &options)
            .await
            .expect("put");
        let after = client
            .get_siblings(b"sdk-doc", Quorum::All)
            .await
            .expect("get")
            .expect("found");
        (s.values, after.values)
    });
    let mut siblings = siblings;
    siblings.sort();
    assert_eq!(siblings, [b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(after, [b"z".to_vec()]);
}

#[test]
fn a_stale_replica_is_repaired_by_a_read() {
    let dir = temp_dir("dynacore-repl-repair-");
    // No scheduled anti-entropy: it compares with a peer two seconds after the peer comes back,
    // and would repair the stale copy before the reads below could (seen once in CI).
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "anti_entropy_interval_s = 0\n").expect("config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let mut nodes = three(dir.path(), &["--no-hinted-handoff", "--config", &config]);
    let c = nodes.pop().expect("c");
    c.signal("KILL");
    drop(c);
    for key in ["r-blocking", "r-background"] {
        let r = put(&nodes[0], key, "fresh", "w=2");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Restarted only once the others know it died, so that "up" below means the new process.
    for n in &nodes {
        wait_until("c is declared down", || ring_up(n.http) == (3, 2));
    }
    let seed = nodes[0].addr.to_string();
    let c = start(
        &dir.path().join("c"),
        1,
        &["--seeds", &seed, "--no-hinted-handoff", "--config", &config],
    );
    for n in nodes.iter().chain([&c]) {
        wait_until("c is back in every view", || ring_up(n.http) == (3, 3));
    }
    // No hints: c missed both writes.
    assert!(local_values(&c, "r-blocking").is_empty());
    assert!(local_values(&c, "r-background").is_empty());
    // A blocking read repair answers once c has the merge.
    let r = get(&nodes[1], "r-blocking", "r=all&read_repair=blocking");
    assert_eq!(value_of(&r), "fresh");
    assert_eq!(local_values(&c, "r-blocking"), ["fresh"]);
    // The default repair happens in the background, after the answer.
    assert_eq!(value_of(&get(&nodes[0], "r-background", "r=all")), "fresh");
    wait_until("the background repair reaches c", || {
        local_values(&c, "r-background") == ["fresh"]
    });
    // Counted by the coordinator once c's acknowledgement is back, which can be a moment after
    // c's copy shows the value (seen in CI: "1 repairs" read right after c had both).
    let repairs = || -> u64 {
        nodes
            .iter()
            .map(|n| metric_sum(n.http, "dynacore_read_repairs_total"))
            .sum()
    };
    wait_until("both read repairs are counted", || repairs() >= 2);
    // read_repair=false leaves a stale copy alone.
    c.signal("KILL");
    drop(c);
    assert_eq!(put(&nodes[0], "r-off", "fresh", "w=2").status, 200);
    wait_until("c is declared down", || ring_up(nodes[0].http) == (3, 2));
    let c = start(
        &dir.path().join("c"),
        1,
        &["--seeds", &seed, "--no-hinted-handoff", "--config", &config],
    );
    wait_until("c is back", || ring_up(nodes[0].http) == (3, 3));
    assert_eq!(
        value_of(&get(&nodes[0], "r-off", "r=all&read_repair=false")),
        "fresh"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(local_values(&c, "r-off").is_empty());
}

#[test]
fn a_partition_between_two_nodes_loses_no_acknowledged_write() {
    use common::proxy::Proxy;
    use std::net::IpAddr;
    let dir = temp_dir("dynacore-repl-partition-");
    // Three nodes on three loopback addresses, each behind its own proxy: peers reach a node
    // only through its proxy, and connect from their own address, so a proxy can cut one
    // link (node to node) in one direction.
    let ips: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    let proxies: Vec<Proxy> = ips.iter().map(|&ip| Proxy::start(ip, 1)).collect();
    let seed = proxies[0].front.to_string();
    // A short request deadline: a replica that does not answer gets its hint sooner.
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "request_timeout_ms = 1500\n").expect("config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let advertise = proxies[i].front.to_string();
            let mut args = vec!["--advertise", advertise.as_str(), "--config", &config];
            if i > 0 {
                args.extend_from_slice(&["--seeds", seed.as_str()]);
            }
            let node = common::start_on(
                &ips[i].to_string(),
                &dir.path().join(format!("n{i}")),
                1,
                &args,
            );
            proxies[i].set_backend(node.addr);
            node
        })
        .collect();
    for n in &nodes {
        wait_until("every node sees three ring nodes up", || {
            ring_up(n.http) == (3, 3)
        });
    }
    // Cut the link between nodes 0 and 1, both ways; node 2 still reaches both.
    proxies[0].block(ips[1]);
    proxies[1].block(ips[0]);
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..90 {
        let (key, value) = (format!("p{i}"), format!("during-{i}"));
        let r = put(&nodes[i % 3], &key, &value, "w=2");
        match r.status {
            200 => acked.push((key, value)),
            503 | 504 => failed += 1,
            other => panic!("write {i}: {other} {}", r.text()),
        }
    }
    // Every coordinator has a quorum (itself and node 2, or all three for node 2).
    assert_eq!(failed, 0, "writes failed during the partition");
    // Reads with R=2 through node 2, which reaches both sides, see what was acknowledged
    // (without read repair: the hints are what must bring the partitioned replicas up to date).
    for (key, value) in &acked {
        assert_eq!(
            value_of(&get(&nodes[2], key, "r=2&read_repair=false")),
            *value
        );
    }
    // The writes that could not reach the other side of the cut became hints.
    let pending = || {
        nodes
            .iter()
            .map(|n| metric_sum(n.http, "dynacore_hints_pending"))
            .sum::<u64>()
    };
    wait_until("hints are kept for the cut-off replicas", || {
        pending() >= 30
    });
    let missing = acked
        .iter()
        .filter(|(key, _)| local_values(&nodes[1], key).is_empty())
        .count();
    assert!(
        missing > 0,
        "node 1 missed the writes coordinated by node 0"
    );
    // Heal: every acknowledged write is on every replica once the hints are handed over.
    proxies[0].unblock(ips[1]);
    proxies[1].unblock(ips[0]);
    wait_until(
        "the hints kept during the partition are handed over",
        || pending() == 0,
    );
    for (key, value) in &acked {
        for n in &nodes {
            wait_until(&format!("{key} on every replica"), || {
                local_values(n, key) == std::slice::from_ref(value)
            });
        }
        assert_eq!(value_of(&get(&nodes[0], key, "r=all")), *value);
    }
    drop(nodes);
    drop(proxies);
}

#[test]
fn with_a_sloppy_quorum_a_stand_in_node_keeps_a_down_replicas_writes_and_counts() {
    // Four nodes, RF=3: for a key whose replica is down, the fourth node stands in.
    let dir = temp_dir("dynacore-repl-sloppy-");
    let a = start(&dir.path().join("a"), 1, &[]);
    let seed = a.addr.to_string();
    let mut nodes = vec![a];
    for name in ["b", "c", "d"] {
        nodes.push(start(&dir.path().join(name), 1, &["--seeds", &seed]));
    }
    for n in &nodes {
        wait_until("every node sees four ring nodes up", || {
            ring_up(n.http) == (4, 4)
        });
    }
    let d = nodes.pop().expect("d");
    d.signal("KILL");
    drop(d);
    for n in &nodes {
        wait_until("d is declared down", || ring_up(n.http) == (4, 3));
    }
    // W=3 (every replica) succeeds for every key: where d is a replica, a stand-in stores its
    // copy as a hint and acknowledges for it.
    let mut written = Vec::new();
    for i in 0..40 {
        let (key, value) = (format!("s{i}"), format!("sloppy-{i}"));
        let r = put(&nodes[i % 3], &key, &value, "w=all");
        assert_eq!(r.status, 200, "write {i}: {}", r.text());
        written.push((key, value));
    }
    let pending = || {
        nodes
            .iter()
            .map(|n| metric_sum(n.http, "dynacore_hints_pending"))
            .sum::<u64>()
    };
    // (The hint metrics are published once a second.)
    wait_until("the stand-ins count their hints", || pending() > 0);
    // d returns: the stand-ins hand its writes over.
    let d = start(&dir.path().join("d"), 1, &["--seeds", &seed]);
    wait_until("every hint is handed back", || pending() == 0);
    let held: Vec<_> = written
        .iter()
        .filter(|(key, _)| !local_values(&d, key).is_empty())
        .collect();
    assert!(!held.is_empty(), "d holds the writes made for it");
    for (key, value) in held {
        assert_eq!(local_values(&d, key), std::slice::from_ref(value));
    }
}

#[test]
fn a_conditional_write_is_checked_on_every_replica() {
    let dir = temp_dir("dynacore-repl-cond-");
    let nodes = three(dir.path(), &[]);
    let r = put(&nodes[0], "acct", "100", "w=all");
    assert_eq!(r.status, 200, "{}", r.text());
    let v1 = r.json()["version"].as_str().expect("version").to_owned();
    // Through another coordinator, with the version read: it succeeds.
    let r = put_with(&nodes[1], "acct", "90", "w=all", &[("If-Match", &v1)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v2 = r.json()["version"].as_str().expect("version").to_owned();
    // A stale version through a third one: every replica holds a write it did not see.
    let r = put_with(&nodes[2], "acct", "80", "w=2", &[("If-Match", &v1)]);
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(r.json()["version"].as_str(), Some(v2.as_str()));
    assert_eq!(value_of(&get(&nodes[0], "acct", "r=all")), "90");
}

#[test]
fn the_sdk_follows_the_cluster_and_reads_past_a_replica_it_cannot_reach() {
    use dynacore_client::glommio::Client;
    use dynacore_client::{ClientOptions, NodeState, Quorum, ReadRepair};
    use dynacore_runtime as runtime;

    let dir = temp_dir("dynacore-repl-sdk-");
    let root = dir.path().to_path_buf();
    let a = start(&root.join("a"), 1, &[]);
    let seed = a.addr;
    common::on_executor(move || async move {
        let options = ClientOptions {
            topology_refresh: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&[seed], options)
            .await
            .expect("connect");
        assert_eq!(client.cluster().nodes.len(), 1);
        // Two nodes join; the client learns of them on its own (no refresh called).
        let seed_arg = seed.to_string();
        let b = start(&root.join("b"), 1, &["--seeds", &seed_arg]);
        let c = start(&root.join("c"), 1, &["--seeds", &seed_arg]);
        let until = Instant::now() + Duration::from_secs(30);
        while client.cluster().nodes.len() < 3 || client.cluster().replication_factor < 3 {
            assert!(Instant::now() < until, "the client never saw three nodes");
            runtime::sleep(Duration::from_millis(50)).await;
        }
        let nodes = [a, b, c];
        client
            .consistent_put(b"sdk:failover", b"kept", Quorum::All)
            .await
            .expect("w=all");
        // The key's first replica dies; before anyone notices, a read goes past it to the next.
        let first = client.route(b"sdk:failover");
        // One core each: a node's only core listens on its base port + 1.
        let victim = nodes
            .iter()
            .position(|n| n.addr.port() + 1 == first.port())
            .expect("a node holds it");
        let victim_port = nodes[victim].addr.port();
        nodes[victim].signal("KILL");
        let got = client
            .consistent_get(b"sdk:failover", Quorum::Count(1), ReadRepair::Off)
            .await
            .expect("read from the next replica");
        assert_eq!(got.map(|v| v.value), Some(b"kept".to_vec()));
        // The client fetches the topology again (from a live node if the seed died) and learns
        // that the node is down; its reads then start with a live replica.
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let view = client.cluster();
            let down = view
                .members
                .iter()
                .any(|m| m.node.base_port == victim_port && m.state == NodeState::Down);
            if down {
                break;
            }
            assert!(Instant::now() < until, "the client never saw the node down");
            runtime::sleep(Duration::from_millis(50)).await;
        }
        assert_ne!(client.route(b"sdk:failover"), first);
        for (i, n) in nodes.into_iter().enumerate() {
            if i != victim {
                n.stop();
            }
        }
    });
}
