//! The node's settings: built-in defaults, overridden by a TOML file, overridden by flags.
//!
//! ```toml
//! data_dir = "./dynacore-data"
//! listen = "127.0.0.1:7400"      # binary protocol; core i also listens on port + 1 + i
//! http = "127.0.0.1:8400"
//! resp = "127.0.0.1:6400"        # the Redis protocol (RESP2/3); "off": not served
//! resp_password = "…"            # Redis clients must AUTH with it (sent in clear text)
//! resp_flush = false             # allow FLUSHDB / FLUSHALL (delete every key of the cluster)
//! tls_cert = "node.pem"          # TLS on every TCP port (binary, HTTP, Redis) and between
//! tls_key = "node.key"           # nodes: this node's certificate chain and key (PEM), and the
//! tls_ca = "ca.pem"              # CA bundle its peers' certificates must chain to
//! advertise = "10.0.0.5:7400"    # where peers reach this node (default: listen)
//! cores = 4                      # default: every online CPU
//! pin = true                     # pin core i's executor to the i-th online CPU
//! spin_before_park_us = 0        # a pinned executor out of work polls this long before it
//!                                # sleeps in the kernel (0: sleeps at once; unpinned never spin)
//! durability = "sync"            # "sync", "periodic:<ms>" or "none"
//! vnodes = 256
//! request_timeout_ms = 5000
//! io_memory_mib = 10             # each executor's DMA arena (locked memory)
//! memtable_mib = 64
//! http_idle_timeout_s = 60
//! binary_idle_timeout_s = 600    # a binary connection with nothing running is closed after this
//! http_connections_max = 4096    # per core
//! replication_factor = 3         # replicas per key (capped at the nodes in the ring)
//! sloppy_quorum = true           # a down replica's write goes to a stand-in that counts for W
//! hinted_handoff = true          # keep writes for down replicas and hand them over later
//! hint_max_age_s = 10800         # hints not taken this long after their target returned are dropped
//! hint_mib_per_target = 1024     # hints kept per down node (the node's whole budget)
//! hint_replay_per_s = 2000       # hints handed back per second, per core
//! conflicts = "lww"              # reads: "lww" (newest value) or "siblings" (all concurrent)
//! tombstone_gc = "repair"        # when tombstones and expired values may be purged: "repair"
//!                                # (once a full repair with every replica covered them) or
//!                                # "grace" (`purge_gate` is the older name of this setting)
//! tombstone_gc_propagation_delay_s = 3600  # repair: ... and this long before that repair
//! tombstone_grace_s = 864000     # grace: this long after the delete or expiry (10 days)
//! anti_entropy_interval_s = 600  # every range compared with its other replicas (0: never;
//!                                # `dynacore repair` still works)
//! anti_entropy_keys_per_s = 5000 # repair budget of the node: keys moved per second ...
//! anti_entropy_mib_per_s = 32    # ... and MiB moved per second
//! hash_tree_leaf_bits = 20       # 2^20 leaves per shard's hash tree (8 MiB; at most 22)
//! rack = "r1"                    # this node's rack: replicas go to distinct racks (--rack)
//! stream_mib_per_s = 64          # MiB a node streams in per second while ranges move
//! cluster_secret_file = "/etc/dynacore/cluster.secret"  # shared by every node (default: one
//!                                # generated in the data directory at the first start)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dynacore_engine::Durability;

pub use crate::cluster::replication::ReplicationConfig;

