# Reference peer for the Herald benchmark: the "WebSocket Real-Time" FastAPI tutorial
# (FastAPI + uvicorn + redis.asyncio), kept in the tutorial's exact shape. Deviations,
# each marked "NOT IN THE TUTORIAL" below:
#   1. the Redis subscriber task is kept referenced (the tutorial's bare
#      asyncio.create_task() lets it be garbage-collected, and delivery stops);
#   2. POST /events also accepts a JSON body {"type": ..., "message": ...}.
import asyncio
import json
import os

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

app = FastAPI(title="Real-Time Feed")
REDIS_URL = os.environ["PUBSUB_CACHE_URL"]
CHANNEL = "events"

# NOT IN THE TUTORIAL (1): the event loop keeps only a *weak* reference to tasks
# (asyncio docs: "Save a reference to the result of this function, to avoid a task
# disappearing mid-execution"). The tutorial discards the Task returned by
# asyncio.create_task(), so while _listen() is suspended waiting for Redis nothing
# strong refers to it and a garbage-collection pass can destroy it ("Task was
# destroyed but it is pending!"), silently ending delivery to every WebSocket.
# Holding it in this module-level variable keeps it alive for the process lifetime.
subscriber_task: asyncio.Task | None = None


class ConnectionManager:
    """Track active WebSocket connections."""

    def __init__(self):
        self.active: list[WebSocket] = []

    async def connect(self, ws: WebSocket):
        await ws.accept()
        self.active.append(ws)

    def disconnect(self, ws: WebSocket):
        self.active.remove(ws)

    async def broadcast(self, message: str):
        for ws in self.active[:]:
            try:
                await ws.send_text(message)
            except Exception:
                self.active.remove(ws)


manager = ConnectionManager()


@app.on_event("startup")
async def start_subscriber():
    """Background task that listens to Redis pub/sub and broadcasts."""

    async def _listen():
        r = aioredis.from_url(REDIS_URL)
        pubsub = r.pubsub()
        await pubsub.subscribe(CHANNEL)
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                await manager.broadcast(msg["data"].decode())

    global subscriber_task  # NOT IN THE TUTORIAL (1): keep a strong reference
    subscriber_task = asyncio.create_task(_listen())


@app.websocket("/ws")
async def websocket_endpoint(ws: WebSocket):
    await manager.connect(ws)
    try:
        while True:
            # Keep connection alive; client can also send messages
            await ws.receive_text()
    except WebSocketDisconnect:
        manager.disconnect(ws)


@app.post("/events")
async def publish_event(request: Request, event_type: str | None = None, message: str = ""):
    """Publish an event to all connected clients via Redis pub/sub."""
    if event_type is None:
        # NOT IN THE TUTORIAL (2): JSON body {"type": ..., "message": ...}
        try:
            body = await request.json()
            event_type = body["type"]
            message = body.get("message", "")
        except Exception:
            raise HTTPException(status_code=422, detail="event_type is required")
    r = aioredis.from_url(REDIS_URL)
    payload = json.dumps({"type": event_type, "message": message})
    await r.publish(CHANNEL, payload)
    await r.close()
    return {"published": True, "type": event_type}


@app.get("/", response_class=HTMLResponse)
async def index():
    return open("static/index.html").read()


@app.get("/health")
async def health():
    return {"status": "ok"}
