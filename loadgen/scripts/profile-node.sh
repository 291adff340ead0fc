#!/usr/bin/env bash
# Where a node's time goes under YCSB load (issue 18): one node (`--cores 1`, durability sync),
# loadgen's closed loop against it, and meanwhile
#   * `perf record -g` of the node (when perf is installed): OUT/perf-<workload>.txt, the
#     hottest symbols (self time);
#   * the node's `/metrics` before and after: the mean and the bucket of p99 of each request
#     stage (`dynacore_request_stage_seconds`) and engine stage
#     (`dynacore_engine_stage_seconds`) over the run;
#   * loadgen's and the node's CPU use (`--server-pid`).
#
#   loadgen/scripts/profile-node.sh [OUT]     # default OUT: target/profile-node
#
# Settings (environment): WORKLOADS ("a c"), RECORDS (100000), VALUE_SIZE (1024),
# CONNECTIONS (50), DURATION (30s), PERF_DELAY (15: seconds into the run, past the heap's growth
# while memtables and the block cache fill), PERF_SECONDS (10), PERF_FREQ (299 samples/s: perf's
# own cost slows a node on a 2-CPU machine), PORT_BASE (7800).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-target/profile-node}
WORKLOADS=${WORKLOADS:-a c}
RECORDS=${RECORDS:-100000}
VALUE_SIZE=${VALUE_SIZE:-1024}
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-30s}
PERF_DELAY=${PERF_DELAY:-15}
PERF_SECONDS=${PERF_SECONDS:-10}
PERF_FREQ=${PERF_FREQ:-299}
PORT_BASE=${PORT_BASE:-7800}
HTTP="127.0.0.1:$((PORT_BASE + 100))"

cargo build --release -q -p dynacore-net --bin dynacore -p dynacore-loadgen --bin loadgen
DYNACORE=target/release/dynacore
LOADGEN=target/release/loadgen
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d "$OUT/data.XXXXXX")
NODE=
cleanup() {
    [ -n "$NODE" ] && kill "$NODE" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

"$DYNACORE" serve --data-dir "$DATA/node" --listen "127.0.0.1:$PORT_BASE" --http "$HTTP" \
    --cores 1 --durability sync >"$OUT/node.log" 2>&1 &
NODE=$!
for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT_BASE") 2>/dev/null && break
    sleep 0.1
done
common=(--driver native --target "127.0.0.1:$PORT_BASE" --records "$RECORDS"
    --value-size "$VALUE_SIZE" --connections "$CONNECTIONS" --server-pid "$NODE" --quiet)
"$LOADGEN" "${common[@]}" --workload a --load >/dev/null

scrape() { python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen("http://"+sys.argv[1]+"/metrics", timeout=10).read().decode())' "$HTTP"; }

for w in $WORKLOADS; do
    echo "== workload $w, closed loop, $DURATION"
    scrape >"$OUT/metrics-$w-before.txt"
    "$LOADGEN" "${common[@]}" --workload "$w" --run --duration "$DURATION" \
        --json "$OUT/loadgen-$w.json" >"$OUT/loadgen-$w.txt" &
    LG=$!
    if command -v perf >/dev/null; then
        sleep "$PERF_DELAY"
        perf record -q -F "$PERF_FREQ" -g -p "$NODE" -o "$OUT/perf-$w.data" -- sleep "$PERF_SECONDS" \
            >/dev/null 2>&1 || echo "profile-node: perf record failed (perf_event_paranoid?)" >&2
    fi
    wait "$LG"
    scrape >"$OUT/metrics-$w-after.txt"
    cat "$OUT/loadgen-$w.txt"
    if [ -s "$OUT/perf-$w.data" ]; then
        perf report -i "$OUT/perf-$w.data" --stdio --no-children --sort symbol \
            --percent-limit 0.7 2>/dev/null | grep -E '^ +[0-9.]+%' >"$OUT/perf-$w.txt" || true
        echo "-- hottest symbols (self time), perf over $PERF_SECONDS s: $OUT/perf-$w.txt"
        head -25 "$OUT/perf-$w.txt"
    fi
    echo "-- stages over the run (mean; the bucket holding p99)"
    python3 - "$OUT/metrics-$w-before.txt" "$OUT/metrics-$w-after.txt" <<'PY'
import re, sys
def parse(path):
    d = {}
    for line in open(path):
        m = re.match(r'(dynacore_(?:request|engine)_stage_seconds)_(bucket|sum|count)\{([^}]*)\} (\S+)', line)
        if not m:
            continue
        name, kind, labels, v = m.groups()
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = (name.split("_")[1], lab["stage"])
        e = d.setdefault(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        if kind == "bucket":
            e["buckets"][lab["le"]] = e["buckets"].get(lab["le"], 0) + float(v)
        else:
            e[kind] += float(v)
    return d
a, b = parse(sys.argv[1]), parse(sys.argv[2])
print(f'  {"stage":<28} {"count":>9} {"mean µs":>9} {"p99 ≤ µs":>9}')
for key in sorted(b):
    n = b[key]["count"] - a.get(key, {}).get("count", 0)
    if n <= 0:
        continue
    s = b[key]["sum"] - a.get(key, {}).get("sum", 0)
    p99 = "inf"
    for le in sorted((k for k in b[key]["buckets"] if k != "+Inf"), key=float):
        c = b[key]["buckets"][le] - a.get(key, {"buckets": {}})["buckets"].get(le, 0)
        if c >= 0.99 * n:
            p99 = f"{float(le) * 1e6:.0f}"
            break
    print(f'  {key[0] + " " + key[1]:<28} {n:>9.0f} {s / n * 1e6:>9.1f} {p99:>9}')
PY
done
echo "files: $OUT"
