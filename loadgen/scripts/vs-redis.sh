#!/usr/bin/env bash
# Dynacore (one node, durability sync) against Redis (no persistence, and AOF with
# appendfsync always) on this machine: YCSB A and C, the same records, value size and
# connections, first closed loop (the maximum), then open loop at half of each server's own
# maximum. Writes every report (JSON, .hgrm, plots) to OUT and prints a side-by-side table.
#
#   loadgen/scripts/vs-redis.sh [OUT]            # default OUT: target/vs-redis
#
# Settings (environment): RECORDS (100000), CONNECTIONS (50), VALUE_SIZE (1024), DURATION
# (20s), WARMUP (3s), CORES (Dynacore's executors, 1: one core like Redis's one thread),
# DRIVER (native or http), PORT_BASE (7450), SERVE_ARGS (more `dynacore serve` flags, e.g.
# "--spin-before-park-us 0"). Needs redis-server and a release build
# (built here if missing). Every server it starts listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT=${1:-target/vs-redis}
RECORDS=${RECORDS:-100000}
CONNECTIONS=${CONNECTIONS:-50}
VALUE_SIZE=${VALUE_SIZE:-1024}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
CORES=${CORES:-1}
DRIVER=${DRIVER:-native}
PORT_BASE=${PORT_BASE:-7450}
read -r -a SERVE_EXTRA <<<"${SERVE_ARGS:-}"

command -v redis-server >/dev/null || { echo "vs-redis: install redis-server first" >&2; exit 2; }
cargo build --release -q -p dynacore-net --bin dynacore -p dynacore-loadgen --bin loadgen
DYNACORE=target/release/dynacore
LOADGEN=target/release/loadgen

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
    echo "vs-redis: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

stop_servers() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# max_rate FILE: the run phase's total ops/s in a report.
max_rate() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["run"]; print(int(sum(o["ops_per_s"] for o in r["operations"].values())))' "$1"
}

# bench NAME DRIVER TARGET PID: load, then A and C closed loop, then each at half its maximum
# (the server's CPU use, from its PID, reported beside loadgen's).
bench() {
    local name=$1 driver=$2 target=$3 pid=$4
    local common=(--driver "$driver" --target "$target" --records "$RECORDS"
        --value-size "$VALUE_SIZE" --connections "$CONNECTIONS" --server-pid "$pid" --quiet)
    echo "== $name: load $RECORDS records"
    "$LOADGEN" "${common[@]}" --workload a --load --json "$OUT/$name-load.json" >/dev/null
    for w in a c; do
        echo "== $name: workload $w, closed loop"
        "$LOADGEN" "${common[@]}" --workload "$w" --run --duration "$DURATION" --warmup "$WARMUP" \
            --json "$OUT/$name-$w-closed.json" --hdr "$OUT/$name-$w-closed.hgrm" \
            --plot "$OUT/$name-$w-closed.svg"
        local rate=$(( $(max_rate "$OUT/$name-$w-closed.json") / 2 ))
        [ "$rate" -ge 1 ] || { echo "vs-redis: $name served nothing in the closed loop" >&2; exit 1; }
        echo "== $name: workload $w, open loop at $rate ops/s (half the maximum)"
        "$LOADGEN" "${common[@]}" --workload "$w" --run --duration "$DURATION" --warmup "$WARMUP" \
            --rate "$rate" --json "$OUT/$name-$w-open.json" --hdr "$OUT/$name-$w-open.hgrm" \
            --plot "$OUT/$name-$w-open.svg" --plot "$OUT/$name-$w-open.png"
    done
}

# Dynacore: one node, every write fdatasync'ed before it is acknowledged.
"$DYNACORE" serve --data-dir "$DATA/dynacore" --listen "127.0.0.1:$PORT_BASE" \
    --http "127.0.0.1:$((PORT_BASE + 100))" --cores "$CORES" --durability sync \
    ${SERVE_EXTRA[@]+"${SERVE_EXTRA[@]}"} >"$OUT/dynacore.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT_BASE"
if [ "$DRIVER" = http ]; then
    bench dynacore http "127.0.0.1:$((PORT_BASE + 100))" "${PIDS[0]}"
else
    bench dynacore native "127.0.0.1:$PORT_BASE" "${PIDS[0]}"
fi
stop_servers

# Redis without persistence.
port=$((PORT_BASE + 200))
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$DATA" >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$port"
bench redis resp "127.0.0.1:$port" "${PIDS[0]}"
stop_servers

# Redis with every write in the append-only file, fsync'ed before the reply.
mkdir -p "$DATA/aof"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$DATA/aof" >"$OUT/redis-aof.log" 2>&1 &
PIDS+=($!)
wait_port "$port"
bench redis-aof resp "127.0.0.1:$port" "${PIDS[0]}"
stop_servers

echo
echo "== side by side (ratio: Dynacore ÷ Redis; for latency, lower is better)"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    r = json.load(open(f"{out}/{name}.json"))["run"]
    return r["all"], r["elapsed_s"]
rows = []
for w in "ac":
    for mode in ("closed", "open"):
        d, _ = load(f"dynacore-{w}-{mode}")
        for other in ("redis", "redis-aof"):
            o, _ = load(f"{other}-{w}-{mode}")
            rows.append((w.upper(), mode, other, d, o))
print("| workload | loop | vs | Dynacore ops/s | other ops/s | × | Dynacore p50 / p99 / p99.9 µs | other p50 / p99 / p99.9 µs | p99 × |")
print("| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |")
for w, mode, other, d, o in rows:
    ratio = d["ops_per_s"] / o["ops_per_s"] if o["ops_per_s"] else float("nan")
    p99 = d["p99_us"] / o["p99_us"] if o["p99_us"] else float("nan")
    lat = lambda x: f'{x["p50_us"]} / {x["p99_us"]} / {x["p999_us"]}'
    errs = lambda x: sum(x["errors"].values())
    print(f'| {w} | {mode} | {other} | {d["ops_per_s"]:.0f} | {o["ops_per_s"]:.0f} | {ratio:.2f} | {lat(d)} | {lat(o)} | {p99:.2f} |'
          + (f' errors {errs(d)} / {errs(o)}' if errs(d) or errs(o) else ''))
print()
print("open loop, loadgen's own lag behind its schedule (p99 / max µs; large values are client-side delay inside the latencies):")
for name in ("dynacore", "redis", "redis-aof"):
    for w in "ac":
        lag = json.load(open(f"{out}/{name}-{w}-open.json"))["run"].get("schedule_lag") or {}
        print(f'  {name} {w.upper()}: {lag.get("p99_us")} / {lag.get("max_us")}')
print()
print("every run: the worst second's max latency (ms), and CPU over the run phase in cores (loadgen / server):")
for name in ("dynacore", "redis", "redis-aof"):
    for w in "ac":
        for mode in ("closed", "open"):
            rep = json.load(open(f"{out}/{name}-{w}-{mode}.json"))
            worst = max((s["max_us"] for s in rep["run"]["timeline"]), default=0) / 1000
            cpu = rep.get("cpu") or {}
            f = lambda c: "?" if c is None else f"{c:.2f}"
            print(f'  {name} {w.upper()} {mode}: worst second max {worst:.1f} ms; CPU {f(cpu.get("loadgen_cores"))} / {f(cpu.get("server_cores"))}')
PY
echo
echo "reports, .hgrm files and plots: $OUT"
