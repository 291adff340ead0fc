//! Helpers for tests that run the real `dynacore` binary: start a node on free loopback ports
//! in a disk-backed temporary directory, talk HTTP and raw frames to it, run SDK code on an
//! executor, and stop it. Every wait is bounded.

#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dynacore_proto::{build, encode_frame, fb, parse_response};
use dynacore_runtime as runtime;

/// How long any single wait in these tests may take.
pub const BOUND: Duration = Duration::from_secs(60);

/// A disk-backed temporary directory (never tmpfs: glommio drops O_DIRECT there).
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// The cluster secret file every node this test process starts shares (owner-only, made once).
pub fn test_secret() -> PathBuf {
    static SECRET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SECRET
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("dynacore-test-{}.secret", std::process::id()));
            write_secret(
                &path,
                &format!("{:064x}", u128::from(std::process::id()) << 64 | 0x5ec7),
            );
            path
        })
        .clone()
}

/// Writes a secret file readable by its owner only (replacing any).
pub fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("secret file");
    f.write_all(secret.as_bytes()).expect("secret");
}

/// A running node.
pub struct Node {
    pub child: Child,
    /// The shared binary port.
    pub addr: SocketAddr,
    /// Core `i`'s port.
    pub shard_ports: Vec<SocketAddr>,
    pub http: SocketAddr,
    /// The Redis protocol's address (`None`: off).
    pub resp: Option<SocketAddr>,
    /// What the node wrote to stderr is in this file.
    pub log: PathBuf,
    /// The `ready` line it printed.
    pub ready: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `dynacore` command.
pub fn dynacore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dynacore"))
}

/// Starts `dynacore serve` on `data_dir` with `cores` unpinned cores on free ports (plus
/// `extra` arguments), and waits for its `ready` line.
pub fn start(data_dir: &Path, cores: u32, extra: &[&str]) -> Node {
    try_start(data_dir, cores, extra)
        .unwrap_or_else(|(status, log)| panic!("the node did not start ({status:?}):\n{log}"))
}

/// As [`start`], with every port on loopback address `ip`.
pub fn start_on(ip: &str, data_dir: &Path, cores: u32, extra: &[&str]) -> Node {
    try_start_on(ip, data_dir, cores, extra)
        .unwrap_or_else(|(status, log)| panic!("the node did not start ({status:?}):\n{log}"))
}

/// As [`start`], or the exit status and stderr of a node that did not start.
pub fn try_start(
    data_dir: &Path,
    cores: u32,
    extra: &[&str],
) -> Result<Node, (Option<ExitStatus>, String)> {
    try_start_on("127.0.0.1", data_dir, cores, extra)
}

/// As [`try_start`], with every port on loopback address `ip`.
pub fn try_start_on(
    ip: &str,
    data_dir: &Path,
    cores: u32,
    extra: &[&str],
) -> Result<Node, (Option<ExitStatus>, String)> {
    try_start_at(
        &format!("{ip}:0"),
        &format!("{ip}:0"),
        data_dir,
        cores,
        extra,
    )
}

/// As [`start`], with the binary protocol on `listen` and HTTP on `http` (a restart at the
/// addresses a node had).
pub fn start_at(
    listen: SocketAddr,
    http: SocketAddr,
    data_dir: &Path,
    cores: u32,
    extra: &[&str],
) -> Node {
    try_start_at(
        &listen.to_string(),
        &http.to_string(),
        data_dir,
        cores,
        extra,
    )
    .unwrap_or_else(|(status, log)| panic!("the node did not start ({status:?}):\n{log}"))
}

