#!/usr/bin/env bash
# Where a node's time goes under YCSB load (issue 18): one node (`--cores 1`, durability sync),
# loadgen's closed loop against it (or its open loop at RATE ops/s), and meanwhile
#   * `perf record -g` of the node (when perf is installed): OUT/perf-<workload>.txt, the
#     hottest symbols (self time);
#   * the node's `/metrics` before and after: the mean and the bucket of p99 of each request
#     stage (`dynacore_request_stage_seconds`) and engine stage
#     (`dynacore_engine_stage_seconds`) over the run;
#   * loadgen's and the node's CPU use (`--server-pid`);
#   * loadgen's per-second timeline lined up with the node's flushes and compactions (`/metrics`
#     polled four times a second): each second's p99 and max, and whether a flush or a
#     compaction ran in it.
#
#   loadgen/scripts/profile-node.sh [OUT]     # default OUT: target/profile-node
#
# Settings (environment): WORKLOADS ("a c"), RECORDS (100000), VALUE_SIZE (1024),
# CONNECTIONS (50), DURATION (30s), PERF_DELAY (15: seconds into the run, past the heap's growth
# while memtables and the block cache fill), PERF_SECONDS (10), PERF_FREQ (299 samples/s: perf's
# own cost slows a node on a 2-CPU machine), PORT_BASE (7800), RATE (unset: closed loop; set:
# open loop at this many ops/s, e.g. half of the closed loop's rate).
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
    if [ -n "${RATE:-}" ]; then loop="open loop at $RATE ops/s"; else loop="closed loop"; fi
    echo "== workload $w, $loop, $DURATION"
    scrape >"$OUT/metrics-$w-before.txt"
    python3 - "$HTTP" "$OUT/background-$w.tsv" <<'PY' &
import re, sys, time, urllib.request
addr, path = sys.argv[1], sys.argv[2]
want = re.compile(r'dynacore_engine_stage_seconds_(sum|count)\{core="(\d+)",stage="(flush|compaction)"\} (\S+)')
with open(path, "w") as out:
    while True:
        try:
            text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
        except OSError:
            break
        v = {}
        for kind, core, stage, x in want.findall(text):
            v[(stage, kind)] = v.get((stage, kind), 0.0) + float(x)
        out.write("\t".join(str(x) for x in (int(time.time() * 1000),
            v.get(("flush", "count"), 0), v.get(("flush", "sum"), 0),
            v.get(("compaction", "count"), 0), v.get(("compaction", "sum"), 0))) + "\n")
        out.flush()
        time.sleep(0.25)
PY
    POLL=$!
    "$LOADGEN" "${common[@]}" --workload "$w" --run --duration "$DURATION" \
        ${RATE:+--rate "$RATE"} --json "$OUT/loadgen-$w.json" >"$OUT/loadgen-$w.txt" &
    LG=$!
    if command -v perf >/dev/null; then
        sleep "$PERF_DELAY"
        perf record -q -F "$PERF_FREQ" -g -p "$NODE" -o "$OUT/perf-$w.data" -- sleep "$PERF_SECONDS" \
            >/dev/null 2>&1 || echo "profile-node: perf record failed (perf_event_paranoid?)" >&2
    fi
    wait "$LG"
    kill "$POLL" 2>/dev/null || true
    wait "$POLL" 2>/dev/null || true
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
    echo "-- seconds of the run with and without a flush or compaction running (loadgen's timeline)"
    python3 - "$OUT/loadgen-$w.json" "$OUT/background-$w.tsv" <<'PY'
import json, statistics, sys
rep = json.load(open(sys.argv[1]))
t0 = rep.get("run_started_unix_ms")
if t0 is None:
    print("  (no run_started_unix_ms in the report)")
    sys.exit(0)
t0 += rep["config"]["warmup_s"] * 1000
rows = [list(map(float, l.split("\t"))) for l in open(sys.argv[2]) if l.strip()]
# Each flush or compaction that ended between two polls ran for its mean duration before it.
spans = []
for a, b in zip(rows, rows[1:]):
    for i, name in ((1, "flush"), (3, "compaction")):
        n = b[i] - a[i]
        if n > 0:
            dur = (b[i + 1] - a[i + 1]) / n * 1000
            spans.append((name, b[0] - dur, b[0]))
busy, quiet = [], []
marks = []
for s in rep["run"]["timeline"]:
    lo, hi = t0 + s["second"] * 1000, t0 + (s["second"] + 1) * 1000
    ran = sorted({n for n, a, b in spans if a < hi and b > lo})
    (busy if ran else quiet).append(s)
    marks.append((s["max_us"], s["second"], s["p99_us"], ",".join(ran) or "-"))
for name, group in (("with a flush or compaction", busy), ("without", quiet)):
    if group:
        print(f'  {name:<28} {len(group):>3} s: median p99 {statistics.median(x["p99_us"] for x in group) / 1000:.1f} ms, '
              f'median max {statistics.median(x["max_us"] for x in group) / 1000:.1f} ms, '
              f'worst max {max(x["max_us"] for x in group) / 1000:.1f} ms')
print("  the five worst seconds (max ms, second, p99 ms, what ran):")
for m, sec, p99, ran in sorted(marks, reverse=True)[:5]:
    print(f"    {m / 1000:7.1f}  s{sec:<3} {p99 / 1000:6.1f}  {ran}")
PY
done
echo "files: $OUT"
