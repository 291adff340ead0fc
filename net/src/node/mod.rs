//! `dynacore serve`: one node — one pinned executor per core, each with its own engine shard
//! under `<data-dir>/shard-<i>/`, its own binary-protocol port (`listen` port + 1 + i), and a
//! share of the node's common binary and HTTP ports (every core listens on them with
//! `SO_REUSEPORT`, so the kernel spreads connections over the cores; a request for a key
//! another core owns is forwarded to it, see [`cores`](crate::cores)).
//!
//! Start-up: the settings are checked (a bad one is [`NodeError::Config`], exit code 2), the
//! data directory's identity file `NODE` is created or checked (its shard count must match),
//! every port is checked free, the executors open their shards and bind, and then the node
//! prints one `ready` line on stdout.
//!
//! Shutdown (SIGINT or SIGTERM): no new request is admitted (such a request is answered
//! "unavailable" and its connection closed), the listeners close, the node waits for every
//! admitted request to be answered (at most the request timeout plus a second), then each
//! core closes its shard — the WAL written and synced — and the process exits 0. A second
//! signal exits at once with code 130.

pub mod config;
pub mod local_cluster;
pub mod secret;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynacore_engine::version::ClockHandle;
use dynacore_engine::{Shard, ShardId, ShardOptions};
use dynacore_runtime as runtime;

use crate::cluster::{ClusterState, RingBook, RingMember, SharedCluster};
use crate::core::{serve_inbox, Core, CoreParts, NodeShared};
use crate::frontend::binary_server::{serve_binary, ConnectionLimits};
use crate::frontend::http_server::{serve_http, HttpOptions};
use crate::frontend::resp_server::{serve_resp, RespOptions};
use crate::storage::hints::{HintLimits, HintStore};
use crate::storage::replica::LocalStore;
pub use config::{ConfigError, NodeConfig, Overrides};
use dynacore_proto::ring::NodeId;

