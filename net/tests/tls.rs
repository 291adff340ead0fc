//! TLS on every TCP port and between nodes: three real nodes started with a certificate signed
//! by a test CA (made here with `rcgen`), their HTTP API, Redis protocol and binary protocol
//! spoken over TLS (a write through one node read at `r=all` through another: the replicas
//! talked over TLS too), the admin commands and the SDK with `--tls-ca`, `redis-cli --tls`, and
//! a client that does not speak TLS refused while the node goes on.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{dynacore, start, temp_dir, wait_until, Node, BOUND};
use dynacore_runtime::tls::{self, rustls};

/// A CA and a certificate for 127.0.0.1 signed by it, written as PEM files under `dir`:
/// (CA, certificate, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dynacore test CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let mut node_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    node_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dynacore node");
    let node_key = rcgen::KeyPair::generate().expect("node key");
    let node = node_params
        .signed_by(&node_key, &ca, &ca_key)
        .expect("node certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("ca.pem");
    std::fs::write(&paths.1, node.pem()).expect("node.pem");
    std::fs::write(&paths.2, node_key.serialize_pem()).expect("node.key");
    (paths.0, paths.1, paths.2)
}

/// A TLS connection to `addr` that trusts `ca`.
fn connect(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config: Arc<rustls::ClientConfig> = tls::client_config(ca).expect("client config");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(config, name).expect("TLS client");
    let sock = TcpStream::connect_timeout(&addr, BOUND).expect("connect");
    sock.set_read_timeout(Some(BOUND)).expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}

/// One HTTPS request (`Connection: close`): the status and the body.
fn https(addr: SocketAddr, ca: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut s = connect(addr, ca);
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut answer = String::new();
    // A peer that closes without close_notify is an error to rustls; what came is enough.
    let _ = s.read_to_string(&mut answer);
    let (head, rest) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, rest.to_owned())
}

fn settled(node: &Node, ca: &Path) -> bool {
    let (status, body) = https(node.http, ca, "GET", "/cluster", "");
    status == 200
        && body.matches("\"up\":true").count() >= 3
        && body.contains("\"moving\":null")
        && body.contains("\"replication_factor\":3")
}

#[test]
fn every_port_and_the_nodes_between_them_speak_tls() {
    let dir = temp_dir("tls");
    let (ca, cert, key) = certificates(dir.path());
    let tls_flags = [
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--tls-ca",
        ca.to_str().expect("utf-8"),
    ];
    let first = start(&dir.path().join("n1"), 1, &tls_flags);
    let seed = first.addr.to_string();
    let mut with_seed = tls_flags.to_vec();
    with_seed.extend(["--seeds", &seed]);
    let others: Vec<Node> = (2..=3)
        .map(|i| start(&dir.path().join(format!("n{i}")), 1, &with_seed))
        .collect();
    for n in std::iter::once(&first).chain(&others) {
        wait_until("the cluster settles (over TLS)", || settled(n, &ca));
    }

    // HTTP: a write at w=all through one node, read at r=all through another.
    let (status, body) = https(
        first.http,
        &ca,
        "PUT",
        "/keys/secret?w=all",
        r#"{"value":"over tls"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = https(others[1].http, &ca, "GET", "/keys/secret?r=all", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"over tls\""), "{body}");

    // A client that does not speak TLS gets no answer; the node goes on.
    let mut plain = TcpStream::connect_timeout(&first.http, BOUND).expect("connect");
    plain.set_read_timeout(Some(BOUND)).expect("timeout");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1 200"),
        "plain HTTP was answered on a TLS port"
    );
    assert_eq!(https(first.http, &ca, "GET", "/health", "").0, 200);

    // The Redis protocol, by hand and with redis-cli --tls.
    let resp = first.resp.expect("resp");
    let mut r = connect(resp, &ca);
    r.write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$6\r\nsecret\r\n")
        .expect("write");
    let mut buf = [0u8; 64];
    let mut answer = Vec::new();
    while !answer.ends_with(b"over tls\r\n") {
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0, "the RESP connection closed: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert_eq!(answer, b"+PONG\r\n$8\r\nover tls\r\n");
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert", ca.to_str().expect("utf-8")])
        .args(["-h", "127.0.0.1", "-p", &resp.port().to_string()])
        .args(["SET", "cli", "tls"])
        .output()
        .expect("redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The binary protocol through the SDK (the CLI), and an admin command, with --tls-ca.
    let ca_arg = ca.to_str().expect("utf-8");
    let out = dynacore()
        .args(["--tls-ca", ca_arg, "get", "cli", "--addr"])
        .arg(others[0].addr.to_string())
        .output()
        .expect("dynacore get");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tls"),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dynacore()
        .args(["--tls-ca", ca_arg, "compact", "--addr"])
        .arg(first.http.to_string())
        .output()
        .expect("dynacore compact");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without it, the CLI cannot talk to a TLS node (and says so rather than hanging).
    let out = dynacore()
        .args(["compact", "--timeout-s", "5", "--addr"])
        .arg(first.http.to_string())
        .output()
        .expect("dynacore compact");
    assert!(!out.status.success());
}

#[test]
fn tls_settings_are_all_or_nothing_and_checked_at_start() {
    let dir = temp_dir("tls-config");
    let (ca, cert, _key) = certificates(dir.path());
    let partial = common::try_start(
        &dir.path().join("a"),
        1,
        &["--tls-cert", cert.to_str().expect("utf-8")],
    );
    let (status, log) = partial.err().expect("a certificate alone is refused");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(
        log.contains("tls_cert, tls_key and tls_ca together"),
        "{log}"
    );
    // A key file that holds no key.
    let wrong = common::try_start(
        &dir.path().join("b"),
        1,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            ca.to_str().expect("utf-8"),
            "--tls-ca",
            ca.to_str().expect("utf-8"),
        ],
    );
    let (status, log) = wrong.err().expect("a bad key is refused");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("TLS: cannot read a private key"), "{log}");
}
