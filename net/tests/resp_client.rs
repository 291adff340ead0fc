//! A well-known Redis client library — the Rust `redis` crate, used as its own documentation
//! shows — against the real `dynacore` binary: strings, expiry, pipelines (plain and
//! `MULTI`/`EXEC`) and `SCAN`, on one node and through a three-node cluster (RF 3, quorum
//! reads and writes), with what one node wrote read through the others.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::{start, temp_dir, wait_until, Node, BOUND};
use redis::{Connection, TypedCommands};

fn connect(addr: SocketAddr) -> Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("a client");
    let con = client
        .get_connection_with_timeout(BOUND)
        .expect("a connection");
    con.set_read_timeout(Some(BOUND)).expect("read timeout");
    con.set_write_timeout(Some(BOUND)).expect("write timeout");
    con
}

/// Strings, as a service uses them.
fn strings(con: &mut Connection) {
    con.set("s:greeting", "hello").expect("SET");
    assert_eq!(
        con.get("s:greeting").expect("GET"),
        Some("hello".to_owned())
    );
    assert_eq!(con.get("s:missing").expect("GET"), None);
    assert_eq!(con.append("s:greeting", " world").expect("APPEND"), 11);
    assert_eq!(con.strlen("s:greeting").expect("STRLEN"), 11);
    assert_eq!(con.incr("s:counter", 5).expect("INCRBY"), 5);
    assert_eq!(con.decr("s:counter", 2).expect("DECRBY"), 3);
    assert!(con.set_nx("s:once", "first").expect("SETNX"));
    assert!(!con.set_nx("s:once", "second").expect("SETNX"));
    con.mset(&[("s:a", "1"), ("s:b", "2")]).expect("MSET");
    assert_eq!(
        con.mget(&["s:a", "s:b", "s:c"]).expect("MGET"),
        vec![Some("1".to_owned()), Some("2".to_owned()), None]
    );
    assert_eq!(con.get_del("s:a").expect("GETDEL"), Some("1".to_owned()));
    let n: i64 = redis::cmd("EXISTS")
        .arg("s:a")
        .arg("s:b")
        .query(con)
        .expect("EXISTS");
    assert_eq!(n, 1);
    assert_eq!(con.del(&["s:b", "s:c"]).expect("DEL"), 1);
    // Ranges, GETSET and floats.
    let part: String = redis::cmd("GETRANGE")
        .arg("s:greeting")
        .arg(0)
        .arg(-7)
        .query(con)
        .expect("GETRANGE");
    assert_eq!(part, "hello");
    let len: i64 = redis::cmd("SETRANGE")
        .arg("s:greeting")
        .arg(6)
        .arg("there")
        .query(con)
        .expect("SETRANGE");
    assert_eq!(len, 11);
    let old: Option<String> = redis::cmd("GETSET")
        .arg("s:greeting")
        .arg("hello world")
        .query(con)
        .expect("GETSET");
    assert_eq!(old.as_deref(), Some("hello there"));
    let f: String = redis::cmd("INCRBYFLOAT")
        .arg("s:float")
        .arg("10.5")
        .query(con)
        .expect("INCRBYFLOAT");
    assert_eq!(f, "10.5");
    let f: String = redis::cmd("INCRBYFLOAT")
        .arg("s:float")
        .arg("-10.5")
        .query(con)
        .expect("INCRBYFLOAT");
    assert_eq!(f, "0", "no negative zero");
    let incr_text: redis::RedisResult<isize> = con.incr("s:greeting", 1);
    let err = incr_text.expect_err("INCR of text fails");
    assert!(err.to_string().contains("not an integer"), "{err}");
}

