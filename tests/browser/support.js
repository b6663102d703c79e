'use strict';
// What the browser tests share: the real herald binary and redis-server as child processes
// on free ports (stopped by PID), a TCP relay that can cut the network between Chromium and
// herald, HTTP publishing, tokens, metrics, and Chromium itself (Debian's, through
// playwright-core: no downloaded browsers).

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const net = require('node:net');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO_ROOT = path.resolve(__dirname, '../..');
const HERALD_BIN = process.env.HERALD_BIN || path.resolve(__dirname, '../../target/debug/herald');
const STATIC_DIR = path.join(REPO_ROOT, 'static');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const REDIS_SERVER = process.env.REDIS_SERVER_BIN || '/usr/bin/redis-server';

const WAIT_MS = 10_000; // every wait in these tests is bounded by this
const CASE_TIMEOUT_MS = 60_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `promise`, or `fallback` after `ms` (the timer never keeps the process alive). */
function within(promise, ms, fallback = null) {
  let timer;
  const timeout = new Promise((r) => { timer = setTimeout(() => r(fallback), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** One herald process; keeps its output so failures can show it. */
class Herald {
  constructor(name, extraEnv = {}, extraArgs = []) {
    this.name = name;
    this.extraEnv = extraEnv;
    this.extraArgs = extraArgs;
    this.proc = null;
    this.port = null;
    this.log = '';
  }

  append(chunk) {
    this.log += chunk.toString();
    if (this.log.length > 200_000) this.log = this.log.slice(-150_000);
  }

  get running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Spawn on `port` and wait (bounded) for GET /health == 200. */
  async startOn(port) {
    const env = { ...process.env, RUST_BACKTRACE: '1', ...this.extraEnv };
    for (const k of ['PORT', 'BIND', 'STATIC_DIR', 'REDIS_URL', 'PUBSUB_CACHE_URL', 'CHANNEL', 'ALLOWED_ORIGINS', 'ECHO_PATH']) {
      delete env[k];
    }
    if (!('PUBLISH_TOKEN' in this.extraEnv)) delete env.PUBLISH_TOKEN;

    this.port = port;
    this.append(`\n[test] starting ${HERALD_BIN} on 127.0.0.1:${port}\n`);
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--static-dir', STATIC_DIR, ...this.extraArgs];
    const proc = spawn(HERALD_BIN, args, {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    proc.stdout.on('data', (c) => this.append(c));
    proc.stderr.on('data', (c) => this.append(c));
    proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
      this.append(`[test] herald pid ${proc.pid} exited code=${code} signal=${signal}\n`);
      resolve({ code, signal });
    }));
    proc.on('error', (e) => this.append(`[test] spawn error: ${e.message}\n`));

    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`herald exited during startup (code ${proc.exitCode}, signal ${proc.signalCode})`);
      }
      try {
        const res = await fetch(`${this.base}/health`, { signal: AbortSignal.timeout(1000) });
        if (res.status === 200) {
          await res.arrayBuffer();
          return;
        }
      } catch {
        // not up yet
      }
      await sleep(50);
    }
    await this.stop();
    throw new Error(`herald did not answer /health within ${WAIT_MS} ms`);
  }

  /** Start on a free port chosen by the OS, retrying if it gets taken meanwhile. */
  async start() {
    let lastErr;
    for (let i = 0; i < 5; i++) {
      try {
        await this.startOn(await freePort());
        return;
      } catch (e) {
        lastErr = e;
      }
    }
    throw lastErr;
  }

  /** Start again on the same port (bounded retries while the port frees up). */
  async restartSamePort() {
    const deadline = Date.now() + WAIT_MS;
    let lastErr;
    while (Date.now() < deadline) {
      try {
        await this.startOn(this.port);
        return;
      } catch (e) {
        lastErr = e;
        await sleep(200);
      }
    }
    throw lastErr || new Error('could not restart herald');
  }

  /** SIGTERM by PID, wait (bounded) for exit; SIGKILL if it hangs. */
  async stop() {
    if (!this.running) return null;
    const proc = this.proc;
    proc.kill('SIGTERM');
    const result = await within(proc.exited, WAIT_MS);
    if (result) return result;
    this.append(`[test] herald pid ${proc.pid} ignored SIGTERM for ${WAIT_MS} ms; SIGKILL\n`);
    proc.kill('SIGKILL');
    await within(proc.exited, 2000);
    return { code: null, signal: 'SIGKILL', hung: true };
  }

  killSync() {
    if (this.running) {
      try { process.kill(this.proc.pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }
}

/** A throwaway redis-server on a free port (no persistence); stopped by PID. */
class RedisServer {
  constructor() {
    this.proc = null;
    this.port = null;
    this.log = '';
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  ping() {
    return new Promise((resolve) => {
      const sock = net.connect({ host: '127.0.0.1', port: this.port });
      let data = '';
      const done = (ok) => { sock.destroy(); resolve(ok); };
      sock.setTimeout(1000, () => done(false));
      sock.on('error', () => done(false));
      sock.on('connect', () => sock.write('PING\r\n'));
      sock.on('data', (c) => {
        data += c;
        if (data.includes('\r\n')) done(data.startsWith('+PONG'));
      });
    });
  }

  async start() {
    for (let i = 0; i < 5; i++) {
      this.port = await freePort();
      const proc = spawn(REDIS_SERVER, ['--port', String(this.port), '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
      this.proc = proc;
      proc.stdout.on('data', (c) => { this.log = (this.log + c).slice(-20_000); });
      proc.stderr.on('data', (c) => { this.log = (this.log + c).slice(-20_000); });
      proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
      proc.on('error', (e) => { this.log += `[test] spawn error: ${e.message}\n`; });
      const deadline = Date.now() + WAIT_MS;
      while (Date.now() < deadline && this.running) {
        if (await this.ping()) return;
        await sleep(50);
      }
      await this.stop(); // port taken meanwhile, or it did not come up: try another port
    }
    throw new Error(`redis-server did not start: ${this.log.slice(-2000)}`);
  }

  async stop() {
    if (!this.running) return;
    const proc = this.proc;
    proc.kill('SIGTERM');
    if (await within(proc.exited, WAIT_MS)) return;
    proc.kill('SIGKILL');
    await within(proc.exited, 2000);
  }

  killSync() {
    if (this.running) {
      try { process.kill(this.proc.pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }
}

/** Wait (bounded) until herald reports its Redis connection as up. */
async function waitRedisConnected(h) {
  const deadline = Date.now() + WAIT_MS;
  let last = null;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${h.base}/health`, { signal: AbortSignal.timeout(1000) });
      last = await res.json();
      if (last.redis === 'connected') return;
    } catch {
      // restarting
    }
    await sleep(50);
  }
  throw new Error(`herald ${h.name} never reported redis "connected": ${JSON.stringify(last)}`);
}

/** POST /events/<channel>?event_type=..&message=.. -> the reply (asserts 200; retries a 503 briefly). */
async function postTo(base, channel, type, message) {
  const url = `${base}/events/${channel}?event_type=${encodeURIComponent(type)}&message=${encodeURIComponent(message)}`;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const res = await fetch(url, { method: 'POST', signal: AbortSignal.timeout(WAIT_MS) });
    const body = await res.json();
    if (res.status === 503 && Date.now() < deadline) {
      await sleep(50); // e.g. Redis not connected yet after a restart
      continue;
    }
    assert.equal(res.status, 200, `POST ${url} -> ${res.status} ${JSON.stringify(body)}`);
    assert.equal(body.published, true);
    assert.equal(body.channel, channel);
    assert.match(body.id, /^\d+-\d+$/);
    return body;
  }
}

async function postQuery(base, type, message) {
  const url = `${base}/events?event_type=${encodeURIComponent(type)}&message=${encodeURIComponent(message)}`;
  const res = await fetch(url, { method: 'POST', signal: AbortSignal.timeout(WAIT_MS) });
  const body = await res.json();
  assert.equal(res.status, 200, `POST ${url} -> ${res.status} ${JSON.stringify(body)}`);
  assert.equal(body.published, true);
  return body;
}

async function postJson(base, obj, headers = {}) {
  const res = await fetch(`${base}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(obj),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `POST /events ${JSON.stringify(obj)} -> ${res.status} ${JSON.stringify(body)}`);
  assert.equal(body.published, true);
  return body;
}

/** An HS256 JWT signed with `secret` (what the application's backend would mint). */
function mintToken(secret, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${sig}`;
}

/** One sample of GET /metrics (0 when absent). */
async function metricOf(base, sample) {
  const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) });
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}


/**
 * A TCP relay in front of herald: Chromium connects to it, it forwards bytes both ways.
 * `cut()` drops every relayed connection and stops listening (a network outage: herald
 * keeps running, with its history); `listen()` on the same port again ends the outage.
 */
class Relay {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.port = 0;
    this.server = null;
    this.sockets = new Set();
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  listen() {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      for (const [a, b] of [[client, upstream], [upstream, client]]) {
        this.sockets.add(a);
        a.pipe(b);
        a.on('error', () => b.destroy());
        a.on('close', () => { this.sockets.delete(a); b.destroy(); });
      }
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => {
        this.port = server.address().port;
        resolve();
      });
    });
  }

  async cut() {
    const closed = new Promise((resolve) => this.server.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    await within(closed, WAIT_MS);
  }
}

/** Debian's Chromium, headless, with a fresh profile in `userDataDir`. */
async function launchChromium(userDataDir, viewport) {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport,
    timeout: 30_000,
  });
  context.setDefaultTimeout(WAIT_MS);
  return context;
}

module.exports = {
  REPO_ROOT, HERALD_BIN, STATIC_DIR, WAIT_MS, CASE_TIMEOUT_MS,
  sleep, within, freePort, Herald, RedisServer, Relay, waitRedisConnected,
  postTo, postQuery, postJson, mintToken, metricOf, launchChromium,
};
