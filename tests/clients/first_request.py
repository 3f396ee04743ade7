"""First-request latency of a client that leaves Nagle on, as Python's `ssl` on a plain socket does.

Opens CONNECTIONS connections one after another (TLS with a client certificate, no TCP_NODELAY),
sends one request on each, reads the whole answer, then a second request on the same connection.
Prints one JSON line: the median milliseconds of the first and of the second request (from
starting to write it to having read its whole answer), and each sample.

Usage: first_request.py HOST PORT CA CERT KEY [CONNECTIONS]
"""

import json
import socket
import ssl
import statistics
import sys
import time

REQUEST = (
    b"GET /v1/first-request-probe HTTP/1.1\r\n"
    b"host: localhost\r\n"
    b"\r\n"
)


def read_answer(tls):
    """Reads one HTTP/1.1 answer with a content-length body; returns its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the answer head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed inside the answer body")
        body += chunk
    return head.split(b"\r\n")[0].decode()


def timed(tls):
    started = time.perf_counter()
    tls.sendall(REQUEST)
    status = read_answer(tls)
    return (time.perf_counter() - started) * 1000.0, status


def main():
    host, port, ca, cert, key = sys.argv[1:6]
    connections = int(sys.argv[6]) if len(sys.argv) > 6 else 7
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    firsts, seconds, statuses, nodelay = [], [], set(), set()
    for _ in range(connections):
        raw = socket.create_connection((host, int(port)))
        # Nagle stays on: no setsockopt(TCP_NODELAY).
        nodelay.add(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        tls = context.wrap_socket(raw, server_hostname="localhost")
        first, status = timed(tls)
        statuses.add(status)
        second, status = timed(tls)
        statuses.add(status)
        tls.close()
        firsts.append(first)
        seconds.append(second)
    print(json.dumps({
        "first_ms": statistics.median(firsts),
        "second_ms": statistics.median(seconds),
        "first_samples": firsts,
        "second_samples": seconds,
        "statuses": sorted(statuses),
        "nodelay": max(nodelay),
    }))


if __name__ == "__main__":
    main()
