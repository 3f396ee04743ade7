#!/usr/bin/env bash
# The auditors' view over a cluster's database (`audit serve --database`, docs/audit-view.md):
# how long it takes to start over two instances' shipped logs of ENTRIES lines each, what it holds
# in memory, what a page takes, and how long lines shipped after it started take to show (read
# incrementally, per instance).
#
# The log is written by examples/audit_startup.rs (a checkpoint every 1,000 entries) and loaded as
# the shipped log of two instances, gw-a and gw-b (the same chain under two names: both verify
# with its key). 90 % is loaded before the view starts, the rest after.
#
# Usage: bench/audit_view_database.sh [ENTRIES]   (default 200000; SKIP_BUILD=1 reuses a build)
# Output: bench/out/audit-view-db/ (ignored by git). Everything listens on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
N=${1:-200000}
OUT=$ROOT/bench/out/audit-view-db
PG_PORT=${PG_PORT:-55439}
VIEW_PORT=${VIEW_PORT:-8489}
log() { echo "[$(date +%T)] $*" >&2; }

PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort | tail -n1)")
[ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building (release): gateway, audit_startup"
    (cd "$ROOT" && cargo build --release --quiet --bin hetao-gateway --example audit_startup)
fi
BIN=$TARGET/release/hetao-gateway

rm -rf "$OUT"
mkdir -p "$OUT"

PIDS=()
AS_PG=()
[ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    if [ -f "$OUT/pg/data/postmaster.pid" ]; then
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$OUT/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

log "writing a log of $N entries"
(cd "$ROOT" && "$TARGET/release/examples/audit_startup" "$N" >"$OUT/audit_startup.txt")
LOGDIR=$ROOT/target/audit-startup

log "PostgreSQL on :$PG_PORT"
mkdir -p "$OUT/pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$OUT/pg"
"${AS_PG[@]}" "$PGBIN/initdb" -A trust -U postgres -E UTF8 -D "$OUT/pg/data" >"$OUT/pg/initdb.log"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$OUT/pg/data" -l "$OUT/pg/server.log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
DB="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
psql_q() { "$PGBIN/psql" -X -A -t -q -d "$DB" "$@"; }
psql_q -f "$ROOT/crates/gateway-core/src/cluster/migrations/0002_shipped_logs.sql"
psql_q -c "INSERT INTO hetao_instances (instance, audit_key_id, audit_public_key) VALUES ('gw-a', '-', '-'), ('gw-b', '-', '-')"

# The lines as COPY rows (instance, seq, line), segments in chain order, split at 90 %.
python3 - "$LOGDIR" "$N" "$OUT" <<'PY'
import csv, glob, json, os, sys
d, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
files = sorted(glob.glob(os.path.join(d, "audit.jsonl.[0-9]*"))) + [os.path.join(d, "audit.jsonl")]
cut = n * 9 // 10
with open(os.path.join(out, "head.csv"), "w", newline="") as h, open(os.path.join(out, "tail.csv"), "w", newline="") as t:
    wh, wt = csv.writer(h), csv.writer(t)
    for f in files:
        for line in open(f, encoding="utf-8"):
            line = line.rstrip("\n")
            seq = json.loads(line)["seq"]
            for inst in ("gw-a", "gw-b"):
                (wh if seq < cut else wt).writerow([inst, seq, line])
PY
psql_q -c "\\copy hetao_audit_lines (instance, seq, line) FROM '$OUT/head.csv' WITH (FORMAT csv)"
HEAD=$(psql_q -c "SELECT count(*) FROM hetao_audit_lines")
log "loaded $HEAD lines (two instances)"

log "starting the view"
STARTED=$(now)
"$BIN" audit serve --database "$DB" --public-key "$LOGDIR/audit-signing.pub" \
    --listen "127.0.0.1:$VIEW_PORT" >"$OUT/view.txt" 2>&1 &
VIEW=$!
PIDS+=("$VIEW")
until curl -fs "http://127.0.0.1:$VIEW_PORT/api/status" >/dev/null 2>&1; do
    kill -0 "$VIEW" 2>/dev/null || { cat "$OUT/view.txt"; exit 1; }
    sleep 0.05
done
READY=$(since "$STARTED")
PEAK=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$VIEW/status")
RSS=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$VIEW/status")
INTACT=$(curl -fs "http://127.0.0.1:$VIEW_PORT/api/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["intact"])')

page() { # path -> seconds
    curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$VIEW_PORT$1"
}
P_LIST=$(page "/")
P_INSTANCE=$(page "/?instance=gw-b&page=100")
P_ENTRY=$(page "/entry/gw-a/$((N / 2))")
P_JSON=$(page "/api/entries?per_page=500&page=20")

log "shipping the last 10 % after the view started"
SHIPPED=$(now)
psql_q -c "\\copy hetao_audit_lines (instance, seq, line) FROM '$OUT/tail.csv' WITH (FORMAT csv)"
COPIED=$(since "$SHIPPED")
ALL=$(psql_q -c "SELECT count(*) FROM hetao_audit_lines")
total() { curl -fs "http://127.0.0.1:$VIEW_PORT/api/entries?type=any&per_page=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
until [ "$(total)" = "$ALL" ]; do sleep 0.1; done
SHOWN=$(since "$SHIPPED")

{
    echo "lines per instance: $((ALL / 2)) (two instances: $ALL); $(head -n1 "$OUT/audit_startup.txt")"
    echo "ready (read, mirrored, indexed and verified $HEAD lines): ${READY} s; every log verifies: $INTACT"
    echo "memory: peak ${PEAK} MiB, after start ${RSS} MiB"
    echo "pages: / ${P_LIST} s; /?instance=gw-b&page=100 ${P_INSTANCE} s; /entry/gw-a/$((N / 2)) ${P_ENTRY} s; /api/entries?per_page=500&page=20 ${P_JSON} s"
    echo "lines shipped after start ($((ALL - HEAD))): copied in ${COPIED} s, shown ${SHOWN} s after the copy began (the view reads every 5 s)"
} | tee "$OUT/results.txt"
