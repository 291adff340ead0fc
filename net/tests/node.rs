//! The real `dynacore` binary, started on free loopback ports: the SDK, raw frames, the HTTP
//! API, the CLI, restarts and shutdown.

mod common;

use std::io::Write;

use std::time::Duration;

use common::{
    closed, dynacore, framed, framed_as_peer, get_value, http, metric_sum, on_executor, raw_conn,
    read_frame, read_frame_as_peer, start, temp_dir, try_start, wait_until, HttpConn, BOUND,
};
use dynacore_client::glommio::Client;
use dynacore_client::{ClientError, ErrorCode, Quorum, ReadRepair, Version, WriteOptions};
use dynacore_proto::{build, fb, parse_response, FRAME_BYTES_MAX};
use dynacore_runtime as runtime;

fn error_code(body: &[u8]) -> Option<fb::ErrorCode> {
    parse_response(body)
        .expect("response")
        .reply_as_error()
        .map(|e| e.code())
}

#[test]
fn sdk_round_trips_go_straight_to_the_owning_core() {
    let dir = temp_dir("dynacore-node-sdk-");
    let node = start(&dir.path().join("data"), 2, &[]);
    let seed = node.addr;
    let shard_ports = node.shard_ports.clone();
    on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        let view = client.cluster();
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.nodes[0].shards, 2);
        assert_eq!(view.ring.vnodes().len(), 256);
        // Keys spread over both cores' ports.
        let ports: std::collections::BTreeSet<_> = (0..64)
            .map(|i| client.route(format!("k{i}").as_bytes()))
            .collect();
        assert_eq!(ports.into_iter().collect::<Vec<_>>(), shard_ports);

        let v1 = client.put(b"user:1", b"Ada").await.expect("put");
        let got = client.get(b"user:1").await.expect("get").expect("found");
        assert_eq!((got.value.as_slice(), &got.version), (&b"Ada"[..], &v1));
        // Conditional put: on the current version it succeeds, on a stale one it fails and
        // says what the current version is.
        let v2 = client
            .put_if(b"user:1", b"Ada L.", &v1)
            .await
            .expect("put_if");
        match client.put_if(b"user:1", b"stale", &v1).await {
            Err(ClientError::ConditionFailed { current }) => assert_eq!(current, v2),
            other => panic!("expected a failed condition, got {other:?}"),
        }
        // Quorums are validated against the replication factor (1 on one node).
        client
            .consistent_put(b"q", b"1", Quorum::Count(1))
            .await
            .expect("w=1");
        client
            .consistent_put(b"q", b"2", Quorum::Quorum)
            .await
            .expect("w=quorum");
        assert!(matches!(
            client.consistent_put(b"q", b"3", Quorum::Count(2)).await,
            Err(ClientError::InvalidArgument(_))
        ));
        let q = client
            .consistent_get(b"q", Quorum::All, ReadRepair::Blocking)
            .await
            .expect("r=all");
        assert_eq!(q.map(|v| v.value), Some(b"2".to_vec()));
        assert!(matches!(
            client
                .consistent_get(b"q", Quorum::Count(3), ReadRepair::Off)
                .await,
            Err(ClientError::InvalidArgument(_))
        ));
        // Keys and values out of range are refused before sending.
        assert!(matches!(
            client.get(b"").await,
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(
            client.put(&[b'k'; 257], b"v").await,
            Err(ClientError::InvalidArgument(_))
        ));
        // Delete, then the key reads as absent.
        client.delete(b"user:1").await.expect("delete");
        assert_eq!(client.get(b"user:1").await.expect("get"), None);
        // TTL, to the millisecond: the value is there with its expiry, then gone.
        let options = WriteOptions {
            ttl: Some(Duration::from_millis(1_250)),
            ..WriteOptions::default()
        };
        let before = now_ms();
        client
            .put_with(b"ttl", b"brief", &options)
            .await
            .expect("ttl put");
        let read = client.get(b"ttl").await.expect("get").expect("still there");
        let expiry = read.expiry_ms.expect("an expiry");
        assert!(
            (before + 1_250..=now_ms() + 1_250).contains(&expiry),
            "{expiry} is 1,250 ms after the write"
        );
        let options = WriteOptions {
            ttl: Some(Duration::from_micros(10)),
            ..WriteOptions::default()
        };
        assert!(matches!(
            client.put_with(b"ttl", b"v", &options).await,
            Err(ClientError::InvalidArgument(_))
        ));
        let mut gone = false;
        for _ in 0..100 {
            runtime::sleep(Duration::from_millis(50)).await;
            if client.get(b"ttl").await.expect("get").is_none() {
                gone = true;
                break;
            }
        }
        assert!(gone, "a 1 s TTL expires within 5 s");
        // Pipelining: 300 puts in flight at once from one client, then all read back.
        let tasks: Vec<_> = (0..300u32)
            .map(|i| {
                let c = client.clone();
                runtime::spawn(
                    async move { c.put(format!("p{i}").as_bytes(), &i.to_le_bytes()).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.expect("pipelined put");
        }
        for i in (0..300u32).step_by(7) {
            let v = client.get(format!("p{i}").as_bytes()).await.expect("get");
            assert_eq!(v.map(|v| v.value), Some(i.to_le_bytes().to_vec()));
        }
        // A large value (the value log's path) round-trips.
        let big = vec![7u8; 3 << 20];
        client.put(b"big", &big).await.expect("big put");
        assert_eq!(
            client.get(b"big").await.expect("get").map(|v| v.value),
            Some(big)
        );
        let rtt = client.ping(seed).await.expect("ping");
        assert!(rtt < BOUND);
    });
    // The SDK routed everything itself: nothing was forwarded between cores.
    assert_eq!(
        metric_sum(node.http, "dynacore_forwarded_requests_total"),
        0
    );
    assert!(metric_sum(node.http, "dynacore_requests_total") >= 300);
}

#[test]
fn a_request_on_the_wrong_core_is_forwarded_and_answered() {
    let dir = temp_dir("dynacore-node-forward-");
    let node = start(&dir.path().join("data"), 2, &[]);
    let seed = node.addr;
    // Find a key core 1 owns, and send it to core 0's port.
    let (key, owner) = on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        (0..1000)
            .map(|i| format!("key-{i}"))
            .map(|k| {
                let owner = client.route(k.as_bytes());
                (k, owner)
            })
            .find(|(_, owner)| owner.port() == seed.port() + 2)
            .expect("a key of core 1")
    });
    assert_eq!(owner, node.shard_ports[1]);
    let mut wrong = raw_conn(node.shard_ports[0]);
    let put = build::put(
        1,
        &build::Put {
            key: key.as_bytes(),
            value: b"forwarded",
            ..build::Put::default()
        },
    );
    wrong.write_all(&framed(&put)).expect("send");
    let resp = read_frame(&mut wrong);
    assert!(parse_response(&resp)
        .expect("response")
        .reply_as_put()
        .is_some());
    assert_eq!(
        get_value(&mut wrong, 2, key.as_bytes()),
        Some(b"forwarded".to_vec())
    );
    // The owner's own port sees the same value.
    let mut right = raw_conn(node.shard_ports[1]);
    assert_eq!(
        get_value(&mut right, 3, key.as_bytes()),
        Some(b"forwarded".to_vec())
    );
    assert_eq!(
        metric_sum(node.http, "dynacore_forwarded_requests_total"),
        2
    );
    assert_eq!(
        metric_sum(node.http, "dynacore_forwarded_requests_received_total"),
        2
    );
}

