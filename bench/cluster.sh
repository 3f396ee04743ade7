#!/usr/bin/env bash
# Several instances on loopback (docs/scaling.md): the same closed-loop load against
#   local  - one gateway without [cluster] (local files only),
#   one    - one gateway with [cluster] (decision registry and log shipping in PostgreSQL),
#   two    - two gateways with [cluster] on the same PostgreSQL, behind HAProxy in TCP mode,
# runs alternating. Per run: throughput, latency, CPU per record of the gateway process(es) and of
# PostgreSQL's, the registry's batches per record (group commit), and the WAL and table bytes
# per record.
#
#   bench/cluster.sh                       # about 2 minutes after the build
#   CONNS=16 ROUNDS=2 DURATION=5 bench/cluster.sh
#
# Environment: CONNS (connections, default 16), ROUNDS (default 2), DURATION (seconds, default 5),
# WARMUP (default 1), CARGO_TARGET_DIR, OUT (default <build folder>/bench-cluster/<time>),
# SKIP_BUILD=1, BASE_PORT (default 18500; uses BASE_PORT..BASE_PORT+10).
# Needs PostgreSQL and HAProxy (Debian's packages: installed when missing), jq.
# Starts: a PostgreSQL in OUT/pg, one park endpoint, three gateways, HAProxy; stops every one of
# them on exit, whatever happens (trap). Results: OUT/results.jsonl, OUT/report.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-16}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
BASE_PORT=${BASE_PORT:-18500}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
export CARGO_TARGET_DIR=$TARGET
OUT=${OUT:-$TARGET/bench-cluster/$(date -u +%Y%m%dT%H%M%SZ)}

EP_PORT=$((BASE_PORT + 1))
PG_PORT=$((BASE_PORT + 2))
LOCAL_PORT=$((BASE_PORT + 3)); LOCAL_ADMIN=$((BASE_PORT + 4))
A_PORT=$((BASE_PORT + 5)); A_ADMIN=$((BASE_PORT + 6))
B_PORT=$((BASE_PORT + 7)); B_ADMIN=$((BASE_PORT + 8))
HA_PORT=$((BASE_PORT + 9))

