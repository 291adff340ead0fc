#!/usr/bin/env bash
# Anti-entropy's costs on this machine (issue 16), with release builds, two nodes on loopback
# (replication factor 2, hinted handoff off, no scheduled exchanges: every repair here is a
# `dynacore repair`):
#
# 1. O(differences): RECORDS keys (1,000,000) on both replicas, then DIFF (10) keys written
#    while node 2 was down; a full repair from node 1 compares trees, finds and heals them.
#    Beside it, the baseline: a full scan of node 1's shards hashing every key
#    (`POST /admin/verify-trees`, what a repair without kept trees pays on every run).
# 2. Foreground cost: YCSB A through the SDK at half the maximum the same nodes serve, for
#    DURATION, without repair, then while a repair heals HEAL (100,000) keys written while node 2
#    was down; ROUNDS (2) times each, alternately. Before each run both nodes flush and compact
#    (`POST /admin/compact`), so that a run does not inherit a restart's memtable. Prints every
#    p99 and the ratio of the medians.
#
#   loadgen/scripts/anti-entropy.sh [OUT]          # default OUT: target/anti-entropy
#
# Settings (environment): RECORDS, DIFF, HEAL, ROUNDS, VALUE_SIZE (100), CONNECTIONS (16),
# DURATION (30s), CORES (1 per node), PORT_BASE (7650). Every server listens on 127.0.0.1 and is stopped
# at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

OUT=${1:-target/anti-entropy}
RECORDS=${RECORDS:-1000000}
DIFF=${DIFF:-10}
HEAL=${HEAL:-100000}
ROUNDS=${ROUNDS:-2}
VALUE_SIZE=${VALUE_SIZE:-100}
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-30s}
CORES=${CORES:-1}
PORT_BASE=${PORT_BASE:-7650}

cargo build --release -q -p dynacore-net --bin dynacore -p dynacore-loadgen --bin loadgen
DYNACORE=target/release/dynacore
LOADGEN=target/release/loadgen

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d "$OUT/data.XXXXXX")
PIDS=(0 0)
cleanup() {
    for p in "${PIDS[@]}"; do [ "$p" = 0 ] || kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

cat >"$DATA/node.toml" <<EOF
replication_factor = 2
hinted_handoff = false
anti_entropy_interval_s = 0
EOF
SECRET="$DATA/cluster.secret"
head -c 48 /dev/urandom | base64 >"$SECRET"
chmod 600 "$SECRET"

binary() { echo "127.0.0.1:$((PORT_BASE + 10 * $1))"; }
http() { echo "127.0.0.1:$((PORT_BASE + 100 + $1))"; }

wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "anti-entropy: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# start I: node I (0 or 1) in the background; node 1 joins through node 0.
start() {
    local i=$1 seeds=()
    [ "$i" = 0 ] || seeds=(--seeds "$(binary 0)")
    "$DYNACORE" serve --config "$DATA/node.toml" --data-dir "$DATA/node$i" \
        --cluster-secret-file "$SECRET" --node-id "a$i" --cores "$CORES" \
        --listen "$(binary "$i")" --http "$(http "$i")" --resp off "${seeds[@]}" \
        >>"$OUT/node$i.log" 2>&1 &
    PIDS[$i]=$!
    wait_port "${2:-$((PORT_BASE + 100 + i))}"
}

stop() {
    kill "${PIDS[$1]}" 2>/dev/null || true
    wait "${PIDS[$1]}" 2>/dev/null || true
    PIDS[$1]=0
}

# both_up: each node sees both in the ring, up and serving (a node still joining does not
# count for the replication factor yet: writes then would reach one replica only).
both_up() {
    local ok='import json,sys; n=[x for x in json.load(sys.stdin)["nodes"] if x.get("in_ring")]; sys.exit(0 if len(n) == 2 and all(x["up"] and x.get("status") == "normal" for x in n) else 1)'
    for _ in $(seq 1 300); do
        if curl -s "http://$(http 0)/cluster" | python3 -c "$ok" 2>/dev/null &&
            curl -s "http://$(http 1)/cluster" | python3 -c "$ok" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "anti-entropy: the nodes did not see each other" >&2
    exit 1
}

# trees_ready I: every core of node I has its hash tree ready.
trees_ready() {
    for _ in $(seq 1 600); do
        if curl -s -X POST "http://$(http "$1")/admin/verify-trees" | python3 -c 'import json,sys; c=json.load(sys.stdin)["cores"]; sys.exit(0 if all(x.get("ready", True) for x in c) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "anti-entropy: node $1's trees are not ready" >&2
    exit 1
}

common=(--driver native --target "$(binary 0)" --value-size "$VALUE_SIZE"
    --connections "$CONNECTIONS" --quiet)

start 0
start 1
both_up
echo "== load $RECORDS records on both replicas (w=all)"
"$LOADGEN" "${common[@]}" --records "$RECORDS" --workload a --load --w all \
    --json "$OUT/load.json" >/dev/null

# The replicas identical before the measure: a repair brings in whatever the load left
# behind, and both scans count the keys.
curl -s -X POST "http://$(http 0)/admin/repair" >"$OUT/repair-before.json"
curl -s -X POST "http://$(http 0)/admin/verify-trees" >"$OUT/scan-before-0.json"
curl -s -X POST "http://$(http 1)/admin/verify-trees" >"$OUT/scan-before-1.json"

echo "== $DIFF keys written while node 1 is down"
stop 1
for i in $(seq 1 "$DIFF"); do
    curl -sf -X PUT "http://$(http 0)/keys/diverged-$i?w=1" -H 'Content-Type: application/json' \
        -d "{\"value\": \"value $i\"}" >/dev/null
done
start 1
both_up
trees_ready 0
trees_ready 1
curl -s -X POST "http://$(http 0)/admin/repair" >"$OUT/repair-diff.json"
curl -s -X POST "http://$(http 0)/admin/verify-trees" >"$OUT/scan.json"

compact_both() {
    curl -s -X POST "http://$(http 0)/admin/compact" >/dev/null
    curl -s -X POST "http://$(http 1)/admin/compact" >/dev/null
}

echo "== workload A: closed loop (the maximum)"
"$LOADGEN" "${common[@]}" --records "$RECORDS" --workload a --run --duration 10s \
    --warmup 2s --json "$OUT/a-closed.json" >/dev/null
rate=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["run"]["all"]["ops_per_s"]) // 2)' "$OUT/a-closed.json")
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round: workload A at $rate ops/s without repair"
    compact_both
    "$LOADGEN" "${common[@]}" --records "$RECORDS" --workload a --run --duration "$DURATION" \
        --warmup 2s --rate "$rate" --json "$OUT/a-open-quiet-$round.json" \
        --hdr "$OUT/a-open-quiet-$round.hgrm" >/dev/null
    echo "== round $round: $HEAL keys written while node 1 is down; workload A at $rate ops/s while they are repaired"
    stop 1
    "$LOADGEN" --driver native --target "$(binary 0)" --value-size "$VALUE_SIZE" \
        --connections "$CONNECTIONS" --quiet --records "$HEAL" --key-prefix "heal$round" \
        --workload a --load --w 1 --json "$OUT/heal-load-$round.json" >/dev/null
    start 1
    both_up
    trees_ready 1
    compact_both
    ( sleep 2; curl -s -X POST "http://$(http 0)/admin/repair" >"$OUT/repair-heal-$round.json" ) &
    repair=$!
    "$LOADGEN" "${common[@]}" --records "$RECORDS" --workload a --run --duration "$DURATION" \
        --warmup 2s --rate "$rate" --json "$OUT/a-open-repair-$round.json" \
        --hdr "$OUT/a-open-repair-$round.hgrm" >/dev/null
    wait "$repair"