#[test]
fn malformed_truncated_and_oversized_frames_close_only_their_connection() {
    let dir = temp_dir("dynacore-node-frames-");
    let node = start(&dir.path().join("data"), 1, &[]);
    let mut good = raw_conn(node.addr);
    good.write_all(&framed(&build::ping(1, 42))).expect("send");
    assert!(parse_response(&read_frame(&mut good)).is_ok());

    // Oversized: refused from the header alone (the body is never sent), and closed.
    let mut s = raw_conn(node.addr);
    let len = u32::try_from(FRAME_BYTES_MAX + 1).expect("fits");
    s.write_all(&len.to_le_bytes()).expect("send header");
    let body = read_frame(&mut s);
    assert_eq!(parse_response(&body).expect("response").id(), 0);
    assert_eq!(error_code(&body), Some(fb::ErrorCode::ValueTooLarge));
    assert!(closed(&mut s));

    // Empty frame.
    let mut s = raw_conn(node.addr);
    s.write_all(&0u32.to_le_bytes()).expect("send");
    assert_eq!(
        error_code(&read_frame(&mut s)),
        Some(fb::ErrorCode::BadRequest)
    );
    assert!(closed(&mut s));

    // Garbage the verifier refuses.
    let mut s = raw_conn(node.addr);
    s.write_all(&framed(b"this is not a flatbuffer at all"))
        .expect("send");
    assert_eq!(
        error_code(&read_frame(&mut s)),
        Some(fb::ErrorCode::BadRequest)
    );
    assert!(closed(&mut s));

    // A valid request cut short: the bytes announced never come; the client gives up and
    // closes, and the server drops the connection without answering.
    let mut s = raw_conn(node.addr);
    let ping = framed(&build::ping(5, 5));
    s.write_all(&ping[..ping.len() - 3]).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(closed(&mut s));

    // A damaged request body (one flipped byte in a valid put): an error or an answer, never
    // a crash.
    let put = build::put(
        9,
        &build::Put {
            key: b"k",
            value: b"v",
            ..build::Put::default()
        },
    );
    for i in 0..put.len() {
        let mut damaged = put.clone();
        damaged[i] ^= 0xA5;
        let mut s = raw_conn(node.addr);
        s.write_all(&framed(&damaged)).expect("send");
        let _ = parse_response(&read_frame(&mut s)).expect("some response");
    }

    // The first connection never noticed.
    good.write_all(&framed(&build::ping(2, 43))).expect("send");
    let body = read_frame(&mut good);
    assert_eq!(
        parse_response(&body)
            .expect("response")
            .reply_as_ping()
            .map(|p| p.payload()),
        Some(43)
    );
    assert!(metric_sum(node.http, "dynacore_refused_frames_total") >= 3);
}