/// Why the node did not start or did not stop cleanly.
#[derive(Debug)]
pub enum NodeError {
    /// The settings or the data directory do not allow starting (exit code 2).
    Config(String),
    /// Start-up or shutdown failed (exit code 1).
    Runtime(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Config(m) | NodeError::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<ConfigError> for NodeError {
    fn from(e: ConfigError) -> Self {
        NodeError::Config(e.0)
    }
}

/// Name of the identity file in the data directory.
pub const NODE_FILE: &str = "NODE";

/// What the data directory records about the node that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node's id, generated at its first start (or given then).
    pub node_id: NodeId,
    /// Its human name, if it was given one at its first start (`--node-id n1`).
    pub name: Option<String>,
    /// Its shard count: the data is split this way.
    pub shards: u32,
    /// Its vnode count: the ring depends on it.
    pub vnodes: u16,
    /// This start's generation: one more than the previous start's.
    pub generation: u64,
    /// Whether this is the node's first start on this data directory (no identity file yet).
    pub first_start: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    format: u32,
    node_id: String,
    shards: u32,
    vnodes: u16,
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    name: Option<String>,
}

/// The generation of a new start: above the last one recorded, and above the wall clock's
/// seconds, so that it also passes any generation an earlier process took by rejoining the
/// cluster at run time (each rejoin adds one; the file records only starts).
fn next_generation(recorded: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (recorded + 1).max(now)
}

/// Writes the identity file durably: written, synced, renamed, directory synced.
fn store_meta(dir: &Path, meta: &NodeMeta) -> Result<(), NodeError> {
    let path = dir.join(NODE_FILE);
    let io = |what: &str, e: std::io::Error| {
        NodeError::Runtime(format!("{what} {}: {e}", path.display()))
    };
    let mut text = format!(
        "# This node's identity, written at its first start; the generation grows at every\n\
         # start. Do not edit: the data is split by these numbers.\nformat = 1\n\
         node_id = \"{}\"\nshards = {}\nvnodes = {}\ngeneration = {}\n",
        meta.node_id, meta.shards, meta.vnodes, meta.generation
    );
    if let Some(name) = &meta.name {
        text.push_str(&format!("name = \"{name}\"\n"));
    }
    let tmp = dir.join(format!("{NODE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("cannot write", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("cannot rename into", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync the directory of", e))
}

/// Reads the data directory's identity, or creates it for a new node with `shards` and
/// `vnodes` (and the id `wanted`, or a random one), and records this start's generation. An
/// existing identity with another shard or vnode count, or another id than `wanted`, is
/// refused: the data is split by them.
///
/// # Errors
/// [`NodeError::Config`] for a mismatch or an unreadable identity file;
/// [`NodeError::Runtime`] for I/O errors.
pub fn load_or_create_meta(
    dir: &Path,
    shards: u32,
    vnodes: u16,
    wanted: Option<NodeId>,
    name: Option<&str>,
) -> Result<NodeMeta, NodeError> {
    let path = dir.join(NODE_FILE);
    let meta = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let m: MetaFile = toml::from_str(&text)
                .map_err(|e| NodeError::Config(format!("{} is damaged: {e}", path.display())))?;
            let node_id = u64::from_str_radix(&m.node_id, 16).map_err(|_| {
                NodeError::Config(format!("{}: bad node_id {:?}", path.display(), m.node_id))
            })?;
            if m.format != 1 {
                return Err(NodeError::Config(format!(
                    "{}: format {} is not known to this version",
                    path.display(),
                    m.format
                )));
            }
            if m.shards != shards {
                return Err(NodeError::Config(format!(
                    "the data in {} is split into {} shards, but this node was started with {shards} \
                     cores; start it with --cores {} (resharding does not exist yet)",
                    dir.display(),
                    m.shards,
                    m.shards
                )));
            }
            if m.vnodes != vnodes {
                return Err(NodeError::Config(format!(
                    "the node in {} has {} vnodes, but this configuration says {vnodes}; \
                     changing it would move data (set vnodes = {})",
                    dir.display(),
                    m.vnodes,
                    m.vnodes
                )));
            }
            if let Some(w) = wanted.filter(|w| w.0 != node_id) {
                return Err(NodeError::Config(format!(
                    "the data in {} belongs to node {}, not {w}",
                    dir.display(),
                    NodeId(node_id)
                )));
            }
            NodeMeta {
                node_id: NodeId(node_id),
                // The name recorded; or, for a directory made before names, the one given now if
                // the id derives from it.
                name: m.name.or_else(|| name.map(str::to_owned)),
                shards,
                vnodes,
                generation: next_generation(m.generation),
                first_start: false,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| NodeError::Runtime(format!("cannot create {}: {e}", dir.display())))?;
            NodeMeta {
                node_id: wanted.unwrap_or_else(|| NodeId(rand::random::<u64>().max(1))),
                name: name.map(str::to_owned),
                shards,
                vnodes,
                generation: next_generation(0),
                first_start: true,
            }
        }
        Err(e) => {
            return Err(NodeError::Runtime(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    store_meta(dir, &meta)?;
    Ok(meta)
}

/// Checks that nothing listens on `addr` (the executors bind with `SO_REUSEPORT`, which would
/// otherwise silently share a port with another node).
///
/// A port held only by connections in `TIME_WAIT` (left by a node that crashed a moment ago)
/// refuses a plain bind but takes a `SO_REUSEPORT` one: it counts as free when nothing accepts
/// a connection on it. The listening socket of a node killed a moment ago can outlive its
/// process briefly (its io_uring is torn down after it exits) and still accept connections: a
/// listener is asked again for up to two seconds before the port counts as taken.
fn check_free(addr: SocketAddr, what: &str) -> Result<(), NodeError> {
    let mut probe = addr;
    if probe.ip().is_unspecified() {
        probe.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    let mut tries = 0;
    loop {
        let Err(e) = std::net::TcpListener::bind(addr) else {
            return Ok(());
        };
        let listening =
            std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(500)).is_ok();
        if e.kind() == std::io::ErrorKind::AddrInUse && !listening {
            return Ok(());
        }
        tries += 1;
        if e.kind() != std::io::ErrorKind::AddrInUse || tries >= 20 {
            return Err(NodeError::Config(format!(
                "cannot listen on {addr} ({what}): {e} — is another node running?"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Picks a base port whose `count` following ports are free too (for `listen` port 0).
fn pick_free_ports(ip: std::net::IpAddr, count: u16) -> Result<u16, NodeError> {
    for _ in 0..64 {
        let base: u16 = rand::random::<u16>() % 20_000 + 20_000;
        let free = (0..=count).all(|i| std::net::TcpListener::bind((ip, base + i)).is_ok());
        if free {
            return Ok(base);
        }
    }
    Err(NodeError::Config(format!(
        "found no {} consecutive free ports on {ip}",
        count + 1
    )))
}

/// The addresses a running node serves.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The shared binary port.
    pub listen: SocketAddr,
    /// Core `i`'s own port.
    pub shard_ports: Vec<SocketAddr>,
    /// The HTTP API.
    pub http: SocketAddr,
    /// The Redis protocol (`None`: off).
    pub resp: Option<SocketAddr>,
    /// The node.
    pub node_id: NodeId,
    /// Its human name, if it has one.
    pub name: Option<String>,
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.shard_ports.first().map_or(0, SocketAddr::port);
        let last = self.shard_ports.last().map_or(0, SocketAddr::port);
        write!(
            f,
            "ready node={} binary={} shards={}:{first}-{last} http={} cores={} resp={}",
            self.node_id,
            self.listen,
            self.listen.ip(),
            self.http,
            self.shard_ports.len(),
            self.resp
                .map_or_else(|| "off".to_owned(), |a| a.to_string())
        )?;
        match &self.name {
            Some(name) => write!(f, " name={name}"),
            None => Ok(()),
        }
    }
}

/// Runs a node until SIGINT or SIGTERM; `on_ready` is called once it accepts requests.
///
/// # Errors
/// [`NodeError::Config`] (exit code 2) or [`NodeError::Runtime`] (exit code 1).
#[allow(clippy::too_many_lines)]
pub fn run(mut config: NodeConfig, on_ready: impl FnOnce(&Ready)) -> Result<(), NodeError> {
    let cpus = runtime::online_cpus()
        .map_err(|e| NodeError::Runtime(format!("cannot read the CPU topology: {e}")))?;
    let cores = config
        .cores
        .unwrap_or_else(|| u32::try_from(cpus.len()).unwrap_or(1).max(1));
    if config.pin && cores as usize > cpus.len() {
        return Err(NodeError::Config(format!(
            "cannot pin {cores} cores on a machine with {} online CPUs (use fewer --cores, or --no-pin)",
            cpus.len()
        )));
    }
    let shard_count =
        u16::try_from(cores).map_err(|_| NodeError::Config("too many cores".into()))?;
    if config.listen.port() == 0 {
        let base = pick_free_ports(config.listen.ip(), shard_count)?;
        config.listen.set_port(base);
    } else if u32::from(config.listen.port()) + cores > u32::from(u16::MAX) {
        return Err(NodeError::Config(format!(
            "listen port {} plus one port per core ({cores}) passes 65535",
            config.listen.port()
        )));
    }
    let shard_addrs: Vec<SocketAddr> = (1..=shard_count)
        .map(|i| SocketAddr::new(config.listen.ip(), config.listen.port() + i))
        .collect();
    if config.http.port() == 0 {
        let probe = std::net::TcpListener::bind(config.http)
            .and_then(|l| l.local_addr())
            .map_err(|e| NodeError::Config(format!("cannot listen on {}: {e}", config.http)))?;
        config.http = probe;
    }
    if let Some(resp) = config.resp.filter(|a| a.port() == 0) {
        let probe = std::net::TcpListener::bind(resp)
            .and_then(|l| l.local_addr())
            .map_err(|e| NodeError::Config(format!("cannot listen on {resp}: {e}")))?;
        config.resp = Some(probe);
    }
    check_free(config.listen, "binary protocol")?;
    for a in &shard_addrs {
        check_free(*a, "a core's binary port")?;
    }
    check_free(config.http, "HTTP")?;
    if let Some(resp) = config.resp {
        check_free(resp, "the Redis protocol")?;
    }
    std::net::UdpSocket::bind(config.listen)
        .map(drop)
        .map_err(|e| {
            NodeError::Config(format!(
                "cannot gossip on {} (UDP): {e} — is another node running?",
                config.listen
            ))
        })?;
    let meta = load_or_create_meta(
        &config.data_dir,
        cores,
        config.vnodes,
        config.node_id.map(NodeId),
        config.node_name.as_deref(),
    )?;
    let (key, secret_path) =
        secret::load_or_create(config.cluster_secret_file.as_deref(), &config.data_dir).map_err(
            |e| match e {
                secret::SecretError::Refused(m) => NodeError::Config(m),
                secret::SecretError::WriteFailed(m) => NodeError::Runtime(m),
            },
        )?;
    tracing::info!(path = %secret_path.display(), "cluster secret");
    let tls = match &config.tls {
        None => None,
        Some(files) => {
            let server = runtime::tls::server_config(&files.cert, &files.key)
                .map_err(|e| NodeError::Config(format!("TLS: {e}")))?;
            let client = runtime::tls::client_config(&files.ca)
                .map_err(|e| NodeError::Config(format!("TLS: {e}")))?;
            tracing::info!(cert = %files.cert.display(), ca = %files.ca.display(), "TLS on every TCP port and to peers");
            Some(crate::core::NodeTls { server, client })
        }
    };
    tracing::info!(
        node = %meta.node_id,
        name = meta.name.as_deref().unwrap_or("-"),
        generation = meta.generation,
        "this node"
    );
    let mut own_member = RingMember::new(
        meta.node_id,
        config.advertised(),
        config.http,
        cores,
        config.vnodes,
        meta.generation,
    );
    own_member.rack.clone_from(&config.rack);
    own_member.name = meta.name.clone().unwrap_or_default();
    // A node that does not gossip is a cluster of one whatever its file says: its tokens
    // derive from its id.
    let book = if config.listen.ip().is_unspecified() {
        RingBook::in_memory(own_member.normal_with(Vec::new()))
    } else {
        let mut book = RingBook::load(&config.data_dir, own_member).map_err(NodeError::Config)?;
        // Seeds other than itself: it must learn the ring from them before it serves.
        let own_addr = config.advertised();
        let seeded = config
            .seeds
            .iter()
            .any(|s| *s != own_addr && *s != config.listen);
        let own = book.own().clone();
        if own.state.gone() {
            return Err(NodeError::Config(format!(
                "node {} was {} from the ring; its data directory {} cannot serve again \
                 (wipe it to start a new node)",
                meta.node_id,
                own.state.name(),
                config.data_dir.display()
            )));
        }
        // (A member of a ring made before tokens were allocated has an entry without a state
        // in its file, which reads `normal`: its tokens derive from its id. A node without
        // tokens here never finished joining, whether this is its first start or not.)
        if !own.has_tokens() {
            if !seeded && config.replace.is_none() {
                // The first node of a new ring: evenly spaced tokens.
                let tokens = dynacore_proto::allocate_tokens(
                    None,
                    meta.node_id,
                    &config.rack,
                    config.vnodes,
                    usize::from(config.replication.replication_factor),
                    meta.node_id.0,
                );
                book.update_own(|m| {
                    m.tokens = tokens.iter().map(|t| t.0).collect();
                    m.state = crate::cluster::ring_book::MemberState::Normal;
                });
            } else if !seeded {
                return Err(NodeError::Config(
                    "--replace needs --seeds: the node learns the dead node's tokens from the \
                     cluster"
                        .into(),
                ));
            }
            // Otherwise it joins through its seeds (the topology driver on core 0).
        }
        book.save().map_err(NodeError::Runtime)?;
        book.seeded(seeded)
    };
    let cluster = SharedCluster::new(ClusterState::build(
        meta.node_id,
        &book,
        None,
        config.replication.replication_factor,
    ));
    let gossips = !config.listen.ip().is_unspecified();
    let history = crate::storage::repair_history::SharedHistory::new(
        crate::storage::repair_history::RepairHistory::load(&config.data_dir),
    );
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let purge = crate::storage::repair_history::PurgeRule {
        mode: match config.purge.gate {
            crate::node::config::PurgeGate::Repair => {
                crate::storage::repair_history::GcMode::Repair {
                    delay_ms: ms(config.purge.propagation_delay),
                }
            }
            crate::node::config::PurgeGate::Grace => {
                crate::storage::repair_history::GcMode::Grace {
                    grace_ms: ms(config.purge.grace),
                }
            }
        },
        history,
    };
    let (shared, inboxes) = NodeShared::with_repair(
        cores,
        purge,
        crate::core::RepairBudget::new(
            config.anti_entropy.keys_per_s,
            config.anti_entropy.bytes_per_s,
        ),
    );
    let (keeper, digests) = crate::cluster::keeper::RingKeeper::new(
        book,
        cluster.clone(),
        shared.members().clone(),
        config.replication.replication_factor,
    );
    shared.set_data_dir(config.data_dir.clone());
    if gossips {
        shared.set_keeper(keeper.clone());
    }
    let mut publish = Some(crate::cluster::gossip::Publish {
        members: shared.members().clone(),
        keeper,
        digests,
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u32, String>>();
    let mut controls = Vec::new();
    let mut executors = Vec::new();
    let config = Arc::new(config);
    for (i, inbox) in (0..cores).zip(inboxes) {
        let (control_tx, control_rx) = flume::bounded::<()>(1);
        controls.push(control_tx);
        let cpu = config.pin.then(|| cpus[i as usize]);
        let (config, cluster, core_shared, ready_tx, key, tls) = (
            config.clone(),
            cluster.clone(),
            shared.clone(),
            ready_tx.clone(),
            key.clone(),
            tls.clone(),
        );
        // Core 0 runs the membership driver.
        let publish = if i == 0 { publish.take() } else { None };
        let shard_addr = shard_addrs[i as usize];
        let spec = runtime::ExecutorSpec {
            name: format!("dynacore-core-{i}"),
            cpu,
            io_memory_bytes: config.io_memory_bytes,
            // glommio spins only pinned executors.
            spin_before_park: config.spin_before_park.filter(|_| cpu.is_some()),
        };
        let spawned = runtime::spawn_executor_with(&spec, move || async move {
            core_main(CoreStart {
                index: i,
                config,
                node_id: meta.node_id,
                generation: meta.generation,
                cluster,
                publish,
                shared: core_shared,
                inbox,
                control: control_rx,
                shard_addr,
                ready: ready_tx,
                key,
                tls,
            })
            .await
        });
        match spawned {
            Ok(handle) => executors.push(handle),
            Err(e) => {
                stop_all(&shared, &controls);
                join_all(executors);
                return Err(NodeError::Runtime(format!("cannot start core {i}: {e}")));
            }
        }
    }
    drop(ready_tx);
    {
        let (weak, controls) = (Arc::downgrade(&shared), controls.clone());
        shared.set_shutdown(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                stop_all(&shared, &controls);
            }
        }));
    }
    install_signal_handler(shared.clone(), controls.clone())?;
    let mut failure = None;
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a core stopped during start-up".to_owned());
                break;
            }
        }
    }
    if let Some(e) = failure {
        stop_all(&shared, &controls);
        join_all(executors);
        return Err(NodeError::Runtime(e));
    }
    on_ready(&Ready {
        listen: config.listen,
        shard_ports: shard_addrs,
        http: config.http,
        resp: config.resp,
        node_id: meta.node_id,
        name: meta.name.clone(),
    });
    let errors = join_all(executors);
    // The ring book's last change on disk (it is saved off the executors).
    if let Some(keeper) = shared.keeper() {
        keeper.flush();
    }
    if errors.is_empty() {
        tracing::info!("stopped cleanly");
        Ok(())
    } else {
        Err(NodeError::Runtime(errors.join("; ")))
    }
}

fn stop_all(shared: &NodeShared, controls: &[flume::Sender<()>]) {
    shared.start_closing();
    for c in controls {
        let _ = c.try_send(());
    }
}

fn join_all(executors: Vec<runtime::ExecutorHandle<Result<(), String>>>) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, e) in executors.into_iter().enumerate() {
        match e.join() {
            Ok(Ok(())) => {}
            Ok(Err(m)) => errors.push(format!("core {i}: {m}")),
            Err(m) => errors.push(format!("core {i} failed: {m}")),
        }
    }
    errors
}

fn install_signal_handler(
    shared: Arc<NodeShared>,
    controls: Vec<flume::Sender<()>>,
) -> Result<(), NodeError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| NodeError::Runtime(format!("cannot handle signals: {e}")))?;
    std::thread::Builder::new()
        .name("dynacore-signals".to_owned())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(130);
                }
                tracing::info!(signal = sig, "shutting down: finishing requests in flight");
                stop_all(&shared, &controls);
            }
        })
        .map(drop)
        .map_err(|e| NodeError::Runtime(format!("cannot start the signal thread: {e}")))
}