/// Why a configuration is refused (the process exits with code 2).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Everything `dynacore serve` can be told.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Where the node keeps its shards (`shard-<i>/`) and its identity (`NODE`).
    pub data_dir: PathBuf,
    /// The binary protocol's shared port; core `i` also listens on `port + 1 + i`.
    pub listen: SocketAddr,
    /// The HTTP API.
    pub http: SocketAddr,
    /// The Redis protocol's address (`None`: not served).
    pub resp: Option<SocketAddr>,
    /// The password Redis clients must give with `AUTH` (`None`: none asked).
    pub resp_password: Option<String>,
    /// Whether Redis's `FLUSHDB` / `FLUSHALL` (every key of the cluster deleted) are allowed.
    pub resp_flush: bool,
    /// TLS: this node's certificate chain, its key and the CA its peers' certificates chain to
    /// (PEM files; all three or none).
    pub tls: Option<TlsFiles>,
    /// The address peers and clients reach this node's binary port (and gossip) at, when it
    /// is not `listen` (behind a NAT or a proxy); core `i` at its port + 1 + i.
    pub advertise: Option<SocketAddr>,
    /// Executors (shards); `None`: one per online CPU.
    pub cores: Option<u32>,
    /// Pin each executor to its own CPU.
    pub pin: bool,
    /// How long a pinned executor out of work polls before it parks (`None`: it parks at once).
    pub spin_before_park: Option<Duration>,
    /// When a write is acknowledged.
    pub durability: Durability,
    /// Vnodes of this node on the ring.
    pub vnodes: u16,
    /// How long a request may take when its client does not say.
    pub request_timeout: Duration,
    /// Each executor's DMA arena, in bytes.
    pub io_memory_bytes: usize,
    /// Memtable size per shard, in bytes.
    pub memtable_bytes: usize,
    /// Idle time after which a keep-alive HTTP connection is closed.
    pub http_idle_timeout: Duration,
    /// Idle time (nothing running, nothing to write) after which a binary connection is closed.
    pub binary_idle_timeout: Duration,
    /// HTTP connections one core keeps open.
    pub http_connections_max: usize,
    /// Other nodes' binary addresses to join through (gossip goes to the same ports, over
    /// UDP); empty: a cluster of one until others join this node.
    pub seeds: Vec<SocketAddr>,
    /// The node's rack: a key's replicas go to distinct racks where there are enough.
    pub rack: String,
    /// A dead node whose tokens this one takes over (`--replace`), streaming its ranges.
    pub replace: Option<u64>,
    /// The node's id, when it must be a given one (otherwise generated at the first start and
    /// kept in the data directory).
    pub node_id: Option<u64>,
    /// The node's human name, when `node_id` was given as one (the id derives from it).
    pub node_name: Option<String>,
    /// How replicas are written and read.
    pub replication: ReplicationConfig,
    /// When compaction may purge a tombstone or an expired value.
    pub purge: PurgeConfig,
    /// The file holding the cluster secret every node of the cluster shares (`None`:
    /// `<data_dir>/cluster.secret`, generated at the first start).
    pub cluster_secret_file: Option<PathBuf>,
    /// How replicas compare and repair their copies.
    pub anti_entropy: AntiEntropyConfig,
}

/// Anti-entropy: hash trees, exchanges between replicas, and what they may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiEntropyConfig {
    /// How often each range is compared with its other replicas (`None`: only on demand).
    pub interval: Option<Duration>,
    /// Keys repaired per second, for the whole node.
    pub keys_per_s: u32,
    /// Bytes moved per second, for the whole node.
    pub bytes_per_s: u64,
    /// `log2` of each shard's hash tree leaves.
    pub leaf_bits: u32,
    /// Bytes a node streams in per second while ranges move to it (joins, decommissions,
    /// removals, replacements).
    pub stream_bytes_per_s: u64,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            interval: Some(Duration::from_secs(600)),
            keys_per_s: 5000,
            bytes_per_s: 32 << 20,
            leaf_bits: dynacore_engine::hashtree::LEAF_BITS_DEFAULT,
            stream_bytes_per_s: 64 << 20,
        }
    }
}

/// When compaction may forget a delete (a tombstone, or a value past its expiry): only once no
/// replica can still hold an older version that the delete must keep hiding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeConfig {
    /// What decides.
    pub gate: PurgeGate,
    /// With [`PurgeGate::Grace`]: how long after the delete or expiry (Cassandra's
    /// `gc_grace_seconds`).
    pub grace: Duration,
    /// With [`PurgeGate::Repair`]: how long before the last full repair the delete or expiry
    /// must be (ScyllaDB's `propagation_delay_in_seconds`): writes still in flight then, or
    /// held up by a skewed clock, are covered.
    pub propagation_delay: Duration,
}

/// What decides that no replica can still hold an older version of a deleted key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeGate {
    /// Once a full repair with every replica of the range covered the delete
    /// (`tombstone_gc = "repair"`, the default; ScyllaDB's `tombstone_gc = repair`): never
    /// repaired, never purged; at one replica, at once.
    Repair,
    /// The grace period alone (`tombstone_gc = "grace"`): replicas are assumed repaired within
    /// it.
    Grace,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig {
            gate: PurgeGate::Repair,
            grace: Duration::from_secs(10 * 24 * 3600),
            propagation_delay: Duration::from_secs(3600),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./dynacore-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            http: SocketAddr::from(([127, 0, 0, 1], 8400)),
            resp: Some(SocketAddr::from(([127, 0, 0, 1], 6400))),
            resp_password: None,
            resp_flush: false,
            tls: None,
            advertise: None,
            cores: None,
            pin: true,
            spin_before_park: spin(SPIN_BEFORE_PARK_US_DEFAULT),
            durability: Durability::Sync,
            vnodes: dynacore_proto::ring::VNODES_DEFAULT,
            request_timeout: Duration::from_secs(5),
            io_memory_bytes: 10 << 20,
            memtable_bytes: 64 << 20,
            http_idle_timeout: Duration::from_secs(60),
            binary_idle_timeout: Duration::from_secs(600),
            http_connections_max: 4096,
            seeds: Vec::new(),
            rack: String::new(),
            replace: None,
            node_id: None,
            node_name: None,
            replication: ReplicationConfig::default(),
            purge: PurgeConfig::default(),
            cluster_secret_file: None,
            anti_entropy: AntiEntropyConfig::default(),
        }
    }
}

