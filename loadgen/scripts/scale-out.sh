#!/usr/bin/env bash
# Scale-out under load on this machine (issue 17), release builds, nodes on loopback:
#
# 1. Three nodes (a, b, c); RECORDS keys loaded through the SDK (W=2); the closed-loop maximum
#    of YCSB A measured; then YCSB A at half of it (W=2, R=2, open loop) runs throughout, as
#    consecutive WINDOW-long runs, each with its own p99.
# 2. Moves, one after the other, each timed from its start until every node sees the ring
#    settled (no change in progress, every ring member up and normal):
#    join (d joins), cleanup (a, b and c drop what d took, one after the other; reported, not
#    a move), decommission (a leaves and stops), replace (d is killed with -9; once it
#    is seen down, e takes its tokens with --replace), removenode (c is killed with -9; once it
#    is seen down, it is removed through b). The time from a kill until the node is seen down
#    (failure detection, before any move) is reported apart.
# 3. Checks: for every loaded key, each replica `/cluster/endpoints/{key}` lists holds it in
#    `/internal/local/{key}` (every key was acknowledged by W=2; workload A only updates them);
#    the p99 of every request of the windows overlapping a move (their distributions merged)
#    against the p99 of every request of the windows before the first move (steady state, the
#    same run); each window's own p99 is printed beside it.
#
#   loadgen/scripts/scale-out.sh [OUT]          # default OUT: target/scale-out
#
# Settings (environment): RECORDS (50000), VALUE_SIZE (100), CONNECTIONS (16), WINDOW (5s),
# STEADY_WINDOWS (4), CORES (1 per node), PORT_BASE (7750). Every server listens on 127.0.0.1 and is stopped at the
# end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT=${1:-target/scale-out}
RECORDS=${RECORDS:-50000}
VALUE_SIZE=${VALUE_SIZE:-100}
CONNECTIONS=${CONNECTIONS:-16}
WINDOW=${WINDOW:-5s}
STEADY_WINDOWS=${STEADY_WINDOWS:-4}
CORES=${CORES:-1}
PORT_BASE=${PORT_BASE:-7750}

cargo build --release -q -p dynacore-net --bin dynacore -p dynacore-loadgen --bin loadgen
DYNACORE=target/release/dynacore
LOADGEN=target/release/loadgen

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/win-*.json "$OUT"/win-*.hgrm "$OUT"/windows.txt "$OUT"/moves.txt "$OUT"/kills.txt "$OUT"/STOP \
    "$OUT"/node-*.log
DATA=$(mktemp -d "$OUT/data.XXXXXX")
declare -A PIDS=()
LOAD_PID=0
cleanup() {
    touch "$OUT/STOP"
    [ "$LOAD_PID" = 0 ] || wait "$LOAD_PID" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

SECRET="$DATA/cluster.secret"
head -c 48 /dev/urandom | base64 >"$SECRET"
chmod 600 "$SECRET"

# Node N (a=0, b=1, …): binary and HTTP addresses.
index() { printf '%d' "$(($(printf '%d' "'$1") - 97))"; }
binary() { echo "127.0.0.1:$((PORT_BASE + 10 * $(index "$1")))"; }
http() { echo "127.0.0.1:$((PORT_BASE + 200 + $(index "$1")))"; }
now_ms() { date +%s%3N; }

wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "scale-out: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# start NAME [extra args]: node NAME in the background (joining through b, or a for a's peers).
start() {
    local name=$1
    shift
    local seeds=()
    case "$name" in
    a) ;;
    b | c) seeds=(--seeds "$(binary a)") ;;
    *) seeds=(--seeds "$(binary b)") ;;
    esac
    "$DYNACORE" serve --data-dir "$DATA/$name" --cluster-secret-file "$SECRET" \
        --cores "$CORES" --listen "$(binary "$name")" --http "$(http "$name")" --resp off \
        "${seeds[@]}" "$@" >>"$OUT/node-$name.log" 2>&1 &
    PIDS[$name]=$!
    wait_port "$((PORT_BASE + 200 + $(index "$name")))"
}

# The waits poll `GET /cluster` from one Python process each, twice a second: a Python started
# per poll (four times a second per node) took most of a CPU of this 2-core machine during every
# move, and the moves' latencies with it.
cat >"$OUT/wait.py" <<'PY'
import http.client, json, sys, time

def view(addr):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", "/cluster")
        return json.loads(c.getresponse().read())
    except (OSError, ValueError):
        return None
    finally:
        c.close()

