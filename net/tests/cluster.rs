//! Several real `dynacore` processes on loopback forming a cluster: membership through gossip,
//! a killed node declared down, its restart taken back with a new generation, and a clean
//! leave. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{dynacore, http, start, start_at, temp_dir, wait_exit, BOUND};

/// What node at `http_addr` says of every node: (id, up, status, generation, shards).
fn members(http_addr: SocketAddr) -> Vec<(String, bool, String, u64, u64)> {
    let c = http(http_addr, "GET", "/cluster", &[], b"").json();
    c["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_owned(),
                n["up"].as_bool().unwrap_or(false),
                n["status"].as_str().unwrap_or_default().to_owned(),
                n["generation"].as_u64().unwrap_or(0),
                n["shards"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits (at most [`BOUND`]) until `check` holds for what `http_addr` says.
fn wait_for(
    http_addr: SocketAddr,
    what: &str,
    check: impl Fn(&[(String, bool, String, u64, u64)]) -> bool,
) {
    let until = Instant::now() + BOUND;
    loop {
        let seen = members(http_addr);
        if check(&seen) {
            return;
        }
        assert!(Instant::now() < until, "{what}: still {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_id(http_addr: SocketAddr) -> String {
    members(http_addr)[0].0.clone()
}

#[test]
fn nodes_gossip_detect_a_death_take_back_a_restart_and_see_a_leave() {
    let dir = temp_dir("dynacore-cluster-membership-");
    let a = start(&dir.path().join("a"), 1, &[]);
    let seed = a.addr.to_string();
    let b = start(&dir.path().join("b"), 1, &["--seeds", &seed]);
    let c_dir = dir.path().join("c");
    let c = start(&c_dir, 1, &["--seeds", &seed]);
    let (ida, idb, idc) = (node_id(a.http), node_id(b.http), node_id(c.http));
    let all_up = |seen: &[(String, bool, String, u64, u64)]| {
        seen.len() == 3
            && seen
                .iter()
                .all(|n| n.1 && n.2 == "normal" && n.4 == 1 && n.3 > 0)
    };
    // Every node learns every other one, b and c through a alone, with their metadata.
    for (n, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        wait_for(n.http, &format!("{name} sees three nodes up"), all_up);
    }
    let seen = members(b.http);
    for id in [&ida, &idb, &idc] {
        assert!(seen.iter().any(|n| &n.0 == id), "b knows {id}");
    }
    // `dynacore status` shows every node as the node it asks sees them.
    let status = |addr: SocketAddr, http: SocketAddr| {
        let out = dynacore()
            .args([
                "status",
                "--addr",
                &addr.to_string(),
                "--http",
                &http.to_string(),
            ])
            .output()
            .expect("status");
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status(a.addr, a.http);
    assert!(text.contains("topology change: none in progress"), "{text}");
    for id in [&ida, &idb, &idc] {
        assert!(
            text.contains(&format!("node {id} ")),
            "status lists {id}:\n{text}"
        );
    }
    assert_eq!(text.matches("Normal").count(), 3, "{text}");

    // kill -9 c: the others declare it down.
    c.signal("KILL");
    drop(c);
    for (n, name) in [(&a, "a"), (&b, "b")] {
        wait_for(n.http, &format!("{name} sees c down"), |seen| {
            seen.iter().any(|n| n.0 == idc && !n.1 && n.2 == "down")
        });
    }

    let text = status(a.addr, a.http);
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("node {idc} ")) && l.contains("Down")),
        "status shows c down:\n{text}"
    );

    // Restart c on the same data: the same node id, a later generation.
    let before = members(a.http)
        .iter()
        .find(|n| n.0 == idc)
        .map(|n| n.3)
        .expect("c known");
    let c = start(&c_dir, 1, &["--seeds", &seed]);
    assert_eq!(node_id(c.http), idc);
    for (n, name) in [(&a, "a"), (&b, "b")] {
        wait_for(
            n.http,
            &format!("{name} sees c back, later generation"),
            |seen| seen.iter().any(|n| n.0 == idc && n.1 && n.3 > before),
        );
    }

    // A clean shutdown of b: "left", not "down" (a crash reads "down").
    assert!(b.stop().success());
    for (n, name) in [(&a, "a"), (&c, "c")] {
        wait_for(n.http, &format!("{name} sees b leave"), |seen| {
            seen.iter().any(|n| n.0 == idb && !n.1 && n.2 == "left")
        });
    }
}

#[test]
fn local_cluster_starts_three_nodes_that_see_each_other_and_stops_them() {
    let dir = temp_dir("dynacore-local-cluster-");
    // Ports free on 127.0.0.1..3 (binary, its core's port, HTTP).
    let free = |p: u16| {
        (1..=3u8).all(|i| {
            let ip = std::net::Ipv4Addr::new(127, 0, 0, i);
            std::net::TcpListener::bind((ip, p)).is_ok()
                && std::net::TcpListener::bind((ip, p + 1)).is_ok()
                && std::net::UdpSocket::bind((ip, p)).is_ok()
        })
    };
    let port = (0..200u16)
        .map(|k| 31_000 + k * 7 + u16::try_from(std::process::id() % 5).expect("small"))
        .find(|&p| free(p) && free(p + 3))
        .expect("free ports");
    let http_port = port + 3;
    let mut child = dynacore()
        .current_dir(dir.path())
        .args(["local-cluster", "--nodes", "3", "--port", &port.to_string()])
        .args([
            "--http-port",
            &http_port.to_string(),
            "--durability",
            "none",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("local-cluster");
    let stdout = child.stdout.take().expect("stdout");
    // If the test fails half-way, the cluster is stopped all the same.
    struct StopOnDrop(u32);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.0.to_string()])
                .status();
        }
    }
    let _stop = StopOnDrop(child.id());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("nodes up")) {
        lines.push(rx.recv_timeout(BOUND).expect("local-cluster output"));
    }
    assert_eq!(
        lines.iter().filter(|l| l.contains("ready node=")).count(),
        3,
        "{lines:?}"
    );
    let third = SocketAddr::from(([127, 0, 0, 3], http_port));
    wait_for(third, "node 3 sees three nodes up", |seen| {
        seen.len() == 3 && seen.iter().all(|n| n.1)
    });
    assert!(dir.path().join("dynacore-cluster/node-2/NODE").exists());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = wait_exit(&mut child, BOUND).expect("local-cluster stops");
    assert!(exit.success(), "every node stopped cleanly: {exit:?}");
}

