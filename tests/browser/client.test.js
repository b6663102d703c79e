'use strict';
// Real-browser test of the client library, static/herald.js, as an application uses it:
// imported in headless Chromium by a page of another origin (the application's, served
// here by a few lines of node), against the real herald binary. Reconnect after herald restarts (stopped and started again by PID on
// the same port), resume across a network outage with no gap and no duplicate (a TCP relay
// between Chromium and herald is cut and restored, so herald keeps its history), `reset`
// when the history no longer covers the gap, channel switching, occupancy, and tokens:
// refreshed on the live connection before they expire, or, when a new one comes too late, a
// reconnect with it that resumes.
//
// Run from the repo root:   node --test tests/browser/
// (after `npm ci` in tests/browser and `cargo build`).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const {
  HERALD_BIN, WAIT_MS, CASE_TIMEOUT_MS, sleep, Herald, Relay, postTo, mintToken, metricOf,
  launchChromium,
} = require('./support');

// Fast retries: the outages here are short and the test waits for each reconnect.
const FAST_BACKOFF = { baseMs: 100, capMs: 400 };

/**
 * Runs in the page: imports herald.js from `moduleUrl`, connects with `options`, and records
 * everything the client reports in `window.rec` (the client itself is `window.client`).
 * `options.mintedTokens`: getToken asks the test for a token through `window.mintToken`.
 */
async function startClient(page, moduleUrl, options) {
  await page.evaluate(async ([url, opts]) => {
    const { connect } = await import(url);
    if (opts.mintedTokens) {
      opts.getToken = () => window.mintToken();
      delete opts.mintedTokens;
    }
    const rec = { sockets: [] };
    const names = ['event', 'state', 'open', 'close', 'subscribed', 'unsubscribed', 'reset',
      'forbidden', 'denied', 'refreshed', 'occupancy', 'unwatched', 'error', 'notice'];
    const client = connect(opts);
    for (const name of names) {
      rec[name] = [];
      client.on(name, (detail) => rec[name].push(detail));
    }
    // Every socket the client opens, with its URL (the last one is the current one).
    client.on('state', () => {
      const s = client.socket;
      if (s && rec.sockets[rec.sockets.length - 1] !== s.url) rec.sockets.push(s.url);
    });
    window.rec = rec;
    window.client = client;
  }, [moduleUrl, options]);
}

