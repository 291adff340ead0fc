//! `dynacore local-cluster`: N nodes on one machine, one per loopback address (127.0.0.1,
//! 127.0.0.2, …) with the same ports, each with its own data directory under one folder, all
//! joining through the first, sharing one cluster secret (`<dir>/cluster.secret`, generated at
//! the first run). It prints their addresses and stops them all, cleanly, on
//! Ctrl-C or SIGTERM (or when one of them dies).

use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What `local-cluster` is asked for.
#[derive(Clone, Debug, clap::Args)]
pub struct LocalCluster {
    /// How many nodes (1..=254).
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// The folder that holds each node's data directory (`node-<i>/`).
    #[arg(long, default_value = "./dynacore-cluster")]
    pub dir: PathBuf,
    /// Every node's binary port (its cores use the next ones).
    #[arg(long, default_value_t = 7400)]
    pub port: u16,
    /// Every node's HTTP port.
    #[arg(long, default_value_t = 8400)]
    pub http_port: u16,
    /// Every node's Redis protocol port (0: none).
    #[arg(long, default_value_t = 6400)]
    pub resp_port: u16,
    /// Cores per node (unpinned: the nodes share the machine's CPUs).
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// When writes are acknowledged: sync, periodic:<ms> or none.
    #[arg(long, default_value = "sync")]
    pub durability: String,
}

/// How long a node may take to start or stop.
const BOUND: Duration = Duration::from_secs(60);

fn node_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

fn stop(children: &mut [(u8, Child)]) -> bool {
    for (_, c) in children.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    let mut clean = true;
    // One deadline for all of them: they stop in parallel.
    let until = Instant::now() + BOUND;
    for (i, c) in children.iter_mut() {
        match wait(c, until.saturating_duration_since(Instant::now())) {
            Some(s) if s.success() => {}
            Some(s) => {
                eprintln!("local-cluster: node {i} exited with {s}");
                clean = false;
            }
            None => {
                eprintln!("local-cluster: node {i} did not stop; killing it");
                let _ = c.kill();
                let _ = c.wait();
                clean = false;
            }
        }
    }
    clean
}

fn wait(c: &mut Child, within: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs the cluster until a signal; returns the process's exit code (0: every node stopped
/// cleanly; 1: one failed; 2: bad arguments or a node did not start).
#[must_use]
pub fn run(args: &LocalCluster) -> u8 {
    if args.nodes == 0 || args.nodes == 255 {
        eprintln!("local-cluster: --nodes must be 1..=254");
        return 2;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("local-cluster: cannot find the dynacore binary: {e}");
            return 2;
        }
    };
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]);
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("local-cluster: cannot handle signals: {e}");
            return 2;
        }
    };
    // One cluster secret for all of them, kept beside their data directories.
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!("local-cluster: cannot create {}: {e}", args.dir.display());
        return 2;
    }
    let secret = match super::secret::load_or_create(None, &args.dir) {
        Ok((_, path)) => path,
        Err(e) => {
            eprintln!("local-cluster: {e}");
            return 2;
        }
    };
    let seed = SocketAddr::new(node_ip(1), args.port);
    let mut children: Vec<(u8, Child)> = Vec::new();
    let (exited_tx, exited) = std::sync::mpsc::channel::<u8>();
    for i in 1..=args.nodes {
        let ip = node_ip(i);
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(args.dir.join(format!("node-{i}")))
            .arg("--listen")
            .arg(SocketAddr::new(ip, args.port).to_string())
            .arg("--http")
            .arg(SocketAddr::new(ip, args.http_port).to_string())
            .arg("--resp")
            .arg(if args.resp_port == 0 {
                "off".to_owned()
            } else {
                SocketAddr::new(ip, args.resp_port).to_string()
            })
            .arg("--cores")
            .arg(args.cores.to_string())
            .arg("--no-pin")
            .arg("--durability")
            .arg(&args.durability)
            .arg("--cluster-secret-file")
            .arg(&secret)
            .stdout(Stdio::piped());
        // Their own process group: a Ctrl-C in the terminal reaches only this process, which
        // then stops each node once (a second signal would make a node exit at once).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if i > 1 {
            cmd.arg("--seeds").arg(seed.to_string());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("local-cluster: cannot start node {i}: {e}");
                stop(&mut children);
                return 2;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            stop(&mut children);
            return 2;
        };
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        let exited_tx = exited_tx.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = line_tx.send(l);
            }
            for _ in lines {}
            // The node's stdout closed: it exited.
            let _ = exited_tx.send(i);
        });
        children.push((i, child));
        match line_rx.recv_timeout(BOUND) {
            Ok(line) => println!("node {i}: {line}"),
            Err(_) => {
                eprintln!("local-cluster: node {i} did not start (see its messages above)");
                stop(&mut children);
                return 2;
            }
        }
    }
    println!(
        "local-cluster: {} nodes up under {} (HTTP on port {} and Redis on port {} of each \
         address); Ctrl-C stops them",
        args.nodes,
        args.dir.display(),
        args.http_port,
        args.resp_port
    );
    let _ = std::io::stdout().flush();
    // Until a signal, or a node dies on its own.
    let (signalled_tx, signalled) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = signalled_tx.send(());
        }
    });
    loop {
        if signalled.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
        if let Ok(i) = exited.try_recv() {
            eprintln!("local-cluster: node {i} exited; stopping the others");
            stop(&mut children);
            return 1;
        }
    }
    println!("local-cluster: stopping");
    if stop(&mut children) {
        0
    } else {
        1
    }
}