#[test]
fn a_seed_restarted_on_an_empty_disk_finds_its_cluster_again() {
    // Three nodes joined through a, which has no seed. a's data directory is lost and it
    // restarts with the same flags: it knows no one, and no one is its seed. The others hold
    // its old incarnation as down and keep announcing to that address, so they find it again.
    let dir = temp_dir("dynacore-cluster-wiped-seed-");
    let a_dir = dir.path().join("a");
    let a = start(&a_dir, 1, &[]);
    let seed = a.addr.to_string();
    let b = start(&dir.path().join("b"), 1, &["--seeds", &seed]);
    let c = start(&dir.path().join("c"), 1, &["--seeds", &seed]);
    let three_up =
        |seen: &[(String, bool, String, u64, u64)]| seen.iter().filter(|n| n.1).count() == 3;
    for n in [&a, &b, &c] {
        wait_for(n.http, "three nodes up", three_up);
    }
    let (a_addr, a_http) = (a.addr, a.http);
    let old_id = node_id(a_http);
    a.signal("KILL");
    drop(a);
    for n in [&b, &c] {
        wait_for(n.http, "a down", |seen| {
            seen.iter().any(|m| m.0 == old_id && !m.1)
        });
    }
    std::fs::remove_dir_all(&a_dir).expect("wipe a's data");
    let restarted = Instant::now();
    let a = start_at(a_addr, a_http, &a_dir, 1, &[]);
    let new_id = node_id(a.http);
    assert_ne!(new_id, old_id, "a new identity on an empty disk");
    // Within seconds, not eventually: the others probe it every couple of seconds (before,
    // an unrelated timeout brought it back after about a minute, if at all).
    let rejoin_bound = Duration::from_secs(30);
    loop {
        let b_sees = members(b.http).iter().any(|m| m.0 == new_id && m.1);
        let c_sees = members(c.http).iter().any(|m| m.0 == new_id && m.1);
        let a_sees = members(a.http).iter().filter(|m| m.1).count() >= 3;
        if b_sees && c_sees && a_sees {
            break;
        }
        assert!(
            restarted.elapsed() < rejoin_bound,
            "not rejoined {rejoin_bound:?} after the restart (b {b_sees}, c {c_sees}, a {a_sees})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in [a, b, c] {
        let status = n.stop();
        assert!(status.success(), "{status:?}");
    }
}