log() { printf '[cluster.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- what it needs -------------------------------------------------------------------------------
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} from Debian's packages"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort | tail -n1)")
[ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building (release): gateway, load generator, park endpoint"
    (cd "$ROOT" && cargo build --release --quiet --bin hetao-gateway \
        --example loadgen --example park_endpoint)
fi
BIN=$TARGET/release/hetao-gateway
LOADGEN=$TARGET/release/examples/loadgen
ENDPOINT=$TARGET/release/examples/park_endpoint

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- processes and their cleanup ----------------------------------------------------------------
PIDS=()
AS_PG=()
[ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -f "$OUT/pg/data/postmaster.pid" ]; then
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$OUT/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() { # admin port
    for _ in $(seq 300); do
        if curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "the gateway with admin port $1 did not get ready"; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_cpu_ticks() { # the postmaster and every backend of this server
    local total=0 p master
    master=$(head -n1 "$OUT/pg/data/postmaster.pid")
    for p in $master $(pgrep -P "$master" || true); do total=$((total + $(cpu_ticks "$p"))); done
    echo $total
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
psql_q() { "$PGBIN/psql" -X -A -t -q -d "postgresql://postgres@127.0.0.1:$PG_PORT/postgres" -c "$1"; }
metric() { # admin port, metric name -> value (0 when absent)
    curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}

# --- PostgreSQL -----------------------------------------------------------------------------------
mkdir -p "$OUT/pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$OUT/pg"
"${AS_PG[@]}" "$PGBIN/initdb" -A trust -U postgres -E UTF8 -D "$OUT/pg/data" >"$OUT/pg/initdb.log"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$OUT/pg/data" -l "$OUT/pg/server.log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
DB="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on :$PG_PORT (fsync on, synchronous_commit on)"

# --- PKI, configurations ----------------------------------------------------------------------------
PKI=$OUT/pki
"$BIN" certs init --out "$PKI" >/dev/null
CONF=$PKI/gateway.toml
sed -i -e "s#https://127.0.0.1:9002#https://127.0.0.1:$EP_PORT#" "$CONF"
instance_conf() { # name port admin [cluster instance]
    local out=$PKI/gateway-$1.toml
    sed -e "s#127.0.0.1:8443#127.0.0.1:$2#" -e "s#127.0.0.1:9443#127.0.0.1:$3#" \
        -e "s#^log = \"audit/audit.jsonl\"#log = \"audit-$1/audit.jsonl\"#" "$CONF" >"$out"
    grep -q "^log = \"audit-$1/" "$out" || { log "could not give $1 its own audit log"; exit 1; }
    if [ -n "${4:-}" ]; then
        printf '\n[cluster]\ndatabase = "%s"\ninstance = "%s"\n' "$DB" "$4" >>"$out"
    fi
    echo "$out"
}
LOCAL_CONF=$(instance_conf local "$LOCAL_PORT" "$LOCAL_ADMIN")
A_CONF=$(instance_conf gw-a "$A_PORT" "$A_ADMIN" gw-a)
B_CONF=$(instance_conf gw-b "$B_PORT" "$B_ADMIN" gw-b)
SENDER_CERT=$(ls "$PKI"/orgs/sz-*.pem | head -n1)
SENDER_KEY=${SENDER_CERT%.pem}.key
RECORDS=$ROOT/examples/records

# --- endpoint, gateways, HAProxy --------------------------------------------------------------------
"$ENDPOINT" --listen "127.0.0.1:$EP_PORT" --cert "$PKI/hk-endpoint.pem" \
    --key "$PKI/hk-endpoint.key" --client-ca "$PKI/gateway-ca.pem" >"$OUT/endpoint.log" 2>&1 &
PIDS+=($!)
"$BIN" serve --config "$LOCAL_CONF" >"$OUT/local.log" 2>&1 & LOCAL_PID=$!; PIDS+=("$LOCAL_PID")
"$BIN" serve --config "$A_CONF" >"$OUT/gw-a.log" 2>&1 & A_PID=$!; PIDS+=("$A_PID")
"$BIN" serve --config "$B_CONF" >"$OUT/gw-b.log" 2>&1 & B_PID=$!; PIDS+=("$B_PID")
wait_ready "$LOCAL_ADMIN"; wait_ready "$A_ADMIN"; wait_ready "$B_ADMIN"
cat >"$OUT/haproxy.cfg" <<EOF
global
    maxconn 1024
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend records
    bind 127.0.0.1:$HA_PORT
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server gw-a 127.0.0.1:$A_PORT check port $A_ADMIN inter 1s
    server gw-b 127.0.0.1:$B_PORT check port $B_ADMIN inter 1s
EOF
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 & HA_PID=$!; PIDS+=("$HA_PID")
sleep 2
log "running: local :$LOCAL_PORT, gw-a :$A_PORT, gw-b :$B_PORT, HAProxy :$HA_PORT"

# --- runs -----------------------------------------------------------------------------------------
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
url_of() {
    case $1 in
        local) echo "https://127.0.0.1:$LOCAL_PORT/v1/records" ;;
        one) echo "https://127.0.0.1:$A_PORT/v1/records" ;;
        two) echo "https://127.0.0.1:$HA_PORT/v1/records" ;;
    esac
}
gw_ticks() {
    case $1 in
        local) cpu_ticks "$LOCAL_PID" ;;
        one) cpu_ticks "$A_PID" ;;
        two) echo $(($(cpu_ticks "$A_PID") + $(cpu_ticks "$B_PID"))) ;;
    esac
}
registry_batches() { # claim and settle statements of both cluster instances
    local n=0 port m
    for port in "$A_ADMIN" "$B_ADMIN"; do
        for m in hetao_cluster_claim_batches_total hetao_cluster_settle_batches_total; do
            n=$(awk -v a="$n" -v b="$(metric "$port" "$m")" 'BEGIN {print a + b}')
        done
    done
    echo "$n"
}
run() { # target round
    local target=$1 round=$2 gw0 gw1 pg0 pg1 st0 st1 wal0 wal1 line
    gw0=$(gw_ticks "$target"); pg0=$(pg_cpu_ticks); st0=$(registry_batches)
    wal0=$(psql_q "SELECT pg_current_wal_lsn() - '0/0'")
    line=$("$LOADGEN" --url "$(url_of "$target")" --cert "$SENDER_CERT" --key "$SENDER_KEY" \
        --ca "$PKI/gateway-ca.pem" --body-dir "$RECORDS" --from sz \
        --connections "$CONNS" --duration "$DURATION" --warmup "$WARMUP" --label "$target")
    gw1=$(gw_ticks "$target"); pg1=$(pg_cpu_ticks); st1=$(registry_batches)
    wal1=$(psql_q "SELECT pg_current_wal_lsn() - '0/0'")
    line=$(jq -c --argjson gw "$(((gw1 - gw0) * TICK_US))" --argjson pg "$(((pg1 - pg0) * TICK_US))" \
        --argjson st "$(awk -v a="$st0" -v b="$st1" 'BEGIN {print b - a}')" \
        --argjson wal "$((wal1 - wal0))" \
        --argjson secs "$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN {print d + w}')" \
        --arg round "$round" \
        '. as $r | ($r.ok_rps * $secs) as $n | $r + {round: $round,
           gateway_cpu_us_per_record: (if $n > 0 then ($gw / $n | floor) else null end),
           postgres_cpu_us_per_record: (if $n > 0 then ($pg / $n | floor) else null end),
           registry_batches_per_record: (if $n > 0 then (($st / $n) * 1000 | floor) / 1000 else null end),
           wal_bytes_per_record: (if $n > 0 then ($wal / $n | floor) else null end)}' <<<"$line")
    echo "$line" >>"$RESULTS"
    jq -c '{"label": .label, round, ok_rps, latency_ms, gateway_cpu_us_per_record, postgres_cpu_us_per_record,
            registry_batches_per_record, wal_bytes_per_record, status, errors}' <<<"$line" >&2
}
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="local one two"; else order="two one local"; fi
    for target in $order; do run "$target" "$round"; done