done

echo
python3 - "$OUT" "$RECORDS" "$DIFF" "$HEAL" "$rate" "$ROUNDS" <<'PY'
import json, sys, statistics
out, records, diff, heal, rate, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
before = json.load(open(f"{out}/repair-before.json"))
counts = [sum(c["keys"] for c in json.load(open(f"{out}/scan-before-{i}.json"))["cores"]) for i in (0, 1)]
print(f"before: keys on the replicas {counts[0]} and {counts[1]}; a first repair found {before['keys_divergent']} divergent")
r = json.load(open(f"{out}/repair-diff.json"))
scan = json.load(open(f"{out}/scan.json"))
scan_ms = max(c["ms"] for c in scan["cores"])
keys = sum(c["keys"] for c in scan["cores"])
print(f"O(differences): {records} keys per replica, {diff} written while a replica was down")
print(f"  repair: {r['ms']} ms, {r['bytes']} bytes ({r['bytes'] / 1024:.1f} KiB) moved, "
      f"{r['keys_compared']} keys compared, {r['keys_divergent']} divergent, {r['keys_repaired']} repaired, "
      f"{r['ranges_repaired']}/{r['ranges']} ranges repaired")
print(f"  baseline, a full scan hashing every key of node 1 ({keys} keys): {scan_ms} ms")
print(f"  repair time / full scan time: {r['ms'] / max(scan_ms, 1):.3f}")
print(f"Foreground cost: workload A at {rate} ops/s (half the closed-loop maximum), {rounds} rounds")
quiet, busy = [], []
for i in range(1, rounds + 1):
    q = json.load(open(f"{out}/a-open-quiet-{i}.json"))["run"]["all"]
    w = json.load(open(f"{out}/a-open-repair-{i}.json"))["run"]["all"]
    h = json.load(open(f"{out}/repair-heal-{i}.json"))
    quiet.append(q["p99_us"]); busy.append(w["p99_us"])
    print(f"  round {i} without repair: p50 {q['p50_us']} us, p99 {q['p99_us']} us, {q['ops_per_s']:.0f} ops/s")
    print(f"  round {i} with a repair healing {heal} keys ({h['keys_repaired']} repaired in {h['ms']} ms, "
          f"{h['ranges_repaired']}/{h['ranges']} ranges): p50 {w['p50_us']} us, p99 {w['p99_us']} us, {w['ops_per_s']:.0f} ops/s")
print(f"  p99 with repair / without (medians): {statistics.median(busy) / max(statistics.median(quiet), 1):.2f}")
PY
echo "reports: $OUT"