#[test]
#[allow(clippy::too_many_lines)]
fn every_http_route_and_error() {
    let dir = temp_dir("dynacore-node-http-");
    let node = start(&dir.path().join("data"), 2, &[]);
    let h = node.http;
    let json_ct = ("Content-Type", "application/json");

    // PUT JSON, GET JSON: one connection, kept alive.
    let mut c = HttpConn::open(h);
    let r = c.request("PUT", "/keys/user%3A1", &[json_ct], br#"{"value": "Ada"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v1 = r.json()["version"].as_str().expect("version").to_owned();
    assert_eq!(r.header("X-Dynacore-Version"), Some(v1.as_str()));
    let r = c.request("GET", "/keys/user%3A1", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"value": "Ada", "version": v1}));
    // Raw bytes back, version in a header.
    let r = c.request(
        "GET",
        "/keys/user:1",
        &[("Accept", "application/octet-stream")],
        b"",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"Ada"[..]));
    assert_eq!(r.header("X-Dynacore-Version"), Some(v1.as_str()));
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));

    // If-Match: the current version wins, a stale one is 412 with the current version.
    let r = c.request(
        "PUT",
        "/keys/user:1",
        &[("If-Match", &format!("\"{v1}\""))],
        br#"{"value": "Ada L."}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v2 = r.json()["version"].as_str().expect("version").to_owned();
    let r = c.request(
        "PUT",
        "/keys/user:1",
        &[("If-Match", &v1)],
        br#"{"value": "stale"}"#,
    );
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(r.json()["error"], "condition_failed");
    assert_eq!(r.json()["version"], v2.as_str());
    let r = c.request(
        "PUT",
        "/keys/user:1",
        &[("If-Match", "zz")],
        br#"{"value": "x"}"#,
    );
    assert_eq!(r.status, 400);

    // Raw body with a TTL in the query; JSON body with a TTL.
    let r = c.request(
        "PUT",
        "/keys/raw?ttl_seconds=3600",
        &[("Content-Type", "application/octet-stream")],
        b"\x00\xffbinary",
    );
    assert_eq!(r.status, 200);
    let r = c.request(
        "GET",
        "/keys/raw",
        &[("Accept", "application/octet-stream")],
        b"",
    );
    assert_eq!(r.body, b"\x00\xffbinary");
    // Not UTF-8: JSON cannot carry it.
    let r = c.request("GET", "/keys/raw", &[], b"");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (406, Some("not_utf8"))
    );
    let r = c.request(
        "PUT",
        "/keys/t",
        &[],
        br#"{"value": "v", "ttl_seconds": 100}"#,
    );
    assert_eq!(r.status, 200);
    // Or in milliseconds; a read gives the expiry (ms since the Unix epoch).
    let before = now_ms();
    let r = c.request("PUT", "/keys/t", &[], br#"{"value": "v", "ttl_ms": 90500}"#);
    assert_eq!(r.status, 200);
    let expiry = c.request("GET", "/keys/t", &[], b"").json()["expiry_ms"]
        .as_u64()
        .expect("expiry_ms");
    assert!((before + 90_500..=now_ms() + 90_500).contains(&expiry));
    let r = c.request(
        "PUT",
        "/keys/t?ttl_ms=1000",
        &[("Content-Type", "application/octet-stream")],
        b"raw",
    );
    assert_eq!(r.status, 200);
    let r = c.request(
        "PUT",
        "/keys/t",
        &[],
        br#"{"value": "v", "ttl_seconds": 1, "ttl_ms": 1000}"#,
    );
    assert_eq!(r.status, 400, "seconds or milliseconds, not both");
    let r = c.request("GET", "/keys/user:1", &[], b"");
    assert!(r.json().get("expiry_ms").is_none(), "no TTL, no expiry");

    // Quorum parameters: accepted in range, refused outside the configured RF (3); a count
    // the cluster could give but this one node cannot (its ring holds 1 node) is unavailable.
    for (target, status) in [
        ("/keys/user:1?r=1", 200),
        ("/keys/user:1?r=quorum&read_repair=false", 200),
        ("/keys/user:1?r=all&read_repair=blocking", 200),
        ("/keys/user:1?r=2", 503),
        ("/keys/user:1?r=4", 400),
        ("/keys/user:1?r=0", 400),
        ("/keys/user:1?read_repair=maybe", 400),
        ("/keys/user:1?colour=red", 400),
    ] {
        // A request the reader refuses closes its connection: a fresh one each.
        let r = http(h, "GET", target, &[], b"");
        assert_eq!(r.status, status, "{target}: {}", r.text());
    }
    let r = c.request("PUT", "/keys/q?w=2", &[], br#"{"value": "v"}"#);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(r.json()["required"], 2);
    let r = c.request("PUT", "/keys/q?w=4", &[], br#"{"value": "v"}"#);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
    let r = c.request("PUT", "/keys/q?w=all", &[], br#"{"value": "v"}"#);
    assert_eq!(r.status, 200);

    // This node's own copy, without coordinating: every sibling, with its timestamp.
    let current = c.request("GET", "/keys/user:1", &[], b"").json()["version"].clone();
    let r = c.request("GET", "/internal/local/user%3A1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let local = r.json();
    assert_eq!(local["version"], current);
    assert_eq!(local["siblings"][0]["value"], "Ada L.");
    assert_eq!(local["siblings"][0]["deleted"], false);
    assert!(local["siblings"][0]["hlc"].as_u64().is_some_and(|h| h > 0));
    let r = c.request("GET", "/internal/local/raw", &[], b"");
    assert_eq!(r.json()["siblings"][0]["value_hex"], "00ff62696e617279");
    assert_eq!(
        c.request("GET", "/internal/local/nothing-here", &[], b"")
            .status,
        404
    );

    // DELETE writes a tombstone: then 404.
    let r = c.request("DELETE", "/keys/user:1", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.json()["version"].is_string());
    let r = c.request("GET", "/keys/user:1", &[], b"");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
    let r = c.request("GET", "/keys/never-written", &[], b"");
    assert_eq!(r.status, 404);
    // The replica still holds the tombstone.
    let r = c.request("GET", "/internal/local/user:1", &[], b"");
    assert_eq!(r.json()["siblings"][0]["deleted"], true);

    // Errors: JSON bodies with the codes of the API.
    let long = "k".repeat(257);
    for (method, target, body, status, code) in [
        ("GET", "/keys/", &b""[..], 400, "invalid_key"),
        (
            "GET",
            &format!("/keys/{long}")[..],
            &b""[..],
            400,
            "invalid_key",
        ),
        ("GET", "/keys/%zz", &b""[..], 400, "invalid_key"),
        ("PUT", "/keys/j", &b"{not json"[..], 400, "bad_request"),
        (
            "PUT",
            "/keys/j",
            &br#"{"value": 5}"#[..],
            400,
            "bad_request",
        ),
        ("GET", "/nope", &b""[..], 404, "not_found"),
        ("POST", "/keys/k", &b""[..], 405, "method_not_allowed"),
        (
            "PUT",
            "/internal/local/k",
            &b"x"[..],
            405,
            "method_not_allowed",
        ),
    ] {
        let r = http(h, method, target, &[], body);
        assert_eq!(r.status, status, "{method} {target}: {}", r.text());
        assert_eq!(r.json()["error"], code, "{method} {target}");
        assert!(r.json()["message"].is_string());
    }

    // A body without Content-Length (chunked), and a head over 16 KiB.
    let mut chunked = HttpConn::open(h);
    chunked
        .send(b"PUT /keys/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let r = chunked.read();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (411, Some("length_required"))
    );
    let mut fat = HttpConn::open(h);
    let filler = "x".repeat(20 << 10);
    fat.send(format!("GET /keys/k HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n").as_bytes());
    let r = fat.read();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (431, Some("headers_too_large"))
    );
    // A value over 10 MiB is refused from its Content-Length, before the body is sent.
    let mut big = HttpConn::open(h);
    big.send(b"PUT /keys/big HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 10485761\r\n\r\n");
    let r = big.read();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("value_too_large"))
    );
    assert!(big.closed());
    // A raw value of exactly 10 MiB is stored.
    let max = vec![b'x'; 10 << 20];
    let r = http(
        h,
        "PUT",
        "/keys/max",
        &[("Content-Type", "application/octet-stream")],
        &max,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Operations.
    let r = http(h, "GET", "/health", &[], b"");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = http(h, "GET", "/cluster", &[], b"");
    assert_eq!(r.status, 200);
    let cluster = r.json();
    assert_eq!(cluster["nodes"][0]["shards"], 2);
    assert_eq!(cluster["nodes"][0]["vnodes"], 256);
    assert_eq!(cluster["vnodes"], 256);
    assert_eq!(cluster["replication_factor"], 1);
    let per_shard: u64 = cluster["vnodes_per_shard"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(per_shard, 256);
    let r = http(h, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let text = r.text();
    for family in [
        "dynacore_requests_total",
        "dynacore_request_duration_seconds_bucket",
        "dynacore_forwarded_requests_total",
        "dynacore_wal_syncs_total",
        "dynacore_wal_records_total",
        "dynacore_memtable_bytes",
        "dynacore_sstables",
    ] {
        assert!(
            text.contains(&format!("{family}{{core=\"1\"")),
            "{family} for core 1 in /metrics"
        );
    }
    assert!(metric_sum(h, "dynacore_wal_syncs_total") > 0);
    // HTTP requests landed on whichever core accepted the connection: some were forwarded.
    assert!(metric_sum(h, "dynacore_requests_total") > 20);
}

#[test]
fn cli_exit_codes() {
    let dir = temp_dir("dynacore-node-cli-");
    let node = start(&dir.path().join("data"), 1, &[]);
    let addr = node.addr.to_string();
    let run = |args: &[&str]| {
        let out = dynacore()
            .args(args)
            .args(["--addr", &addr])
            .output()
            .expect("run the CLI");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, version) = run(&["put", "greeting", "hello world"]);
    assert_eq!(code, Some(0));
    assert!(version.trim().parse::<Version>().is_ok(), "{version:?}");
    assert_eq!(
        run(&["get", "greeting"]),
        (Some(0), "hello world\n".to_owned())
    );
    let (code, _) = run(&["put", "greeting", "again", "--if-version", version.trim()]);
    assert_eq!(code, Some(0));
    let (code, _) = run(&["put", "greeting", "stale", "--if-version", version.trim()]);
    assert_eq!(code, Some(2), "a failed condition is an error");
    assert_eq!(run(&["get", "absent"]).0, Some(1));
    assert_eq!(run(&["delete", "greeting"]).0, Some(0));
    assert_eq!(run(&["get", "greeting"]).0, Some(1));
    let (code, status) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        status.contains("cores 1") && status.contains("Normal, in the ring (ping"),
        "{status}"
    );
    assert_eq!(run(&["put", "k", "v", "--ttl", "60"]).0, Some(0));
    // Errors: an unreachable node, a bad address, a bad key.
    let closed = dynacore()
        .args(["get", "k", "--addr", "127.0.0.1:1", "--timeout-ms", "2000"])
        .output()
        .expect("run");
    assert_eq!(closed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&closed.stderr).contains("cannot connect"));
    let bad = dynacore()
        .args(["get", "k", "--addr", "nowhere"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(run(&["get", ""]).0, Some(2));
}

#[test]
fn bad_configuration_exits_with_code_2() {
    let dir = temp_dir("dynacore-node-config-");
    let code = |args: &[&str]| {
        let out = dynacore()
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, err) = code(&["--durability", "always"]);
    assert_eq!(c, Some(2));
    assert!(err.contains("durability must be"), "{err}");
    let (c, err) = code(&["--listen", "localhost"]);
    assert_eq!(c, Some(2));
    assert!(err.contains("--listen"), "{err}");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "cores = 2\ncolour = \"blue\"\n").expect("write");
    let (c, err) = code(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(c, Some(2));
    assert!(err.contains("unknown field"), "{err}");
    let (c, _) = code(&["--config", "/nonexistent/dynacore.toml"]);
    assert_eq!(c, Some(2));
    let (c, _) = code(&["--cores", "0"]);
    assert_eq!(c, Some(2));
    let (c, err) = code(&["--cores", "4096"]);
    assert_eq!(c, Some(2), "{err}");
    // A port in use is refused, not silently shared (the executors use SO_REUSEPORT).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let (c, err) = code(&["--http", &port, "--no-pin", "--cores", "1"]);
    assert_eq!(c, Some(2));
    assert!(err.contains("is another node running"), "{err}");
}

#[test]
fn restart_keeps_every_acknowledged_write_and_refuses_another_core_count() {
    let dir = temp_dir("dynacore-node-restart-");
    let data = dir.path().join("data");
    let node = start(&data, 2, &[]);
    let seed = node.addr;
    let written = on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        for i in 0..200u32 {
            client
                .put(
                    format!("key-{i}").as_bytes(),
                    format!("value-{i}").as_bytes(),
                )
                .await
                .expect("put");
        }
        client.delete(b"key-7").await.expect("delete");
        200u32
    });
    assert!(node.stop().success(), "SIGTERM exits 0");

    // Another core count is a clear error, and the data is untouched.
    match try_start(&data, 3, &[]) {
        Ok(_) => panic!("a node with another core count started"),
        Err((status, log)) => {
            assert_eq!(status.and_then(|s| s.code()), Some(2));
            assert!(log.contains("split into 2 shards"), "{log}");
        }
    }

    let node = start(&data, 2, &[]);
    let seed = node.addr;
    // While a stream of pipelined writes runs, kill -9 the node: every write it acknowledged
    // (durability sync) must be there after a restart.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let acked_in = acked.clone();
    let writer = std::thread::spawn(move || {
        on_executor(move || async move {
            let client = Client::connect(&[seed]).await.expect("connect");
            let mut tasks = Vec::new();
            for i in 0..20_000u32 {
                let c = client.clone();
                let acked = acked_in.clone();
                tasks.push(runtime::spawn(async move {
                    let key = format!("crash-{i}");
                    if c.put(key.as_bytes(), b"durable").await.is_ok() {
                        acked.lock().expect("lock").push(key);
                    }
                }));
                if tasks.len() >= 64 {
                    for t in tasks.drain(..) {
                        t.await;
                    }
                }
            }
            for t in tasks {
                t.await;
            }
        });
    });
    // Let some writes land, then kill.
    let until = std::time::Instant::now() + BOUND;
    while acked.lock().expect("lock").len() < 500 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.signal("KILL");
    writer.join().expect("writer");
    drop(node);
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 500, "{} writes acknowledged", acked.len());

    let node = start(&data, 2, &[]);
    let seed = node.addr;
    on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        for i in 0..written {
            let got = client
                .get(format!("key-{i}").as_bytes())
                .await
                .expect("get");
            if i == 7 {
                assert_eq!(got, None, "the delete survived");
            } else {
                assert_eq!(
                    got.map(|v| v.value),
                    Some(format!("value-{i}").into_bytes()),
                    "key-{i}"
                );
            }
        }
        for key in &acked {
            let got = client.get(key.as_bytes()).await.expect("get");
            assert_eq!(
                got.map(|v| v.value),
                Some(b"durable".to_vec()),
                "{key} was acknowledged"
            );
        }
    });
    assert!(node.stop().success());
}