done
sleep 2 # the shipping catches up
ROWS=$(psql_q "SELECT count(*) FROM hetao_decisions")
DEC_BYTES=$(psql_q "SELECT pg_total_relation_size('hetao_decisions')")
LINES=$(psql_q "SELECT count(*) FROM hetao_audit_lines")
LINE_BYTES=$(psql_q "SELECT pg_total_relation_size('hetao_audit_lines')")

# --- report ---------------------------------------------------------------------------------------
{
    echo "# Several instances: local vs one vs two ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "$(nproc) cores, $CONNS keep-alive connections, $DURATION s per run after $WARMUP s warm-up, $ROUNDS rounds alternating; fsync always; PostgreSQL with fsync and synchronous_commit on."
    echo
    echo "| run | round | records/s | p50 ms | p99 ms | gateway CPU µs/record | PostgreSQL CPU µs/record | registry batches (claim + settle)/record | WAL bytes/record |"
    echo "|---|---|---|---|---|---|---|---|---|"
    jq -r '"| \(.label) | \(.round) | \(.ok_rps | floor) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.gateway_cpu_us_per_record) | \(.postgres_cpu_us_per_record) | \(.registry_batches_per_record) | \(.wal_bytes_per_record) |"' "$RESULTS"
    echo
    echo "Registry: $ROWS rows, $((DEC_BYTES / (ROWS > 0 ? ROWS : 1))) bytes per row with its index; shipped log: $LINES lines, $((LINE_BYTES / (LINES > 0 ? LINES : 1))) bytes per line with its index."
} >"$OUT/report.md"
cat "$OUT/report.md"
log "results in $OUT"