/** Wait (bounded) until `predicate(window.rec, window.client)` holds in the page. */
async function waitRec(page, what, predicate, arg) {
  try {
    await page.waitForFunction(`(${predicate})(window.rec, window.client, ${JSON.stringify(arg ?? null)})`,
      null, { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    const rec = await page.evaluate(() => JSON.stringify({
      ...window.rec, event: window.rec.event.map((ev) => `${ev.channel}:${ev.message}`),
      state: window.rec.state.map((s) => s.state),
    })).catch(() => '?');
    throw new Error(`never happened: ${what}; recorded: ${rec}; ${e.message}`);
  }
}

const waitOpen = (page, opens) => waitRec(page, `${opens} connection(s) opened`,
  (rec, client, n) => rec.open.length >= n && client.state === 'open', opens);

/** Messages received on `channel`, in order. */
function messagesOn(page, channel) {
  return page.evaluate((ch) => window.rec.event.filter((e) => e.channel === ch).map((e) => e.message), channel);
}

async function waitMessages(page, channel, count) {
  await waitRec(page, `${count} events on ${channel}`,
    (rec, _c, [ch, n]) => rec.event.filter((e) => e.channel === ch).length >= n, [channel, count]);
}

describe('herald.js, the client library, in Chromium', () => {
  const heralds = [];
  const relays = [];
  let context;
  let userDataDir;
  let app; // the application's own origin: one blank page

  process.on('exit', () => {
    for (const h of heralds) h.killSync();
  });

  async function startHerald(name, env = {}, args = []) {
    const h = new Herald(name, env, args);
    heralds.push(h);
    await h.start();
    return h;
  }

  function check(name, fn) {
    it(name, { timeout: CASE_TIMEOUT_MS }, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        for (const h of heralds) process.stderr.write(`\n--- herald ${h.name} ---\n${h.log.slice(-6000)}`);
        throw e;
      }
    });
  }

  /** A page of another origin than herald's: the library must work imported cross-origin. */
  async function blankPage() {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.errors = errors;
    await page.goto(`http://127.0.0.1:${app.address().port}/`);
    return page;
  }

  before(async () => {
    if (!fs.existsSync(HERALD_BIN)) throw new Error(`herald binary not found at ${HERALD_BIN}: run cargo build`);
    app = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end('<!doctype html><title>an application</title><p>app');
    });
    await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-client-'));
    context = await launchChromium(userDataDir, { width: 800, height: 600 });
  }, { timeout: CASE_TIMEOUT_MS });

  after(async () => {
    if (context) await context.close().catch(() => {});
    if (app) app.close();
    for (const r of relays) if (r.server?.listening) await r.cut();
    for (const h of heralds) await h.stop();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  }, { timeout: CASE_TIMEOUT_MS });

  check('GET /herald.js is a JavaScript module importable from another origin', async () => {
    const h = await startHerald('module');
    const res = await fetch(`${h.base}/herald.js`, { headers: { Origin: 'https://app.example' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8');
    assert.equal(res.headers.get('cache-control'), 'no-cache', 'revalidated like the page');
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    const page = await blankPage();
    const exported = await page.evaluate(async (url) => Object.keys(await import(url)).sort(), `${h.base}/herald.js`);
    assert.deepEqual(exported, ['DEFAULT_CHANNEL', 'HeraldClient', 'compareIds', 'connect', 'isChannelName', 'tokenExpiry']);
    // Without a `url`, the client connects to the server the module came from.
    await startClient(page, `${h.base}/herald.js`, { channels: ['hello'] });
    await waitOpen(page, 1);
    await postTo(h.base, 'hello', 'greeting', 'hi');
    await waitMessages(page, 'hello', 1);
    const [first] = await page.evaluate(() => window.rec.event);
    assert.equal(first.type, 'greeting');
    assert.match(first.id, /^\d+-\d+$/);
    assert.match(await page.evaluate(() => window.rec.sockets[0]), new RegExp(`^ws://127\\.0\\.0\\.1:${h.port}/ws\\?channels=hello$`));
    assert.deepEqual(page.errors, []);
    await page.close();
    await h.stop();
  });

  check('switches channels live, replays a subscribe with since, keeps the switch across a herald restart, and surfaces the reset', async () => {
    const h = await startHerald('restart');
    const page = await blankPage();
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await startClient(page, `${h.base}/herald.js`, { channels: ['a'], backoff: FAST_BACKOFF });
    await waitOpen(page, 1);

    // Subscribe with `since`: what came after that id is replayed first, then live events.
    const c1 = await postTo(h.base, 'c', 'c', 'c1');
    await postTo(h.base, 'c', 'c', 'c2');
    await postTo(h.base, 'c', 'c', 'c3');
    await page.evaluate((since) => window.client.subscribe('c', { since }), c1.id);
    await waitRec(page, 'subscribed to c', (rec) => rec.subscribed.some((s) => s.channel === 'c'));
    await postTo(h.base, 'c', 'c', 'c4');
    await waitMessages(page, 'c', 3);
    assert.deepEqual(await messagesOn(page, 'c'), ['c2', 'c3', 'c4']);

    // Switch: b in, a and c out. a's and c's events published before b's would arrive first.
    await page.evaluate(() => {
      window.client.subscribe('b');
      window.client.unsubscribe('a');
      window.client.unsubscribe('c');
    });
    await waitRec(page, 'subscribed to b, left a and c', (rec) => rec.subscribed.some((s) => s.channel === 'b')
      && ['a', 'c'].every((ch) => rec.unsubscribed.some((s) => s.channel === ch)));
    assert.deepEqual(await page.evaluate(() => window.client.channels), ['b']);
    await postTo(h.base, 'a', 'a', 'a1');
    await postTo(h.base, 'c', 'c', 'c5');
    const b1 = await postTo(h.base, 'b', 'b', 'b1');
    await waitMessages(page, 'b', 1);

    // herald stops (SIGTERM by PID: close 1001) and starts again on the same port.
    const exit = await h.stop();
    assert.ok(exit && !exit.hung, 'herald exits on SIGTERM');
    await waitRec(page, 'reconnecting', (rec, client) => client.state === 'reconnecting');
    await h.restartSamePort();
    await waitOpen(page, 2);
    const open = await page.evaluate(() => window.rec.open[1]);
    assert.equal(open.reconnected, true);
    assert.deepEqual(open.channels, ['b'], 'the reconnect asks for the channels wanted now');
    assert.deepEqual(open.resumed, { b: b1.id });
    const url = new URL(sockets[sockets.length - 1]);
    assert.equal(url.searchParams.get('channels'), 'b');
    assert.equal(url.searchParams.get('since'), `b:${b1.id}`);
    // The embedded history died with the process: the server says it cannot replay.
    await waitRec(page, 'a reset on b', (rec) => rec.reset.length >= 1);
    const [reset] = await page.evaluate(() => window.rec.reset);
    assert.equal(reset.channel, 'b');
    assert.equal(reset.since, b1.id);
    assert.ok(reset.reason.length > 0, 'the reset says why');

    await postTo(h.base, 'a', 'a', 'a2');
    await postTo(h.base, 'b', 'b', 'b2');
    await waitMessages(page, 'b', 2);
    await sleep(200); // an event of a channel left, if sent, would have come before b2
    assert.deepEqual(await messagesOn(page, 'a'), []);
    assert.deepEqual(await messagesOn(page, 'c'), ['c2', 'c3', 'c4']);
    assert.deepEqual(await messagesOn(page, 'b'), ['b1', 'b2']);
    const states = await page.evaluate(() => window.rec.state.map((s) => s.state));
    const lost = states.indexOf('reconnecting');
    assert.ok(lost > 0 && states.slice(0, lost).includes('open') && states.slice(lost).includes('open'),
      `open -> reconnecting -> open: ${states}`);
    const stats = await page.evaluate(() => window.client.stats);
    assert.equal(stats.reconnects, 1);
    assert.equal(stats.resets, 1);
    assert.equal(stats.duplicates, 0);
    assert.deepEqual(page.errors, []);
    await page.close();
    await h.stop();
  });

  check('resumes across a network outage with no gap and no duplicate, quiet channels included', async () => {
    const h = await startHerald('outage');
    const relay = new Relay(h.port);
    relays.push(relay);
    await relay.listen();
    const page = await blankPage();
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await startClient(page, `${h.base}/herald.js`, {
      url: `ws://127.0.0.1:${relay.port}`, channels: ['seq', 'quiet'], backoff: FAST_BACKOFF,
    });
    await waitOpen(page, 1);

    const expected = [];
    const publish = async (n) => {
      for (let i = 0; i < n; i++) {
        const message = `event ${String(expected.length + 1).padStart(3, '0')}`;
        expected.push(message);
        await postTo(h.base, 'seq', 'seq', message);
      }
    };
    await publish(20);
    await waitMessages(page, 'seq', 20);
    const last = await page.evaluate(() => window.rec.event.at(-1).id);

    // The network goes: herald keeps running and keeps its history.
    await relay.cut();
    await waitRec(page, 'reconnecting', (rec, client) => client.state === 'reconnecting');
    await publish(30);
    const failedAttempts = sockets.length;
    await waitRec(page, 'a failed attempt during the outage', (rec) => rec.close.some((c) => !c.wasOpen));
    await relay.listen();
    await waitOpen(page, 2);
    await publish(10);
    await waitMessages(page, 'seq', 60);
    await sleep(300); // a duplicate would arrive now
    assert.deepEqual(await messagesOn(page, 'seq'), expected, 'every event once, in order');
    const url = new URL(sockets[sockets.length - 1]);
    // The quiet channel resumes from the newest id seen live while both were received.
    assert.equal(url.searchParams.get('since'), `seq:${last},quiet:${last}`);
    assert.ok(sockets.length > failedAttempts, 'reconnected through the relay');
    const stats = await page.evaluate(() => window.client.stats);
    assert.equal(stats.duplicates, 0);
    assert.equal(stats.outOfOrder, 0);
    assert.equal(stats.resets, 0);
    assert.equal(stats.reconnects, 1);
    assert.equal(stats.resumed, 1);
    assert.deepEqual(await page.evaluate(() => window.rec.reset), []);
    assert.deepEqual(await page.evaluate(() => window.rec.open[1].blind), []);
    await page.close();
    await relay.cut();
    await h.stop();
  });

  check('surfaces reset when the history no longer covers the gap, then goes on live', async () => {
    const h = await startHerald('short-history', {}, ['--history-len', '5']);
    const relay = new Relay(h.port);
    relays.push(relay);
    await relay.listen();
    const page = await blankPage();
    await startClient(page, `${h.base}/herald.js`, {
      url: `ws://127.0.0.1:${relay.port}/ws`, channels: ['r'], backoff: FAST_BACKOFF,
    });
    await waitOpen(page, 1);
    let lastSeen;
    for (let i = 1; i <= 3; i++) lastSeen = await postTo(h.base, 'r', 'r', `r${i}`);
    await waitMessages(page, 'r', 3);

    await relay.cut();
    await waitRec(page, 'reconnecting', (rec, client) => client.state === 'reconnecting');
    for (let i = 4; i <= 15; i++) await postTo(h.base, 'r', 'r', `r${i}`); // 12 > 5 kept
    await relay.listen();
    await waitOpen(page, 2);
    await waitRec(page, 'a reset', (rec) => rec.reset.length >= 1);
    const [reset] = await page.evaluate(() => window.rec.reset);
    assert.equal(reset.channel, 'r');
    assert.equal(reset.since, lastSeen.id, 'the reset names the id the client resumed after');
    assert.deepEqual(await page.evaluate(() => window.client.resumePoints()), {},
      'a reset channel no longer resumes from the lost id');

    await postTo(h.base, 'r', 'r', 'r16');
    await waitRec(page, 'r16 live', (rec) => rec.event.some((e) => e.message === 'r16'));
    const got = await messagesOn(page, 'r');
    assert.deepEqual(got.slice(0, 3), ['r1', 'r2', 'r3']);
    assert.equal(got.at(-1), 'r16');
    assert.equal(new Set(got).size, got.length, `no duplicate: ${got}`);
    assert.equal((await page.evaluate(() => window.client.stats)).duplicates, 0);
    await page.close();
    await relay.cut();
    await h.stop();
  });

  check('occupancy: the count at once and as it changes, watched again after a restart, until unwatched', async () => {
    const h = await startHerald('occupancy');
    const watcher = await blankPage();
    await startClient(watcher, `${h.base}/herald.js`, { channels: ['room'], backoff: FAST_BACKOFF });
    await waitOpen(watcher, 1);
    await watcher.evaluate(() => window.client.watchOccupancy('room'));
    const counts = () => watcher.evaluate(() => window.rec.occupancy.map((o) => `${o.channel}=${o.subscribers}`));
    const waitCount = (n) => waitRec(watcher, `room=${n}`, (rec, _c, k) => rec.occupancy.at(-1)?.subscribers === k, n);
    await waitCount(1); // the watcher itself receives the channel
    const other = await blankPage();
    await startClient(other, `${h.base}/herald.js`, { channels: ['room'] });
    await waitOpen(other, 1);
    await waitCount(2);
    await other.evaluate(() => window.client.close());
    await waitCount(1);
    assert.deepEqual(await counts(), ['room=1', 'room=2', 'room=1']);

    // The watch lives on the connection: after herald restarts, the client asks again.
    await h.stop();
    await h.restartSamePort();
    await waitOpen(watcher, 2);
    await waitRec(watcher, 'a count after the reconnect', (rec) => rec.occupancy.length >= 4);
    assert.equal((await counts())[3], 'room=1');

    await watcher.evaluate(() => window.client.unwatchOccupancy('room'));
    await waitRec(watcher, 'unwatched', (rec) => rec.unwatched.length === 1);
    assert.deepEqual(await watcher.evaluate(() => window.rec.unwatched), [{ channel: 'room', reason: '' }]);
    // Another subscriber now: a watcher would hear of it within the coalescing second.
    await startClient(other, `${h.base}/herald.js`, { channels: ['room'] });
    await other.evaluate(() => window.client.watchOccupancy('room'));
    await waitRec(other, 'the newcomer sees 2', (rec) => rec.occupancy.at(-1)?.subscribers === 2);
    await sleep(1500);
    assert.equal((await counts()).length, 4, 'no update after unwatching');
    await other.close();
    await watcher.close();
    await h.stop();
  });

  describe('with auth on', () => {
    const secret = 'client-test-secret-of-32-bytes-or-more';
    const publisher = () => mintToken(secret, { sub: 'backend', exp: Math.floor(Date.now() / 1000) + 600, publish: ['*'] });
    const publishAs = async (h, channel, message) => {
      const res = await fetch(`${h.base}/events/${channel}?event_type=t&message=${encodeURIComponent(message)}`, {
        method: 'POST', headers: { Authorization: `Bearer ${publisher()}` }, signal: AbortSignal.timeout(WAIT_MS),
      });
      assert.equal(res.status, 200, `publish to ${channel}: ${res.status} ${await res.text()}`);
    };
    const reader = (ttl) => mintToken(secret, {
      sub: 'alice', exp: Math.floor(Date.now() / 1000) + ttl, channels: ['t.*'],
    });
    const expiredCloses = 'herald_connections_closed_total{reason="token_expired"}';

    check('getToken refreshes the token on the live connection before it expires', async () => {
      const h = await startHerald('auth-refresh', { AUTH_JWT_SECRET: secret });
      const page = await blankPage();
      const sockets = [];
      page.on('websocket', (ws) => sockets.push(ws.url()));
      const minted = [];
      await page.exposeFunction('mintToken', () => {
        const token = reader(5);
        minted.push(token);
        return token;
      });
      await startClient(page, `${h.base}/herald.js`, { channels: ['t.live'], mintedTokens: true });
      await waitOpen(page, 1);
      // The token does not cover `other`: refused, the connection stays.
      await page.evaluate(() => window.client.subscribe('other'));
      await waitRec(page, 'other forbidden', (rec) => rec.forbidden.some((f) => f.channel === 'other'));
      const firstExp = JSON.parse(Buffer.from(minted[0].split('.')[1], 'base64url')).exp;
      await publishAs(h, 't.live', 'before');

      // Two refreshes: the first token has run out by the second (5 s tokens, refreshed ~1.7 s
      // before their exp). Waits are bounded; nothing here asserts a duration.
      for (const n of [1, 2]) {
        await page.waitForFunction((k) => window.rec.refreshed.length >= k, n, { timeout: WAIT_MS, polling: 100 });
        await publishAs(h, 't.live', `after refresh ${n}`);
      }
      while (Date.now() / 1000 < firstExp + 1.5) await sleep(100); // past the sweep after exp
      await publishAs(h, 't.live', 'after the first exp');
      await waitMessages(page, 't.live', 4);
      assert.deepEqual(await messagesOn(page, 't.live'), ['before', 'after refresh 1', 'after refresh 2', 'after the first exp']);
      assert.equal(sockets.length, 1, `one connection throughout: ${sockets.length}`);
      assert.equal(await metricOf(h.base, expiredCloses), 0, 'no connection closed for expiry');
      const refreshed = await page.evaluate(() => window.rec.refreshed);
      assert.ok(refreshed[1].exp > firstExp, 'the server holds a later expiry');
      assert.equal(await page.evaluate(() => window.client.stats.refreshes), refreshed.length);
      assert.deepEqual(await page.evaluate(() => window.rec.denied), []);
      await page.close();
      await h.stop();
    });

    check('a token that expires anyway: reconnect with a new one and resume; without getToken: denied', async () => {
      const h = await startHerald('auth-expiry', { AUTH_JWT_SECRET: secret });
      const page = await blankPage();
      const sockets = [];
      page.on('websocket', (ws) => sockets.push(ws.url()));
      let calls = 0;
      // The first token comes at once and lives 3 s; later ones come from a slow backend
      // (6 s), long after the live token ran out, so the server closes with 1008 first.
      await page.exposeFunction('mintToken', async () => {
        calls += 1;
        if (calls > 1) await sleep(6000);
        return reader(calls > 1 ? 60 : 3);
      });
      await startClient(page, `${h.base}/herald.js`, { channels: ['t.exp'], mintedTokens: true });
      await waitOpen(page, 1);
      await publishAs(h, 't.exp', 'e1');
      await waitMessages(page, 't.exp', 1);
      await waitRec(page, 'closed for expiry', (rec) => rec.close.some((c) => c.code === 1008));
      assert.equal((await page.evaluate(() => window.rec.close))[0].reason, 'token expired');
      // Published while the client waits for its new token: replayed after the reconnect.
      await publishAs(h, 't.exp', 'e2');
      await publishAs(h, 't.exp', 'e3');
      await waitOpen(page, 2);
      await publishAs(h, 't.exp', 'e4');
      await waitMessages(page, 't.exp', 4);
      await sleep(300);
      assert.deepEqual(await messagesOn(page, 't.exp'), ['e1', 'e2', 'e3', 'e4']);
      assert.equal(sockets.length, 2);
      const url = new URL(sockets[1]);
      assert.match(url.searchParams.get('since'), /^t\.exp:\d+-\d+$/);
      assert.notEqual(url.searchParams.get('token'), new URL(sockets[0]).searchParams.get('token'));
      assert.equal(await metricOf(h.base, expiredCloses), 1);
      assert.deepEqual(await page.evaluate(() => window.rec.denied), []);

      // A fixed token and no getToken: at exp the client stops, saying why.
      const fixed = await blankPage();
      let fixedSockets = 0;
      fixed.on('websocket', () => { fixedSockets += 1; });
      await startClient(fixed, `${h.base}/herald.js`, { channels: ['t.fixed'], token: reader(2) });
      await waitOpen(fixed, 1);
      await waitRec(fixed, 'denied', (rec, client) => rec.denied.length === 1 && client.state === 'denied');
      const [denied] = await fixed.evaluate(() => window.rec.denied);
      assert.deepEqual(denied, { status: 401, reason: 'expired', error: 'token expired', channels: [] });
      await sleep(1000); // a retry would have started by now
      assert.equal(fixedSockets, 1, 'no attempt after "denied"');
      await fixed.close();

      // A token refused before the socket opens (its signature broken), from another origin:
      // the client asks /sse why (the refusal is readable from any origin) and stops.
      const forged = await blankPage();
      let forgedSockets = 0;
      forged.on('websocket', () => { forgedSockets += 1; });
      const token = reader(60);
      const broken = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
      await startClient(forged, `${h.base}/herald.js`, { channels: ['t.forged'], token: broken, backoff: FAST_BACKOFF });
      await waitRec(forged, 'denied', (rec, client) => rec.denied.length === 1 && client.state === 'denied');
      const [forgedWhy] = await forged.evaluate(() => window.rec.denied);
      assert.equal(forgedWhy.status, 401, JSON.stringify(forgedWhy));
      await sleep(1000); // a retry would have started by now
      assert.equal(forgedSockets, 1, 'no attempt after "denied"');
      await forged.close();

      // No token at all, from another origin: the client does not ask /sse why (a refusal is
      // unlikely without a token, and each failed attempt would cost a request); it keeps
      // retrying at its backoff.
      const anonymous = await blankPage();
      let attempts = 0;
      anonymous.on('websocket', () => { attempts += 1; });
      const missing = 'herald_auth_refusals_total{reason="missing"}';
      const refusedBefore = await metricOf(h.base, missing);
      await startClient(anonymous, `${h.base}/herald.js`, { channels: ['t.anon'], backoff: FAST_BACKOFF });
      await waitRec(anonymous, 'three refused attempts', (rec) => rec.close.filter((c) => !c.wasOpen).length >= 3);
      await anonymous.evaluate(() => window.client.close());
      const refused = (await metricOf(h.base, missing)) - refusedBefore;
      assert.equal(refused, attempts, `one refusal per WebSocket attempt, no probe: ${refused} for ${attempts}`);
      assert.deepEqual(await anonymous.evaluate(() => window.rec.denied), []);
      await anonymous.close();
      await page.close();
      await h.stop();
    });
  });
});