/// As [`start_at`], with `env` set in the node's environment.
pub fn start_at_env(
    listen: SocketAddr,
    http: SocketAddr,
    data_dir: &Path,
    cores: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Node {
    try_start_at_env(
        &listen.to_string(),
        &http.to_string(),
        data_dir,
        cores,
        extra,
        env,
    )
    .unwrap_or_else(|(status, log)| panic!("the node did not start ({status:?}):\n{log}"))
}

/// As [`start`], with `env` set in the node's environment.
pub fn start_env(data_dir: &Path, cores: u32, extra: &[&str], env: &[(&str, &str)]) -> Node {
    try_start_at_env("127.0.0.1:0", "127.0.0.1:0", data_dir, cores, extra, env)
        .unwrap_or_else(|(status, log)| panic!("the node did not start ({status:?}):\n{log}"))
}

fn try_start_at(
    listen: &str,
    http: &str,
    data_dir: &Path,
    cores: u32,
    extra: &[&str],
) -> Result<Node, (Option<ExitStatus>, String)> {
    try_start_at_env(listen, http, data_dir, cores, extra, &[])
}

/// As [`start_at_env`], or the exit status and stderr of a node that did not start.
pub fn try_start_at_env(
    listen: &str,
    http: &str,
    data_dir: &Path,
    cores: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Node, (Option<ExitStatus>, String)> {
    let log = data_dir.with_extension(format!("log-{}", std::process::id()));
    let log_file = std::fs::File::create(&log).expect("log file");
    let cores = cores.to_string();
    // Every node of a test shares the test process's cluster secret, unless told otherwise.
    let secret: Vec<std::ffi::OsString> = if extra.contains(&"--cluster-secret-file") {
        Vec::new()
    } else {
        vec!["--cluster-secret-file".into(), test_secret().into()]
    };
    // Each node of a test its own Redis port (the default one would be shared).
    let resp: Vec<String> = if extra.contains(&"--resp") {
        Vec::new()
    } else {
        let ip = listen.rsplit_once(':').map_or("127.0.0.1", |(ip, _)| ip);
        vec!["--resp".to_owned(), format!("{ip}:0")]
    };
    let mut child = dynacore()
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(secret)
        .args(resp)
        .args(["--listen", listen, "--http", http, "--no-pin"])
        .args(["--cores", &cores])
        .args(extra)
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("DYNACORE_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("spawn dynacore");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep reading so that the node never blocks on a full pipe.
        for _ in lines {}
    });
    let Ok(line) = rx.recv_timeout(BOUND) else {
        let status = wait_exit(&mut child, Duration::from_secs(5));
        let _ = child.kill();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err((status, text));
    };
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .to_owned()
    };
    assert!(line.starts_with("ready "), "first line: {line:?}");
    let addr: SocketAddr = field("binary").parse().expect("binary address");
    let shards = field("shards");
    let (ip, range) = shards.rsplit_once(':').expect("shards ip:first-last");
    let (first, last) = range.split_once('-').expect("port range");
    let (first, last): (u16, u16) = (first.parse().expect("port"), last.parse().expect("port"));
    let shard_ports = (first..=last)
        .map(|p| SocketAddr::new(ip.parse().expect("ip"), p))
        .collect();
    Ok(Node {
        child,
        addr,
        shard_ports,
        http: field("http").parse().expect("http address"),
        resp: Some(field("resp"))
            .filter(|r| r != "off")
            .map(|r| r.parse().expect("resp address")),
        log,
        ready: line,
    })
}

/// Waits up to `within` for the process to exit.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Node {
    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        wait_exit(&mut self.child, BOUND).expect("the node exits after SIGTERM")
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection for HTTP requests (keep-alive).
pub struct HttpConn(BufReader<TcpStream>);

impl HttpConn {
    pub fn open(addr: SocketAddr) -> HttpConn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(BOUND)).expect("timeout");
        HttpConn(BufReader::new(s))
    }

    /// Sends raw bytes.
    pub fn send(&mut self, raw: &[u8]) {
        self.0.get_mut().write_all(raw).expect("send");
    }

    /// Reads one response.
    pub fn read(&mut self) -> HttpResponse {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').expect("header line");
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().expect("length"));
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).expect("body");
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method == "PUT" {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read()
    }

    /// Whether the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

/// One request on a fresh connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    HttpConn::open(addr).request(method, target, headers, body)
}

