//! A node's Redis protocol port, spoken by hand over TCP (RESP2 and RESP3): the commands it
//! serves, pipelining, transactions, errors worded as Redis words them, and a protocol error
//! closing only its connection. Loopback only; every wait bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{metric_sum, start, temp_dir, BOUND};

/// A RESP connection that writes commands and reads replies as compact text:
/// `+OK`, `-ERR …`, `:3`, `$value`, `nil` (RESP2's `$-1` / `*-1` and RESP3's `_`),
/// `[a, b]` (arrays and sets), `{k: v}` (maps), `#t`, `,1.5`, `=txt:…`.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect_timeout(&addr, BOUND).expect("connect");
        s.set_read_timeout(Some(BOUND)).expect("timeout");
        let writer = s.try_clone().expect("clone");
        Conn {
            reader: BufReader::new(s),
            writer,
        }
    }

    /// Sends one command as an array of bulk strings and reads its reply.
    fn cmd(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer.write_all(out.as_bytes()).expect("write");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a reply line");
        assert!(
            line.ends_with("\r\n"),
            "a reply line ends with CRLF: {line:?}"
        );
        line.truncate(line.len() - 2);
        line
    }

    fn reply(&mut self) -> String {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        let count = || rest.parse::<i64>().expect("a count");
        match kind {
            "+" | "-" | ":" | "#" | "," => line,
            "_" => "nil".to_owned(),
            "$" | "=" | "*" | "~" if count() < 0 => "nil".to_owned(),
            "$" | "=" => {
                let mut body = vec![0u8; usize::try_from(count()).expect("len") + 2];
                self.reader.read_exact(&mut body).expect("bulk body");
                body.truncate(body.len() - 2);
                let text = String::from_utf8(body).expect("utf-8");
                if kind == "$" {
                    format!("${text}")
                } else {
                    format!("={text}")
                }
            }
            "*" | "~" => {
                let items: Vec<String> = (0..count()).map(|_| self.reply()).collect();
                format!("[{}]", items.join(", "))
            }
            "%" => {
                let items: Vec<String> = (0..count())
                    .map(|_| {
                        let k = self.reply();
                        format!("{k}: {}", self.reply())
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            _ => panic!("not a RESP reply: {line:?}"),
        }
    }

    /// Whether the server closed the connection (within the read timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn strings_pipelines_transactions_and_errors_as_redis_answers_them() {
    let dir = temp_dir("resp");
    let node = start(dir.path(), 2, &[]);
    let resp = node.resp.expect("a Redis port");
    let mut c = Conn::open(resp);
    assert_eq!(c.cmd(&["PING"]), "+PONG");
    assert_eq!(c.cmd(&["ping", "hi"]), "$hi");
    assert_eq!(c.cmd(&["ECHO", "a b"]), "$a b");
    assert_eq!(c.cmd(&["SELECT", "0"]), "+OK");
    assert_eq!(c.cmd(&["SELECT", "1"]), "-ERR DB index is out of range");

    // Strings.
    assert_eq!(c.cmd(&["SET", "k", "v1"]), "+OK");
    assert_eq!(c.cmd(&["GET", "k"]), "$v1");
    assert_eq!(c.cmd(&["GET", "missing"]), "nil");
    assert_eq!(c.cmd(&["STRLEN", "k"]), ":2");
    assert_eq!(c.cmd(&["TYPE", "k"]), "+string");
    assert_eq!(c.cmd(&["TYPE", "missing"]), "+none");
    assert_eq!(
        c.cmd(&["SET", "k", "v2", "NX"]),
        "nil",
        "NX on a present key"
    );
    assert_eq!(c.cmd(&["SET", "fresh", "x", "NX"]), "+OK");
    assert_eq!(
        c.cmd(&["SET", "absent", "x", "XX"]),
        "nil",
        "XX on an absent key"
    );
    assert_eq!(c.cmd(&["SET", "k", "v3", "XX"]), "+OK");
    assert_eq!(c.cmd(&["SETNX", "k", "v4"]), ":0");
    assert_eq!(c.cmd(&["SETNX", "other", "o"]), ":1");
    assert_eq!(c.cmd(&["GET", "k"]), "$v3");
    assert_eq!(c.cmd(&["MSET", "a", "1", "b", "2"]), "+OK");
    assert_eq!(c.cmd(&["MGET", "a", "b", "c"]), "[$1, $2, nil]");
    assert_eq!(c.cmd(&["EXISTS", "a", "b", "c", "a"]), ":3");
    assert_eq!(c.cmd(&["DEL", "a", "c"]), ":1");
    assert_eq!(c.cmd(&["UNLINK", "b"]), ":1");
    assert_eq!(c.cmd(&["EXISTS", "a", "b"]), ":0");
    assert_eq!(c.cmd(&["GETDEL", "other"]), "$o");
    assert_eq!(c.cmd(&["GET", "other"]), "nil");

    // Expiry (kept to the second): the key is there, then gone.
    assert_eq!(c.cmd(&["SET", "t", "soon", "PX", "1200"]), "+OK");
    assert_eq!(c.cmd(&["SETEX", "t2", "1", "soon"]), "+OK");
    assert_eq!(c.cmd(&["GET", "t"]), "$soon");
    let until = Instant::now() + BOUND;
    while c.cmd(&["MGET", "t", "t2"]) != "[nil, nil]" {
        assert!(Instant::now() < until, "the keys never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.cmd(&["SET", "gone", "x", "EXAT", "1"]), "+OK");
    assert_eq!(c.cmd(&["GET", "gone"]), "nil", "an expiry already past");
    assert_eq!(
        c.cmd(&["SET", "k", "v", "EX", "0"]),
        "-ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        c.cmd(&["SET", "k", "v", "EX", "x"]),
        "-ERR value is not an integer or out of range"
    );
    assert_eq!(c.cmd(&["SET", "k", "v", "BOGUS"]), "-ERR syntax error");

    // Pipelining: several commands in one write, inline and as arrays; replies in order.
    c.writer
        .write_all(b"SET p1 \"a b\"\r\nGET p1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n")
        .expect("write");
    assert_eq!(c.reply(), "+OK");
    assert_eq!(c.reply(), "$a b");
    assert_eq!(c.reply(), "$v3");
    assert_eq!(c.reply(), "+PONG");
    // A batch of commands on distinct keys runs at once, its replies still in order; one that
    // reads a key another writes runs in order.
    let mut batch = String::new();
    for i in 0..32 {
        batch.push_str(&format!("SET q{i} v{i}\r\n"));
    }
    batch.push_str("GET nothing-here\r\n");
    c.writer.write_all(batch.as_bytes()).expect("write");
    for _ in 0..32 {
        assert_eq!(c.reply(), "+OK");
    }
    assert_eq!(c.reply(), "nil");
    c.writer
        .write_all(b"SET d1 x\r\nGET d1\r\nSET d1 y\r\nMGET q0 q31 d1\r\n")
        .expect("write");
    assert_eq!(c.reply(), "+OK");
    assert_eq!(c.reply(), "$x");
    assert_eq!(c.reply(), "+OK");
    assert_eq!(c.reply(), "[$v0, $v31, $y]");

    // Transactions: queued, then run in order.
    assert_eq!(c.cmd(&["MULTI"]), "+OK");
    assert_eq!(c.cmd(&["SET", "x", "1"]), "+QUEUED");
    assert_eq!(c.cmd(&["GET", "x"]), "+QUEUED");
    assert_eq!(c.cmd(&["MULTI"]), "-ERR MULTI calls can not be nested");
    assert_eq!(c.cmd(&["EXEC"]), "[+OK, $1]");
    assert_eq!(c.cmd(&["EXEC"]), "-ERR EXEC without MULTI");
    assert_eq!(c.cmd(&["MULTI"]), "+OK");
    assert_eq!(c.cmd(&["SET", "x", "2"]), "+QUEUED");
    assert_eq!(c.cmd(&["DISCARD"]), "+OK");
    assert_eq!(c.cmd(&["GET", "x"]), "$1");

    // Errors as Redis words them.
    assert_eq!(
        c.cmd(&["FOO", "a", "b"]),
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        c.cmd(&["GET"]),
        "-ERR wrong number of arguments for 'get' command"
    );
    assert!(c
        .cmd(&["AUTH", "pw"])
        .starts_with("-ERR AUTH <password> called without"));

    // Clients.
    assert!(c.cmd(&["CLIENT", "ID"]).starts_with(':'));
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), "nil");
    assert_eq!(c.cmd(&["CLIENT", "SETNAME", "app"]), "+OK");
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), "$app");
    assert_eq!(c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "test"]), "+OK");
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "save"]),
        "[$save, $]",
        "as redis-benchmark asks"
    );

    // RESP3: HELLO 3 switches; nulls and maps are RESP3's then.
    let hello = c.cmd(&["HELLO", "3"]);
    assert!(hello.starts_with("{$server: $dynacore"), "{hello}");
    assert!(hello.contains("$proto: :3"), "{hello}");
    assert_eq!(c.cmd(&["GET", "missing"]), "nil");
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "appendonly"]),
        "{$appendonly: $yes}"
    );
    assert_eq!(
        c.cmd(&["HELLO", "4"]),
        "-NOPROTO unsupported protocol version"
    );
    assert_eq!(c.cmd(&["QUIT"]), "+OK");
    assert!(c.closed(), "QUIT closes the connection");

    // A protocol error closes its connection, not the server.
    let mut bad = Conn::open(resp);
    bad.writer.write_all(b"*1\r\n$x\r\n").expect("write");
    assert_eq!(bad.reply(), "-ERR Protocol error: invalid bulk length");
    assert!(bad.closed());
    let mut again = Conn::open(resp);
    assert_eq!(again.cmd(&["GET", "k"]), "$v3");

    // What the HTTP API sees is the same store.
    let r = common::http(node.http, "GET", "/keys/k", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], "v3");
    // Counted as the Redis protocol's requests.
    let metrics = common::http(node.http, "GET", "/metrics", &[], b"").text();
    let resp_puts: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("dynacore_requests_total{") && l.contains("protocol=\"resp\",op=\"put\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(resp_puts >= 10, "{resp_puts} puts counted for resp");
    assert!(metric_sum(node.http, "dynacore_requests_total") > resp_puts);
}

