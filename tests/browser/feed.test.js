'use strict';
// Real-browser test of Herald's live feed page (static/index.html + app.js, on herald.js).
//
// Starts the real herald binary (HERALD_BIN, default target/debug/herald) on a
// free port, drives Debian's Chromium (/usr/bin/chromium) through
// playwright-core (no downloaded browsers), and checks the page the way a
// person would use it: two tabs, events over HTTP, XSS as text, server
// restart with automatic reconnect, the publish form, channels (picker,
// subscribe/unsubscribe without reloading), resuming after a dropped
// connection with nothing lost or doubled, and, with Redis
// (/usr/bin/redis-server, REDIS_SERVER_BIN), resuming after the page's herald
// restarts while another replica keeps publishing.
//
// Run from the repo root:   node --test tests/browser/
// (after `npm ci` in tests/browser and `cargo build`).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const {
  REPO_ROOT, HERALD_BIN, WAIT_MS, CASE_TIMEOUT_MS, sleep, Herald, RedisServer, waitRedisConnected,
  postTo, postQuery, postJson, mintToken, metricOf, launchChromium,
} = require('./support');

const SCREENSHOT = process.env.HERALD_SCREENSHOT || '/tmp/herald-page.png';
const CHANNELS_SCREENSHOT = process.env.HERALD_CHANNELS_SCREENSHOT || '/tmp/herald-channels.png';
const VIEWPORT = { width: 760, height: 900 };
const XSS = '<img src=x onerror=alert(1)>';
const CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'";

// --------------------------------------------------------------- helpers

/** [{type, message}] of the rendered events, top (newest) first. */
function eventsOf(page) {
  return page.$$eval('#feed .event', (items) => items.map((li) => ({
    type: li.querySelector('.event-type')?.textContent,
    message: li.querySelector('.event-message')?.textContent,
  })));
}

/** [{type, message, channel}] of the rendered events, top (newest) first. */
function channelEventsOf(page) {
  return page.$$eval('#feed .event', (items) => items.map((li) => ({
    type: li.querySelector('.event-type')?.textContent,
    message: li.querySelector('.event-message')?.textContent,
    channel: li.querySelector('.event-channel')?.textContent ?? null,
  })));
}

/** Messages of the rendered events of `channel`, oldest first. */
function messagesOf(page, channel) {
  return page.$$eval('#feed .event', (items, ch) => items
    .filter((li) => li.dataset.channel === ch)
    .map((li) => li.querySelector('.event-message')?.textContent)
    .reverse(), channel);
}

/** [{channel, state}] of the channel chips, in order. */
function chipsOf(page) {
  return page.$$eval('#channel-list .chip', (chips) => chips.map((c) => ({
    channel: c.dataset.channel,
    state: c.dataset.state,
  })));
}