/// The default of `spin_before_park_us`: none. `dynacore-tuning executor` measured a lone
/// request's loopback round trip between pinned executors at 78 µs parking at once and 52 µs
/// spinning 50 µs first; but a node spinning 50 µs, with its load generator on the same 2-CPU
/// machine, served YCSB C at 0.92× the rate and with 5× the open-loop p99 of one that parks
/// (two rounds each, README "Performance (issue 18)"): its spinning took the CPU the client
/// needed. On cores of its own a node may gain from it.
pub const SPIN_BEFORE_PARK_US_DEFAULT: u64 = 0;

/// `spin_before_park_us` as a setting: 0 is none.
fn spin(us: u64) -> Option<Duration> {
    (us > 0).then(|| Duration::from_micros(us))
}

/// The TOML file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    http: Option<String>,
    resp: Option<String>,
    resp_password: Option<String>,
    resp_flush: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    advertise: Option<String>,
    cores: Option<u32>,
    pin: Option<bool>,
    spin_before_park_us: Option<u64>,
    durability: Option<String>,
    vnodes: Option<u16>,
    request_timeout_ms: Option<u64>,
    io_memory_mib: Option<usize>,
    memtable_mib: Option<usize>,
    http_idle_timeout_s: Option<u64>,
    binary_idle_timeout_s: Option<u64>,
    http_connections_max: Option<usize>,
    seeds: Option<Vec<String>>,
    rack: Option<String>,
    node_id: Option<String>,
    replication_factor: Option<u8>,
    sloppy_quorum: Option<bool>,
    hinted_handoff: Option<bool>,
    hint_max_age_s: Option<u64>,
    hint_mib_per_target: Option<u64>,
    hint_replay_per_s: Option<u32>,
    conflicts: Option<String>,
    purge_gate: Option<String>,
    tombstone_gc: Option<String>,
    tombstone_gc_propagation_delay_s: Option<u64>,
    tombstone_grace_s: Option<u64>,
    cluster_secret_file: Option<PathBuf>,
    anti_entropy_interval_s: Option<u64>,
    anti_entropy_keys_per_s: Option<u32>,
    anti_entropy_mib_per_s: Option<u64>,
    stream_mib_per_s: Option<u64>,
    hash_tree_leaf_bits: Option<u32>,
}

/// Overrides given on the command line (`None`: not given); also `dynacore serve`'s flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Data directory [default: ./dynacore-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Binary protocol address; core i also listens on port + 1 + i [default: 127.0.0.1:7400].
    #[arg(long)]
    pub listen: Option<String>,
    /// HTTP API address [default: 127.0.0.1:8400].
    #[arg(long)]
    pub http: Option<String>,
    /// Redis protocol (RESP2/3) address, or "off" [default: 127.0.0.1:6400].
    #[arg(long)]
    pub resp: Option<String>,
    /// TLS on every TCP port and between nodes: this node's certificate chain (PEM); needs
    /// --tls-key and --tls-ca.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) its peers' certificates chain to: `dynacore --tls-ca <pem> serve`
    /// (the one flag every command takes, filled in here).
    #[arg(skip)]
    pub tls_ca: Option<PathBuf>,
    /// Where peers reach this node's binary port and gossip, if not at --listen (core i at
    /// port + 1 + i there too).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Executors (shards) [default: one per online CPU].
    #[arg(long)]
    pub cores: Option<u32>,
    /// Do not pin executors to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Microseconds a pinned executor out of work polls before it sleeps in the kernel (0: it
    /// sleeps at once) [default: 0].
    #[arg(long)]
    pub spin_before_park_us: Option<u64>,
    /// When writes are acknowledged: sync, periodic:<ms> or none [default: sync].
    #[arg(long)]
    pub durability: Option<String>,
    /// Other nodes' binary addresses to join through, comma-separated (ip:port,...).
    #[arg(long)]
    pub seeds: Option<String>,
    /// This node's rack: a key's replicas go to distinct racks where there are enough
    /// [default: none].
    #[arg(long)]
    pub rack: Option<String>,
    /// Take over the tokens of this dead node (its id, 16 hex digits), streaming its ranges
    /// from the surviving replicas; the dead node leaves the ring for good.
    #[arg(long)]
    pub replace: Option<String>,
    /// This node's id (16 hex digits) [default: generated at the first start and kept].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Replicas per key [default: 3].
    #[arg(long)]
    pub replication_factor: Option<u8>,
    /// Strict quorums: a down replica's write is not taken by a stand-in.
    #[arg(long)]
    pub no_sloppy_quorum: bool,
    /// Keep no hints for replicas that miss a write.
    #[arg(long)]
    pub no_hinted_handoff: bool,
    /// How reads answer concurrent values: lww or siblings [default: lww].
    #[arg(long)]
    pub conflicts: Option<String>,
    /// The cluster secret every node shares: a file of at least 32 bytes (such as 64 hex
    /// digits), readable by its owner only [default: <data-dir>/cluster.secret, generated at
    /// the first start].
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
}