/// Sums a metric's samples over all cores in `/metrics`.
pub fn metric_sum(http_addr: SocketAddr, name: &str) -> u64 {
    let text = http(http_addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `f` on a fresh executor thread and returns its output; panics after [`BOUND`].
pub fn on_executor<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = runtime::spawn_executor("test-client", None, 1 << 20, f)
            .expect("executor")
            .join()
            .expect("executor finished");
        let _ = tx.send(out);
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => {
            let _ = handle.join();
            out
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => panic!("the executor ended without an answer"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("client code did not finish in {BOUND:?}")
        }
    }
}

/// `body` framed.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(body, &mut out).expect("a test frame within the limit");
    out
}

/// A framed blind put.
pub fn put_frame(id: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    framed(&build::put(
        id,
        &build::Put {
            key,
            value,
            ..build::Put::default()
        },
    ))
}

/// A framed get.
pub fn get_frame(id: u64, key: &[u8]) -> Vec<u8> {
    framed(&build::get(id, key, None, fb::ReadRepair::Default))
}

/// A plain connection for raw frames, with a read timeout of [`BOUND`].
pub fn raw_conn(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(BOUND)).expect("timeout");
    s
}

/// The key of this test process's cluster secret ([`test_secret`]).
pub fn test_key() -> dynacore_proto::ClusterKey {
    let secret = std::fs::read(test_secret()).expect("the test secret");
    dynacore_proto::ClusterKey::new(secret.trim_ascii()).expect("a key")
}

/// `body` framed as a node of the test cluster sends it (authenticated with [`test_key`]).
pub fn framed_as_peer(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    dynacore_proto::encode_authenticated_frame(
        body,
        &test_key(),
        dynacore_proto::Domain::Request,
        &mut out,
    )
    .expect("a test frame within the limit");
    out
}

/// Reads one authenticated answer (to a [`framed_as_peer`] request) and checks its tag.
pub fn read_frame_as_peer(s: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).expect("response header");
    let head = dynacore_proto::frame_header(header).expect("a valid header");
    assert!(head.authenticated, "an answer to a node is authenticated");
    let mut rest = vec![0u8; dynacore_proto::AUTH_TAG_BYTES + head.len];
    s.read_exact(&mut rest).expect("response body");
    let mut frame = header.to_vec();
    frame.extend_from_slice(&rest);
    let key = test_key();
    let (body, _) =
        dynacore_proto::split_frame(&frame, Some((&key, dynacore_proto::Domain::Answer)))
            .expect("its tag checks")
            .expect("whole");
    body.to_vec()
}

/// Reads one response frame's body.
pub fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).expect("response header");
    let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut body).expect("response body");
    body
}

/// Sends a get and returns the value its answer carries (`None`: not found).
pub fn get_value(s: &mut TcpStream, id: u64, key: &[u8]) -> Option<Vec<u8>> {
    s.write_all(&get_frame(id, key)).expect("send");
    let body = read_frame(s);
    let resp = parse_response(&body).expect("response");
    assert_eq!(resp.id(), id);
    let get = resp.reply_as_get().expect("get reply");
    get.found()
        .then(|| get.value().map(|v| v.bytes().to_vec()).unwrap_or_default())
}

/// Whether the server closed the connection (a read returns end of stream or fails).
pub fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// Waits until `check` holds, polling every 100 ms; fails the test after [`BOUND`].
pub fn wait_until(what: &str, check: impl FnMut() -> bool) {
    wait_within(what, BOUND, check);
}

/// Waits until `check` holds, polling every 100 ms; fails the test after `bound`.
pub fn wait_within(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + bound;
    while !check() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (ring nodes, of which up) as the node at `http_addr` sees them.
pub fn ring_up(http_addr: SocketAddr) -> (usize, usize) {
    let c = http(http_addr, "GET", "/cluster", &[], b"").json();
    let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
    let ring: Vec<_> = nodes
        .iter()
        .filter(|n| n["in_ring"].as_bool() == Some(true))
        .collect();
    let up = ring
        .iter()
        .filter(|n| n["up"].as_bool() == Some(true))
        .count();
    (ring.len(), up)
}
