#!/usr/bin/env bash
# redis-benchmark against Dynacore's Redis port and against redis-server, side by side, with the
# same flags, in one run (issue 19): Dynacore (one node, durability sync) against Redis with
# appendfsync always (both sync before replying) and against Redis without persistence.
#
#   loadgen/scripts/redis-benchmark.sh [OUT]     # default OUT: target/redis-benchmark
#
# Each server gets `redis-benchmark -t set,get -P 1` and `-P 16` (pipelining), REQUESTS
# requests from CLIENTS connections, VALUE_SIZE-byte values over KEYSPACE random keys; the
# CSV of each run goes to OUT, and a table with the ratios is printed.
# Settings (environment): REQUESTS (100000), CLIENTS (50), VALUE_SIZE (1024), KEYSPACE
# (100000), CORES (Dynacore's executors, 1: one core like Redis's one thread), PORT_BASE
# (7700). Needs redis-server and redis-benchmark; every server listens on 127.0.0.1 and is
# stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT=${1:-target/redis-benchmark}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-1024}
KEYSPACE=${KEYSPACE:-100000}
CORES=${CORES:-1}
PORT_BASE=${PORT_BASE:-7700}

for tool in redis-server redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "redis-benchmark.sh: install $tool first" >&2; exit 2; }
done
cargo build --release -q -p dynacore-net --bin dynacore
DYNACORE=target/release/dynacore

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Data on the disk OUT is on (not tmpfs: O_DIRECT and fsync must be real).
DATA=$(mktemp -d "$OUT/data.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "redis-benchmark.sh: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

stop_servers() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# bench NAME PORT: both pipeline depths against the server on PORT.
bench() {
    local name=$1 port=$2
    for p in 1 16; do
        echo "== $name: redis-benchmark -t set,get -P $p -n $REQUESTS -c $CLIENTS -d $VALUE_SIZE -r $KEYSPACE"
        redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -P "$p" -n "$REQUESTS" -c "$CLIENTS" \
            -d "$VALUE_SIZE" -r "$KEYSPACE" --csv >"$OUT/$name-P$p.csv"
        cat "$OUT/$name-P$p.csv"
    done
}

port=$((PORT_BASE + 300))
# Dynacore: one node, every write fdatasync'ed before it is acknowledged.
"$DYNACORE" serve --data-dir "$DATA/dynacore" --listen "127.0.0.1:$PORT_BASE" \
    --http "127.0.0.1:$((PORT_BASE + 100))" --resp "127.0.0.1:$port" --cores "$CORES" \
    --durability sync >"$OUT/dynacore.log" 2>&1 &
PIDS+=($!)
wait_port "$port"
bench dynacore "$port"
stop_servers

# Redis with every write in the append-only file, fsync'ed before the reply.
mkdir -p "$DATA/aof"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$DATA/aof" >"$OUT/redis-aof.log" 2>&1 &
PIDS+=($!)
wait_port "$port"
bench redis-aof "$port"
stop_servers

# Redis without persistence.
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$DATA" >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$port"
bench redis "$port"
stop_servers

echo
echo "== side by side (ratio: Dynacore ÷ Redis; requests per second, p50 / p99 latency in ms)"
python3 - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
def load(name, p):
    with open(f"{out}/{name}-P{p}.csv") as f:
        return {row["test"]: row for row in csv.DictReader(f)}
print("| test | -P | vs | Dynacore rps | other rps | × | Dynacore p50 / p99 ms | other p50 / p99 ms |")
print("| --- | ---: | --- | ---: | ---: | ---: | --- | --- |")
for test in ("SET", "GET"):
    for p in (1, 16):
        d = load("dynacore", p)[test]
        for other in ("redis-aof", "redis"):
            o = load(other, p)[test]
            dr, orr = float(d["rps"]), float(o["rps"])
            print(f"| {test} | {p} | {other} | {dr:,.0f} | {orr:,.0f} | {dr / orr:.2f} | "
                  f"{d['p50_latency_ms']} / {d['p99_latency_ms']} | "
                  f"{o['p50_latency_ms']} / {o['p99_latency_ms']} |")
PY
echo
echo "CSV files: $OUT"