fn parse_conflicts(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "lww" => Ok(false),
        "siblings" => Ok(true),
        other => Err(ConfigError(format!(
            "{name} must be \"lww\" or \"siblings\", not {other:?}"
        ))),
    }
}

/// Parses `sync`, `periodic:<ms>` or `none`.
///
/// # Errors
/// [`ConfigError`] naming what is accepted.
pub fn parse_durability(s: &str) -> Result<Durability, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "durability must be sync, periodic:<milliseconds> or none, not {s:?}"
        ))
    };
    match s {
        "sync" => Ok(Durability::Sync),
        "none" => Ok(Durability::None),
        _ => match s.strip_prefix("periodic:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(Durability::Periodic(ms)),
            _ => Err(bad()),
        },
    }
}

/// A node id given as 1 to 16 hex digits (taken as the id itself), or as a name (`n1`,
/// `db-east-3`: 1 to 64 letters, digits, `-`, `_` or `.`, not all hex digits), from which the
/// id derives ([`node_id_of_name`]). The id, and the name if one was given.
fn parse_node_id_or_name(
    what: &str,
    s: &str,
) -> Result<(Option<u64>, Option<String>), ConfigError> {
    let hex = !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        return match u64::from_str_radix(s, 16) {
            Ok(id) if id != 0 => Ok((Some(id), None)),
            _ => Err(ConfigError(format!("{what} must be an id other than zero"))),
        };
    }
    let name_ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(ConfigError(format!(
            "{what} must be 1 to 16 hex digits (the id) or a name of 1 to 64 letters, digits,              '-', '_' or '.', not {s:?}"
        )));
    }
    Ok((Some(node_id_of_name(s)), Some(s.to_owned())))
}

/// The 64-bit id a node name gives: XXH3-64 (a fixed specification) of
/// `"dynacore node name\0"` followed by the name, never zero. Stable across versions: a node
/// started with `--node-id n1` is the same node at every start.
#[must_use]
pub fn node_id_of_name(name: &str) -> u64 {
    let mut input = b"dynacore node name\0".to_vec();
    input.extend_from_slice(name.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&input).max(1)
}

/// A rack name: 1 to 64 letters, digits, `-`, `_` or `.`.
fn parse_rack(what: &str, v: &str) -> Result<String, ConfigError> {
    let ok = (1..=64).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ConfigError(format!(
            "{what} must be 1 to 64 letters, digits, '-', '_' or '.', not {v:?}"
        )))
    }
}

fn parse_seeds<'a>(
    what: &str,
    seeds: impl Iterator<Item = &'a str>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    seeds
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_addr(what, s))
        .collect()
}

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError(format!(
            "{what} must be an ip:port address such as 127.0.0.1:7400, not {s:?}"
        ))
    })
}

/// An address, or `off` for a port not served.
fn parse_optional_addr(what: &str, s: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_addr(what, s).map(Some)
}

/// A node's TLS files (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Its certificate chain, its own certificate first (it must name the node's IP addresses).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA bundle peers' certificates must chain to.
    pub ca: PathBuf,
}