async function waitChip(page, channel, state) {
  try {
    await page.waitForFunction(([c, s]) => document.querySelector(`#channel-list .chip[data-channel="${c}"]`)
      ?.dataset.state === s, [channel, state], { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    throw new Error(`chip #${channel} never became ${state}: ${JSON.stringify(await chipsOf(page).catch(() => '?'))}; ${e.message}`);
  }
}

/** Wait until `count` events of `channel` are rendered. */
async function waitCount(page, channel, count) {
  try {
    await page.waitForFunction(([c, n]) => document.querySelectorAll(`#feed .event[data-channel="${c}"]`).length >= n,
      [channel, count], { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    const got = await messagesOf(page, channel).catch(() => []);
    throw new Error(`expected ${count} events on #${channel}, have ${got.length}: ${JSON.stringify(got)}; ${e.message}`);
  }
}

function statsOf(page) {
  return page.evaluate(() => ({ ...window.__heraldStats }));
}

function noticesOf(page) {
  return page.$$eval('#feed .feed-gap', (items) => items.map((li) => li.textContent));
}

function statusOf(page) {
  return page.$eval('#status', (e) => e.textContent);
}

async function waitStatus(page, text) {
  try {
    await page.waitForFunction((t) => document.getElementById('status')?.textContent === t, text,
      { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    throw new Error(`#status never became ${JSON.stringify(text)} (is ${JSON.stringify(await statusOf(page).catch(() => '?'))}): ${e.message}`);
  }
}

async function waitTopEvent(page, type, message) {
  try {
    await page.waitForFunction(([t, m]) => {
      const li = document.querySelector('#feed .event');
      return !!li && li.querySelector('.event-type')?.textContent === t
        && li.querySelector('.event-message')?.textContent === m;
    }, [type, message], { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    const got = await eventsOf(page).catch(() => '?');
    throw new Error(`event ${type}/${JSON.stringify(message)} never showed on top; feed: ${JSON.stringify(got)}; ${e.message}`);
  }
}

// Runs in every page before its own scripts: records status changes and CSP
// violations so the test can check the sequence afterwards.
function pageProbe() {
  window.__statusLog = [];
  window.__cspViolations = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
  });
  document.addEventListener('DOMContentLoaded', () => {
    const s = document.getElementById('status');
    if (!s) return;
    window.__statusLog.push(s.textContent);
    new MutationObserver(() => {
      const last = window.__statusLog[window.__statusLog.length - 1];
      if (s.textContent !== last) window.__statusLog.push(s.textContent);
    }).observe(s, { childList: true, characterData: true, subtree: true });
  });
}

// --------------------------------------------------------------- the test

describe('Herald live feed page in Chromium', () => {
  const herald = new Herald('main');
  const extraHeralds = [];
  let context;
  let userDataDir;
  let pageA;
  let pageB;
  let serverSendsCsp = false;
  const diag = new Map(); // page -> { console: [], errors: [], dialogs: [] }

  const redisServers = [];

  process.on('exit', () => {
    herald.killSync();
    for (const h of extraHeralds) h.killSync();
    for (const r of redisServers) r.killSync();
  });

  function logs() {
    let out = `\n--- herald (${HERALD_BIN}) output ---\n${herald.log.slice(-20_000)}`;
    for (const h of extraHeralds) out += `\n--- herald "${h.name}" output ---\n${h.log.slice(-5_000)}`;
    for (const r of redisServers) out += `\n--- redis-server output ---\n${r.log.slice(-3_000)}`;
    for (const d of diag.values()) {
      out += `\n--- page ${d.name} console ---\n${d.console.join('\n')}\n${d.errors.join('\n')}`;
    }
    return out;
  }

  // Wrap a case so that a failure shows herald's stderr and the browser console.
  function check(name, fn, opts = {}) {
    it(name, { timeout: CASE_TIMEOUT_MS, ...opts }, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        process.stderr.write(`\n[${name}] failed: ${e && e.stack}\n${logs()}\n`);
        throw e;
      }
    });
  }

  async function openPage(name, base, query = '') {
    const page = await context.newPage();
    const d = { name, console: [], errors: [], dialogs: [] };
    diag.set(page, d);
    page.on('console', (m) => d.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => d.errors.push(`pageerror: ${e.message}`));
    page.on('dialog', (dialog) => {
      d.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    const res = await page.goto(`${base}/${query}`, { waitUntil: 'load', timeout: WAIT_MS });
    assert.equal(res.status(), 200, `GET ${base}/${query} -> ${res.status()}`);
    return page;
  }

  function unexpectedConsoleErrors(page) {
    return diag.get(page).console.filter((line) => line.startsWith('error:')
      // Expected while the server is down during the restart case, and for
      // the deliberate 401 in the token case:
      && !/WebSocket connection to .* failed/.test(line)
      && !/Failed to load resource: the server responded with a status of 40[13]/.test(line));
  }

  before(async () => {
    if (!fs.existsSync(HERALD_BIN)) {
      throw new Error(`herald binary not found at ${HERALD_BIN}: run \`cargo build\` in ${REPO_ROOT} or set HERALD_BIN`);
    }
    try {
      await herald.start();
    } catch (e) {
      process.stderr.write(logs());
      throw e;
    }

    // The page must work under the production CSP. If this herald does not
    // send one, enforce it on the document ourselves.
    const res = await fetch(`${herald.base}/`, { signal: AbortSignal.timeout(WAIT_MS) });
    await res.arrayBuffer();
    serverSendsCsp = !!res.headers.get('content-security-policy');

    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-chromium-'));
    context = await launchChromium(userDataDir, VIEWPORT);
    await context.addInitScript(pageProbe);
    if (!serverSendsCsp) {
      await context.route((url) => url.pathname === '/', async (route) => {
        const response = await route.fetch();
        await route.fulfill({ response, headers: { ...response.headers(), 'content-security-policy': CSP } });
      });
    }
  }, { timeout: CASE_TIMEOUT_MS });

  after(async () => {
    if (context) await context.close().catch(() => {});
    await herald.stop();
    for (const h of extraHeralds) await h.stop();
    for (const r of redisServers) await r.stop();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  }, { timeout: CASE_TIMEOUT_MS });

  check('1. two tabs connect and show HTTP-published events, newest first', async (t) => {
    if (!serverSendsCsp) t.diagnostic('herald sent no Content-Security-Policy on /; the test enforced it itself');

    pageA = await openPage('A', herald.base);
    pageB = await openPage('B', herald.base);
    await Promise.all([waitStatus(pageA, 'Connected'), waitStatus(pageB, 'Connected')]);

    for (const page of [pageA, pageB]) {
      assert.deepEqual(await eventsOf(page), []);
      assert.equal(await page.isVisible('#empty-state'), true, 'empty state shown before any event');
      assert.equal(await page.getAttribute('#feed', 'aria-live'), 'polite');
    }

    // The tutorial's curl form, then a JSON body.
    const r1 = await postQuery(herald.base, 'order', 'Order #123 placed');
    assert.equal(r1.type, 'order');
    const r2 = await postJson(herald.base, { type: 'deploy', message: 'v2.1 deployed to staging' });
    assert.equal(r2.type, 'deploy');
    if (typeof r2.receivers === 'number') assert.ok(r2.receivers >= 2, `receivers=${r2.receivers}, expected both tabs`);

    const expected = [
      { type: 'deploy', message: 'v2.1 deployed to staging' },
      { type: 'order', message: 'Order #123 placed' },
    ];
    for (const page of [pageA, pageB]) {
      await waitTopEvent(page, 'deploy', 'v2.1 deployed to staging');
      assert.deepEqual(await eventsOf(page), expected);
      assert.equal(await page.textContent('#event-count'), '2 events');
      assert.equal(await page.isVisible('#empty-state'), false, 'empty state hidden once events arrive');
      assert.match(await page.getAttribute('#feed .event .event-time', 'datetime'), /^\d{4}-\d\d-\d\dT/);
    }
  });

  check('2. an HTML message is shown as literal text, never as markup', async () => {
    await postJson(herald.base, { type: 'xss', message: XSS });
    for (const page of [pageA, pageB]) {
      await waitTopEvent(page, 'xss', XSS);
    }
    await sleep(500); // give a (wrongly) created <img> time to fail and fire onerror
    for (const page of [pageA, pageB]) {
      const d = diag.get(page);
      assert.equal(await page.locator('img').count(), 0, 'no <img> element was created');
      const html = await page.$eval('#feed .event .event-message', (e) => e.innerHTML);
      assert.equal(html, '&lt;img src=x onerror=alert(1)&gt;');
      assert.deepEqual(d.dialogs, [], 'no dialog fired');
      assert.deepEqual(d.errors, [], 'no page errors');
    }
  });

  check('3. after herald restarts on the same port both tabs reconnect without reloading', async () => {
    for (const page of [pageA, pageB]) {
      await page.evaluate(() => { window.__heraldMarker = 'still-here'; });
    }
    const before = await eventsOf(pageA);

    const exit = await herald.stop();
    assert.ok(exit && !exit.hung, 'herald exits on SIGTERM');
    await Promise.all([waitStatus(pageA, 'Reconnecting…'), waitStatus(pageB, 'Reconnecting…')]);

    await herald.restartSamePort();
    await Promise.all([waitStatus(pageA, 'Connected'), waitStatus(pageB, 'Connected')]);

    await postQuery(herald.base, 'restart', 'Back after a restart');
    for (const page of [pageA, pageB]) {
      await waitTopEvent(page, 'restart', 'Back after a restart');
      assert.equal(await page.evaluate(() => window.__heraldMarker), 'still-here', 'page was not reloaded');
      assert.deepEqual(await eventsOf(page), [{ type: 'restart', message: 'Back after a restart' }, ...before],
        'earlier events are kept');
      // The embedded broker's history died with the process: the page asked to
      // resume, the server said it cannot, and the page says so (once).
      const notices = await noticesOf(page);
      assert.equal(notices.length, 1, `one notice: ${JSON.stringify(notices)}`);
      assert.match(notices[0], /History not available since \S.* on #events: some events may be missing$/);
      assert.equal((await statsOf(page)).resets, 1);
      const log = await page.evaluate(() => window.__statusLog);
      const i = log.lastIndexOf('Reconnecting…');
      assert.ok(i > 0 && log.slice(0, i).includes('Connected') && log.slice(i).includes('Connected'),
        `status went Connected -> Reconnecting… -> Connected: ${JSON.stringify(log)}`);
    }
  });

  check('4. the publish form in one tab posts an event that appears in the other', async () => {
    await pageA.getByLabel('Type', { exact: true }).fill('chat');
    await pageA.getByLabel('Message', { exact: true }).fill('Hello from tab A');
    await pageA.getByRole('button', { name: 'Publish' }).click();

    await waitTopEvent(pageB, 'chat', 'Hello from tab A');
    await waitTopEvent(pageA, 'chat', 'Hello from tab A');
    await pageA.waitForFunction(() => /^Published/.test(document.getElementById('publish-result').textContent),
      null, { timeout: WAIT_MS, polling: 50 });
    assert.equal(await pageA.inputValue('#publish-message'), '', 'message field cleared after publishing');

    // Side-by-side picture for humans: both tabs composed into one PNG.
    // (Reduced motion: no "new event" highlight frozen mid-fade in the picture.)
    for (const page of [pageA, pageB]) await page.emulateMedia({ reducedMotion: 'reduce' });
    const [shotA, shotB] = [await pageA.screenshot(), await pageB.screenshot()];
    const sheet = await context.newPage();
    try {
      await sheet.setViewportSize({ width: VIEWPORT.width * 2 + 24, height: VIEWPORT.height + 16 });
      const img = (buf) => `<img alt="" src="data:image/png;base64,${buf.toString('base64')}">`;
      await sheet.setContent(`<!doctype html><body style="margin:0;padding:8px;display:flex;gap:8px;background:#9aa3b2">${img(shotA)}${img(shotB)}</body>`);
      await sheet.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0),
        null, { timeout: WAIT_MS });
      await sheet.screenshot({ path: SCREENSHOT });
    } finally {
      await sheet.close();
    }
  });

  check('5. with PUBLISH_TOKEN set the form asks for the token and reports a 401', async () => {
    const secured = new Herald('token', { PUBLISH_TOKEN: 'tok-s3cret' });
    extraHeralds.push(secured);
    await secured.start();
    const page = await openPage('token', secured.base);
    try {
      await waitStatus(page, 'Connected');
      const token = page.getByLabel('Publish token', { exact: true });
      await token.waitFor({ state: 'visible', timeout: WAIT_MS });

      await page.getByLabel('Type', { exact: true }).fill('secure');
      await page.getByLabel('Message', { exact: true }).fill('with a token');
      await page.getByRole('button', { name: 'Publish' }).click();
      await page.waitForFunction(() => /^Error 401: ./.test(document.getElementById('publish-result').textContent),
        null, { timeout: WAIT_MS, polling: 50 });
      assert.deepEqual(await eventsOf(page), [], 'nothing published without the token');

      await token.fill('tok-s3cret');
      await page.getByRole('button', { name: 'Publish' }).click();
      await waitTopEvent(page, 'secure', 'with a token');
      assert.match(await page.textContent('#publish-result'), /^Published/);
    } finally {
      await page.close();
      await secured.stop();
    }
  });

  check('6. each tab follows its own channels; the picker changes them live, without reloading', async () => {
    const orders = await openPage('orders', herald.base, '?channels=orders');
    const deploys = await openPage('deploys', herald.base, '?channels=deploys');
    await Promise.all([waitStatus(orders, 'Connected'), waitStatus(deploys, 'Connected')]);
    await Promise.all([waitChip(orders, 'orders', 'live'), waitChip(deploys, 'deploys', 'live')]);
    assert.deepEqual(await chipsOf(orders), [{ channel: 'orders', state: 'live' }]);
    assert.deepEqual(await chipsOf(deploys), [{ channel: 'deploys', state: 'live' }]);
    assert.equal(await orders.inputValue('#publish-channel'), 'orders', 'publish form defaults to the followed channel');
    assert.equal(await deploys.inputValue('#publish-channel'), 'deploys');
    // The only channel cannot be removed (the feed would be empty).
    assert.equal(await orders.getByRole('button', { name: 'Stop following orders' }).isDisabled(), true);
    await orders.evaluate(() => { window.__heraldMarker = 'no-reload'; });

    // Published one after another: a tab that wrongly got a channel would
    // have received its event before the one it waits for.
    await postTo(herald.base, 'events', 'noise', 'on the default channel');
    await postTo(herald.base, 'deploys', 'deploy', 'api v2.3.1 rolled out to eu-west');
    await postTo(herald.base, 'orders', 'order', 'Order #1042 placed');
    await postTo(herald.base, 'deploys', 'deploy', 'web v5.0.0 rolled out');
    await waitTopEvent(orders, 'order', 'Order #1042 placed');
    await waitTopEvent(deploys, 'deploy', 'web v5.0.0 rolled out');
    assert.deepEqual(await channelEventsOf(orders), [
      { type: 'order', message: 'Order #1042 placed', channel: '#orders' },
    ]);
    assert.deepEqual(await channelEventsOf(deploys), [
      { type: 'deploy', message: 'web v5.0.0 rolled out', channel: '#deploys' },
      { type: 'deploy', message: 'api v2.3.1 rolled out to eu-west', channel: '#deploys' },
    ]);
    assert.equal(await orders.isVisible('#feed .event .event-channel'), true, 'the channel is shown');

    // Follow #deploys too, from the picker (the keyboard way: type + Enter).
    await orders.getByLabel('Follow a channel', { exact: true }).fill('deploys');
    await orders.getByLabel('Follow a channel', { exact: true }).press('Enter');
    await waitChip(orders, 'deploys', 'live');
    assert.equal(new URL(orders.url()).search, '?channels=orders,deploys', 'address bar keeps the channels');
    await postTo(herald.base, 'orders', 'order', 'Order #1043 placed');
    await postTo(herald.base, 'deploys', 'deploy', 'worker v1.8.2 rolled out');
    for (const page of [orders, deploys]) await waitTopEvent(page, 'deploy', 'worker v1.8.2 rolled out');
    assert.deepEqual(await channelEventsOf(orders), [
      { type: 'deploy', message: 'worker v1.8.2 rolled out', channel: '#deploys' },
      { type: 'order', message: 'Order #1043 placed', channel: '#orders' },
      { type: 'order', message: 'Order #1042 placed', channel: '#orders' },
    ]);
    assert.equal(await orders.evaluate(() => window.__heraldMarker), 'no-reload', 'page was not reloaded');

    // Picture for humans: a tab following two channels, at desktop width.
    // (In front, so its transitions have run; reduced motion: no highlight mid-fade.)
    await orders.bringToFront();
    await orders.emulateMedia({ reducedMotion: 'reduce' });
    await orders.setViewportSize({ width: 1180, height: 760 });
    await sleep(400);
    await orders.screenshot({ path: CHANNELS_SCREENSHOT });
    await orders.setViewportSize(VIEWPORT);

    // Stop following #orders (mouse), then publish with the form: its channel
    // now defaults to #deploys. #orders events no longer show up.
    await orders.getByRole('button', { name: 'Stop following orders' }).click();
    await orders.waitForFunction(() => !document.querySelector('#channel-list .chip[data-channel="orders"]'),
      null, { timeout: WAIT_MS, polling: 50 });
    assert.deepEqual(await chipsOf(orders), [{ channel: 'deploys', state: 'live' }]);
    assert.equal(await orders.inputValue('#publish-channel'), 'deploys');
    assert.equal(new URL(orders.url()).search, '?channels=deploys');
    await postTo(herald.base, 'orders', 'order', 'Order #1044 placed');
    await orders.getByLabel('Type', { exact: true }).fill('deploy');
    await orders.getByLabel('Message', { exact: true }).fill('db migration 42 applied');
    await orders.getByRole('button', { name: 'Publish' }).click();
    for (const page of [orders, deploys]) await waitTopEvent(page, 'deploy', 'db migration 42 applied');
    assert.match(await orders.textContent('#publish-result'), /^Published “deploy” to #deploys/);
    assert.deepEqual((await channelEventsOf(orders)).map((e) => e.message), [
      'db migration 42 applied', 'worker v1.8.2 rolled out', 'Order #1043 placed', 'Order #1042 placed',
    ]);

    // An invalid name is refused with a message, and nothing changes.
    await orders.getByLabel('Follow a channel', { exact: true }).fill('no spaces');
    await orders.getByRole('button', { name: 'Follow', exact: true }).click();
    assert.match(await orders.textContent('#channel-status'), /is not a channel name/);
    assert.deepEqual(await chipsOf(orders), [{ channel: 'deploys', state: 'live' }]);

    for (const page of [orders, deploys]) {
      const stats = await statsOf(page);
      assert.equal(stats.duplicates, 0, 'no duplicate events');
      assert.equal(stats.outOfOrder, 0, 'no out-of-order events');
      assert.deepEqual(await noticesOf(page), []);
      assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
    }
    await orders.close();
    await deploys.close();
  });

  check('7. after its connection drops, the page resumes: every event exactly once, in order', async (t) => {
    const channel = 'seq';
    const page = await openPage('resume', herald.base, `?channels=${channel}`);
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await waitStatus(page, 'Connected');
    await waitChip(page, channel, 'live');

    const N = 150;
    const dropAt = new Set([40, 95]);
    const expected = [];
    const missedLive = []; // per drop: events published while the page was disconnected
    let down = false;
    for (let i = 1; i <= N; i++) {
      const message = `event ${String(i).padStart(3, '0')}`;
      await postTo(herald.base, channel, 'seq', message);
      expected.push(message);
      if (down) {
        // Down until the page has opened its next connection.
        const reconnects = await page.evaluate(() => window.__heraldStats.reconnects);
        if (reconnects >= missedLive.length) down = false;
        else missedLive[missedLive.length - 1] += 1;
      }
      if (dropAt.has(i)) {
        // Drop only this page's connection; the server stays up.
        await page.evaluate(() => window.__heraldSocket.close());
        down = true;
        missedLive.push(0);
      }
      await sleep(10);
    }
    await waitCount(page, channel, N);
    await sleep(300); // anything extra (a duplicate) would arrive now
    assert.deepEqual(await messagesOf(page, channel), expected, 'every event exactly once, in order');

    const stats = await statsOf(page);
    assert.equal(stats.duplicates, 0, 'no duplicates dropped');
    assert.equal(stats.outOfOrder, 0);
    assert.equal(stats.resets, 0);
    assert.equal(stats.reconnects, 2, `reconnected after each drop: ${JSON.stringify(stats)}`);
    assert.equal(stats.resumed, 2);
    t.diagnostic(`events published while disconnected, per drop: ${missedLive.join(', ')}`);
    assert.ok(missedLive.every((n) => n > 0), `events were published during each outage: ${missedLive}`);
    assert.equal(sockets.length, 3, `three connections: ${sockets.join(' ')}`);
    assert.equal(new URL(sockets[0]).searchParams.get('since'), null, 'first connection has nothing to resume');
    for (const url of sockets.slice(1)) {
      assert.match(new URL(url).searchParams.get('since') ?? '', /^seq:\d+-\d+$/, `reconnect resumes: ${url}`);
    }
    assert.deepEqual(await noticesOf(page), [], 'no "may be missing" notice when resuming');
    assert.equal(await page.textContent('#event-count'), `${N} events`);

    // A reload resumes too (sessionStorage). Cut the socket without the page
    // noticing (so it cannot reconnect first), publish, reload: the reloaded
    // page gets the event it missed, and nothing it had already shown.
    await page.evaluate(() => {
      const ws = window.__heraldSocket;
      ws.onmessage = null;
      ws.onclose = null;
      ws.close();
    });
    await postTo(herald.base, channel, 'seq', 'published while reloading');
    await page.reload({ waitUntil: 'load', timeout: WAIT_MS });
    await waitStatus(page, 'Connected');
    assert.match(new URL(sockets[sockets.length - 1]).searchParams.get('since') ?? '', /^seq:\d+-\d+$/);
    await postTo(herald.base, channel, 'seq', 'after the reload');
    await waitTopEvent(page, 'seq', 'after the reload');
    assert.deepEqual(await messagesOf(page, channel), ['published while reloading', 'after the reload']);
    assert.equal((await statsOf(page)).duplicates, 0);
    await page.close();
  });

  check('8. Redis: the page\'s herald restarts while another replica publishes; nothing is lost or doubled', async () => {
    const redis = new RedisServer();
    redisServers.push(redis);
    await redis.start();
    const a = new Herald('redis-A', {}, ['--redis', redis.url]);
    const b = new Herald('redis-B', {}, ['--redis', redis.url]);
    extraHeralds.push(a, b);
    await a.start();
    await b.start();
    await Promise.all([waitRedisConnected(a), waitRedisConnected(b)]);

    const channel = 'orders';
    const page = await openPage('redis', a.base, `?channels=${channel}`);
    try {
      await waitStatus(page, 'Connected');
      await waitChip(page, channel, 'live');
      const expected = [];
      const publish = async (h, label) => {
        const message = `${label} ${String(expected.length + 1).padStart(3, '0')} via ${h.name}`;
        await postTo(h.base, channel, 'order', message);
        expected.push(message);
      };

      for (let i = 0; i < 10; i++) await publish(i % 2 ? b : a, 'before');
      await waitCount(page, channel, expected.length);

      const exit = await a.stop();
      assert.ok(exit && !exit.hung, 'herald A exits on SIGTERM');
      await waitStatus(page, 'Reconnecting…');
      for (let i = 0; i < 25; i++) await publish(b, 'outage');

      await a.restartSamePort();
      await waitStatus(page, 'Connected');
      for (let i = 0; i < 10; i++) await publish(i % 2 ? b : a, 'after');

      await waitCount(page, channel, expected.length);
      await sleep(300); // anything extra (a duplicate) would arrive now
      assert.deepEqual(await messagesOf(page, channel), expected, 'before + outage + after, each once, in order');
      const stats = await statsOf(page);
      assert.equal(stats.duplicates, 0, 'no duplicates dropped');
      assert.equal(stats.outOfOrder, 0);
      assert.equal(stats.resets, 0, 'no reset: the history was in Redis');
      assert.ok(stats.resumed >= 1, `resumed: ${JSON.stringify(stats)}`);
      assert.deepEqual(await noticesOf(page), [], 'no "may be missing" notice');
    } finally {
      await page.close();
      await a.stop();
      await b.stop();
      await redis.stop();
    }
  });

  check('8b. with auth on: a token shows its own channels only; without one the page says "Not authorised" and stops', async () => {
    const secret = 'browser-test-secret-of-32-bytes-or-more';
    const secured = new Herald('auth', { AUTH_JWT_SECRET: secret });
    extraHeralds.push(secured);
    await secured.start();
    const now = Math.floor(Date.now() / 1000);
    const reader = mintToken(secret, { sub: 'alice', exp: now + 600, channels: ['orders.*'] });
    const publisher = mintToken(secret, { sub: 'backend', exp: now + 600, publish: ['*'] });
    const publishAs = async (channel, message) => {
      const res = await fetch(`${secured.base}/events/${channel}?event_type=order&message=${encodeURIComponent(message)}`, {
        method: 'POST', headers: { Authorization: `Bearer ${publisher}` }, signal: AbortSignal.timeout(WAIT_MS),
      });
      assert.equal(res.status, 200, `publish to ${channel}: ${res.status} ${await res.text()}`);
    };
    const allowed = await openPage('auth-allowed', secured.base, `?channels=orders.eu&token=${reader}`);
    let sockets = 0;
    const refused = await (async () => {
      const page = await context.newPage();
      const d = { name: 'auth-refused', console: [], errors: [], dialogs: [] };
      diag.set(page, d);
      page.on('console', (m) => d.console.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => d.errors.push(`pageerror: ${e.message}`));
      page.on('websocket', () => { sockets += 1; });
      const res = await page.goto(`${secured.base}/?channels=orders.eu`, { waitUntil: 'load', timeout: WAIT_MS });
      assert.equal(res.status(), 200);
      return page;
    })();
    try {
      await waitStatus(allowed, 'Connected');
      // A channel the token does not cover, followed through the picker: refused, shown so.
      await allowed.getByLabel('Follow a channel').fill('billing');
      await allowed.getByRole('button', { name: 'Follow', exact: true }).click();
      await waitChip(allowed, 'billing', 'forbidden');
      assert.match(await allowed.textContent('#channel-status'), /Not authorised to follow #billing/);
      await publishAs('billing', 'not for alice');
      await publishAs('orders.eu', 'for alice');
      await waitTopEvent(allowed, 'order', 'for alice');
      await sleep(300); // a billing event, if it leaked, would be here by now
      assert.deepEqual(await channelEventsOf(allowed), [{ type: 'order', message: 'for alice', channel: '#orders.eu' }]);
      assert.equal(await statusOf(allowed), 'Connected', 'still connected after the refusal');

      // Without a token: "Not authorised", and no reconnect loop.
      await waitStatus(refused, 'Not authorised');
      const box = await refused.textContent('#auth-state');
      assert.match(box, /Not authorised/);
      assert.match(box, /needs a token/);
      const missing = 'herald_auth_refusals_total{reason="missing"}';
      const refusalsAtDenial = await metricOf(secured.base, missing);
      await sleep(3000); // the backoff would have retried several times by now
      assert.ok(sockets <= 2, `WebSocket attempts: ${sockets}`);
      const refusalsLater = await metricOf(secured.base, missing);
      assert.equal(refusalsLater, refusalsAtDenial, 'no attempt after "Not authorised"');
      // One WebSocket and one probe; at most a few in all.
      assert.ok(refusalsLater >= 2 && refusalsLater <= 4, `refusals: ${refusalsLater}`);
      assert.equal(await statusOf(refused), 'Not authorised');
    } finally {
      await allowed.close();
      await refused.close();
      await secured.stop();
    }
  });

  check('8c. Chromium negotiates permessage-deflate and reads compressed and plain events intact', async () => {
    const page = await openPage('deflate', herald.base);
    const wsUrl = `${herald.base.replace('http', 'ws')}/ws?channels=deflate-check`;
    const extensions = await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      window.__deflate = { ws, messages: [] };
      ws.onmessage = (m) => window.__deflate.messages.push(m.data);
      ws.onopen = () => resolve(ws.extensions);
      ws.onerror = () => reject(new Error('WebSocket failed'));
    }), wsUrl);
    // Herald's terms: no context takeover either way (nothing kept per connection).
    assert.equal(extensions, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    // A 2 KB event (compressed once, RSV1) and a small one (plain); Chromium fails the
    // connection on a bad compressed frame, so arriving intact is the check.
    const big = 'order 42 for alice@example.com shipped; '.repeat(50);
    await postJson(herald.base, { type: 'order', channel: 'deflate-check', message: big });
    await postJson(herald.base, { type: 'order', channel: 'deflate-check', message: 'small' });
    await page.waitForFunction(() => window.__deflate.messages.length >= 2, null, { timeout: WAIT_MS });
    const [first, second] = (await page.evaluate(() => window.__deflate.messages)).map((m) => JSON.parse(m));
    assert.equal(first.message, big);
    assert.equal(first.channel, 'deflate-check');
    assert.equal(second.message, 'small');
    // A control message from the browser (Chromium compresses what it sends when it pays).
    await page.evaluate(() => window.__deflate.ws.send(JSON.stringify({ op: 'subscribe', channel: 'deflate-more' })));
    await page.waitForFunction(() => window.__deflate.messages.length >= 3, null, { timeout: WAIT_MS });
    const notice = JSON.parse(await page.evaluate(() => window.__deflate.messages[2]));
    assert.deepEqual(notice, { op: 'subscribed', channel: 'deflate-more' });
    await page.close();
  });

  check('9. no CSP violations, page errors or unexpected console errors', async () => {
    for (const [page, d] of diag) {
      if (!page.isClosed()) {
        assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], `page ${d.name}: CSP violations`);
      }
      assert.deepEqual(d.errors, [], `page ${d.name}: page errors`);
      assert.deepEqual(unexpectedConsoleErrors(page), [], `page ${d.name}: console errors`);
      assert.deepEqual(d.dialogs, [], `page ${d.name}: dialogs`);
    }
  });
});
