//! `dynacore`: the server (`dynacore serve`) and a command-line client
//! (`dynacore put|get|delete|status`).
//!
//! Exit codes: 0 done (or found), 1 not found (`get`) or the node failed at run time,
//! 2 an error (bad arguments or configuration, unreachable node, a server error).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dynacore_client::glommio::Client;
use dynacore_client::{ClientError, ClientOptions, Version, WriteOptions};
use dynacore_net::node::{self, NodeConfig, NodeError, Overrides};
use dynacore_runtime as runtime;

/// The allocator of the `dynacore` binary. Under load glibc's malloc and free took about a fifth
/// of a node's cycles (`_int_malloc`, `_int_free`, `malloc_consolidate`: issue 18's profile);
/// mimalloc keeps free lists per thread, which is what one executor per core wants.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mi_option_t` enum of the mimalloc the `mimalloc` crate builds
/// (v3: `c_src/mimalloc/v3/include/mimalloc.h`, the 16th entry; the same index in v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the OS, unless `MIMALLOC_PURGE_DELAY` says otherwise.
///
/// By default mimalloc purges (decommits) pages freed for 10 ms. A node frees and reallocates
/// the same buffers all the time (request frames, memtable arenas, compaction blocks), so purging
/// costs a page fault on the next use and an madvise syscall on the request core: with it off,
/// YCSB A closed loop went from 38.8k/36.5k to 43.3k/38.7k ops/s and its open-loop p99 from
/// 72.5/51 ms to 7.7/12.7 ms (`vs-redis.sh`, two runs each; README, "The allocator"). The cost is
/// that the resident size stays at its high-water mark, which the memtable and cache bounds cap.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return; // the operator's choice, read by mimalloc itself
    }
    // SAFETY: mi_option_set takes any option index and value and only stores the value in
    // mimalloc's option table (an atomic store); 15 is mi_option_purge_delay (see above) and -1 is
    // its documented "never purge".
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "dynacore",
    version,
    about = "Dynacore: a distributed key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Speak TLS to the node, trusting the CA certificates of this PEM bundle (a node's
    /// certificate names its IP address). For `serve`: the CA its peers' certificates chain to
    /// (with --tls-cert and --tls-key).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
}

/// The CA bundle client commands trust (`--tls-ca`; `None`: plain TCP).
static TLS_CA: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

fn tls_ca() -> Option<&'static std::path::Path> {
    TLS_CA.get().and_then(Option::as_deref)
}