impl NodeConfig {
    /// The defaults, then `file` (TOML text, if any), then `flags`; checked.
    ///
    /// # Errors
    /// [`ConfigError`] for a file that does not parse, an unknown key, or a value out of range.
    pub fn build(file: Option<&str>, flags: &Overrides) -> Result<NodeConfig, ConfigError> {
        let mut c = NodeConfig::default();
        let mut tls = (None, None, None);
        if let Some(text) = file {
            let f: FileConfig =
                toml::from_str(text).map_err(|e| ConfigError(format!("config file: {e}")))?;
            if let Some(v) = f.data_dir {
                c.data_dir = v;
            }
            if let Some(v) = f.listen {
                c.listen = parse_addr("listen", &v)?;
            }
            if let Some(v) = f.http {
                c.http = parse_addr("http", &v)?;
            }
            if let Some(v) = f.resp {
                c.resp = parse_optional_addr("resp", &v)?;
            }
            if let Some(v) = f.resp_password {
                if v.is_empty() {
                    return Err(ConfigError(
                        "resp_password must not be empty (leave it out for none)".to_owned(),
                    ));
                }
                c.resp_password = Some(v);
            }
            if let Some(v) = f.resp_flush {
                c.resp_flush = v;
            }
            tls = (f.tls_cert, f.tls_key, f.tls_ca);
            if let Some(v) = f.advertise {
                c.advertise = Some(parse_addr("advertise", &v)?);
            }
            if f.cores.is_some() {
                c.cores = f.cores;
            }
            if let Some(v) = f.pin {
                c.pin = v;
            }
            if let Some(v) = f.spin_before_park_us {
                c.spin_before_park = spin(v);
            }
            if let Some(v) = f.durability {
                c.durability = parse_durability(&v)?;
            }
            if let Some(v) = f.vnodes {
                c.vnodes = v;
            }
            if let Some(v) = f.request_timeout_ms {
                c.request_timeout = Duration::from_millis(v);
            }
            if let Some(v) = f.io_memory_mib {
                c.io_memory_bytes = v.saturating_mul(1 << 20);
            }
            if let Some(v) = f.memtable_mib {
                c.memtable_bytes = v.saturating_mul(1 << 20);
            }
            if let Some(v) = f.http_idle_timeout_s {
                c.http_idle_timeout = Duration::from_secs(v);
            }
            if let Some(v) = f.binary_idle_timeout_s {
                c.binary_idle_timeout = Duration::from_secs(v);
            }
            if let Some(v) = f.http_connections_max {
                c.http_connections_max = v;
            }
            if let Some(v) = f.seeds {
                c.seeds = parse_seeds("seeds", v.iter().map(String::as_str))?;
            }
            if let Some(v) = f.node_id {
                (c.node_id, c.node_name) = parse_node_id_or_name("node_id", &v)?;
            }
            if let Some(v) = f.rack {
                c.rack = parse_rack("rack", &v)?;
            }
            for (name, v) in [
                ("purge_gate", f.purge_gate),
                ("tombstone_gc", f.tombstone_gc),
            ] {
                if let Some(v) = v {
                    c.purge.gate = match v.as_str() {
                        "repair" => PurgeGate::Repair,
                        "grace" => PurgeGate::Grace,
                        other => {
                            return Err(ConfigError(format!(
                                "{name} must be \"repair\" or \"grace\", not {other:?}"
                            )))
                        }
                    };
                }
            }
            if let Some(v) = f.tombstone_gc_propagation_delay_s {
                c.purge.propagation_delay = Duration::from_secs(v);
            }
            let ae = &mut c.anti_entropy;
            if let Some(v) = f.anti_entropy_interval_s {
                ae.interval = (v > 0).then(|| Duration::from_secs(v));
            }
            if let Some(v) = f.anti_entropy_keys_per_s {
                if v == 0 {
                    return Err(ConfigError(
                        "anti_entropy_keys_per_s must be at least 1".into(),
                    ));
                }
                ae.keys_per_s = v;
            }
            if let Some(v) = f.stream_mib_per_s {
                if v == 0 {
                    return Err(ConfigError("stream_mib_per_s must be at least 1".into()));
                }
                ae.stream_bytes_per_s = v.saturating_mul(1 << 20);
            }
            if let Some(v) = f.anti_entropy_mib_per_s {
                if v == 0 {
                    return Err(ConfigError(
                        "anti_entropy_mib_per_s must be at least 1".into(),
                    ));
                }
                ae.bytes_per_s = v.saturating_mul(1 << 20);
            }
            if let Some(v) = f.hash_tree_leaf_bits {
                let range = dynacore_engine::hashtree::LEAF_BITS_MIN
                    ..=dynacore_engine::hashtree::LEAF_BITS_MAX;
                if !range.contains(&v) {
                    return Err(ConfigError(format!(
                        "hash_tree_leaf_bits must be in {}..={}, not {v}",
                        range.start(),
                        range.end()
                    )));
                }
                ae.leaf_bits = v;
            }
            if let Some(v) = f.tombstone_grace_s {
                c.purge.grace = Duration::from_secs(v);
            }
            if f.cluster_secret_file.is_some() {
                c.cluster_secret_file = f.cluster_secret_file;
            }
            let r = &mut c.replication;
            if let Some(v) = f.replication_factor {
                r.replication_factor = v;
            }
            if let Some(v) = f.sloppy_quorum {
                r.sloppy_quorum = v;
            }
            if let Some(v) = f.hinted_handoff {
                r.hinted_handoff = v;
            }
            if let Some(v) = f.hint_max_age_s {
                r.hint_max_age = Duration::from_secs(v);
            }
            if let Some(v) = f.hint_mib_per_target {
                r.hint_bytes_per_target = v.saturating_mul(1 << 20);
            }
            if let Some(v) = f.hint_replay_per_s {
                r.hint_replay_per_second = v;
            }
            if let Some(v) = f.conflicts {
                r.siblings = parse_conflicts("conflicts", &v)?;
            }
        }
        if let Some(v) = &flags.data_dir {
            c.data_dir.clone_from(v);
        }
        if let Some(v) = &flags.listen {
            c.listen = parse_addr("--listen", v)?;
        }
        if let Some(v) = &flags.http {
            c.http = parse_addr("--http", v)?;
        }
        if let Some(v) = &flags.resp {
            c.resp = parse_optional_addr("--resp", v)?;
        }
        if let Some(v) = &flags.advertise {
            c.advertise = Some(parse_addr("--advertise", v)?);
        }
        if flags.cores.is_some() {
            c.cores = flags.cores;
        }
        if flags.no_pin {
            c.pin = false;
        }
        if let Some(v) = flags.spin_before_park_us {
            c.spin_before_park = spin(v);
        }
        if let Some(v) = &flags.durability {
            c.durability = parse_durability(v)?;
        }
        if let Some(v) = &flags.seeds {
            c.seeds = parse_seeds("--seeds", v.split(','))?;
        }
        if let Some(v) = &flags.rack {
            c.rack = parse_rack("--rack", v)?;
        }
        if let Some(v) = &flags.replace {
            c.replace = parse_node_id_or_name("--replace", v)?.0;
        }
        if let Some(v) = &flags.node_id {
            (c.node_id, c.node_name) = parse_node_id_or_name("--node-id", v)?;
        }
        if let Some(v) = flags.replication_factor {
            c.replication.replication_factor = v;
        }
        if flags.no_sloppy_quorum {
            c.replication.sloppy_quorum = false;
        }
        if flags.no_hinted_handoff {
            c.replication.hinted_handoff = false;
        }
        if let Some(v) = &flags.conflicts {
            c.replication.siblings = parse_conflicts("--conflicts", v)?;
        }
        if flags.cluster_secret_file.is_some() {
            c.cluster_secret_file.clone_from(&flags.cluster_secret_file);
        }
        for (slot, flag) in [
            (&mut tls.0, &flags.tls_cert),
            (&mut tls.1, &flags.tls_key),
            (&mut tls.2, &flags.tls_ca),
        ] {
            if flag.is_some() {
                slot.clone_from(flag);
            }
        }
        c.tls = match tls {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            _ => {
                return Err(ConfigError(
                    "TLS needs tls_cert, tls_key and tls_ca together (--tls-cert, --tls-key, \
                     --tls-ca): the node's certificate chain, its key, and the CA its peers' \
                     certificates chain to"
                        .to_owned(),
                ))
            }
        };
        c.check()?;
        Ok(c)
    }

