//! The binary server over real loopback sockets: round trips, pipelining (answers by id), and bad frames that
//! close only their own connection.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use dynacore_engine::version::ClockHandle;
use dynacore_engine::{Shard, ShardId, ShardOptions};
use dynacore_net::core::Core;
use dynacore_net::frontend::binary_server::{serve_binary, ConnectionLimits};
use dynacore_net::storage::replica::LocalStore;
use dynacore_proto::ring::NodeId;
use dynacore_proto::{encode_frame, fb, parse_response, FRAME_BYTES_MAX};
use dynacore_runtime as runtime;

use common::{closed, get_frame, put_frame, raw_conn as connect, read_frame};

/// Starts a one-shard server on a free loopback port, on its own executor thread (it runs until
/// the test process exits); returns its address.
fn start_server() -> (SocketAddr, tempfile::TempDir) {
    start_server_with(ConnectionLimits::default())
}

fn start_server_with(limits: ConnectionLimits) -> (SocketAddr, tempfile::TempDir) {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf();
    let dir = tempfile::Builder::new()
        .prefix("dynacore-server-test-")
        .tempdir_in(base)
        .expect("temp dir");
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ex = runtime::Executor::new_unbound(1 << 20).expect("executor");
        ex.run(async move {
            let shard = Shard::open(ShardOptions::new(&path, ShardId(0)))
                .await
                .expect("open");
            let store = LocalStore::new(shard, 1, ClockHandle::system());
            let listener =
                runtime::TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = listener.local_addr().expect("addr");
            tx.send(addr).expect("send address");
            serve_binary(listener, Core::single(store, NodeId(1)), limits).await;
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server started");
    (addr, dir)
}

#[test]
fn pipelined_requests_are_all_answered_by_id() {
    let (addr, _dir) = start_server();
    let mut s = connect(addr);
    let mut batch = Vec::new();
    for i in 0..20u8 {
        batch.extend(put_frame(
            u64::from(i),
            format!("key-{i}").as_bytes(),
            &[i; 100],
        ));
    }
    s.write_all(&batch).expect("send");
    // Requests on one connection run concurrently: answers come in any order, by id.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let body = read_frame(&mut s);
        let resp = parse_response(&body).expect("response");
        assert!(resp.reply_as_put().is_some(), "put {} succeeded", resp.id());
        assert!(seen.insert(resp.id()), "one answer per request");
    }
    assert_eq!(seen, (0..20).collect());
    s.write_all(&get_frame(100, b"key-7")).expect("send");
    let body = read_frame(&mut s);
    let resp = parse_response(&body).expect("response");
    assert_eq!(resp.id(), 100);
    let get = resp.reply_as_get().expect("get reply");
    assert!(get.found());
    assert_eq!(
        get.value().map(|v| v.bytes().to_vec()),
        Some(vec![7u8; 100])
    );
}

#[test]
fn bad_frames_close_only_their_connection() {
    let (addr, _dir) = start_server();
    let mut good = connect(addr);
    good.write_all(&put_frame(1, b"k", b"v")).expect("send");
    assert!(parse_response(&read_frame(&mut good)).is_ok());

    // A header announcing more than the limit: an error, then the connection closes without
    // the server waiting for (or reading) the body.
    let mut big = connect(addr);
    let len = u32::try_from(FRAME_BYTES_MAX + 1).expect("fits");
    big.write_all(&len.to_le_bytes()).expect("send");
    let body = read_frame(&mut big);
    let resp = parse_response(&body).expect("response");
    assert_eq!(
        resp.reply_as_error().map(|e| e.code()),
        Some(fb::ErrorCode::ValueTooLarge)
    );
    assert!(closed(&mut big));

    // A body that is not a request: an error with id 0, then the connection closes.
    let mut garbage = connect(addr);
    let mut frame = Vec::new();
    encode_frame(b"this is not a flatbuffer", &mut frame).expect("small");
    garbage.write_all(&frame).expect("send");
    let resp_body = read_frame(&mut garbage);
    let resp = parse_response(&resp_body).expect("response");
    assert_eq!(resp.id(), 0);
    assert_eq!(
        resp.reply_as_error().map(|e| e.code()),
        Some(fb::ErrorCode::BadRequest)
    );
    assert!(closed(&mut garbage));

    // A truncated frame (the client goes away mid-body) ends that connection only.
    let mut cut = connect(addr);
    let whole = put_frame(2, b"k2", b"v2");
    cut.write_all(&whole[..whole.len() / 2]).expect("send");
    drop(cut);

    // The first connection still works.
    good.write_all(&get_frame(3, b"k")).expect("send");
    let body = read_frame(&mut good);
    let resp = parse_response(&body).expect("response");
    assert_eq!(
        resp.reply_as_get()
            .and_then(|g| g.value())
            .map(|v| v.bytes().to_vec()),
        Some(b"v".to_vec())
    );
}

#[test]
fn a_connection_past_its_limits_pays_alone() {
    let limits = ConnectionLimits {
        answer_bytes_max: 1 << 20,
        read_timeout: Duration::from_millis(200),
        connections_max: 3,
        ..ConnectionLimits::default()
    };
    let (addr, _dir) = start_server_with(limits);
    let mut good = connect(addr);
    good.write_all(&put_frame(1, b"big", &vec![1u8; 256 << 10]))
        .expect("send");
    assert!(parse_response(&read_frame(&mut good))
        .expect("response")
        .reply_as_put()
        .is_some());

    // A client that asks for the 256 KiB value again and again without reading: once more
    // than 1 MiB of answers waits for it (beyond what the socket buffers hold), the server
    // closes its connection.
    let mut greedy = connect(addr);
    greedy
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut requests = Vec::new();
    for i in 0..400u64 {
        requests.extend(get_frame(i, b"big"));
    }
    // The server may close before taking every request: a failed write is fine.
    let _ = greedy.write_all(&requests);
    std::thread::sleep(Duration::from_millis(300));
    let mut drained = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match greedy.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    assert!(
        drained < 400 * (256 << 10),
        "the connection closed before every answer came ({drained} bytes)"
    );

    // A frame whose body never comes: the connection closes after the read timeout.
    let mut stalled = connect(addr);
    let whole = put_frame(2, b"k", b"v");
    stalled.write_all(&whole[..6]).expect("send");
    assert!(closed(&mut stalled));

    // Past the connection limit (3 at once: `good`, and two more), a new one is refused.
    let _second = connect(addr);
    let _third = connect(addr);
    std::thread::sleep(Duration::from_millis(100));
    let mut fourth = connect(addr);
    let body = read_frame(&mut fourth);
    assert_eq!(
        parse_response(&body)
            .expect("response")
            .reply_as_error()
            .map(|e| e.code()),
        Some(fb::ErrorCode::Overloaded)
    );
    assert!(closed(&mut fourth));

    // The well-behaved connection never noticed.
    good.write_all(&get_frame(9, b"big")).expect("send");
    let resp = read_frame(&mut good);
    assert_eq!(
        parse_response(&resp)
            .expect("response")
            .reply_as_get()
            .and_then(|g| g.value())
            .map(|v| v.len()),
        Some(256 << 10)
    );
}

#[test]
fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    };
    let (addr, _dir) = start_server_with(limits);
    // The server closes it: end of stream (or a reset), not our read timing out.
    let closed_by_server = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    // Silent from the start: closed (before, an idle connection stayed open for good).
    let mut silent = connect(addr);
    assert!(
        closed_by_server(&mut silent),
        "an idle connection is closed"
    );
    // Busy: one request every 100 ms for a second, each answered: never idle that long.
    let mut busy = connect(addr);
    for i in 0..10u64 {
        busy.write_all(&put_frame(i, b"k", b"v")).expect("send");
        let body = read_frame(&mut busy);
        assert_eq!(parse_response(&body).expect("response").id(), i);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then silent: closed too.
    assert!(
        closed_by_server(&mut busy),
        "idle after its requests: closed"
    );
}
