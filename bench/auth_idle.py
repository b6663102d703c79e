#!/usr/bin/env python3
"""Idle memory per WebSocket, with and without tokens (issue 12's figures).

Opens N WebSockets to a running herald, one after another, each from the next source address
in 127.0.0.2.. (a few thousand per address), waits for every 101, lets the server settle, and
prints the server's RSS growth per connection and the handshake rate (one client, sequential:
a latency figure, not the server's capacity; use herald-bench for that). Standard library only.

  auth off:            auth_idle.py --port P --pid PID
  one shared token:    auth_idle.py --port P --pid PID --secret "$AUTH_JWT_SECRET"
  a token per client:  auth_idle.py --port P --pid PID --secret "$AUTH_JWT_SECRET" --distinct
"""
import argparse, base64, hashlib, hmac, json, socket, time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: str, claims: dict) -> str:
    body = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return body + "." + b64(sig)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--per-address", type=int, default=5_000)
    p.add_argument("--secret")
    p.add_argument("--distinct", action="store_true")
    p.add_argument("--channel", default="orders.eu")
    p.add_argument("--settle", type=float, default=3.0)
    a = p.parse_args()

    exp = int(time.time()) + 3600
    shared = hs256(a.secret, {"sub": "bench", "exp": exp, "channels": ["orders.*"]}) if a.secret else None
    before = rss_kib(a.pid)
    socks = []
    started = time.monotonic()
    deadline = started + 300
    for i in range(a.clients):
        assert time.monotonic() < deadline, "connect phase over 300 s"
        path = f"/ws?channels={a.channel}"
        if a.secret:
            token = hs256(a.secret, {"sub": f"user{i}", "exp": exp, "channels": ["orders.*"]}) if a.distinct else shared
            path += "&token=" + token
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i // a.per_address}", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", a.port))
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, f"connection {i} closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        socks.append(s)
    elapsed = time.monotonic() - started
    time.sleep(a.settle)  # the sweep frees what idle connections no longer need
    after = rss_kib(a.pid)
    mode = "off" if not a.secret else ("distinct tokens" if a.distinct else "one shared token")
    print(json.dumps({
        "auth": mode,
        "clients": a.clients,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": round((after - before) * 1024 / a.clients, 1),
        "handshakes_per_sec_sequential": round(a.clients / elapsed),
    }))
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
