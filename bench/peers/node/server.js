'use strict';
// Reference peer for the Herald benchmark: Node.js http + ws + ioredis, one process.
//
// Usage: node server.js PORT REDIS_URL   (or env PORT / REDIS_URL, BIND)
//
//  * SUBSCRIBE `events` on Redis; every message is relayed as one WebSocket text frame
//    to every client on /ws.
//  * POST /events?event_type=..&message=.. (or JSON body {"type","message"}, or an
//    urlencoded form) PUBLISHes {"type":..,"message":..} on Redis.
//  * GET /health -> {"status":"ok"}

const http = require('node:http');
const { once } = require('node:events');
const { WebSocketServer, WebSocket } = require('ws');
const Redis = require('ioredis');

const PORT = Number(process.argv[2] || process.env.PORT || 8000);
const REDIS_URL = process.argv[3] || process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const BIND = process.env.BIND || '127.0.0.1';
const CHANNEL = 'events';
const LISTEN_BACKLOG = 1024;
// Slow-consumer guard: a client whose unsent backlog exceeds this skips events until it
// catches up, instead of growing the process heap without bound.
const MAX_CLIENT_BACKLOG = 4 * 1024 * 1024;
// Reused for every send: text frame, never compressed.
const SEND_OPTS = { binary: false, compress: false, fin: true };

const JSON_HEADERS = { 'content-type': 'application/json' };
const HEALTH_BODY = '{"status":"ok"}';

// One connection for SUBSCRIBE, one for PUBLISH (a subscribed connection can't publish).
// Auto-pipelining batches the PUBLISHes issued in the same event-loop tick into one write.
// No offline queue: if Redis is down, POST /events fails fast with 503.
const sub = new Redis(REDIS_URL, { lazyConnect: true });
const pub = new Redis(REDIS_URL, {
  lazyConnect: true,
  enableAutoPipelining: true,
  enableOfflineQueue: false,
});
sub.on('error', (err) => console.error('redis (subscriber):', err.message));
pub.on('error', (err) => console.error('redis (publisher):', err.message));

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function publish(res, type, message) {
  if (typeof type !== 'string' || type === '') {
    return sendJson(res, 422, { error: 'event_type is required' });
  }
  const payload = JSON.stringify({ type, message: typeof message === 'string' ? message : '' });
  pub.publish(CHANNEL, payload).then(
    () => sendJson(res, 200, { published: true, type }),
    (err) => {
      console.error('PUBLISH failed:', err.message);
      sendJson(res, 503, { error: 'redis unavailable' });
    },
  );
}

function handleEvents(req, res, query) {
  const params = new URLSearchParams(query);
  const type = params.get('event_type');
  if (type !== null) return publish(res, type, params.get('message'));

  // No query form: read the body (JSON {"type","message"} or urlencoded form).
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > 1 << 20) {
      sendJson(res, 413, { error: 'body too large' });
      req.destroy();
    } else chunks.push(c);
  });
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const ctype = req.headers['content-type'] || '';
    if (ctype.startsWith('application/x-www-form-urlencoded')) {
      const form = new URLSearchParams(body);
      return publish(res, form.get('event_type'), form.get('message'));
    }
    let ev;
    try {
      ev = JSON.parse(body);
    } catch {
      return sendJson(res, 422, { error: 'event_type is required' });
    }
    publish(res, ev && ev.type, ev && ev.message);
  });
}

const server = http.createServer({ noDelay: true }, (req, res) => {
  const url = req.url;
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (path === '/events') {
    if (req.method !== 'POST') return sendJson(res, 405, { error: 'method not allowed' });
    return handleEvents(req, res, q === -1 ? '' : url.slice(q + 1));
  }
  if (path === '/health') {
    res.writeHead(200, JSON_HEADERS);
    return res.end(HEALTH_BODY);
  }
  sendJson(res, 404, { error: 'not found' });
});
// Keep idle HTTP keep-alive connections longer than Node's 5 s default.
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;

// ws handles the upgrade on /ws (400 for other paths); no permessage-deflate (ws's
// server default), TCP_NODELAY is set by ws on every upgraded socket, bufferutil
// (native masking) is picked up automatically; UTF-8 validation uses Node's
// buffer.isUtf8, so utf-8-validate is not needed.
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, clientTracking: true });
wss.on('connection', (ws) => {
  ws.on('error', () => {}); // 'close' follows; ws drops it from wss.clients
  // Client text/binary messages are ignored; pings are answered by ws (autoPong).
});

// Fan-out: the payload Buffer from Redis is used as-is (no string decode/re-encode);
// WebSocket#send frames it per client with a small header and writes the shared
// payload Buffer without copying.
sub.on('messageBuffer', (_channel, payload) => {
  for (const ws of wss.clients) {
    if (ws.readyState === WebSocket.OPEN && ws.bufferedAmount < MAX_CLIENT_BACKLOG) {
      ws.send(payload, SEND_OPTS);
    }
  }
});

async function main() {
  await Promise.all([sub.connect(), pub.connect()]);
  await sub.subscribe(CHANNEL);
  // Only start accepting once subscribed, so /health answering means events flow.
  server.listen({ port: PORT, host: BIND, backlog: LISTEN_BACKLOG });
  await once(server, 'listening');
  console.error(`node peer listening on ${BIND}:${PORT}`);
}

function shutdown() {
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  server.close();
  sub.disconnect();
  pub.disconnect();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

main().catch((err) => {
  console.error('startup failed:', err);
  process.exit(1);
});
