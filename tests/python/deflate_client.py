"""A real client library with permessage-deflate (websockets) against Herald.

Run by tests/deflate.rs: python deflate_client.py PORT. Checks that websockets' default offer
is accepted on Herald's terms (no context takeover either way), that a 1 KB event arrives
intact, that a compressed control message (websockets compresses what it sends) subscribes,
and that the echo route returns large compressed messages intact. Prints "ok" on success;
every wait is bounded.
"""
import asyncio
import json
import sys
import urllib.request

import websockets

PORT = int(sys.argv[1])
WAIT = 10


def publish(channel, message):
    body = json.dumps({"type": "order", "channel": channel, "message": message}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/events", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as reply:
        assert reply.status == 200, reply.status


async def main():
    async with websockets.connect(f"ws://127.0.0.1:{PORT}/ws?channels=orders") as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert agreed == ("permessage-deflate; server_no_context_takeover; "
                          "client_no_context_takeover"), agreed
        names = [type(e).__name__ for e in ws.protocol.extensions]
        assert names == ["PerMessageDeflate"], names
        # A compressed control message: websockets compresses everything it sends.
        await ws.send(json.dumps({"op": "subscribe", "channel": "deploys"}))
        notice = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert notice == {"op": "subscribed", "channel": "deploys"}, notice
        message = "order 17 for alice@example.com shipped; " * 25
        for channel in ("orders", "deploys"):
            await asyncio.to_thread(publish, channel, message)
            event = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert event["message"] == message and event["channel"] == channel, event
    async with websockets.connect(f"ws://127.0.0.1:{PORT}/echo", max_size=2**20) as ws:
        for text in ("short", "json " * 4000):
            await ws.send(text)
            echoed = await asyncio.wait_for(ws.recv(), WAIT)
            assert echoed == text, (len(echoed), len(text))
    print("ok")


asyncio.run(main())
