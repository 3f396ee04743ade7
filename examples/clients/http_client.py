"""Sends one record to the gateway with Python's standard library (`http.client`, `ssl`);
prints the status, any Retry-After, then the answer.

    GATEWAY_URL=https://localhost:8443/v1/records GATEWAY_CA=gateway-ca.pem \
    CLIENT_CERT=orgs/sz-....pem CLIENT_KEY=orgs/sz-....key \
        python3 http_client.py RECORD.json

Without CLIENT_CERT it connects without a client certificate (the gateway refuses that in the
TLS handshake). Exits 0 whenever an answer came back, 2 when none did.
"""

import http.client
import os
import ssl
import sys
from urllib.parse import urlsplit


def main():
    url = urlsplit(os.environ["GATEWAY_URL"])
    # Verifies the gateway against its CA (and its name against the URL's host).
    tls = ssl.create_default_context(cafile=os.environ["GATEWAY_CA"])
    if os.environ.get("CLIENT_CERT"):
        tls.load_cert_chain(os.environ["CLIENT_CERT"], os.environ["CLIENT_KEY"])
    with open(sys.argv[1], "rb") as f:
        record = f.read()
    connection = http.client.HTTPSConnection(url.hostname, url.port or 443, context=tls, timeout=60)
    try:
        # http.client sends the whole body before it reads: the gateway still answers a body over
        # its limit with a readable 413 (it reads and discards the rest first).
        connection.request("POST", url.path, body=record, headers={"content-type": "application/json"})
        answer = connection.getresponse()
        text = answer.read().decode()
    except (OSError, http.client.HTTPException) as e:
        print(f"error: {e!r}", file=sys.stderr)
        sys.exit(2)
    finally:
        connection.close()
    print(f"status: {answer.status}")
    if answer.getheader("retry-after"):
        print(f"retry-after: {answer.getheader('retry-after')}")
    print()
    print(text)


if __name__ == "__main__":
    main()