/// Expiry, to the millisecond.
fn expiry(con: &mut Connection) {
    con.set_ex("e:session", "token", 100).expect("SETEX");
    let ttl = con.ttl("e:session").expect("TTL");
    assert!(
        matches!(ttl, redis::IntegerReplyOrNoOp::IntegerReply(99..=100)),
        "{ttl:?}"
    );
    assert!(con.pexpire("e:session", 1_500).expect("PEXPIRE"));
    let pttl = con.pttl("e:session").expect("PTTL");
    assert!(
        matches!(pttl, redis::IntegerReplyOrNoOp::IntegerReply(1..=1_500)),
        "{pttl:?}"
    );
    assert!(con.persist("e:session").expect("PERSIST"));
    assert_eq!(
        con.ttl("e:session").expect("TTL"),
        redis::IntegerReplyOrNoOp::ExistsButNotRelevant
    );
    assert_eq!(
        con.ttl("e:never-written").expect("TTL"),
        redis::IntegerReplyOrNoOp::NotExists
    );
    // KEEPTTL keeps it; a plain SET clears it; GET gives the old value.
    let _: () = redis::cmd("SET")
        .arg("e:kept")
        .arg("a")
        .arg("PX")
        .arg(60_000)
        .query(con)
        .expect("SET PX");
    let _: () = redis::cmd("SET")
        .arg("e:kept")
        .arg("b")
        .arg("KEEPTTL")
        .query(con)
        .expect("SET KEEPTTL");
    let left: i64 = redis::cmd("PTTL").arg("e:kept").query(con).expect("PTTL");
    assert!((1..=60_000).contains(&left), "{left}");
    let old: Option<String> = redis::cmd("SET")
        .arg("e:kept")
        .arg("c")
        .arg("GET")
        .query(con)
        .expect("SET GET");
    assert_eq!(old.as_deref(), Some("b"));
    let left: i64 = redis::cmd("PTTL").arg("e:kept").query(con).expect("PTTL");
    assert_eq!(left, -1, "a SET without KEEPTTL clears the TTL");
    // INCR keeps a TTL, as in Redis.
    con.set_ex("e:hits", "1", 100).expect("SETEX");
    assert_eq!(con.incr("e:hits", 1).expect("INCR"), 2);
    let ttl: i64 = redis::cmd("TTL").arg("e:hits").query(con).expect("TTL");
    assert!((1..=100).contains(&ttl), "{ttl}");
    // GETEX sets and clears it.
    con.set("e:ex", "v").expect("SET");
    let v: Option<String> = redis::cmd("GETEX")
        .arg("e:ex")
        .arg("PX")
        .arg(50_000)
        .query(con)
        .expect("GETEX");
    assert_eq!(v.as_deref(), Some("v"));
    let left: i64 = redis::cmd("PTTL").arg("e:ex").query(con).expect("PTTL");
    assert!((1..=50_000).contains(&left), "{left}");
    // An expiry already past deletes the key; a short one runs out.
    con.set("e:gone", "v").expect("SET");
    assert!(con.expire_at("e:gone", 1).expect("EXPIREAT"));
    assert!(!con.exists("e:gone").expect("EXISTS"));
    let _: () = redis::cmd("PSETEX")
        .arg("e:short")
        .arg(300)
        .arg("v")
        .query(con)
        .expect("PSETEX");
    wait_until("a 300 ms TTL runs out", || {
        con.get("e:short").expect("GET").is_none()
    });
    // EXPIRE's conditions.
    con.set("e:cond", "v").expect("SET");
    let set: i64 = redis::cmd("EXPIRE")
        .arg("e:cond")
        .arg(100)
        .arg("XX")
        .query(con)
        .expect("EXPIRE XX");
    assert_eq!(set, 0, "XX: no TTL to replace");
    let set: i64 = redis::cmd("EXPIRE")
        .arg("e:cond")
        .arg(100)
        .arg("NX")
        .query(con)
        .expect("EXPIRE NX");
    assert_eq!(set, 1);
    let set: i64 = redis::cmd("EXPIRE")
        .arg("e:cond")
        .arg(50)
        .arg("GT")
        .query(con)
        .expect("EXPIRE GT");
    assert_eq!(set, 0, "GT: 50 s is not later");
}

/// Pipelines: one round trip for many commands, plain and `MULTI`/`EXEC`.
fn pipelines(con: &mut Connection) {
    let (n, v): (i64, String) = redis::pipe()
        .set("p:n", 10)
        .ignore()
        .incr("p:n", 5)
        .get("p:n")
        .query(con)
        .expect("a pipeline");
    assert_eq!((n, v.as_str()), (15, "15"));
    let (n, v): (i64, String) = redis::pipe()
        .atomic()
        .set("p:t", 1)
        .ignore()
        .incr("p:t", 1)
        .get("p:t")
        .query(con)
        .expect("a MULTI/EXEC pipeline");
    assert_eq!((n, v.as_str()), (2, "2"));
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.set(format!("p:k{i}"), i).ignore();
    }
    let () = pipe.query(con).expect("200 SETs in one pipeline");
    let keys: Vec<String> = (0..200).map(|i| format!("p:k{i}")).collect();
    let values: Vec<Option<String>> = con.mget(&keys).expect("MGET");
    let want: Vec<Option<String>> = (0..200).map(|i| Some(i.to_string())).collect();
    assert_eq!(values, want);
}