#[test]
fn shutdown_finishes_or_fails_requests_in_flight_and_loses_none() {
    let dir = temp_dir("dynacore-node-shutdown-");
    let data = dir.path().join("data");
    let node = start(&data, 2, &["--durability", "periodic:50"]);
    let seed = node.addr;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let acked_in = acked.clone();
    let writer = std::thread::spawn(move || {
        on_executor(move || async move {
            let client = Client::connect(&[seed]).await.expect("connect");
            let mut refused = 0u32;
            let mut tasks = Vec::new();
            for i in 0..50_000u32 {
                let c = client.clone();
                let acked = acked_in.clone();
                tasks.push(runtime::spawn(async move {
                    let key = format!("s-{i}");
                    match c.put(key.as_bytes(), b"v").await {
                        Ok(_) => {
                            acked.lock().expect("lock").push(key);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }));
                if tasks.len() >= 32 {
                    for t in tasks.drain(..) {
                        if let Err(e) = t.await {
                            // Only "shutting down" or a closed connection are expected.
                            match e {
                                ClientError::Server {
                                    code: ErrorCode::Unavailable,
                                    ..
                                }
                                | ClientError::Io(_)
                                | ClientError::Connect { .. } => refused += 1,
                                other => panic!("unexpected error {other:?}"),
                            }
                        }
                    }
                    if refused > 0 {
                        return refused;
                    }
                }
            }
            refused
        })
    });
    let until = std::time::Instant::now() + BOUND;
    while acked.lock().expect("lock").len() < 300 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = node.stop();
    assert!(status.success(), "exit status {status:?}");
    let refused = writer.join().expect("writer");
    assert!(refused > 0, "the writer saw the node stop");
    let acked = acked.lock().expect("lock").clone();
    // Periodic durability, but a clean shutdown syncs the WAL: nothing acknowledged is lost.
    let node = start(&data, 2, &[]);
    let seed = node.addr;
    on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        for key in &acked {
            let got = client.get(key.as_bytes()).await.expect("get");
            assert!(got.is_some(), "{key} was acknowledged before the shutdown");
        }
    });
    let _ = node.stop();
}

