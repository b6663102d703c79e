#!/usr/bin/env python3
"""permessage-deflate figures for a running herald (herald-bench cannot negotiate deflate yet).

    python3 bench/deflate_figures.py wire  PORT
    python3 bench/deflate_figures.py idle  PORT PID CONNECTIONS [deflate|plain]
    python3 bench/deflate_figures.py cpu   PORT PID SUBSCRIBERS EVENTS [deflate|plain]

wire: bytes on the wire for one ~1 KB JSON event, plain and compressed.
idle: RSS of herald (PID) before and after CONNECTIONS idle WebSockets that negotiated
      deflate (or not); prints bytes per connection. Source addresses 127.0.0.2.. so the
      ephemeral ports of one address are never the limit.
cpu:  SUBSCRIBERS WebSockets on one channel, EVENTS events of ~1 KB published one at a time
      (each waited for by every subscriber), herald's CPU time (utime+stime) per delivery.
Raw sockets, no client library: the clients only count bytes. Every wait is bounded.
"""
import json
import os
import selectors
import socket
import sys
import time
import urllib.request

OFFER = "permessage-deflate; client_max_window_bits"
WAIT = 60


def order_text(length):
    text, i = "", 0
    while len(text) < length:
        text += f"order {i} for alice@example.com shipped; "
        i += 1
    return text[:length]


def upgrade(port, path, deflate, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT, source_address=(source, 0))
    offer = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if deflate else ""
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"{offer}\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError("closed during handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (b"permessage-deflate" in head) == deflate, head
    return s


def read_frame(s):
    def exact(n):
        out = b""
        while len(out) < n:
            chunk = s.recv(n - len(out))
            if not chunk:
                raise RuntimeError("closed")
            out += chunk
        return out
    first, second = exact(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(exact(2), "big")
    elif length == 127:
        length = int.from_bytes(exact(8), "big")
    header = 2 + (2 if (second & 0x7F) == 126 else 8 if (second & 0x7F) == 127 else 0)
    return first, header + length


def publish(port, channel, message):
    body = json.dumps({"type": "order", "channel": channel, "message": message}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/events", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as reply:
        return json.loads(reply.read())


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wire(port):
    plain = upgrade(port, "/ws?channels=wire", False)
    packed = upgrade(port, "/ws?channels=wire", True)
    time.sleep(0.2)
    message = order_text(1000)
    publish(port, "wire", message)
    for name, s in (("plain", plain), ("deflate", packed)):
        first, size = read_frame(s)
        print(f"{name:8} first byte 0x{first:02x}: {size} bytes on the wire")


def idle(port, pid, count, deflate):
    before = rss(pid)
    socks = []
    for i in range(count):
        source = f"127.0.0.{2 + i // 10000}"
        socks.append(upgrade(port, f"/ws?channels=idle{i % 100}", deflate, source))
    time.sleep(2)
    after = rss(pid)
    print(f"{'deflate' if deflate else 'plain'}: {count} idle WebSockets, RSS {before} -> {after}, "
          f"{(after - before) / count:.0f} bytes per connection")
    for s in socks:
        s.close()


def cpu(port, pid, subscribers, events, deflate):
    socks = [upgrade(port, "/ws?channels=cpu", deflate, f"127.0.0.{2 + i // 10000}")
             for i in range(subscribers)]
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    time.sleep(1)
    message = order_text(1000)
    buffers = {s: b"" for s in socks}
    frames = {s: 0 for s in socks}
    wire_bytes = 0

    def drain_until(count):
        nonlocal wire_bytes
        deadline = time.time() + WAIT
        behind = sum(1 for s in socks if frames[s] < count)
        while behind:
            assert time.time() < deadline, "deliveries timed out"
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                data = s.recv(1 << 16)
                assert data, "closed"
                wire_bytes += len(data)
                buf = buffers[s] + data
                before = frames[s]
                while len(buf) >= 2:
                    length, header = buf[1] & 0x7F, 2
                    if length == 126:
                        if len(buf) < 4:
                            break
                        length, header = int.from_bytes(buf[2:4], "big"), 4
                    if len(buf) < header + length:
                        break
                    buf = buf[header + length:]
                    frames[s] += 1
                buffers[s] = buf
                if before < count <= frames[s]:
                    behind -= 1

    # One event to warm up, then the measured run: each event waited for by every subscriber.
    publish(port, "cpu", message)
    drain_until(1)
    wire_bytes = 0
    start_cpu, start = cpu_seconds(pid), time.time()
    for n in range(2, events + 2):
        reply = publish(port, "cpu", message)
        assert reply["receivers"] == subscribers, reply
        drain_until(n)
    expected = wire_bytes // (subscribers * events)
    used = cpu_seconds(pid) - start_cpu
    deliveries = subscribers * events
    print(f"{'deflate' if deflate else 'plain'}: {subscribers} subscribers x {events} events, "
          f"{expected} bytes per delivery, herald CPU {used:.2f} s in {time.time() - start:.1f} s: "
          f"{used / deliveries * 1e6:.2f} us per delivery")
    for s in socks:
        s.close()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "wire":
        wire(port)
    elif mode == "idle":
        idle(port, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "deflate")
    elif mode == "cpu":
        cpu(port, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "deflate")
    else:
        sys.exit(__doc__)
