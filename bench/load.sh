#!/usr/bin/env bash
# Load benchmark on loopback: the gateway (schema, policy, durable audit, forwarding) against
# nginx as a plain mutual-TLS reverse proxy, both in front of the same park endpoint, with the
# same certificates, the same records and the same concurrency levels, runs alternating.
# Sections: keep-alive throughput and latency per level; the new-connection rate (full TLS 1.3
# handshake per request); the resumed-connection rate (one request per connection, TLS 1.3
# session tickets kept and shared by the client's workers, so connections resume where the server
# sends tickets; the report gives each target's resumed share); the first and second request on a
# fresh connection from a client with Nagle on; memory at IDLE idle connections; the gateway
# with fsync = "never".
#
#   bench/load.sh                 # everything (about 3 minutes after the build)
#   LEVELS="16 64" ROUNDS=3 DURATION=5 bench/load.sh
#
# Environment: LEVELS (connections, default "1 16 64"), ROUNDS (alternating rounds per level,
# default 2), DURATION (measured seconds per run, default 4), WARMUP (seconds, default 1),
# HANDSHAKE_CONNS (concurrent new or resumed connections, default 16), FIRST_CONNS (connections,
# one after another, of each first-request run, default 7), IDLE (idle connections, default
# 1000), CARGO_TARGET_DIR (cargo's build folder, default target/), OUT (result folder, default
# <build folder>/bench-load/<time>), SKIP_BUILD=1, SKIP_NEVER=1 (no fsync = "never" run),
# BASE_PORT (default 18400; uses BASE_PORT..BASE_PORT+6).
#
# Starts: one park endpoint, the gateway (release build, fsync = "always"), nginx (foreground,
# private prefix), later a second gateway with fsync = "never". Stops every one of them on exit,
# whatever happens (trap). Results: OUT/results.jsonl (one JSON line per run), OUT/report.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LEVELS=${LEVELS:-"1 16 64"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
HANDSHAKE_CONNS=${HANDSHAKE_CONNS:-16}
FIRST_CONNS=${FIRST_CONNS:-7}
IDLE=${IDLE:-1000}
BASE_PORT=${BASE_PORT:-18400}
# Cargo's build folder: CARGO_TARGET_DIR when set (relative to where the script was started),
# exported absolute so the build below (run from $ROOT) writes where the binaries are looked for.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
export CARGO_TARGET_DIR=$TARGET
OUT=${OUT:-$TARGET/bench-load/$(date -u +%Y%m%dT%H%M%SZ)}
WORKERS=$(nproc)

EP_PORT=$((BASE_PORT + 1))
GW_PORT=$((BASE_PORT + 2))
GW_ADMIN=$((BASE_PORT + 3))
NGINX_PORT=$((BASE_PORT + 4))
NEVER_PORT=$((BASE_PORT + 5))
NEVER_ADMIN=$((BASE_PORT + 6))

log() { printf '[load.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- what it needs -------------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    log "installing nginx from Debian's packages"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light \
        || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx
fi
if ! command -v curl >/dev/null 2>&1; then # asks the gateways' admin listeners for /readyz
    log "installing curl from Debian's packages"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building (release): gateway, load generator, park endpoint"
    (cd "$ROOT" && cargo build --release --quiet --bin hetao-gateway \
        --example loadgen --example park_endpoint)
fi
# GATEWAY_BIN: another gateway build to measure (an older commit's, for an A/B in one run).
BIN=${GATEWAY_BIN:-$TARGET/release/hetao-gateway}
LOADGEN=$TARGET/release/examples/loadgen
ENDPOINT=$TARGET/release/examples/park_endpoint

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "$(stat -f -c %T "$OUT")" = tmpfs ]; then
    log "warning: $OUT is on tmpfs: fsync costs nothing there; set OUT to a folder on disk"
fi

# --- processes and their cleanup ----------------------------------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait: a process that ignores SIGTERM gets SIGKILL after 10 s.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "$what did not start listening on $port"; exit 1
}