#[test]
fn an_answer_over_the_frame_limit_is_an_error_for_its_request_only() {
    // A 6 MB value read in siblings mode: the answer holds it twice (the newest value and the
    // sibling list), over the 10 MiB + 256 KiB frame limit.
    let dir = temp_dir("dynacore-node-big-answer-");
    let node = start(&dir.path().join("data"), 1, &["--conflicts", "siblings"]);
    let (seed, http_addr) = (node.addr, node.http);
    let big = vec![0x42u8; 6_000_000];
    on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        client.put(b"big", &big).await.expect("a 6 MB put");
        match client.get_siblings(b"big", Quorum::Default).await {
            Err(ClientError::Server {
                code: ErrorCode::ValueTooLarge,
                message,
                ..
            }) => assert!(message.contains("frame limit"), "{message}"),
            other => panic!("expected a typed error, got {other:?}"),
        }
        // The node, the core and the connection are still there.
        client.ping(seed).await.expect("ping after");
        client.put(b"small", b"v").await.expect("put after");
        // A plain get on this node is in siblings mode too: the same typed error, again.
        assert!(matches!(
            client
                .consistent_get(b"big", Quorum::Default, ReadRepair::Default)
                .await,
            Err(ClientError::Server {
                code: ErrorCode::ValueTooLarge,
                ..
            })
        ));
        assert_eq!(
            client
                .get(b"small")
                .await
                .expect("get after")
                .map(|v| v.value),
            Some(b"v".to_vec())
        );
    });
    // Two concurrent 4 MB writes: an 8 MB copy (the engine's object limit is 10 MiB), whose
    // siblings answer (newest value and both siblings, 12 MB) is refused the same way, while a
    // peer's ReplicaRead of the copy itself fits and is answered.
    let big = vec![0x43u8; 4_000_000];
    on_executor(move || async move {
        let client = Client::connect(&[seed]).await.expect("connect");
        let base = client.put(b"pair", b"base").await.expect("put");
        for _ in 0..2 {
            let options = WriteOptions {
                context: Some(base.clone()),
                ..WriteOptions::default()
            };
            client
                .put_with(b"pair", &big, &options)
                .await
                .expect("a concurrent 4 MB put");
        }
        assert!(matches!(
            client.get_siblings(b"pair", Quorum::Default).await,
            Err(ClientError::Server {
                code: ErrorCode::ValueTooLarge,
                ..
            })
        ));
    });
    let mut conn = raw_conn(seed);
    conn.write_all(&framed_as_peer(&build::replica_read(7, 5_000, b"pair")))
        .expect("send");
    let answer = read_frame_as_peer(&mut conn);
    let copy = parse_response(&answer).expect("answer");
    let object = copy.reply_as_replica_object().expect("the replica's copy");
    let values = object.values().map_or(0, |v| v.len());
    assert!(
        object.found() && values >= 8_000_000,
        "found {} with {values} bytes",
        object.found()
    );
    conn.write_all(&framed_as_peer(&build::ping(8, 99)))
        .expect("send");
    let pong = read_frame_as_peer(&mut conn);
    assert_eq!(
        parse_response(&pong).expect("pong").id(),
        8,
        "the connection still serves"
    );
    let r = http(http_addr, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    let status = node.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_node_that_has_not_learned_the_ring_serves_no_request() {
    // Its only seed never answers: it knows no other member, so it does not know the ring.
    // Before, it clamped the default W to 1 and acknowledged writes alone.
    let dir = temp_dir("dynacore-node-no-ring-");
    let dead_seed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let seed = dead_seed.local_addr().expect("addr").to_string();
    drop(dead_seed);
    let node = start(&dir.path().join("data"), 1, &["--seeds", &seed]);
    for (method, target) in [
        ("PUT", "/keys/k"),
        ("PUT", "/keys/k?w=1"),
        ("PUT", "/keys/k?w=2"),
        ("GET", "/keys/k"),
    ] {
        let body: &[u8] = if method == "PUT" {
            br#"{"value": "v"}"#
        } else {
            b""
        };
        let r = http(node.http, method, target, &[], body);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (503, Some("unavailable")),
            "{method} {target}: {}",
            r.text()
        );
    }
    // Still alive and honest about it.
    assert_eq!(http(node.http, "GET", "/health", &[], b"").status, 200);
    let status = node.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_operators_compaction_purges_deletes_only_after_their_grace() {
    // The purge rule named explicitly (anti-entropy will add another), with a short grace.
    const GRACE: Duration = Duration::from_secs(5);
    let dir = temp_dir("dynacore-node-compact-");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "tombstone_gc = \"grace\"\ntombstone_grace_s = {}\n",
            GRACE.as_secs()
        ),
    )
    .expect("config");
    let node = start(
        &dir.path().join("data"),
        2,
        &["--config", config.to_str().expect("utf-8")],
    );
    let h = node.http;
    let put = |key: &str, query: &str| {
        let r = http(
            h,
            "PUT",
            &format!("/keys/{key}{query}"),
            &[],
            br#"{"value": "v"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    // What this node's copy holds: 0 nothing, 1 a tombstone or an expired value.
    let held = |key: &str| {
        let r = http(h, "GET", &format!("/internal/local/{key}"), &[], b"");
        match r.status {
            404 => 0,
            200 => r.json()["siblings"].as_array().map_or(0, Vec::len),
            other => panic!("{other}: {}", r.text()),
        }
    };
    let compact = || {
        let out = dynacore()
            .args(["compact", "--addr", &h.to_string()])
            .output()
            .expect("dynacore compact");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(answer["compacted"].as_array().map(Vec::len), Some(2));
    };
    put("deleted", "");
    let r = http(h, "DELETE", "/keys/deleted", &[], b"");
    assert_eq!(r.status, 200);
    let deleted_at = std::time::Instant::now();
    put("expiring", "?ttl_seconds=1");
    let expires_by = std::time::Instant::now() + Duration::from_secs(1);
    // Expired to readers first (polled), then compacted within the grace: both kept.
    while http(h, "GET", "/keys/expiring", &[], b"").status != 404 {
        assert!(deleted_at.elapsed() < BOUND, "the value never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    compact();
    if deleted_at.elapsed() < GRACE && expires_by.elapsed() < GRACE {
        assert_eq!(held("deleted"), 1, "a tombstone within its grace is kept");
        assert_eq!(
            held("expiring"),
            1,
            "an expired value within its grace is kept"
        );
    }
    // Once the grace has passed, a compaction purges both; never before.
    loop {
        let before_compaction = deleted_at.elapsed();
        compact();
        let gone = (held("deleted"), held("expiring")) == (0, 0);
        if gone {
            assert!(
                before_compaction + Duration::from_secs(1) >= GRACE,
                "purged early"
            );
            break;
        }
        assert!(deleted_at.elapsed() < BOUND, "never purged");
        std::thread::sleep(Duration::from_millis(500));
    }
    // A bad purge rule is refused at start.
    std::fs::write(&config, "purge_gate = \"never\"\n").expect("config");
    let out = dynacore()
        .args(["serve", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("dynacore serve");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("purge_gate"));
    let status = node.stop();
    assert!(status.success(), "{status:?}");
}

/// Prometheus's own target labels, which a node's samples do not carry.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// `/metrics` as families (from `# TYPE`) and, per sample name, the label keys its samples carry.
fn exported(
    text: &str,
) -> (
    std::collections::HashMap<String, String>,
    std::collections::HashMap<String, std::collections::BTreeSet<String>>,
) {
    let mut families = std::collections::HashMap::new();
    let mut samples: std::collections::HashMap<String, std::collections::BTreeSet<String>> =
        std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                families.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let keys = samples.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let labels = &line[name_end + 1..line.find('}').expect("closed labels")];
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                keys.insert(pair.split('=').next().expect("key").to_owned());
            }
        }
    }
    (families, samples)
}

/// The metric names an expression uses, each with the label keys matched right after it.
fn metric_uses(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut uses = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("dynacore_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let mut keys = Vec::new();
        if tail[end..].starts_with('{') {
            let close = tail[end..].find('}').expect("closed matcher") + end;
            for m in tail[end + 1..close].split(',') {
                let key = m.split(['=', '!']).next().expect("key").trim();
                if !key.is_empty() {
                    keys.push(key.to_owned());
                }
            }
        }
        uses.push((tail[..end].to_owned(), keys));
        rest = &tail[end..];
    }
    uses
}

/// The labels of every `by (...)` clause of an expression.
fn by_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let tail = &rest[at + 4..];
        let close = tail.find(')').expect("closed by clause");
        labels.extend(tail[..close].split(',').map(|l| l.trim().to_owned()));
        rest = &tail[close..];
    }
    labels
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_and_labels_the_node_exports() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/ops/grafana-dashboard.json"
    ))
    .expect("docs/ops/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let dir = temp_dir("dashboard");
    let node = start(dir.path(), 1, &[]);
    // A write and a read, so that the per-request samples have values.
    let mut conn = HttpConn::open(node.http);
    let put = conn.request("PUT", "/keys/k", &[], br#"{"value":"v"}"#);
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(conn.request("GET", "/keys/k", &[], b"").status, 200);
    let metrics = http(node.http, "GET", "/metrics", &[], b"").text();
    let (families, samples) = exported(&metrics);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard of {} panels", panels.len());
    let mut checked = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expression");
            let uses = metric_uses(expr);
            assert!(!uses.is_empty(), "{title}: {expr} names no metric");
            for (name, matched) in &uses {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
                    .unwrap_or(name);
                assert!(
                    families.contains_key(family),
                    "{title}: {name} is not a metric the node exports"
                );
                // Label keys are checked where the node has samples of it (a family without
                // samples yet, such as the repair ages of a node never repaired, has none).
                let Some(keys) = samples.get(name) else {
                    continue;
                };
                for label in matched.iter().chain(&by_labels(expr)) {
                    if TARGET_LABELS.contains(&label.as_str()) {
                        continue;
                    }
                    assert!(
                        keys.contains(label),
                        "{title}: {name} has no label {label} (it has {keys:?})"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} uses checked against samples");
    // docs/operations.md says what every family means.
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    for family in families.keys() {
        assert!(
            guide.contains(&format!("| `{family}` |")),
            "docs/operations.md (\"Every metric\") does not say what {family} means"
        );
    }
}

#[test]
fn the_systemd_unit_runs_serve_with_flags_it_takes_and_the_limits_it_needs() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/ops/dynacore.service"
    ))
    .expect("docs/ops/dynacore.service");
    for needed in [
        "LimitMEMLOCK=infinity",
        "LimitNOFILE=",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(needed)),
            "the unit sets {needed}"
        );
    }
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert!(words.next().is_some_and(|b| b.ends_with("/dynacore")));
    assert_eq!(words.next(), Some("serve"));
    let help = dynacore()
        .args(["serve", "--help"])
        .output()
        .expect("dynacore serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in words.filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")),
            "`dynacore serve` takes no {flag}"
        );
    }
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("in range")
}