def settled(want, addrs):
    for c in map(view, addrs):
        if c is None or c.get("moving") is not None:
            return False
        ring = [n for n in c["nodes"] if n.get("in_ring")]
        if len(ring) != want or not all(n["up"] and n.get("state") == "normal" for n in ring):
            return False
    return True

def down(addr, node):
    c = view(addr)
    return c is not None and any(n["id"] == node and not n["up"] for n in c["nodes"])

mode, args = sys.argv[1], sys.argv[2:]
if mode == "id":
    print(view(args[0])["nodes"][0]["id"])
    sys.exit(0)
check = (lambda: settled(int(args[0]), args[1:])) if mode == "settled" else (lambda: down(*args))
deadline = time.time() + 300
while time.time() < deadline:
    if check():
        sys.exit(0)
    time.sleep(0.5)
sys.exit(1)
PY

# settled N NODES...: each named node sees N ring members, all up and normal, nothing moving.
settled() {
    local want=$1
    shift
    local addrs=()
    for n in "$@"; do addrs+=("$(http "$n")"); done
    python3 "$OUT/wait.py" settled "$want" "${addrs[@]}" ||
        { echo "scale-out: the ring did not settle at $want nodes" >&2; exit 1; }
}

node_id() { python3 "$OUT/wait.py" id "$(http "$1")"; }

# down VIA ID: VIA sees node ID down.
down() {
    python3 "$OUT/wait.py" down "$(http "$1")" "$2" ||
        { echo "scale-out: node $2 is not seen down" >&2; exit 1; }
}

common=(--driver native --target "$(binary b)" --value-size "$VALUE_SIZE"
    --connections "$CONNECTIONS" --records "$RECORDS" --quiet)

start a
sleep 1
start b
start c
settled 3 a b c
echo "== load $RECORDS records (w=2)"
"$LOADGEN" "${common[@]}" --workload a --load --w 2 --json "$OUT/load.json" >/dev/null
echo "== workload A: closed loop (the 3-node maximum)"
"$LOADGEN" "${common[@]}" --workload a --run --duration 10s --warmup 2s \
    --json "$OUT/a-closed.json" >/dev/null
rate=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["run"]["all"]["ops_per_s"]) // 2)' "$OUT/a-closed.json")
echo "== workload A at $rate ops/s (half), W=2 R=2, in $WINDOW windows, throughout"
(
    n=0
    while [ ! -e "$OUT/STOP" ]; do
        n=$((n + 1))
        t0=$(now_ms)
        "$LOADGEN" "${common[@]}" --workload a --run --duration "$WINDOW" --rate "$rate" \
            --w 2 --r 2 --seed "$n" --json "$OUT/win-$n.json" --hdr "$OUT/win-$n.hgrm" \
            >/dev/null 2>>"$OUT/loadgen.err" || true
        echo "$n $t0 $(now_ms)" >>"$OUT/windows.txt"
    done
) &
LOAD_PID=$!
window_s=${WINDOW%s}
sleep "$(((STEADY_WINDOWS + 1) * window_s))"

move() { echo "$1 $2 $3" >>"$OUT/moves.txt"; echo "   $1: $(($3 - $2)) ms"; }

echo "== join: d"
t0=$(now_ms)
start d
settled 4 b c d
move join "$t0" "$(now_ms)"
sleep "$window_s"

echo "== cleanup: a, b, c drop the ranges d took"
t0=$(now_ms)
for n in a b c; do
    "$DYNACORE" cleanup --addr "$(http "$n")" >"$OUT/cleanup-$n.json"
    echo "   $n dropped $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys_dropped"])' "$OUT/cleanup-$n.json") keys"
done
echo "cleanup $t0 $(now_ms)" >>"$OUT/kills.txt"
sleep "$window_s"

echo "== decommission: a"
t0=$(now_ms)
"$DYNACORE" decommission --addr "$(http a)" >/dev/null
for _ in $(seq 1 1200); do kill -0 "${PIDS[a]}" 2>/dev/null || break; sleep 0.25; done
unset 'PIDS[a]'
settled 3 b c d
move decommission "$t0" "$(now_ms)"
sleep "$window_s"

echo "== replace: d killed with -9, e takes its place"
dead=$(node_id d)
t0=$(now_ms)
kill -9 "${PIDS[d]}"
unset 'PIDS[d]'
down b "$dead"
echo "kill-d $t0 $(now_ms)" >>"$OUT/kills.txt"
t0=$(now_ms)
start e --replace "$dead"
settled 3 b c e
move replace "$t0" "$(now_ms)"
sleep "$window_s"

