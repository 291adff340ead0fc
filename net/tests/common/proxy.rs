//! A fault-injecting proxy in front of one node: TCP on the node's binary port and each core's
//! port, UDP on its gossip port, forwarded to the node's real ports. Traffic from a blocked
//! source IP (another node, which connects from its own loopback address) is cut: its open
//! connections are closed, new ones are accepted and then held without an answer (a black
//! hole, as a real partition looks), its datagrams are dropped. Everything stops when the
//! proxy is dropped.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    blocked: HashSet<IpAddr>,
    backend: Option<SocketAddr>,
    /// Open forwarded connections: (source IP, both streams).
    open: Vec<(IpAddr, TcpStream, TcpStream)>,
    /// Connections from blocked sources, held unanswered.
    held: Vec<TcpStream>,
}

/// See the module documentation.
pub struct Proxy {
    /// The address peers are told (the node's `--advertise`): base port, core `i` at
    /// base + 1 + i, gossip at base over UDP.
    pub front: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy on `ip` for a node with `cores` cores (its backend is set once the node has
    /// started: [`Proxy::set_backend`]).
    pub fn start(ip: IpAddr, cores: u16) -> Proxy {
        let (listeners, udp) = (0..500)
            .find_map(|k| {
                let base = 41_000 + k * 7 + u16::try_from(std::process::id() % 7).ok()?;
                let udp = UdpSocket::bind((ip, base)).ok()?;
                let ls: Option<Vec<_>> = (0..=cores)
                    .map(|i| TcpListener::bind((ip, base + i)).ok())
                    .collect();
                Some((ls?, udp))
            })
            .expect("free proxy ports");
        let front = listeners[0].local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        for (offset, l) in (0u16..).zip(listeners) {
            l.set_nonblocking(true).expect("nonblocking");
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(&l, offset, &state, &stop));
        }
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || udp_loop(&udp, &state, &stop));
        }
        Proxy { front, state, stop }
    }

    /// Where the node really listens (its binary base port; gossip on the same port).
    pub fn set_backend(&self, addr: SocketAddr) {
        self.state.lock().expect("lock").backend = Some(addr);
    }

    /// Cuts traffic from `ip`.
    pub fn block(&self, ip: IpAddr) {
        let mut s = self.state.lock().expect("lock");
        s.blocked.insert(ip);
        let (cut, keep): (Vec<_>, Vec<_>) = s.open.drain(..).partition(|(src, _, _)| *src == ip);
        s.open = keep;
        for (_, a, b) in cut {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Lets traffic from `ip` through again (held connections are closed: their clients
    /// reconnect).
    pub fn unblock(&self, ip: IpAddr) {
        let mut s = self.state.lock().expect("lock");
        s.blocked.remove(&ip);
        for h in s.held.drain(..) {
            let _ = h.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut s = self.state.lock().expect("lock");
        for (_, a, b) in s.open.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        for h in s.held.drain(..) {
            let _ = h.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(l: &TcpListener, offset: u16, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((client, from)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let mut s = state.lock().expect("lock");
        let backend = s
            .backend
            .map(|b| SocketAddr::new(b.ip(), b.port() + offset));
        let Some(backend) = backend.filter(|_| !s.blocked.contains(&from.ip())) else {
            s.held.push(client);
            continue;
        };
        drop(s);
        let Ok(server) = TcpStream::connect_timeout(&backend, Duration::from_secs(2)) else {
            continue;
        };
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        state.lock().expect("lock").open.push((from.ip(), c3, s3));
        std::thread::spawn(move || pump(client, server));
        std::thread::spawn(move || pump(s2, c2));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn udp_loop(udp: &UdpSocket, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = udp.recv_from(&mut buf) else {
            continue;
        };
        let backend = {
            let s = state.lock().expect("lock");
            s.backend.filter(|_| !s.blocked.contains(&from.ip()))
        };
        if let Some(b) = backend {
            let _ = udp.send_to(&buf[..n], b);
        }
    }
}