#[test]
fn a_node_named_on_its_command_line_is_known_by_that_name_everywhere() {
    let dir = temp_dir("node-names");
    let n1 = start(&dir.path().join("n1"), 1, &["--node-id", "n1"]);
    assert!(n1.ready.ends_with(" name=n1"), "{}", n1.ready);
    let id = n1
        .ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .expect("node=")
        .to_owned();
    assert_ne!(id, "n1", "the id derives from the name");
    let seed = n1.addr.to_string();
    let n2 = start(
        &dir.path().join("n2"),
        1,
        &["--node-id", "db-east.2", "--seeds", &seed],
    );
    // Each node shows the other's name beside its id.
    for (node, other) in [(&n1, "db-east.2"), (&n2, "n1")] {
        wait_until("the other node's name is known", || {
            let nodes = http(node.http, "GET", "/cluster", &[], b"").json()["nodes"].clone();
            nodes
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["name"] == other))
        });
    }
    let view = http(n1.http, "GET", "/cluster", &[], b"").json();
    assert_eq!(view["nodes"][0]["name"], "n1");
    assert_eq!(view["nodes"][0]["id"], id.as_str());
    let endpoints = http(n1.http, "GET", "/cluster/endpoints/k", &[], b"").json();
    assert!(
        endpoints["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|n| n["name"].is_string())),
        "{endpoints}"
    );
    // `dynacore status` prints it beside the id.
    let out = dynacore()
        .args(["status", "--addr", &seed, "--http", &n1.http.to_string()])
        .output()
        .expect("dynacore status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&format!("node {id} (n1) ")), "{text}");
    drop(n2);
    // The name is kept in the data directory: a restart without it keeps it; another name
    // (another id) is refused.
    let status = n1.stop();
    assert!(status.success());
    let again = start(&dir.path().join("n1"), 1, &[]);
    assert!(again.ready.contains(&format!("node={id} ")) && again.ready.ends_with(" name=n1"));
    drop(again);
    let refused = try_start(&dir.path().join("n1"), 1, &["--node-id", "n2"]);
    let (status, log) = refused.err().expect("another name is refused");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("belongs to node"), "{log}");
    // A value of hex digits is still the id itself.
    let hex = start(&dir.path().join("hex"), 1, &["--node-id", "a1"]);
    assert!(
        hex.ready.starts_with("ready node=00000000000000a1 "),
        "{}",
        hex.ready
    );
    assert!(!hex.ready.contains("name="));
}

