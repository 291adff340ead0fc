//! The authenticated internode plane (issue 15 §6), on real nodes: a node given another
//! cluster secret never joins the ring and the log says why; a client's frame carrying a
//! replica operation is refused while the connection keeps serving; a frame or a gossip
//! datagram with a wrong tag is dropped and counted; a secret file readable by others or too
//! short is refused at start. Loopback only, every wait bounded.

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{
    closed, framed, framed_as_peer, http, raw_conn, read_frame, read_frame_as_peer, start,
    temp_dir, try_start, wait_until, write_secret,
};
use dynacore_proto::{build, fb, parse_response, ClusterKey, Domain};

/// Nodes in `http_addr`'s ring.
fn ring_nodes(http_addr: SocketAddr) -> usize {
    let c = http(http_addr, "GET", "/cluster", &[], b"").json();
    c["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n["in_ring"] == true).count())
}

/// `dynacore_unauthenticated_refused_total` summed over cores for `plane`.
fn refused(http_addr: SocketAddr, plane: &str) -> u64 {
    let text = http(http_addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| {
            l.starts_with("dynacore_unauthenticated_refused_total{")
                && l.contains(&format!("plane=\"{plane}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn error_code(body: &[u8]) -> Option<fb::ErrorCode> {
    parse_response(body)
        .expect("a response")
        .reply_as_error()
        .map(|e| e.code())
}

#[test]
fn nodes_with_different_secrets_never_join_each_other_and_say_why() {
    let dir = temp_dir("dynacore-auth-split-");
    let a = start(&dir.path().join("a"), 1, &[]);
    let other = dir.path().join("other.secret");
    write_secret(&other, &"0f".repeat(32));
    let seed = a.addr.to_string();
    let b = start(
        &dir.path().join("b"),
        1,
        &[
            "--seeds",
            &seed,
            "--cluster-secret-file",
            other.to_str().expect("utf-8"),
        ],
    );
    // a hears b's join attempts and drops them, saying why.
    wait_until("a logs the datagrams it drops", || {
        a.log_text()
            .contains("does not match this node's cluster secret")
    });
    assert!(refused(a.http, "gossip") > 0);
    // Long enough for a join to have happened many times over (gossip rounds are 100s of ms).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(ring_nodes(a.http), 1, "a never takes b into its ring");
        // b joins through its seed: without the cluster's secret it never learns a ring, and
        // holds no tokens of its own (it has not joined): nobody is in its ring.
        assert_eq!(ring_nodes(b.http), 0, "b never takes a into its ring");
        std::thread::sleep(Duration::from_millis(200));
    }
    // b, given seeds, serves nothing until it knows its ring: it says so, never a wrong answer.
    let r = http(b.http, "GET", "/keys/k", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
}

#[test]
fn replica_operations_need_the_cluster_secret() {
    let dir = temp_dir("dynacore-auth-frames-");
    let node = start(&dir.path().join("a"), 1, &[]);
    let mut conn = raw_conn(node.addr);
    conn.write_all(&common::put_frame(1, b"k", b"v"))
        .expect("send");
    assert_eq!(error_code(&read_frame(&mut conn)), None, "a client's put");
    // A client's frame carrying a replica operation: refused, and the connection still serves.
    conn.write_all(&framed(&build::replica_read(2, 5_000, b"k")))
        .expect("send");
    assert_eq!(
        error_code(&read_frame(&mut conn)),
        Some(fb::ErrorCode::BadRequest)
    );
    let (version, values) = (b"\x02\x00\x00".to_vec(), Vec::new());
    conn.write_all(&framed(&build::replica_apply(
        3, 5_000, b"k", &version, &values,
    )))
    .expect("send");
    assert_eq!(
        error_code(&read_frame(&mut conn)),
        Some(fb::ErrorCode::BadRequest)
    );
    conn.write_all(&framed(&build::ping(4, 7))).expect("send");
    assert_eq!(
        parse_response(&read_frame(&mut conn)).expect("pong").id(),
        4
    );
    assert_eq!(refused(node.http, "binary"), 2);
    // The same from a node of the cluster: answered, authenticated.
    let mut peer = raw_conn(node.addr);
    peer.write_all(&framed_as_peer(&build::replica_read(5, 5_000, b"k")))
        .expect("send");
    let answer = read_frame_as_peer(&mut peer);
    let copy = parse_response(&answer).expect("answer");
    assert!(copy.reply_as_replica_object().expect("a copy").found());
    // A tag made with another secret: refused, and the connection closes.
    let wrong = ClusterKey::new(&[9u8; 32]).expect("key");
    let mut forged = Vec::new();
    dynacore_proto::encode_authenticated_frame(
        &build::replica_read(6, 5_000, b"k"),
        &wrong,
        Domain::Request,
        &mut forged,
    )
    .expect("frame");
    let mut forger = raw_conn(node.addr);
    forger.write_all(&forged).expect("send");
    assert_eq!(
        error_code(&read_frame(&mut forger)),
        Some(fb::ErrorCode::BadRequest)
    );
    assert!(closed(&mut forger));
    assert_eq!(refused(node.http, "binary"), 3);
}

#[test]
fn forged_gossip_is_dropped_and_counted() {
    let dir = temp_dir("dynacore-auth-gossip-");
    let node = start(&dir.path().join("a"), 1, &[]);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let wrong = ClusterKey::new(&[1u8; 32]).expect("key");
    socket
        .send_to(&wrong.seal(Domain::Gossip, b"I am node 42"), node.addr)
        .expect("send");
    socket.send_to(b"no tag at all", node.addr).expect("send");
    wait_until("both datagrams are counted", || {
        refused(node.http, "gossip") == 2
    });
    assert_eq!(ring_nodes(node.http), 1);
}

#[test]
fn a_secret_file_readable_by_others_or_too_short_is_refused() {
    let dir = temp_dir("dynacore-auth-file-");
    let file = dir.path().join("cluster.secret");
    write_secret(&file, &"ab".repeat(32));
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let path = file.to_str().expect("utf-8");
    let (status, log) = try_start(&dir.path().join("a"), 1, &["--cluster-secret-file", path])
        .map(drop)
        .expect_err("refused");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("readable by others"), "{log}");
    write_secret(&file, "too short");
    let (status, log) = try_start(&dir.path().join("a"), 1, &["--cluster-secret-file", path])
        .map(drop)
        .expect_err("refused");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("at least 32"), "{log}");
}
