"""Sends one record to the gateway with Python `requests`; prints the status, any Retry-After,
then the answer.

    GATEWAY_URL=https://localhost:8443/v1/records GATEWAY_CA=gateway-ca.pem \
    CLIENT_CERT=orgs/sz-....pem CLIENT_KEY=orgs/sz-....key \
        python3 requests_client.py RECORD.json

Without CLIENT_CERT it connects without a client certificate (the gateway refuses that in the
TLS handshake). Exits 0 whenever an answer came back, 2 when none did.
"""

import os
import sys

import requests


def main():
    url = os.environ["GATEWAY_URL"]
    identity = None
    if os.environ.get("CLIENT_CERT"):
        identity = (os.environ["CLIENT_CERT"], os.environ["CLIENT_KEY"])
    # The file's bytes as they are: a retry of the same file is the same record.
    with open(sys.argv[1], "rb") as f:
        record = f.read()
    try:
        answer = requests.post(
            url,
            data=record,
            headers={"content-type": "application/json"},
            cert=identity,
            verify=os.environ["GATEWAY_CA"],  # the CA that issued the gateway's certificate
            timeout=(10, 60),
        )
    except requests.RequestException as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"status: {answer.status_code}")
    if "retry-after" in answer.headers:
        print(f"retry-after: {answer.headers['retry-after']}")
    print()
    print(answer.text)


if __name__ == "__main__":
    main()