#[test]
fn the_redis_port_can_be_turned_off() {
    let dir = temp_dir("resp-off");
    let node = start(dir.path(), 1, &["--resp", "off"]);
    assert_eq!(node.resp, None);
}

/// A `redis-cli` session: `script` on its standard input, what it printed (raw, as it prints
/// when its output is not a terminal). Bounded by [`BOUND`].
fn redis_cli(addr: SocketAddr, script: &str) -> String {
    let mut child = std::process::Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "redis-cli runs (Debian's redis-tools, which redis-server brings; .ci/run installs it)",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("the script");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(BOUND) else {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        panic!("redis-cli did not finish within {BOUND:?}");
    };
    let out = out.expect("redis-cli's output");
    assert!(
        out.status.success(),
        "redis-cli: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// What `redis-cli` sends, and what it must print.
const SESSION: &str = "PING
SET greeting \"hello world\"
GET greeting
GET missing
SET n 1 NX
SET n 2 NX
MSET a 1 b 2
MGET a b c
EXISTS a b c
DEL a b c
STRLEN greeting
TYPE greeting
SELECT 1
FOO bar
CLIENT SETNAME cli
CLIENT GETNAME
MULTI
SET t 1
GET t
EXEC
SET e v EX 100
PERSIST e
TTL e
TTL nothing
EXPIRE e 100 XX
GETEX e PX 100000
PERSIST e
INCR n
KEYS greeting
";

const TRANSCRIPT: &str = "PONG
OK
hello world

OK

OK
1
2

2
2
11
string
ERR DB index is out of range

ERR unknown command 'FOO', with args beginning with: 'bar' 

OK
cli
OK
QUEUED
QUEUED
OK
1
OK
1
-1
-2
0
v
1
2
greeting
";

#[test]
fn a_redis_cli_session_prints_its_transcript_on_a_node_and_on_a_cluster() {
    let dir = temp_dir("resp-cli");
    let single = start(&dir.path().join("single"), 1, &[]);
    assert_eq!(
        redis_cli(single.resp.expect("resp"), SESSION),
        TRANSCRIPT,
        "one node"
    );
    drop(single);
    // Three nodes (RF 3, quorum writes and reads): the session through one, read through the
    // others.
    let first = start(&dir.path().join("n1"), 1, &[]);
    let seed = first.addr.to_string();
    let others: Vec<_> = (2..=3)
        .map(|i| start(&dir.path().join(format!("n{i}")), 1, &["--seeds", &seed]))
        .collect();
    let until = Instant::now() + BOUND;
    for n in std::iter::once(&first).chain(&others) {
        loop {
            let r = common::http(n.http, "GET", "/cluster", &[], b"");
            let body = r.text();
            if r.status == 200
                && body.matches("\"up\":true").count() >= 3
                && body.contains("\"moving\":null")
                && body.contains("\"replication_factor\":3")
            {
                break;
            }
            assert!(Instant::now() < until, "the cluster did not settle: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(
        redis_cli(first.resp.expect("resp"), SESSION),
        TRANSCRIPT,
        "three nodes"
    );
    for n in &others {
        assert_eq!(
            redis_cli(n.resp.expect("resp"), "GET greeting\nGET n\nMGET a t\n"),
            "hello world\n2\n\n1\n",
            "read through another node"
        );
    }
}

#[test]
fn incr_and_append_are_read_modify_writes_that_lose_no_update() {
    let dir = temp_dir("resp-incr");
    let node = start(dir.path(), 2, &[]);
    let resp = node.resp.expect("resp");
    let mut c = Conn::open(resp);
    assert_eq!(c.cmd(&["INCR", "n"]), ":1", "an absent key counts from 0");
    assert_eq!(c.cmd(&["INCRBY", "n", "41"]), ":42");
    assert_eq!(c.cmd(&["DECR", "n"]), ":41");
    assert_eq!(c.cmd(&["DECRBY", "n", "-9"]), ":50");
    assert_eq!(c.cmd(&["GET", "n"]), "$50");
    assert_eq!(c.cmd(&["SET", "s", "abc"]), "+OK");
    assert_eq!(
        c.cmd(&["INCR", "s"]),
        "-ERR value is not an integer or out of range"
    );
    assert_eq!(c.cmd(&["SET", "big", &i64::MAX.to_string()]), "+OK");
    assert_eq!(
        c.cmd(&["INCR", "big"]),
        "-ERR increment or decrement would overflow"
    );
    assert_eq!(
        c.cmd(&["INCRBY", "n", "x"]),
        "-ERR value is not an integer or out of range"
    );
    assert_eq!(c.cmd(&["APPEND", "s", "de"]), ":5");
    assert_eq!(c.cmd(&["APPEND", "fresh", "xy"]), ":2");
    assert_eq!(c.cmd(&["MGET", "s", "fresh"]), "[$abcde, $xy]");
    // Four clients incrementing one counter at once (each a pipeline of 25 on its own
    // connection, through both cores): every increment counts.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(resp);
                for _ in 0..25 {
                    c.send(&["INCR", "counter"]);
                }
                (0..25).map(|_| c.reply()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen: Vec<i64> = Vec::new();
    for t in clients {
        for r in t.join().expect("client") {
            seen.push(r.strip_prefix(':').expect(&r).parse().expect("a count"));
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=100).collect::<Vec<i64>>(),
        "each increment answered its own count"
    );
    assert_eq!(c.cmd(&["GET", "counter"]), "$100");
}

#[test]
fn with_a_password_nothing_runs_before_auth() {
    let dir = temp_dir("resp-auth");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "resp_password = \"s3cret\"\n").expect("config");
    let config = config.to_str().expect("utf-8").to_owned();
    let node = start(&dir.path().join("data"), 1, &["--config", &config]);
    let resp = node.resp.expect("resp");
    let mut c = Conn::open(resp);
    assert_eq!(c.cmd(&["GET", "k"]), "-NOAUTH Authentication required.");
    assert_eq!(
        c.cmd(&["SET", "k", "v"]),
        "-NOAUTH Authentication required."
    );
    assert!(c
        .cmd(&["HELLO", "3"])
        .starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(
        c.cmd(&["AUTH", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        c.cmd(&["AUTH", "someone", "s3cret"]),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(c.cmd(&["GET", "k"]), "-NOAUTH Authentication required.");
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), "+OK");
    assert_eq!(c.cmd(&["SET", "k", "v"]), "+OK");
    assert_eq!(c.cmd(&["RESET"]), "+RESET");
    assert_eq!(
        c.cmd(&["GET", "k"]),
        "-NOAUTH Authentication required.",
        "RESET forgets it"
    );
    // HELLO authenticates and switches protocol at once.
    let mut h = Conn::open(resp);
    let hello = h.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]);
    assert!(hello.contains("$proto: :3"), "{hello}");
    assert_eq!(h.cmd(&["GET", "k"]), "$v");
    // A pipelined batch before AUTH runs nothing.
    let mut p = Conn::open(resp);
    p.writer
        .write_all(b"SET a 1\r\nSET b 2\r\nAUTH s3cret\r\nGET a\r\n")
        .expect("write");
    assert_eq!(p.reply(), "-NOAUTH Authentication required.");
    assert_eq!(p.reply(), "-NOAUTH Authentication required.");
    assert_eq!(p.reply(), "+OK");
    assert_eq!(p.reply(), "nil");
}