    /// Where peers reach this node: `advertise`, or `listen`.
    #[must_use]
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if let Some(a) = self.advertise {
            if a.ip().is_unspecified() || a.port() == 0 {
                return err(format!(
                    "advertise must be a specific address and port, not {a}"
                ));
            }
        }
        if let Some(n) = self.cores {
            if n == 0 || n > 1024 {
                return err(format!("cores must be 1..=1024, not {n}"));
            }
            let last = u32::from(self.listen.port()) + n;
            if self.listen.port() != 0 && last > u32::from(u16::MAX) {
                return err(format!(
                    "listen port {} plus one port per core ({n}) passes 65535",
                    self.listen.port()
                ));
            }
        }
        if self.vnodes == 0 {
            return err("vnodes must be at least 1".to_owned());
        }
        let r = &self.replication;
        if !(1..=16).contains(&r.replication_factor) {
            return err(format!(
                "replication_factor must be 1..=16, not {}",
                r.replication_factor
            ));
        }
        if r.hint_max_age.is_zero() {
            return err("hint_max_age_s must be at least 1".to_owned());
        }
        if r.hint_bytes_per_target < (1 << 20) {
            return err("hint_mib_per_target must be at least 1".to_owned());
        }
        if r.hint_replay_per_second == 0 {
            return err("hint_replay_per_s must be at least 1".to_owned());
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(600) {
            return err("request_timeout_ms must be 1..=600000".to_owned());
        }
        if self.io_memory_bytes < (1 << 20) {
            return err("io_memory_mib must be at least 1".to_owned());
        }
        if self.memtable_bytes < (1 << 20) {
            return err("memtable_mib must be at least 1".to_owned());
        }
        if self.http_connections_max == 0 {
            return err("http_connections_max must be at least 1".to_owned());
        }
        if self.http_idle_timeout.is_zero() || self.http_idle_timeout > Duration::from_secs(86_400)
        {
            return err("http_idle_timeout_s must be 1..=86400".to_owned());
        }
        if self.binary_idle_timeout.is_zero()
            || self.binary_idle_timeout > Duration::from_secs(86_400)
        {
            return err("binary_idle_timeout_s must be 1..=86400".to_owned());
        }
        if self.io_memory_bytes > (1 << 30) || self.memtable_bytes > (64 << 30) {
            return err(
                "io_memory_mib must be at most 1024 and memtable_mib at most 65536".to_owned(),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return err("data_dir must not be empty".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_flags() {
        let c = NodeConfig::build(None, &Overrides::default()).expect("defaults");
        assert_eq!(c, NodeConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(c.http.to_string(), "127.0.0.1:8400");
        let file = "cores = 2\ndurability = \"periodic:10\"\nlisten = \"127.0.0.1:9000\"\n";
        let c = NodeConfig::build(Some(file), &Overrides::default()).expect("file");
        assert_eq!(
            (c.cores, c.durability, c.listen.port()),
            (Some(2), Durability::Periodic(10), 9000)
        );
        let flags = Overrides {
            cores: Some(1),
            durability: Some("none".to_owned()),
            no_pin: true,
            ..Overrides::default()
        };
        let c = NodeConfig::build(Some(file), &flags).expect("flags");
        assert_eq!(
            (c.cores, c.durability, c.pin, c.listen.port()),
            (Some(1), Durability::None, false, 9000)
        );
    }

    #[test]
    fn spin_before_park_from_defaults_file_and_flags() {
        let c = NodeConfig::default();
        assert_eq!(c.spin_before_park, spin(SPIN_BEFORE_PARK_US_DEFAULT));
        let file = "spin_before_park_us = 0\n";
        let c = NodeConfig::build(Some(file), &Overrides::default()).expect("file");
        assert_eq!(c.spin_before_park, None, "0 is no spinning");
        let flags = Overrides {
            spin_before_park_us: Some(200),
            ..Overrides::default()
        };
        let c = NodeConfig::build(Some(file), &flags).expect("flags");
        assert_eq!(c.spin_before_park, Some(Duration::from_micros(200)));
    }

    #[test]
    fn purge_and_anti_entropy_settings() {
        let c = NodeConfig::default();
        assert_eq!(
            c.purge.gate,
            PurgeGate::Repair,
            "repair-based purges by default"
        );
        assert_eq!(c.anti_entropy.interval, Some(Duration::from_secs(600)));
        let c = NodeConfig::build(
            Some(
                "tombstone_gc = \"grace\"\ntombstone_grace_s = 5\ntombstone_gc_propagation_delay_s = 7\n\
                 anti_entropy_interval_s = 0\nanti_entropy_keys_per_s = 10\nanti_entropy_mib_per_s = 2\n\
                 hash_tree_leaf_bits = 12\n",
            ),
            &Overrides::default(),
        )
        .expect("settings");
        assert_eq!(c.purge.gate, PurgeGate::Grace);
        assert_eq!(c.purge.grace, Duration::from_secs(5));
        assert_eq!(c.purge.propagation_delay, Duration::from_secs(7));
        assert_eq!(
            c.anti_entropy,
            AntiEntropyConfig {
                interval: None,
                keys_per_s: 10,
                bytes_per_s: 2 << 20,
                leaf_bits: 12,
                stream_bytes_per_s: 64 << 20,
            }
        );
        // The older name of the setting still works.
        let c = NodeConfig::build(Some("purge_gate = \"repair\""), &Overrides::default())
            .expect("purge_gate");
        assert_eq!(c.purge.gate, PurgeGate::Repair);
        let bad = |file: &str| {
            NodeConfig::build(Some(file), &Overrides::default())
                .expect_err(file)
                .0
        };
        assert!(bad("tombstone_gc = \"never\"").contains("tombstone_gc must be"));
        assert!(bad("hash_tree_leaf_bits = 30").contains("hash_tree_leaf_bits"));
        assert!(bad("anti_entropy_keys_per_s = 0").contains("anti_entropy_keys_per_s"));
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let bad = |file: &str| {
            NodeConfig::build(Some(file), &Overrides::default())
                .expect_err(file)
                .0
        };
        assert!(bad("colours = 3").contains("unknown field"));
        assert!(bad("cores = 0").contains("cores must be"));
        assert!(bad("durability = \"always\"").contains("durability must be"));
        assert!(bad("durability = \"periodic:0\"").contains("durability must be"));
        assert!(bad("listen = \"localhost\"").contains("listen must be"));
        assert!(bad("listen = \"127.0.0.1:65535\"\ncores = 2").contains("passes 65535"));
        assert!(bad("vnodes = 0").contains("vnodes"));
        assert!(bad("http_idle_timeout_s = 100000000").contains("http_idle_timeout_s"));
        assert!(bad("request_timeout_ms = 0").contains("request_timeout_ms"));
        assert!(bad("cores = [").contains("config file"));
        assert!(bad("seeds = [\"nowhere\"]").contains("seeds must be"));
        assert!(bad("node_id = \"x y\"").contains("node_id must be"));
        assert!(bad("node_id = \"0\"").contains("node_id must be"));
        let c = NodeConfig::build(
            Some("seeds = [\"127.0.0.2:7400\", \"127.0.0.3:7400\"]\nnode_id = \"00ff\""),
            &Overrides::default(),
        )
        .expect("seeds");
        assert_eq!((c.seeds.len(), c.node_id), (2, Some(255)));
        assert_eq!(c.node_name, None, "hex digits are the id itself");
        // A name: the id derives from it, the same at every start.
        let named =
            NodeConfig::build(Some("node_id = \"n1\""), &Overrides::default()).expect("a name");
        assert_eq!(named.node_name.as_deref(), Some("n1"));
        assert_eq!(named.node_id, Some(node_id_of_name("n1")));
        assert_ne!(node_id_of_name("n1"), node_id_of_name("n2"));
        assert!(bad(&format!("node_id = \"{}\"", "n".repeat(65))).contains("node_id must be"));
        let flags = Overrides {
            seeds: Some("127.0.0.1:7400, 127.0.0.2:7400".to_owned()),
            ..Overrides::default()
        };
        assert_eq!(
            NodeConfig::build(None, &flags)
                .expect("flag seeds")
                .seeds
                .len(),
            2
        );
        let flags = Overrides {
            http: Some("nowhere".to_owned()),
            ..Overrides::default()
        };
        assert!(NodeConfig::build(None, &flags)
            .expect_err("bad flag")
            .0
            .contains("--http"));
    }

    #[test]
    fn the_redis_port_from_defaults_file_and_flags() {
        let port = |file: Option<&str>, flag: Option<&str>| {
            let flags = Overrides {
                resp: flag.map(str::to_owned),
                ..Overrides::default()
            };
            NodeConfig::build(file, &flags).map(|c| c.resp)
        };
        assert_eq!(
            port(None, None).expect("default"),
            Some("127.0.0.1:6400".parse().expect("addr"))
        );
        assert_eq!(port(Some("resp = \"off\"\n"), None).expect("off"), None);
        assert_eq!(
            port(Some("resp = \"off\"\n"), Some("127.0.0.2:7")).expect("flag wins"),
            Some("127.0.0.2:7".parse().expect("addr"))
        );
        assert_eq!(port(None, Some("OFF")).expect("off"), None);
        assert!(port(None, Some("nowhere"))
            .expect_err("bad")
            .0
            .contains("--resp"));
        assert!(port(Some("resp = \"x\"\n"), None)
            .expect_err("bad")
            .0
            .contains("resp"));
        let c = NodeConfig::build(Some("resp_password = \"pw\"\n"), &Overrides::default());
        assert_eq!(c.expect("password").resp_password.as_deref(), Some("pw"));
        assert!(
            NodeConfig::build(Some("resp_password = \"\"\n"), &Overrides::default())
                .expect_err("empty")
                .0
                .contains("resp_password")
        );
    }
}