echo "== removenode: c killed with -9, removed through b"
gone=$(node_id c)
t0=$(now_ms)
kill -9 "${PIDS[c]}"
unset 'PIDS[c]'
down b "$gone"
echo "kill-c $t0 $(now_ms)" >>"$OUT/kills.txt"
t0=$(now_ms)
"$DYNACORE" removenode "$gone" --addr "$(http b)" >/dev/null
settled 2 b e
move removenode "$t0" "$(now_ms)"
sleep "$window_s"
touch "$OUT/STOP"
wait "$LOAD_PID"
LOAD_PID=0

echo "== checking every loaded key on every replica"
python3 - "$OUT" "$(http b)" "$RECORDS" <<'PY'
import http.client, json, sys
out, via, records = sys.argv[1], sys.argv[2], int(sys.argv[3])

def fnv64(v):
    h = 0xcbf29ce484222325
    for b in v.to_bytes(8, "little"):
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h

host, port = via.split(":")
ask = http.client.HTTPConnection(host, int(port))
conns = {}
missing, copies = [], 0
for i in range(records):
    key = f"user{fnv64(i)}"
    ask.request("GET", f"/cluster/endpoints/{key}")
    e = json.loads(ask.getresponse().read())
    for r in e["replicas"]:
        h = r["http"]
        if h not in conns:
            hh, pp = h.split(":")
            conns[h] = http.client.HTTPConnection(hh, int(pp))
        c = conns[h]
        c.request("GET", f"/internal/local/{key}")
        resp = c.getresponse()
        resp.read()
        copies += 1
        if resp.status != 200:
            missing.append((key, h, resp.status))
print(f"keys {records}, copies checked {copies}, missing {len(missing)}")
for m in missing[:10]:
    print("  missing", m)

def staircase(n):
    # A window's distribution as (value in us, requests at or below it), from its .hgrm.
    steps = []
    for line in open(f"{out}/win-{n}.hgrm"):
        f = line.split()
        if len(f) >= 3 and not line.startswith("#"):
            try:
                steps.append((round(float(f[0]) * 1000), int(f[2])))
            except ValueError:
                pass
    return steps

def merged_p99(group):
    # The p99 of every request of the windows together: the least listed value at or below
    # which 99 % of them fall (each window's count read off its staircase, never above it).
    total = sum(s[-1][1] for s in group if s)
    if total == 0:
        return float("nan")
    def at_or_below(v):
        n = 0
        for s in group:
            below = [c for value, c in s if value <= v]
            n += below[-1] if below else 0
        return n
    for v in sorted({value for s in group for value, _ in s}):
        if at_or_below(v) >= 0.99 * total:
            return v
    return float("nan")

windows = []
for line in open(f"{out}/windows.txt"):
    n, t0, t1 = map(int, line.split())
    try:
        run = json.load(open(f"{out}/win-{n}.json"))["run"]["all"]
        steps = staircase(n)
    except (OSError, KeyError, ValueError):
        continue
    windows.append((t0, t1, run, steps))
moves = [(name, int(a), int(b)) for name, a, b in (l.split() for l in open(f"{out}/moves.txt"))]
first = min(a for _, a, _ in moves)
steady = [w for w in windows if w[1] <= first]
base = merged_p99([w[3] for w in steady])
print(f"steady state ({len(steady)} windows before the first move): p99 {base} us; windows' own p99 {[w[2]['p99_us'] for w in steady]} us")
ok = not missing
for name, a, b in moves:
    during = [w for w in windows if w[0] < b and w[1] > a]
    p99 = merged_p99([w[3] for w in during])
    ratio = p99 / base if base else float("nan")
    worst = max((w[2]["p99_us"] for w in during), default=0)
    print(f"{name}: {b - a} ms; p99 over the {len(during)} windows during it {p99} us, {ratio:.2f}x steady; windows' own p99 {[w[2]['p99_us'] for w in during]} us (worst {worst / base:.2f}x)")
    ok = ok and ratio <= 3.0
for line in open(f"{out}/kills.txt"):
    name, a, b = line.split()
    a, b = int(a), int(b)
    during = [w for w in windows if w[0] < b and w[1] > a]
    p99 = merged_p99([w[3] for w in during])
    what = "all three in turn, not a move" if name == "cleanup" else "kill -9 until seen down, before the move"
    print(f"{name} ({what}): {b - a} ms; p99 over its windows {p99} us, {p99 / base:.2f}x steady; windows' own p99 {[w[2]['p99_us'] for w in during]} us")
print("PASS" if ok else "FAIL")
PY
