#!/usr/bin/env python3
"""Redis-side cost of occupancy (issue #14): INFO commandstats (EVAL calls, time in scripts)
per phase. Starts redis-server and two herald replicas (HERALD_BIN, default
target/release/herald) on free ports; N channels (argument, default 2000) with one raw
WebSocket subscriber each on replica B; counts read through replica A. Needs ~N+100 open
files: `ulimit -n`. Usage: `HERALD_BIN=target/release/herald python3 bench/occupancy_redis.py 10000`."""
import os, socket, subprocess, sys, time, json, urllib.request

HERALD = os.environ.get("HERALD_BIN", "target/release/herald")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def redis(port, *args):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
    data = b""
    s.settimeout(5)
    while True:
        chunk = s.recv(65536)
        data += chunk
        if not chunk or data.endswith(b"\r\n") and (data[:1] != b"$" or data.count(b"\r\n") >= 2):
            break
    s.close()
    return data.decode(errors="replace")

def evalstats(port):
    info = redis(port, "INFO", "commandstats")
    for line in info.splitlines():
        if line.startswith("cmdstat_eval:"):
            f = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return int(f["calls"]), float(f["usec"])
    return 0, 0.0

def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())

rport = free_port()
procs = [subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)]
try:
    time.sleep(0.5)
    ports = []
    for _ in range(2):
        p = free_port()
        env = dict(os.environ, PUBSUB_CACHE_URL=f"redis://127.0.0.1:{rport}", LOG_LEVEL="warn")
        procs.append(subprocess.Popen([HERALD, "--port", str(p), "--bind", "127.0.0.1"], env=env, stderr=subprocess.DEVNULL))
        ports.append(p)
    a, b = ports
    time.sleep(1.5)
    def phase(name, action, ops):
        c0, u0 = evalstats(rport)
        t0 = time.time(); action(); wall = time.time() - t0
        c1, u1 = evalstats(rport)
        calls, usec = c1 - c0, u1 - u0
        print(f"{name}: {ops} requests in {wall:.2f} s; Redis: {calls} EVAL calls, {usec/1000:.1f} ms in scripts, {usec/max(calls,1):.0f} us per call")
    socks = []
    def connect_all():
        for i in range(N):
            s = socket.create_connection(("127.0.0.1", b))
            s.sendall(f"GET /ws?channels=ch{i:05d} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            s.recv(4096)
            socks.append(s)
        deadline = time.time() + 15
        while get(a, f"/channels/ch{N-1:05d}")["subscribers"] != 1:
            assert time.time() < deadline
            time.sleep(0.05)
    phase(f"{N} channels joined on B, written by B's flushes (and polled through A)", connect_all, N)
    phase("idle 6 s (renewals only)", lambda: time.sleep(6), 0)
    phase("GET /channels/<ch> through A", lambda: [get(a, f"/channels/ch{i:05d}") for i in range(500)], 500)
    def pages():
        after, n = "", 0
        while True:
            page = get(a, "/channels?limit=1000" + (f"&after={after}" if after else ""))
            n += 1
            if "next" not in page: return n
            after = page["next"]
    phase(f"GET /channels, every page of 1000 (x5)", lambda: [pages() for _ in range(5)], 5 * (N // 1000 + 1))
    def close_half():
        for s in socks[: N // 2]: s.close()
        deadline = time.time() + 15
        while get(a, "/channels/ch00000")["subscribers"] != 0:
            assert time.time() < deadline
            time.sleep(0.05)
    phase(f"{N//2} channels left on B, written by B's flushes", close_half, N // 2)
finally:
    for p in procs[::-1]:
        p.kill(); p.wait()
