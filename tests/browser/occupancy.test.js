'use strict';
// Real-browser test of "N watching" on the feed page (static/index.html + app.js, through
// herald.js's watchOccupancy): the page shows the subscribers of its first channel, itself
// included, and follows them as other clients (another tab, a script's SSE stream) come and
// go. Real herald binary, headless Chromium (/usr/bin/chromium via playwright-core).
//
// Run from the repo root:   node --test tests/browser/
// (after `npm ci` in tests/browser and `cargo build`).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const { HERALD_BIN, WAIT_MS, CASE_TIMEOUT_MS, Herald, launchChromium } = require('./support');

const SCREENSHOT = process.env.HERALD_OCCUPANCY_SCREENSHOT || path.join(os.tmpdir(), 'herald-occupancy.png');

/** An SSE subscriber of `channel`, open until `close()` (a client that is not a browser tab). */
function sseClient(base, channel) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${base}/sse?channels=${channel}`, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`SSE: ${res.statusCode}`));
      res.resume();
      resolve({ close: () => req.destroy() });
    });
    req.on('error', () => {}); // destroyed on purpose
    req.setTimeout(WAIT_MS, () => reject(new Error('SSE: no answer')));
  });
}

/** The page's "N watching" text, once it reads `text` (bounded by WAIT_MS). */
async function waitWatching(page, text) {
  await page.waitForFunction((want) => {
    const el = document.getElementById('occupancy');
    return el && !el.hidden && el.textContent === want;
  }, text, { timeout: WAIT_MS });
}

describe('"N watching" on the feed page', () => {
  const herald = new Herald('occupancy');
  let context = null;
  let userDataDir = null;

  before(async () => {
    if (!fs.existsSync(HERALD_BIN)) throw new Error(`herald binary not found at ${HERALD_BIN}`);
    await herald.start();
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-chromium-occupancy-'));
    context = await launchChromium(userDataDir, { width: 760, height: 900 });
  }, { timeout: CASE_TIMEOUT_MS });

  after(async () => {
    if (context) await context.close().catch(() => {});
    await herald.stop();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  }, { timeout: CASE_TIMEOUT_MS });

  it('counts the page itself, then follows other subscribers coming and going',
    { timeout: CASE_TIMEOUT_MS }, async (t) => {
      try {
        const page = await context.newPage();
        await page.goto(`${herald.base}/?channels=lobby`);
        await waitWatching(page, '1 watching');

        const other = await context.newPage();
        await other.goto(`${herald.base}/?channels=lobby,elsewhere`);
        await waitWatching(page, '2 watching');
        await waitWatching(other, '2 watching');

        const sse = await sseClient(herald.base, 'lobby');
        await waitWatching(page, '3 watching');
        const counted = await (await fetch(`${herald.base}/channels/lobby`)).json();
        assert.deepEqual(counted, { channel: 'lobby', subscribers: 3 });
        await page.locator('.feed-header').screenshot({ path: SCREENSHOT });

        sse.close();
        await other.close();
        await waitWatching(page, '1 watching');
        const title = await page.getAttribute('#occupancy', 'title');
        assert.match(title, /^1 subscriber of #lobby/);
      } catch (e) {
        t.diagnostic(herald.log.slice(-4000));
        throw e;
      }
    });
});