#[test]
fn a_peer_of_an_incompatible_protocol_version_is_refused_with_a_clear_message() {
    let dir = temp_dir("protocol-versions");
    let a = start(&dir.path().join("a"), 1, &[]);
    let seed = a.addr.to_string();
    // A node of a future release that no longer works with this one.
    let future = common::start_env(
        &dir.path().join("future"),
        1,
        &["--seeds", &seed],
        &[("DYNACORE_TEST_PROTOCOL", "9:9")],
    );
    let own = dynacore_proto::version::own();
    wait_until("each node logs why it refuses the other", || {
        a.log_text().contains(&format!(
            "refusing a peer: it speaks internode protocol 9 (works with 9 and later); this node \
             speaks {} (works with {} and later)",
            own.version, own.min
        )) && future.log_text().contains(&format!(
            "refusing a peer: it speaks internode protocol {} (works with {} and later); this \
             node speaks 9",
            own.version, own.min
        ))
    });
    // A node of the next release that still works with this one joins.
    let next = common::start_env(
        &dir.path().join("next"),
        1,
        &["--seeds", &seed],
        &[(
            "DYNACORE_TEST_PROTOCOL",
            &format!("{}:{}", own.version + 1, own.version),
        )],
    );
    let ring_nodes = |node: &common::Node| {
        http(node.http, "GET", "/cluster", &[], b"").json()["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|n| n["in_ring"] == true).count())
            .unwrap_or(0)
    };
    wait_until("the compatible node joins the ring", || {
        ring_nodes(&a) == 2 && ring_nodes(&next) == 2
    });
    // The refused one never entered the ring of the others.
    assert_eq!(ring_nodes(&a), 2);
    let future_id = future
        .ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .expect("node=")
        .to_owned();
    let view = http(a.http, "GET", "/cluster", &[], b"").text();
    let listed_in_ring = http(a.http, "GET", "/cluster", &[], b"").json()["nodes"]
        .as_array()
        .is_some_and(|n| {
            n.iter()
                .any(|n| n["id"] == future_id.as_str() && n["in_ring"] == true)
        });
    assert!(!listed_in_ring, "{view}");
}
