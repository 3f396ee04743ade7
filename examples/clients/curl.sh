#!/bin/sh
# Sends one record to the gateway with curl; prints the status, any Retry-After, then the answer.
#
#   GATEWAY_URL=https://localhost:8443/v1/records GATEWAY_CA=gateway-ca.pem \
#   CLIENT_CERT=orgs/sz-....pem CLIENT_KEY=orgs/sz-....key \
#     sh curl.sh [--http1.1 | --http2] [--expect-continue] RECORD.json
#
# Without CLIENT_CERT it connects without a client certificate (the gateway refuses that in the
# TLS handshake). Exits 0 whenever an answer came back, whatever its status; curl's exit code when
# none did.
set -eu

version=--http2
expect=
while [ $# -gt 1 ]; do
  case "$1" in
    --http1.1 | --http2) version=$1 ;;
    # Ask before sending a large body: the gateway answers a body over its limit with 413 before
    # any of it is sent.
    --expect-continue) expect='Expect: 100-continue' ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
  shift
done
record=${1:?usage: curl.sh [--http1.1|--http2] [--expect-continue] RECORD.json}

# The client identity, as curl's options (the positional parameters, so paths may hold spaces).
set --
if [ -n "${CLIENT_CERT:-}" ]; then
  set -- --cert "$CLIENT_CERT" --key "${CLIENT_KEY:?CLIENT_KEY names the private key of CLIENT_CERT}"
fi

headers=$(mktemp)
body=$(mktemp)
trap 'rm -f "$headers" "$body"' EXIT

# --data-binary sends the file byte for byte (--data would strip newlines), so a retry of the
# same file is the same record and gets the first answer back.
status=$(curl --silent --show-error "$version" "$@" \
  --cacert "${GATEWAY_CA:?GATEWAY_CA names the CA that issued the gateway certificate}" \
  --connect-timeout 10 --max-time 60 \
  --header 'content-type: application/json' ${expect:+--header "$expect"} \
  --data-binary "@$record" \
  --dump-header "$headers" --output "$body" --write-out '%{http_code}' \
  "${GATEWAY_URL:?GATEWAY_URL is the gateway records URL}")

echo "status: $status"
# The last header block is the final answer's (a 100 Continue comes first when it was sent).
retry_after=$(tr -d '\r' <"$headers" | awk 'tolower($1) == "retry-after:" { v = $2 } END { print v }')
[ -n "$retry_after" ] && echo "retry-after: $retry_after"
echo
cat "$body"
echo
