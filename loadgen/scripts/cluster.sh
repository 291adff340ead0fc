#!/usr/bin/env bash
# YCSB A on a three-node cluster against one node, on this machine (issue 18).
#
#   loadgen/scripts/cluster.sh [OUT]          # default OUT: target/cluster-run
#
# 1. One node (`dynacore serve --cores 1`, durability sync): load RECORDS records, YCSB A closed
#    loop (its maximum), then YCSB A open loop at half that maximum.
# 2. `dynacore local-cluster --nodes 3` (127.0.0.1..3, one unpinned core each, sync, RF 3):
#    the same, with W=2 and R=2, loadgen's connections spread over the three nodes.
# 3. A side-by-side table: the cluster ÷ the single node. loadgen's plot of each open loop is in
#    OUT (`cluster-a-open.svg`, `single-a-open.svg`).
#
# Settings (environment): RECORDS (100000), VALUE_SIZE (1024), CONNECTIONS (50), DURATION (30s),
# CLOSED_DURATION (20s), WARMUP (3s), PORT_BASE (7600: binary ports PORT_BASE.., HTTP
# PORT_BASE+100..). Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-target/cluster-run}
RECORDS=${RECORDS:-100000}
VALUE_SIZE=${VALUE_SIZE:-1024}
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-30s}
CLOSED_DURATION=${CLOSED_DURATION:-20s}
WARMUP=${WARMUP:-3s}
PORT_BASE=${PORT_BASE:-7600}
HTTP_PORT=$((PORT_BASE + 100))

cargo build --release -q -p dynacore-net --bin dynacore -p dynacore-loadgen --bin loadgen
DYNACORE=target/release/dynacore
LOADGEN=target/release/loadgen

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d "$OUT/data.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

stop_servers() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# wait_up N ADDR...: every HTTP address answers /cluster with N ring members, all up and in the
# normal state, and no topology change in progress (at most 120 s): until then the ring may
# still hold fewer replicas than W.
wait_up() {
    python3 - "$@" <<'PY'
import http.client, json, sys, time
want, addrs = int(sys.argv[1]), sys.argv[2:]
def ok(addr):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", "/cluster")
        view = json.loads(c.getresponse().read())
        ring = [n for n in view["nodes"] if n.get("in_ring")]
        return (view.get("moving") is None and len(ring) == want
                and all(n["up"] and n.get("state") == "normal" for n in ring))
    except (OSError, ValueError, KeyError):
        return False
    finally:
        c.close()
deadline = time.time() + 120
while time.time() < deadline:
    if all(ok(a) for a in addrs):
        sys.exit(0)
    time.sleep(0.5)
print(f"cluster: {addrs} did not see {want} ring members up within 120 s", file=sys.stderr)
sys.exit(1)
PY
}

max_rate() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["run"]; print(int(sum(o["ops_per_s"] for o in r["operations"].values())))' "$1"
}

# bench NAME TARGETS PIDS [loadgen flags...]: load, A closed loop, A open loop at half of it.
bench() {
    local name=$1 targets=$2 pids=$3
    shift 3
    local common=(--driver native --target "$targets" --records "$RECORDS"
        --value-size "$VALUE_SIZE" --connections "$CONNECTIONS" --server-pid "$pids" --quiet "$@")
    echo "== $name: load $RECORDS records"
    "$LOADGEN" "${common[@]}" --workload a --load --json "$OUT/$name-load.json" >/dev/null
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["load"]; e=sum(sum(o["errors"].values()) for o in r["operations"].values()); sys.exit(f"cluster: {e} errors loading (see {sys.argv[1]})" if e else 0)' "$OUT/$name-load.json"
    echo "== $name: workload a, closed loop"
    "$LOADGEN" "${common[@]}" --workload a --run --duration "$CLOSED_DURATION" --warmup "$WARMUP" \
        --json "$OUT/$name-a-closed.json" --hdr "$OUT/$name-a-closed.hgrm"
    local rate=$(( $(max_rate "$OUT/$name-a-closed.json") / 2 ))
    [ "$rate" -ge 1 ] || { echo "cluster: $name served nothing in the closed loop" >&2; exit 1; }
    echo "== $name: workload a, open loop at $rate ops/s (half the maximum)"
    "$LOADGEN" "${common[@]}" --workload a --run --duration "$DURATION" --warmup "$WARMUP" \
        --rate "$rate" --json "$OUT/$name-a-open.json" --hdr "$OUT/$name-a-open.hgrm" \
        --plot "$OUT/$name-a-open.svg"
}

# 1. One node.
"$DYNACORE" serve --data-dir "$DATA/single" --listen "127.0.0.1:$PORT_BASE" \
    --http "127.0.0.1:$HTTP_PORT" --cores 1 --durability sync >"$OUT/single.log" 2>&1 &
PIDS+=($!)
wait_up 1 "127.0.0.1:$HTTP_PORT"
bench single "127.0.0.1:$PORT_BASE" "${PIDS[0]}"
stop_servers

# 2. Three nodes.
"$DYNACORE" local-cluster --nodes 3 --dir "$DATA/cluster" --port "$PORT_BASE" \
    --http-port "$HTTP_PORT" --cores 1 --durability sync >"$OUT/cluster.log" 2>&1 &
PIDS+=($!)
wait_up 3 "127.0.0.1:$HTTP_PORT" "127.0.0.2:$HTTP_PORT" "127.0.0.3:$HTTP_PORT"
NODE_PIDS=$(pgrep -d, -P "${PIDS[0]}")
bench cluster "127.0.0.1:$PORT_BASE,127.0.0.2:$PORT_BASE,127.0.0.3:$PORT_BASE" "$NODE_PIDS" \
    --w 2 --r 2
stop_servers

echo
echo "== three nodes (RF 3, W=2, R=2) ÷ one node, YCSB A, $CONNECTIONS connections, $VALUE_SIZE B values"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def rep(name):
    return json.load(open(f"{out}/{name}.json"))
print("| run | one node | three nodes | × |")
print("| --- | ---: | ---: | ---: |")
for mode in ("closed", "open"):
    s, c = rep(f"single-a-{mode}"), rep(f"cluster-a-{mode}")
    sa, ca = s["run"]["all"], c["run"]["all"]
    print(f'| A {mode}: ops/s | {sa["ops_per_s"]:.0f} | {ca["ops_per_s"]:.0f} | {ca["ops_per_s"] / sa["ops_per_s"]:.2f} |')
    for q in ("p50_us", "p99_us", "p999_us"):
        print(f'| A {mode}: {q[:-3]} µs | {sa[q]} | {ca[q]} | {ca[q] / max(sa[q], 1):.2f} |')
    ws = max((x["max_us"] for x in s["run"]["timeline"]), default=0)
    wc = max((x["max_us"] for x in c["run"]["timeline"]), default=0)
    print(f'| A {mode}: worst second\'s max µs | {ws} | {wc} | {wc / max(ws, 1):.2f} |')
    for who in ("loadgen", "server"):
        a = (s.get("cpu") or {}).get(f"{who}_cores")
        b = (c.get("cpu") or {}).get(f"{who}_cores")
        f = lambda v: "?" if v is None else f"{v:.2f}"
        print(f'| A {mode}: {who} CPU, cores | {f(a)} | {f(b)} | |')
    errs = lambda r: sum(sum(o["errors"].values()) for o in r["run"]["operations"].values())
    if errs(s) or errs(c):
        print(f'| A {mode}: errors | {errs(s)} | {errs(c)} | |')
PY
echo
echo "reports, .hgrm files and plots: $OUT"