// Parsed once per process: the size of `serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (every setting has a default: `dynacore serve` just works).
    Serve {
        /// A TOML file of settings (flags override it).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Overrides,
    },
    /// Store a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Write only if the key's version is still this one (hex, as `get -v` prints it).
        #[arg(long)]
        if_version: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a value (exit code 1 when absent).
    Get {
        /// The key.
        key: String,
        /// Also print the version on stderr.
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show the cluster as the node sees it, and the topology change in progress with each
    /// gaining node's streaming progress (from the node's HTTP API).
    Status {
        #[command(flatten)]
        target: Target,
        /// The node's HTTP address (for the change in progress).
        #[arg(long, default_value = "127.0.0.1:8400")]
        http: SocketAddr,
    },
    /// Run N nodes on this machine (127.0.0.1, 127.0.0.2, …) until Ctrl-C.
    LocalCluster(dynacore_net::node::local_cluster::LocalCluster),
    /// Flush and merge every table of a node into one per core (a major compaction, like
    /// `nodetool compact`): tombstones and expired values past their grace are purged. Waits
    /// until it is done and prints what each core holds.
    Compact {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
        /// Give up waiting after this many seconds (the compaction goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
    /// Take a snapshot of a live node (like `nodetool snapshot`): every core flushes its
    /// memtables, then its SSTables and blob files are hard-linked under
    /// `<data_dir>/snapshots/<name>/`, with the node's identity and ring. To restore, copy that
    /// directory as a (stopped) node's data directory and start it: it starts a new actor epoch.
    /// Prints where the snapshot is and what it holds.
    Snapshot {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
        /// The snapshot's name (letters, digits, '.', '_', '-'); default: `snapshot-<ms>`.
        #[arg(long)]
        name: Option<String>,
        /// Give up waiting after this many seconds (the snapshot goes on).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Compare every range a node holds with its other replicas and repair what differs
    /// (anti-entropy, like `nodetool repair`): a full repair, which also lets tombstones the
    /// ranges hold be purged later. Waits until it is done and prints what it compared,
    /// found divergent and repaired; exits 1 if a range could not be repaired.
    Repair {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
        /// Give up waiting after this many seconds (the repair goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
    /// Decommission a node (like `nodetool decommission`): it streams its ranges to their next
    /// owners, leaves the ring and stops. Returns once it started; `dynacore status --http`
    /// or `GET /cluster` shows the progress.
    Decommission {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
    },
    /// Remove a dead node from the ring (like `nodetool removenode`): its ranges are rebuilt
    /// on their next owners from the surviving replicas, driven by the node at `--addr`.
    Removenode {
        /// The dead node's id (16 hex digits, as `dynacore status` shows it).
        id: String,
        /// The HTTP address of a live node to drive it.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
    },
    /// Drop the keys of ranges a node no longer holds (like `nodetool cleanup`), after a join.
    Cleanup {
        /// The node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
        /// Give up waiting after this many seconds (the cleanup goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
    /// Where a key lives (like `nodetool getendpoints`): its replicas, primary first, and its
    /// pending replicas while ranges move.
    Endpoints {
        /// The key.
        key: String,
        /// A node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        addr: SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
struct Target {
    /// A node's binary protocol address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    keep_freed_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = TLS_CA.set(cli.tls_ca.clone());
    match cli.command {
        Command::Compact { addr, timeout_s } => match admin_post(addr, "/admin/compact", timeout_s)
        {
            Ok(body) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dynacore compact: {e}");
                ExitCode::from(2)
            }
        },
        Command::Snapshot {
            addr,
            name,
            timeout_s,
        } => {
            let path = match &name {
                Some(n) => format!("/admin/snapshot?name={}", percent_encode(n)),
                None => "/admin/snapshot".to_owned(),
            };
            match admin_post(addr, &path, timeout_s) {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dynacore snapshot: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Repair { addr, timeout_s } => match admin_post(addr, "/admin/repair", timeout_s) {
            Ok(body) => {
                println!("{body}");
                let failed = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["ranges_failed"].as_u64())
                    .unwrap_or(0);
                if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("dynacore repair: {failed} ranges could not be repaired");
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("dynacore repair: {e}");
                ExitCode::from(2)
            }
        },
        Command::Decommission { addr } => print_admin(
            "decommission",
            admin_call(addr, "POST", "/admin/decommission", 30),
        ),
        Command::Removenode { id, addr } => print_admin(
            "removenode",
            admin_call(addr, "POST", &format!("/admin/removenode/{id}"), 30),
        ),
        Command::Cleanup { addr, timeout_s } => print_admin(
            "cleanup",
            admin_call(addr, "POST", "/admin/cleanup", timeout_s),
        ),
        Command::Endpoints { key, addr } => {
            let path = format!("/cluster/endpoints/{}", percent_encode(&key));
            match admin_call(addr, "GET", &path, 10) {
                Ok(body) => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    for (what, list) in [("replica", &v["replicas"]), ("pending", &v["pending"])] {
                        for n in list.as_array().into_iter().flatten() {
                            println!(
                                "{what} {} {} {}{}",
                                n["id"].as_str().unwrap_or("?"),
                                n["binary"].as_str().unwrap_or("?"),
                                if n["up"].as_bool() == Some(true) {
                                    "up"
                                } else {
                                    "down"
                                },
                                n["rack"]
                                    .as_str()
                                    .filter(|r| !r.is_empty())
                                    .map(|r| format!(" rack {r}"))
                                    .unwrap_or_default(),
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dynacore endpoints: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::LocalCluster(args) => {
            ExitCode::from(dynacore_net::node::local_cluster::run(&args))
        }
        Command::Serve { config, mut flags } => {
            init_logging();
            flags.tls_ca.clone_from(&cli.tls_ca);
            serve(config.as_deref(), &flags)
        }
        Command::Put {
            key,
            value,
            ttl,
            if_version,
            target,
        } => client_command(&target, move |client| async move {
            let expected = if_version.map(|v| v.parse::<Version>()).transpose()?;
            let options = WriteOptions {
                ttl: ttl.map(Duration::from_secs),
                expected,
                w: None,
                context: None,
                ..WriteOptions::default()
            };
            let version = client
                .put_with(key.as_bytes(), value.as_bytes(), &options)
                .await?;
            println!("{version}");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Get {
            key,
            verbose,
            target,
        } => client_command(&target, move |client| async move {
            match client.get(key.as_bytes()).await? {
                Some(v) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&v.value);
                    let _ = out.write_all(b"\n");
                    if verbose {
                        eprintln!("version {}", v.version);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("not found");
                    Ok(ExitCode::from(1))
                }
            }
        }),
        Command::Delete { key, target } => client_command(&target, move |client| async move {
            let version = client.delete(key.as_bytes()).await?;
            println!("deleted (tombstone version {version})");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status { target, http } => {
            let code = status(&target);
            print_moving(http);
            code
        }
    }
}

/// `dynacore status`: the cluster as the node at `target` sees it.
fn status(target: &Target) -> ExitCode {
    client_command(target, move |client| async move {
        let view = client.cluster();
        println!(
            "replication factor {}, {} vnodes, ownership balance {:.3}",
            view.replication_factor,
            view.ring.vnodes().len(),
            view.ring.ownership_balance()
        );
        for m in &view.members {
            let n = &m.node;
            let addr = SocketAddr::new(
                n.host
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                n.base_port,
            );
            // What the answering node says, and whether this client reaches it too.
            let reach = match client.ping(addr).await {
                Ok(rtt) => format!("ping {} us", rtt.as_micros()),
                Err(e) => format!("unreachable from here ({e})"),
            };
            let name = m
                .name
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            println!(
                "node {}{name} {}:{} generation {} cores {} (ports {}-{}) {:?}{} ({reach})",
                n.id,
                n.host,
                n.base_port,
                m.generation,
                n.shards,
                u64::from(n.base_port) + 1,
                u64::from(n.base_port) + u64::from(n.shards),
                m.state,
                if m.in_ring { ", in the ring" } else { "" },
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The topology change in progress as the node's `GET /cluster` shows it, with each gaining
/// node's progress (ranges, keys, bytes, ETA); a line saying why where it cannot be read.
fn print_moving(http: SocketAddr) {
    let view = admin_call(http, "GET", "/cluster", 5).and_then(|body| {
        serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string())
    });
    let view = match view {
        Ok(v) => v,
        Err(e) => {
            println!("topology change: unknown (GET /cluster at {http}: {e})");
            return;
        }
    };
    let mv = &view["moving"];
    if mv.is_null() {
        println!("topology change: none in progress");
        return;
    }
    println!(
        "topology change {}: node {} {} ({}), driven by {}",
        mv["change"],
        mv["node"].as_str().unwrap_or("?"),
        mv["state"].as_str().unwrap_or("?"),
        mv["kind"].as_str().unwrap_or("?"),
        mv["driver"].as_str().unwrap_or("?"),
    );
    for g in mv["gaining"].as_array().into_iter().flatten() {
        let s = &g["streaming"];
        if s.is_null() {
            println!(
                "  {} gains ranges: not streaming yet",
                g["node"].as_str().unwrap_or("?")
            );
        } else {
            println!(
                "  {} streaming: {}/{} ranges, {} keys, {} bytes in {:.0} s{}",
                g["node"].as_str().unwrap_or("?"),
                s["ranges_done"],
                s["ranges"],
                s["keys"],
                s["bytes"],
                s["seconds"].as_f64().unwrap_or(0.0),
                if s["done"] == true {
                    ", done".to_owned()
                } else {
                    s["eta_seconds"]
                        .as_f64()
                        .map_or_else(String::new, |eta| format!(", about {eta:.0} s left"))
                },
            );
        }
    }
}

/// Prints an admin call's answer; a refusal exits with 1, an unreachable node with 2.
fn print_admin(what: &str, answer: Result<String, String>) -> ExitCode {
    match answer {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dynacore {what}: {e}");
            if e.contains(" answered ") {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// A key as one URL path segment.
fn percent_encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn serve(config: Option<&std::path::Path>, flags: &Overrides) -> ExitCode {
    let text = match config.map(std::fs::read_to_string).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dynacore: cannot read the config file: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match NodeConfig::build(text.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dynacore: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = node::run(config, |ready| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(NodeError::Config(m)) => {
            eprintln!("dynacore: {m}");
            ExitCode::from(2)
        }
        Err(NodeError::Runtime(m)) => {
            eprintln!("dynacore: {m}");
            ExitCode::from(1)
        }
    }
}

/// Runs `f` with a client connected to `target` on a small executor; errors exit with 2.
fn client_command<F, Fut>(target: &Target, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<ExitCode, ClientError>> + 'static,
{
    let addr: SocketAddr = match target.addr.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!(
                "dynacore: --addr must be ip:port, such as 127.0.0.1:7400, not {:?}",
                target.addr
            );
            return ExitCode::from(2);
        }
    };
    let options = ClientOptions {
        timeout: Duration::from_millis(target.timeout_ms.max(1)),
        tls_ca: tls_ca().map(std::path::Path::to_path_buf),
        ..ClientOptions::default()
    };
    let outcome = runtime::spawn_executor("dynacore-cli", None, 1 << 20, move || async move {
        let client = Client::connect_with(&[addr], options).await?;
        f(client).await
    })
    .and_then(runtime::ExecutorHandle::join);
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("dynacore: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("dynacore: cannot start the client: {e}");
            ExitCode::from(2)
        }
    }
}

/// `POST <path>` to the node at `addr` (`/admin/compact`, `/admin/repair`); its JSON answer,
/// or why there is none.
/// A connection the admin calls read and write (plain TCP or TLS).
trait ReadWrite: std::io::Read + std::io::Write {}

impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

fn admin_post(addr: SocketAddr, path: &str, timeout_s: u64) -> Result<String, String> {
    admin_call(addr, "POST", path, timeout_s)
}

/// An HTTP call to a node's admin API; the body of a 2xx answer.
fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout_s: u64,
) -> Result<String, String> {
    use std::io::Read as _;
    let timeout = Duration::from_secs(timeout_s.max(1));
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    let mut s: Box<dyn ReadWrite> = match tls_ca() {
        None => Box::new(s),
        Some(ca) => {
            use runtime::tls::rustls;
            let config = runtime::tls::client_config(ca)?;
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let conn = rustls::ClientConnection::new(config, name)
                .map_err(|e| format!("TLS to {addr}: {e}"))?;
            Box::new(rustls::StreamOwned::new(conn, s))
        }
    };
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("no answer from {addr} within {timeout_s} s: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} answered no HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status.starts_with('2') {
        Ok(body.trim().to_owned())
    } else {
        Err(format!("{addr} answered {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index 15 is mimalloc's purge delay: it reads mimalloc's default for that option (1000 ms
    /// in v3) before `keep_freed_pages` sets it to "never".
    #[test]
    #[allow(unsafe_code)]
    fn keep_freed_pages_sets_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment chose; nothing of ours to check
        }
        // SAFETY: mi_option_get only reads mimalloc's option table.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1000, "option 15 is not mimalloc's purge delay");
        keep_freed_pages();
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, -1);
    }
}