/// `SCAN` walks every key once at least; `MATCH` and `COUNT` as in Redis.
fn scan(con: &mut Connection, written: usize) {
    let mut pipe = redis::pipe();
    for i in 0..written {
        pipe.set(format!("scan:{i}"), i).ignore();
    }
    let () = pipe.query(con).expect("the keys to scan");
    let found: BTreeSet<String> = con
        .scan_match::<_, String>("scan:*")
        .expect("SCAN MATCH")
        .map(|k| k.expect("a key"))
        .collect();
    let want: BTreeSet<String> = (0..written).map(|i| format!("scan:{i}")).collect();
    assert_eq!(found, want);
    // By hand, with COUNT: the cursor ends at 0 and every key comes back.
    let mut cursor = 0u64;
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(50)
            .query(con)
            .expect("SCAN");
        seen.extend(keys);
        pages += 1;
        assert!(pages < 10_000, "SCAN ends");
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, want);
    assert!(pages > 1, "{written} keys at COUNT 50 take several pages");
    let mut keys = con.keys("scan:1*").expect("KEYS");
    keys.sort();
    let mut want: Vec<String> = (0..written)
        .map(|i| format!("scan:{i}"))
        .filter(|k| k.starts_with("scan:1"))
        .collect();
    want.sort();
    assert_eq!(keys, want);
    let size: i64 = redis::cmd("DBSIZE").query(con).expect("DBSIZE");
    assert!(size >= i64::try_from(written).expect("small"), "{size}");
}

fn exercise(addr: SocketAddr) {
    let mut con = connect(addr);
    strings(&mut con);
    expiry(&mut con);
    pipelines(&mut con);
    scan(&mut con, 300);
}

#[test]
fn the_redis_crate_works_against_one_node() {
    let dir = temp_dir("resp-client-1");
    let node = start(dir.path(), 2, &[]);
    exercise(node.resp.expect("resp"));
    // FLUSHDB is off unless the configuration allows it.
    let mut con = connect(node.resp.expect("resp"));
    let refused: redis::RedisResult<()> = redis::cmd("FLUSHDB").query(&mut con);
    let err = refused.expect_err("FLUSHDB refused by default");
    assert!(err.to_string().contains("resp_flush"), "{err}");
    assert!(con.exists("s:greeting").expect("EXISTS"));
}

#[test]
fn flushdb_deletes_every_key_when_the_configuration_allows_it() {
    let dir = temp_dir("resp-client-flush");
    let config = dir.path().join("dynacore.toml");
    std::fs::write(&config, "resp_flush = true\n").expect("the configuration");
    let node = start(
        &dir.path().join("data"),
        2,
        &["--config", config.to_str().expect("utf-8")],
    );
    let mut con = connect(node.resp.expect("resp"));
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.set(format!("f:{i}"), i).ignore();
    }
    let () = pipe.query(&mut con).expect("keys");
    let () = redis::cmd("FLUSHALL").query(&mut con).expect("FLUSHALL");
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(size, 0);
    assert_eq!(con.get("f:7").expect("GET"), None);
}

fn settled(n: &Node) -> bool {
    let r = common::http(n.http, "GET", "/cluster", &[], b"");
    let body = r.text();
    r.status == 200
        && body.matches("\"up\":true").count() >= 3
        && body.contains("\"moving\":null")
        && body.contains("\"replication_factor\":3")
}

#[test]
fn the_redis_crate_works_through_a_three_node_cluster() {
    let dir = temp_dir("resp-client-3");
    let first = start(&dir.path().join("n1"), 1, &[]);
    let seed = first.addr.to_string();
    let others: Vec<_> = (2..=3)
        .map(|i| start(&dir.path().join(format!("n{i}")), 1, &["--seeds", &seed]))
        .collect();
    for n in std::iter::once(&first).chain(&others) {
        wait_until("the cluster settles", || settled(n));
    }
    exercise(first.resp.expect("resp"));
    // What went through the first node, read through the others.
    for n in &others {
        let mut con = connect(n.resp.expect("resp"));
        assert_eq!(
            con.get("s:greeting").expect("GET"),
            Some("hello world".to_owned())
        );
        assert_eq!(con.get("p:k199").expect("GET"), Some("199".to_owned()));
        let found: BTreeSet<String> = con
            .scan_match::<_, String>("scan:*")
            .expect("SCAN")
            .map(|k| k.expect("a key"))
            .collect();
        assert_eq!(found.len(), 300);
        let pttl: i64 = redis::cmd("PTTL")
            .arg("e:ex")
            .query(&mut con)
            .expect("PTTL");
        assert!((1..=50_000).contains(&pttl), "{pttl}");
    }
}
