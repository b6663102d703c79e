'use strict';
// Real-browser test of Herald's live feed page (static/index.html + app.js).
//
// Starts the real herald binary (HERALD_BIN, default target/debug/herald) on a
// free port, drives Debian's Chromium (/usr/bin/chromium) through
// playwright-core (no downloaded browsers), and checks the page the way a
// person would use it: two tabs, events over HTTP, XSS as text, server
// restart with automatic reconnect, and the publish form.
//
// Run from the repo root:   node --test tests/browser/
// (after `npm ci` in tests/browser and `cargo build`).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO_ROOT = path.resolve(__dirname, '../..');
const HERALD_BIN = process.env.HERALD_BIN || path.resolve(__dirname, '../../target/debug/herald');
const STATIC_DIR = path.join(REPO_ROOT, 'static');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SCREENSHOT = process.env.HERALD_SCREENSHOT || '/tmp/herald-page.png';

const WAIT_MS = 10_000; // every wait in this file is bounded by this
const CASE_TIMEOUT_MS = 60_000;
const VIEWPORT = { width: 760, height: 900 };
const XSS = '<img src=x onerror=alert(1)>';
const CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'";

// --------------------------------------------------------------- helpers

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
  constructor(name, extraEnv = {}) {
    this.name = name;
    this.extraEnv = extraEnv;
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
    const proc = spawn(HERALD_BIN, ['--port', String(port), '--bind', '127.0.0.1', '--static-dir', STATIC_DIR], {
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

/** [{type, message}] of the rendered events, top (newest) first. */
function eventsOf(page) {
  return page.$$eval('#feed .event', (items) => items.map((li) => ({
    type: li.querySelector('.event-type')?.textContent,
    message: li.querySelector('.event-message')?.textContent,
  })));
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

  process.on('exit', () => {
    herald.killSync();
    for (const h of extraHeralds) h.killSync();
  });

  function logs() {
    let out = `\n--- herald (${HERALD_BIN}) output ---\n${herald.log.slice(-20_000)}`;
    for (const h of extraHeralds) out += `\n--- herald "${h.name}" output ---\n${h.log.slice(-5_000)}`;
    for (const d of diag.values()) {
      out += `\n--- page ${d.name} console ---\n${d.console.join('\n')}\n${d.errors.join('\n')}`;
    }
    return out;
  }

  // Wrap a case so that a failure shows herald's stderr and the browser console.
  function check(name, fn) {
    it(name, { timeout: CASE_TIMEOUT_MS }, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        process.stderr.write(`\n[${name}] failed: ${e && e.stack}\n${logs()}\n`);
        throw e;
      }
    });
  }

  async function openPage(name, base) {
    const page = await context.newPage();
    const d = { name, console: [], errors: [], dialogs: [] };
    diag.set(page, d);
    page.on('console', (m) => d.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => d.errors.push(`pageerror: ${e.message}`));
    page.on('dialog', (dialog) => {
      d.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    const res = await page.goto(`${base}/`, { waitUntil: 'load', timeout: WAIT_MS });
    assert.equal(res.status(), 200, `GET ${base}/ -> ${res.status()}`);
    return page;
  }

  function unexpectedConsoleErrors(page) {
    return diag.get(page).console.filter((line) => line.startsWith('error:')
      // Expected while the server is down during the restart case, and for
      // the deliberate 401 in the token case:
      && !/WebSocket connection to .* failed/.test(line)
      && !/Failed to load resource: the server responded with a status of 401/.test(line));
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
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: VIEWPORT,
      timeout: 30_000,
    });
    context.setDefaultTimeout(WAIT_MS);
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

  check('6. no CSP violations, page errors or unexpected console errors', async () => {
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