# The partner listener is bound before the rules load; the admin listener answers /readyz 200 only
# once the gateway serves. Memory "after start" is read then, not in the middle of the load.
wait_ready() {
    local admin=$1 what=$2
    for _ in $(seq 600); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ]; then
            return 0
        fi
        sleep 0.05
    done
    log "$what did not become ready (admin :$admin /readyz)"; exit 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# CPU time (clock ticks: user + system) of a process, and of nginx's master and workers together.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
nginx_cpu_ticks() {
    local total=0 p
    for p in $NGINX_PID $(pgrep -P "$NGINX_PID" || true); do
        total=$((total + $(cpu_ticks "$p")))
    done
    echo $total
}
cpu_of() { # target -> clock ticks of the process(es) serving it
    case $1 in
        gateway) cpu_ticks "$GW_PID" ;;
        gateway-fsync-never) cpu_ticks "${NEVER_PID:-0}" ;;
        nginx) nginx_cpu_ticks ;;
    esac
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
nginx_rss_kb() { # master and workers together
    local total=0 p
    for p in $NGINX_PID $(pgrep -P "$NGINX_PID" || true); do
        total=$((total + $(rss_kb "$p")))
    done
    echo $total
}

# --- PKI, configuration, records ----------------------------------------------------------------
PKI=$OUT/pki
log "development PKI in $PKI"
"$BIN" certs init --out "$PKI" >/dev/null
CONF=$PKI/gateway.toml
sed -i \
    -e "s#127.0.0.1:8443#127.0.0.1:$GW_PORT#" \
    -e "s#127.0.0.1:9443#127.0.0.1:$GW_ADMIN#" \
    -e "s#https://127.0.0.1:9002#https://127.0.0.1:$EP_PORT#" \
    "$CONF"
# [audit] is the file's last table: the product default, spelled out.
printf 'fsync = "always"\n' >>"$CONF"
sed -e "s#127.0.0.1:$GW_PORT#127.0.0.1:$NEVER_PORT#" \
    -e "s#127.0.0.1:$GW_ADMIN#127.0.0.1:$NEVER_ADMIN#" \
    -e 's#^fsync = "always"#fsync = "never"#' \
    -e 's#^log = "audit/audit.jsonl"#log = "audit-never/audit.jsonl"#' \
    "$CONF" >"$PKI/gateway-never.toml"
grep -q '^log = "audit-never/' "$PKI/gateway-never.toml" \
    || { log "could not point the fsync-never gateway at its own audit log"; exit 1; }

SENDER_CERT=$(ls "$PKI"/orgs/sz-*.pem | head -n1)
SENDER_KEY=${SENDER_CERT%.pem}.key
SENDER_ORG=$(openssl x509 -in "$SENDER_CERT" -noout -subject -nameopt multiline \
    | sed -n 's/^ *organizationName *= *//p')
RECORDS=$ROOT/examples/records
# The development registry spreads the example records' permits and white-list ids over two
# Shenzhen organisations, so one sender would have a third of its records denied (and not
# forwarded: cheaper, and not what nginx does with them). The benchmark's sender holds them all:
# every record is decided allow and forwarded, the path being compared.
python3 - "$PKI/registry.toml" "$SENDER_ORG" <<'PY'
import re, sys, tomllib
path, sender = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
orgs = tomllib.loads(text)["organisation"]
held = {k: sorted({v for o in orgs if o["park"] == "sz" for v in o.get(k, [])})
        for k in ("permits", "whitelist_ids")}
def merged(block):
    if f'name = "{sender}"' not in block:
        return block
    block = re.sub(r'^(permits|whitelist_ids) = .*\n', '', block, flags=re.M)
    lines = "".join(f'{k} = [{", ".join(chr(34) + v + chr(34) for v in vs)}]\n' for k, vs in held.items())
    return block.rstrip("\n") + "\n" + lines + "\n"