struct CoreStart {
    index: u32,
    config: Arc<NodeConfig>,
    node_id: NodeId,
    generation: u64,
    cluster: SharedCluster,
    publish: Option<crate::cluster::gossip::Publish>,
    shared: Arc<NodeShared>,
    inbox: flume::Receiver<crate::core::Forward>,
    control: flume::Receiver<()>,
    shard_addr: SocketAddr,
    ready: std::sync::mpsc::Sender<Result<u32, String>>,
    key: dynacore_proto::ClusterKey,
    tls: Option<crate::core::NodeTls>,
}

async fn core_main(s: CoreStart) -> Result<(), String> {
    let i = s.index;
    let mut options = ShardOptions::new(s.config.data_dir.join(format!("shard-{i}")), ShardId(i));
    options.durability = s.config.durability;
    options.memtable_bytes_max = s.config.memtable_bytes;
    options.hash_tree = Some(dynacore_engine::TreeOptions {
        leaf_bits: s.config.anti_entropy.leaf_bits,
        ..dynacore_engine::TreeOptions::default()
    });
    match s.config.purge.gate {
        // The grace period alone decides (no gate).
        crate::node::config::PurgeGate::Grace => {
            options.compaction.tombstone_grace_ms =
                u64::try_from(s.config.purge.grace.as_millis()).unwrap_or(u64::MAX);
        }
        // The repair history decides, for the range's replicas as the ring gives them now.
        crate::node::config::PurgeGate::Repair => {
            options.compaction.tombstone_grace_ms = 0;
            let (cluster, rule) = (s.cluster.clone(), s.shared.purge().clone());
            options.tombstone_gate = Some(dynacore_engine::compaction::TombstoneGate::new(
                move |token, effective_ms| {
                    let c = cluster.get();
                    let (range, replicas) = c.range_replicas(token);
                    rule.gc_before(range, &replicas, crate::storage::hints::now_ms())
                        .is_some_and(|before| effective_ms < before)
                },
            ));
        }
    }
    let shard = match Shard::open(options).await {
        Ok(shard) => shard,
        Err(e) => {
            let m = format!("cannot open shard {i}: {e}");
            let _ = s.ready.send(Err(m.clone()));
            return Err(m);
        }
    };
    // Acceptor states outlive any round by far: the purge grace, and at least an hour.
    let paxos = match crate::storage::paxos::PaxosStore::open(
        s.config.data_dir.join(format!("paxos-{i}")),
        ShardId(i),
        s.config
            .purge
            .grace
            .max(std::time::Duration::from_secs(3600)),
    )
    .await
    {
        Ok(p) => Rc::new(p),
        Err(e) => {
            let m = format!("cannot open the transaction state of core {i}: {e}");
            let _ = s.ready.send(Err(m.clone()));
            let _ = shard.close().await;
            return Err(m);
        }
    };
    let store = LocalStore::new(shard.clone(), s.node_id.0, ClockHandle::system())
        .with_paxos(paxos.clone());
    let replication = &s.config.replication;
    let hints = if replication.hinted_handoff {
        let limits = HintLimits {
            bytes_per_target: (replication.hint_bytes_per_target / u64::from(s.shared.cores()))
                .max(1 << 20),
            max_age: replication.hint_max_age,
            replay_per_second: replication.hint_replay_per_second,
        };
        let dir = s.config.data_dir.join(format!("hints-{i}"));
        match HintStore::open(dir, ShardId(i), s.config.durability, limits).await {
            Ok(h) => Some(Rc::new(h)),
            Err(e) => {
                let m = format!("cannot open the hints of core {i}: {e}");
                let _ = s.ready.send(Err(m.clone()));
                let _ = shard.close().await;
                return Err(m);
            }
        }
    } else {
        None
    };
    let core = Core::new(CoreParts {
        index: i,
        store,
        cluster: s.cluster.clone(),
        shared: s.shared.clone(),
        default_timeout: s.config.request_timeout,
        hints: hints.clone(),
        replication: replication.clone(),
        // Peers see this node's connections come from its own address.
        source_ip: Some(s.config.listen.ip()).filter(|ip| !ip.is_unspecified()),
        key: s.key.clone(),
        tls: s.tls.clone(),
    });
    runtime::spawn_detached(serve_inbox(core.clone(), s.inbox));
    let replay = runtime::spawn(crate::coordinator::replay_hints(core.clone()));
    crate::coordinator::run_anti_entropy(core.clone(), s.config.anti_entropy.interval);
    if i == 0 {
        crate::coordinator::topology::run_topology(
            core.clone(),
            crate::coordinator::topology::TopologyOptions {
                replace: s.config.replace.map(NodeId),
                rack: s.config.rack.clone(),
                vnodes: s.config.vnodes,
                stream_bytes_per_s: s.config.anti_entropy.stream_bytes_per_s,
            },
        );
    }
    let bound = (|| {
        let main = runtime::TcpListener::bind(s.config.listen)?;
        let own = runtime::TcpListener::bind(s.shard_addr)?;
        let http = runtime::TcpListener::bind(s.config.http)?;
        let resp = s.config.resp.map(runtime::TcpListener::bind).transpose()?;
        Ok::<_, std::io::Error>((main, own, http, resp))
    })();
    let (main, own, http, resp) = match bound {
        Ok(l) => l,
        Err(e) => {
            let m = format!("core {i} cannot listen: {e}");
            let _ = s.ready.send(Err(m.clone()));
            let _ = shard.close().await;
            return Err(m);
        }
    };
    let http_options = HttpOptions {
        idle_timeout: s.config.http_idle_timeout,
        connections_max: s.config.http_connections_max,
        ..HttpOptions::default()
    };
    let binary_limits = ConnectionLimits {
        idle_timeout: s.config.binary_idle_timeout,
        ..ConnectionLimits::default()
    };
    let mut listeners = vec![
        runtime::spawn(serve_binary(main, core.clone(), binary_limits.clone())),
        runtime::spawn(serve_binary(own, core.clone(), binary_limits)),
        runtime::spawn(serve_http(http, core.clone(), http_options)),
    ];
    if let Some(resp) = resp {
        listeners.push(runtime::spawn(serve_resp(
            resp,
            core.clone(),
            RespOptions {
                password: s.config.resp_password.clone(),
                flush: s.config.resp_flush,
                ..RespOptions::default()
            },
        )));
    }
    // Core 0 runs the membership, gossiping on the binary address over UDP.
    let (gossip_control, gossip_inbox) = flume::bounded(1);
    let gossip = if i == 0 && s.config.listen.ip().is_unspecified() {
        // Peers address a node by the address it announces: "every address" is not one.
        tracing::warn!(
            listen = %s.config.listen,
            "not joining a cluster: listen on a specific address to gossip"
        );
        None
    } else if i == 0 {
        match runtime::UdpSocket::bind(s.config.listen) {
            Ok(socket) => {
                let own = crate::cluster::membership::NodeMeta {
                    node: s.node_id.0,
                    generation: s.generation,
                    version: 0,
                    status: crate::cluster::membership::NodeStatus::Normal,
                    shards: core.shards(),
                    vnodes: s.config.vnodes,
                    binary: s.config.advertised(),
                    http: s.config.http,
                    gossip: s.config.advertised(),
                    ring: core
                        .shared()
                        .keeper()
                        .map_or(0, crate::cluster::keeper::RingKeeper::digest),
                };
                let publish = s.publish.expect("INVARIANT: core 0 runs the membership");
                let seeds = s.config.seeds.clone();
                Some(runtime::spawn(crate::cluster::gossip::run(
                    socket,
                    own,
                    seeds,
                    publish,
                    gossip_inbox,
                    crate::cluster::gossip::Sealing {
                        key: s.key.clone(),
                        refused: {
                            let core = core.clone();
                            Box::new(move || {
                                core.metrics()
                                    .auth_refused(crate::metrics::AuthPlane::Gossip);
                            })
                        },
                    },
                )))
            }
            Err(e) => {
                let m = format!("cannot gossip on {} (UDP): {e}", s.config.listen);
                let _ = s.ready.send(Err(m.clone()));
                drop(listeners);
                let _ = shard.close().await;
                return Err(m);
            }
        }
    } else {
        None
    };
    tracing::debug!(core = i, "ready");
    let _ = s.ready.send(Ok(i));
    // Until shutdown is asked for (or the node's start-up failed elsewhere).
    let _ = s.control.recv_async().await;
    if gossip.is_some() {
        // Tell the cluster at once rather than letting it find out by failed probes.
        let (done_tx, done) = flume::bounded(1);
        if gossip_control
            .send(crate::cluster::gossip::Control::Leave(done_tx))
            .is_ok()
        {
            let _ = runtime::timeout(Duration::from_secs(1), done.recv_async()).await;
        }
    }
    drop(gossip);
    drop(listeners);
    let deadline = Instant::now() + s.config.request_timeout + Duration::from_secs(1);
    while s.shared.in_flight() > 0 && Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(2)).await;
    }
    if s.shared.in_flight() > 0 {
        tracing::warn!(
            core = i,
            in_flight = s.shared.in_flight(),
            "requests still running at shutdown"
        );
    }
    drop(replay);
    drop(core);
    if let Some(hints) = hints {
        if let Err(e) = hints.close().await {
            tracing::warn!(core = i, error = %e, "closing the hints failed");
        }
    }
    if let Err(e) = paxos.close().await {
        tracing::warn!(core = i, error = %e, "closing the transaction state failed");
    }
    shard
        .close()
        .await
        .map_err(|e| format!("closing shard {i} failed: {e}"))
}