parts = re.split(r'(?=^\[\[organisation\]\])', text, flags=re.M)
open(path, "w", encoding="utf-8").write("".join(merged(p) for p in parts))
PY
for record in "$RECORDS"/*-sz-hk-*.json; do
    # Decided as of the record's own creation time (the load generator makes it current).
    decision=$("$BIN" check --config "$CONF" --as-org "$SENDER_ORG" --format json \
        --at "$(jq -r .created_at "$record")" "$record" | jq -r '.decision // .error' || true)
    [ "$decision" = allow ] \
        || { log "$(basename "$record") is decided '$decision' for $SENDER_ORG, not allow"; exit 1; }
done
log "sender: $(basename "$SENDER_CERT"); records: $(ls "$RECORDS"/*-sz-hk-*.json | wc -l) sz->hk examples ($(cat "$RECORDS"/*-sz-hk-*.json | wc -c) bytes in all)"

# --- park endpoint, gateway, nginx ----------------------------------------------------------------
"$ENDPOINT" --listen "127.0.0.1:$EP_PORT" --cert "$PKI/hk-endpoint.pem" \
    --key "$PKI/hk-endpoint.key" --client-ca "$PKI/gateway-ca.pem" \
    >"$OUT/endpoint.log" 2>&1 &
EP_PID=$!
PIDS+=("$EP_PID")
wait_port "$EP_PORT" "park endpoint"

"$BIN" serve --config "$CONF" >"$OUT/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$GW_PORT" "gateway"
wait_ready "$GW_ADMIN" "gateway"

NGX=$OUT/nginx
mkdir -p "$NGX"
cat "$PKI/sz-ca.pem" "$PKI/hk-ca.pem" >"$NGX/park-cas.pem"
sed -e "s#@PREFIX@#$NGX#g" -e "s#@PKI@#$PKI#g" -e "s#@PORT@#$NGINX_PORT#g" \
    -e "s#@UPSTREAM@#127.0.0.1:$EP_PORT#g" -e "s#@PARK@#hk#g" -e "s#@WORKERS@#$WORKERS#g" \
    "$ROOT/bench/nginx.conf.template" >"$NGX/nginx.conf"
"$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" -t -q
"$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT" "nginx"
log "running: endpoint :$EP_PORT, gateway :$GW_PORT (pid $GW_PID), nginx :$NGINX_PORT (pid $NGINX_PID, $WORKERS workers)"
GW_RSS_START=$(rss_kb "$GW_PID")

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
url_of() {
    case $1 in
        gateway) echo "https://127.0.0.1:$GW_PORT/v1/records" ;;
        gateway-fsync-never) echo "https://127.0.0.1:$NEVER_PORT/v1/records" ;;
        nginx) echo "https://127.0.0.1:$NGINX_PORT/v1/records" ;;
    esac
}
run() { # target connections round [extra loadgen flags...]
    local target=$1 conns=$2 round=$3 before after ep_before ep_after line
    shift 3
    before=$(cpu_of "$target")
    ep_before=$(cpu_ticks "$EP_PID")
    line=$("$LOADGEN" --url "$(url_of "$target")" --cert "$SENDER_CERT" --key "$SENDER_KEY" \
        --ca "$PKI/gateway-ca.pem" --body-dir "$RECORDS" --from sz \
        --connections "$conns" --duration "$DURATION" --warmup "$WARMUP" \
        --label "$target" "$@")
    after=$(cpu_of "$target")
    ep_after=$(cpu_ticks "$EP_PID")
    # CPU per request of the serving process(es) over warm-up and measurement, assuming the
    # warm-up ran at the measured rate: the figure that survives a noisy shared machine. The
    # park endpoint's and the load generator's (its own count, start to exit) go next to it:
    # the three share the machine's cores, so together they bound the rate a run can reach.
    line=$(jq -c --argjson cpu "$(((after - before) * TICK_US))" \
        --argjson ep "$(((ep_after - ep_before) * TICK_US))" --argjson tick "$TICK_US" \
        --argjson secs "$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN {print d + w}')" \
        '(if .ok_rps > 0 then .ok_rps * $secs else null end) as $n
         | . + {cpu_us_per_req: (if $n then ($cpu / $n | floor) else null end),
                endpoint_cpu_us_per_req: (if $n then ($ep / $n | floor) else null end),
                loadgen_cpu_us_per_req: (if $n and .cpu_ticks then (.cpu_ticks * $tick / $n | floor) else null end)}' <<<"$line")
    echo "$line" >>"$RESULTS"
    jq -c --arg r "$round" '{"label": .label, mode, connections, round: $r, ok_rps, cpu_us_per_req, endpoint_cpu_us_per_req, loadgen_cpu_us_per_req, latency_ms, status, errors}
            + (if has("resumed") then {resumed, full_handshakes} else {} end)' <<<"$line" >&2
}

# --- keep-alive throughput and latency, alternating -----------------------------------------------
for conns in $LEVELS; do
    for round in $(seq "$ROUNDS"); do
        if [ $((round % 2)) -eq 1 ]; then order="gateway nginx"; else order="nginx gateway"; fi
        for target in $order; do run "$target" "$conns" "$round"; done
    done
done
GW_HWM_LOAD=$(hwm_kb "$GW_PID")
NGINX_RSS_LOAD=$(nginx_rss_kb)

# --- new-connection (full handshake) rate, alternating ---------------------------------------------
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="gateway nginx"; else order="nginx gateway"; fi
    for target in $order; do run "$target" "$HANDSHAKE_CONNS" "$round" --new-connections; done
done

# --- resumed-connection (TLS 1.3 session ticket) rate, alternating ---------------------------------
# The same as above, but the load generator keeps the session tickets each server sends (one
# store for all its workers), so a target that issues tickets gets resumed handshakes.
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="gateway nginx"; else order="nginx gateway"; fi
    for target in $order; do run "$target" "$HANDSHAKE_CONNS" "$round" --resumed-connections; done
done

# --- first and second request on a fresh connection, client with Nagle on, alternating -----------
first_request() { # target round
    local target=$1 round=$2
    "$LOADGEN" --url "$(url_of "$target")" --cert "$SENDER_CERT" --key "$SENDER_KEY" \
        --ca "$PKI/gateway-ca.pem" --body-dir "$RECORDS" --from sz \
        --first-request-latency "$FIRST_CONNS" --label "$target" | tee -a "$RESULTS" \
        | jq -c --arg r "$round" '{"label": .label, mode, connections, round: $r, first_ms, second_ms, first_ms_each, second_ms_each, status, errors}' >&2
}
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="gateway nginx"; else order="nginx gateway"; fi
    for target in $order; do first_request "$target" "$round"; done
done

# --- memory at IDLE idle mTLS connections ----------------------------------------------------------
idle_rss() { # target pid-reader
    local target=$1 reader=$2 ready=$OUT/idle-$1.ready
    rm -f "$ready"
    "$LOADGEN" --url "$(url_of "$target")" --cert "$SENDER_CERT" --key "$SENDER_KEY" \
        --ca "$PKI/gateway-ca.pem" --body-dir "$RECORDS" --from sz \
        --idle-connections "$IDLE" --hold 6 --ready-file "$ready" --label "$target" \
        >>"$RESULTS" &
    local lg=$!
    for _ in $(seq 600); do [ -f "$ready" ] && break; sleep 0.1; done
    sleep 2
    $reader
    wait "$lg"
}
GW_RSS_IDLE=$(idle_rss gateway "rss_kb $GW_PID")
NGINX_RSS_IDLE=$(idle_rss nginx nginx_rss_kb)
GW_HWM_ALL=$(hwm_kb "$GW_PID")

# --- the price of durability: one gateway with fsync = "never" -------------------------------------
if [ "${SKIP_NEVER:-0}" != 1 ]; then
    "$BIN" serve --config "$PKI/gateway-never.toml" >"$OUT/gateway-never.log" 2>&1 &
    NEVER_PID=$!
    PIDS+=("$NEVER_PID")
    wait_port "$NEVER_PORT" "gateway (fsync never)"
    wait_ready "$NEVER_ADMIN" "gateway (fsync never)"
    for conns in $LEVELS; do
        [ "$conns" -ge 16 ] || continue
        run gateway-fsync-never "$conns" 1
    done
fi

# --- report ----------------------------------------------------------------------------------------
{
    echo "# Load benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); nginx $("$NGINX" -v 2>&1 | cut -d/ -f2)."
    echo "Runs: ${DURATION}s measured after ${WARMUP}s warm-up, $ROUNDS alternating rounds per level (medians shown), HTTP/1.1, TLS 1.3, client certificate of $(basename "$SENDER_CERT" .pem); records: the $(ls "$RECORDS"/*-sz-hk-*.json | wc -l) sz->hk examples (1.1-2.6 KiB), a fresh record_id each."
    echo "Modes: keep-alive (one connection per client, requests one after the other); new-connections (a fresh TCP connection and full TLS 1.3 handshake per request, resumption off); resumed-connections (a fresh connection per request, the client keeping the TLS 1.3 session tickets the server sends, shared by its $HANDSHAKE_CONNS workers; \"resumed\" is the share of handshakes that resumed; rustls keeps at most 8 tickets per server, so beyond 8 connections a few percent find none). The client sets TCP_NODELAY except in the first-request runs ($FIRST_CONNS connections one after another per run)."
    echo
    "$LOADGEN" --report "$RESULTS"
    echo
    echo "CPU per request (user + system of the gateway process, of nginx's master and workers; medians over the rounds):"
    echo
    echo "| mode | conns | gateway µs | nginx µs | gateway / nginx |"
    echo "|---|---:|---:|---:|---:|"
    jq -rs '[.[] | select(.cpu_us_per_req != null)]
        | group_by([.mode, .connections])[]
        | {mode: .[0].mode, conns: .[0].connections,
           gw: ([.[] | select(.label == "gateway") | .cpu_us_per_req] | sort | .[(length / 2 | floor)]),
           ng: ([.[] | select(.label == "nginx") | .cpu_us_per_req] | sort | .[(length / 2 | floor)])}
        | select(.gw != null and .ng != null)
        | "| \(.mode) | \(.conns) | \(.gw) | \(.ng) | \((.gw / .ng * 100 | round) / 100) |"' "$RESULTS"
    echo
    echo "CPU per request along the path, keep-alive (µs, user + system; medians over the rounds). The three processes share the machine's cores, so their sum bounds the rate: at 0.6× nginx's rate, with the cores as busy as in nginx's runs, the path may take nginx's sum / 0.6; less the generator's and the endpoint's share in the gateway's runs, that is what the gateway may spend (\"gateway budget at 0.6×\"):"
    echo
    echo "| conns | target | load generator | proxy | park endpoint | sum | gateway budget at 0.6× |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    jq -rs 'def med: sort | .[(length / 2 | floor)];
        [.[] | select(.mode == "keep-alive" and .cpu_us_per_req != null and .loadgen_cpu_us_per_req != null)]
        | group_by(.connections)[]
        | . as $runs
        | [("gateway", "nginx") as $t | [$runs[] | select(.label == $t)]
            | select(length > 0)
            | {t: $t, conns: .[0].connections, lg: ([.[].loadgen_cpu_us_per_req] | med),
               px: ([.[].cpu_us_per_req] | med), ep: ([.[].endpoint_cpu_us_per_req] | med)}
            | . + {sum: (.lg + .px + .ep)}]
        | select(length == 2)
        | (.[1].sum / 0.6 - .[0].lg - .[0].ep | floor) as $budget
        | .[] | "| \(.conns) | \(.t) | \(.lg) | \(.px) | \(.ep) | \(.sum) | \(if .t == "gateway" then $budget else "" end) |"' "$RESULTS"
    echo
    echo "| memory (RSS) | gateway | nginx (master + workers) |"
    echo "|---|---:|---:|"
    echo "| after start | $((GW_RSS_START / 1024)) MiB | |"
    echo "| peak during the load runs (gateway VmHWM) | $((GW_HWM_LOAD / 1024)) MiB | $((NGINX_RSS_LOAD / 1024)) MiB (after) |"
    echo "| $IDLE idle mTLS connections | $((GW_RSS_IDLE / 1024)) MiB | $((NGINX_RSS_IDLE / 1024)) MiB |"
    echo "| gateway VmHWM at the end | $((GW_HWM_ALL / 1024)) MiB | |"
    echo
    echo "Idle runs: $(jq -c 'select(.mode=="idle") | {"label": .label, opened, still_open_after_hold, open_seconds, errors}' "$RESULTS" | tr '\n' ' ')"
} >"$OUT/report.md"
cat "$OUT/report.md"
log "results in $OUT"
