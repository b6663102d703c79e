// herald.js: the browser client of Herald (served at GET /herald.js). An ES module with no
// dependency and no build step; JSDoc types, so editors complete and check it.
//
//   import { connect } from "/herald.js";
//   const feed = connect({ channels: ["orders"], getToken: () => fetch("/token").then((r) => r.text()) });
//   feed.on("event", (e) => console.log(e.channel, e.type, e.message));
//   feed.on("reset", ({ channel }) => reloadOrders(channel));
//   feed.subscribe("alerts");
//
// What it does for the caller, so that a page only deals with events:
// - one WebSocket to /ws, opened again after any loss with capped exponential backoff and
//   jitter (at once, give or take 100 ms, after a server restart's 1001);
// - the id of the last event seen on each channel, sent back as `since=` on every reconnect
//   (and with a `subscribe`), so the server replays what was missed: no gap, no duplicate
//   (duplicates and out-of-order ids are still dropped here, as a safety net, and counted);
//   when the server cannot replay it says `reset`, passed on as a "reset" event;
// - subscriptions kept across reconnects: what `subscribe`/`unsubscribe` asked for is what the
//   next connection asks for;
// - tokens: `?token=` on the URL (browsers cannot set headers on a WebSocket); with
//   `getToken`, a new one is fetched before the current one's `exp` and handed to the live
//   connection with `{"op":"refresh"}`; if it expires anyway (close 1008 "token expired"),
//   the client fetches one and reconnects, resuming;
// - a connection refused before it opens (a WebSocket does not say why) is explained by one
//   fetch of /sse with the same channels and token: a 401/403 stops the client ("denied")
//   instead of retrying forever;
// - occupancy: `watchOccupancy(channel)` asks for "N subscribers" updates, again after every
//   reconnect.

/** The server's default channel (what `/ws` without `?channels=` receives). */
export const DEFAULT_CHANNEL = "events";

// Same rule as the server: 1-64 letters, digits, `_`, `-`, `.`, not starting with a dot.
const CHANNEL_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;
// Close code 1001 "going away": the server is shutting down or restarting.
const CLOSE_GOING_AWAY = 1001;
// Close code 1008 with this reason: the token ran out while connected.
const CLOSE_POLICY = 1008;
const EXPIRED_REASON = "token expired";
// Channel+id keys remembered to drop duplicates: a safety net, bounded.
const SEEN_LIMIT = 5000;
// Largest delay setTimeout takes (about 24.8 days); longer waits are done in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * @typedef {Object} HeraldEvent An event as published.
 * @property {string|null} id `<milliseconds>-<sequence>`, increasing per channel.
 * @property {string} type
 * @property {string} message
 * @property {string|null} channel
 * @property {Object|null} raw The whole JSON object received (null for a non-JSON frame).
 */

/**
 * @typedef {"connecting"|"open"|"reconnecting"|"denied"|"closed"} HeraldState
 * `denied`: access was refused (401/403, or an expired token and no `getToken`): no more
 * attempts. `closed`: `close()` was called.
 */

/**
 * @typedef {Object} StateChange
 * @property {HeraldState} state
 * @property {number} [delay] Milliseconds until the next attempt (`reconnecting`).
 * @property {number} [attempt] Failed attempts in a row.
 * @property {boolean} [reconnected] `open` after an earlier connection was lost.
 */

/**
 * @typedef {Object} OpenInfo
 * @property {boolean} reconnected An earlier connection was lost.
 * @property {Date|null} lostAt When the earlier connection was lost.
 * @property {string[]} channels Channels this connection receives from the start.
 * @property {Object<string,string>} resumed Channel -> id it resumes after (replayed first).
 * @property {string[]} blind On a reconnect, channels with no resume point: what was
 *   published on them while disconnected cannot be replayed.
 */

/**
 * @typedef {Object} Refusal Why the server refused access.
 * @property {number} status 401 or 403.
 * @property {string} reason `missing`, `expired`, `signature`, `channel`, ... (see the README).
 * @property {string} error The server's message.
 * @property {string[]} channels For 403: the channels the token does not cover.
 */

/**
 * @typedef {Object} HeraldEvents What `on(name, handler)` hands each handler.
 * @property {HeraldEvent} event An event on a channel this client receives.
 * @property {StateChange} state The connection state changed.
 * @property {OpenInfo} open A connection opened.
 * @property {{code: number, reason: string, wasOpen: boolean}} close The socket closed.
 * @property {{channel: string}} subscribed The server confirmed a subscription.
 * @property {{channel: string}} unsubscribed The server confirmed an unsubscription.
 * @property {{channel: string, since: string|null, reason: string}} reset The server cannot
 *   replay `channel` after `since` (history too short or lost): events may be missing; reload
 *   the state that depends on it. The channel continues live.
 * @property {{channel: string}} forbidden The token does not cover `channel`: its subscription
 *   or occupancy watch was refused (not asked for again until `subscribe`/`watchOccupancy` is
 *   called for it or the token is refreshed).
 * @property {Refusal} denied Access refused: the client has stopped.
 * @property {{exp: number}} refreshed The live connection took the new token (unix seconds).
 * @property {{channel: string, subscribers: number}} occupancy Subscribers of a watched channel:
 *   the count at once, then its changes (at most one a second).
 * @property {{channel: string, reason: string}} unwatched A watch ended: `unwatchOccupancy`, or
 *   `reason` "forbidden" (a refreshed token no longer covers the channel).
 * @property {{error: string, channel?: string, reason?: string}} error The server refused a
 *   message, or `getToken` failed.
 * @property {Object} notice Any other server message with an `op` (newer servers).
 */

/**
 * @typedef {Object} BackoffOptions
 * @property {number} [baseMs=250] First delay (the ceiling doubles per failed attempt).
 * @property {number} [capMs=5000] Largest delay.
 * @property {number} [stableAfterMs=5000] A connection open this long resets the backoff.
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {string} [url] Herald's address (`https://host`, `ws://host:8000/ws`, ...); default:
 *   the server this module was loaded from.
 * @property {string[]} [channels] Channels to receive (default `["events"]`).
 * @property {Object<string,string>} [since] Channel -> last id seen (e.g. kept across a page
 *   reload): the first connection resumes after it.
 * @property {string} [token] A JWT for a server with auth on.
 * @property {() => (string|Promise<string>)} [getToken] Returns a fresh token; called before
 *   the first connection if `token` is not given, before the current token's `exp`, and when
 *   it expired.
 * @property {number} [refreshLeadSeconds=30] Refresh this long before `exp` (at most a third
 *   of the token's remaining life).
 * @property {BackoffOptions} [backoff]
 * @property {boolean|(() => boolean)} [explainRefusals] After a failure before opening, ask
 *   /sse why (one request). Default: when the page is on Herald's own host, or a token is
 *   given; false where no refusal is possible (auth off) spares it.
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (default: the global one).
 */

/** True if `name` is a valid channel name (the server's rule). */
export function isChannelName(name) {
  return typeof name === "string" && CHANNEL_NAME.test(name);
}

/**
 * Connects to Herald and keeps the connection: see `HeraldClient`.
 * @param {ConnectOptions} [options]
 * @returns {HeraldClient}
 */
export function connect(options) {
  return new HeraldClient(options);
}

/** `"<ms>-<seq>"` -> [ms, seq], or null if it is not an event id. */
function parseId(id) {
  const m = /^(\d{1,16})-(\d{1,16})$/.exec(typeof id === "string" ? id : "");
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/**
 * Compares two event ids like a comparator; null if either is not an id.
 * @param {string} a
 * @param {string} b
 * @returns {number|null}
 */
export function compareIds(a, b) {
  const x = parseId(a);
  const y = parseId(b);
  if (!x || !y) return null;
  return x[0] !== y[0] ? x[0] - y[0] : x[1] - y[1];
}

function asText(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** The `exp` claim of a JWT (unix seconds), or null for a token that is not one. */
export function tokenExpiry(token) {
  const part = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64 + "===".slice((base64.length + 3) % 4)));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
}

/** The `/ws` URL of `url` (or of the server this module came from). */
function wsEndpoint(url) {
  const base = new URL(url || "/ws", import.meta.url);
  if (base.protocol === "http:") base.protocol = "ws:";
  if (base.protocol === "https:") base.protocol = "wss:";
  if (base.pathname === "/" || base.pathname === "") base.pathname = "/ws";
  base.search = "";
  base.hash = "";
  return base;
}

/**
 * One text frame -> an event, or a server message (it has an `op`).
 * @returns {{notice?: Object, event?: HeraldEvent}}
 */
function parseFrame(data) {
  let obj;
  try {
    obj = JSON.parse(data);
  } catch {
    // Not JSON (a publisher bypassing Herald's encoder cannot do this; kept as text anyway).
    return { event: { id: null, type: "message", message: String(data), channel: null, raw: null } };
  }
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
    return { event: { id: null, type: "message", message: asText(obj), channel: null, raw: obj } };
  }
  if (typeof obj.op === "string") return { notice: obj };
  return {
    event: {
      id: obj.id === undefined || obj.id === null ? null : asText(obj.id),
      type: asText(obj.type) || "event",
      message: asText(obj.message),
      channel: obj.channel === undefined || obj.channel === null ? null : asText(obj.channel),
      raw: obj,
    },
  };
}

/**
 * Where to resume each channel, and the duplicate filter.
 * - `last[ch]`: id of the newest event seen on `ch` (ids increase per channel).
 * - `floor[ch]`: for a channel with no event yet, the newest id seen live on another channel
 *   while both were received live on the same connection. Ids are time-based and ordered
 *   across channels, so nothing on `ch` up to it was missed: a quiet channel resumes from it
 *   instead of reconnecting blind. Also where a caller's `since` goes.
 */
class ResumePoints {
  constructor(since, stats) {
    this.last = new Map();
    this.floor = new Map();
    this.seen = new Set();
    this.seenOrder = [];
    this.stats = stats;
    for (const [channel, id] of Object.entries(since || {})) {
      if (isChannelName(channel) && parseId(id)) this.floor.set(channel, id);
    }
  }

  /** True if `event` is new (and records it); false for a duplicate or an older id. */
  accept(event, liveOnly) {
    if (event.id === null) return true; // nothing to compare
    const channel = event.channel ?? "";
    const key = `${channel}\n${event.id}`;
    if (this.seen.has(key)) {
      this.stats.duplicates += 1;
      return false;
    }
    const newest = this.last.get(channel);
    const order = newest === undefined ? null : compareIds(event.id, newest);
    if (order !== null && order <= 0) {
      this.stats.outOfOrder += 1;
      return false;
    }
    this.seen.add(key);
    this.seenOrder.push(key);
    if (this.seenOrder.length > SEEN_LIMIT) this.seen.delete(this.seenOrder.shift());
    if (channel && parseId(event.id)) {
      this.last.set(channel, event.id);
      this.floor.delete(channel);
      if (liveOnly.has(channel)) {
        for (const other of liveOnly) {
          if (other === channel || this.last.has(other)) continue;
          const floor = this.floor.get(other);
          const later = floor === undefined ? 1 : compareIds(event.id, floor);
          if (later !== null && later > 0) this.floor.set(other, event.id);
        }
      }
    }
    return true;
  }

  /** The id to resume `channel` after, if any. */
  of(channel) {
    return this.last.get(channel) ?? this.floor.get(channel);
  }

  forget(channel) {
    this.last.delete(channel);
    this.floor.delete(channel);
  }
}

/**
 * A connection to Herald that keeps itself open. Create it with `connect(options)`.
 */
export class HeraldClient {
  /** Counters, for tests and diagnostics (read-only). */
  stats = {
    events: 0, // events handed to "event" handlers
    duplicates: 0, // dropped: that channel+id was already handed over
    outOfOrder: 0, // dropped: id older than the channel's last
    ignored: 0, // dropped: a channel no longer received (in flight while unsubscribing)
    resets: 0, // `reset` messages
    reconnects: 0, // connections opened after the first
    resumed: 0, // reconnects that asked for a replay
    refreshes: 0, // tokens taken by a live connection
  };

  #endpoint;
  #WebSocket;
  #backoff;
  #refreshLead;
  #explainRefusals;
  #getToken;
  #token;
  /** @type {Map<string, Set<Function>>} */
  #handlers = new Map();
  /** Channels the caller wants, in order. */
  #wanted;
  /** Channels the token does not cover: not asked for again. */
  #forbidden = new Set();
  #occupancy = new Set();
  #resume;

  // Per connection: channels asked for, channels confirmed (events flowing), and channels
  // received without a replay (their events may raise quiet channels' floors).
  #requested = new Set();
  #active = new Set();
  #liveOnly = new Set();

  /** @type {WebSocket|null} */
  #socket = null;
  /** @type {HeraldState} */
  #state = "connecting";
  #attempt = 0;
  #timer = null;
  #refreshTimer = null;
  #tokenRequest = null;
  #pendingRefresh = null;
  #openedAt = 0;
  #everOpened = false;
  #lostAt = null;
  #stopped = false;
  #retryNow = () => this.retryNow();
  #onVisible = () => {
    if (document.visibilityState === "visible") this.retryNow();
  };

  /** @param {ConnectOptions} [options] */
  constructor(options = {}) {
    const channels = options.channels?.length ? options.channels : [DEFAULT_CHANNEL];
    for (const channel of channels) checkName(channel);
    this.#wanted = new Set(channels);
    this.#endpoint = wsEndpoint(options.url);
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    this.#backoff = { baseMs: 250, capMs: 5000, stableAfterMs: 5000, ...options.backoff };
    this.#refreshLead = options.refreshLeadSeconds ?? 30;
    // Asked from another origin only with a token: /sse refusals are readable from anywhere,
    // but without a token a refusal is unlikely, and asking would add a request to each failed
    // attempt (a server that is down fails it too).
    const explain =
      options.explainRefusals ??
      (this.#endpoint.host === globalThis.location?.host || Boolean(options.token || options.getToken));
    this.#explainRefusals = typeof explain === "function" ? explain : () => explain;
    this.#getToken = options.getToken || null;
    this.#token = options.token || "";
    this.#resume = new ResumePoints(options.since, this.stats);
    if (typeof window !== "undefined") {
      window.addEventListener("online", this.#retryNow);
      document.addEventListener("visibilitychange", this.#onVisible);
    }
    this.#setState("connecting");
    // Handlers registered right after connect() see everything from the first attempt on.
    queueMicrotask(() => this.#open());
  }

  /**
   * Calls `handler` for each `name` event; returns a function that removes it.
   * @template {keyof HeraldEvents} K
   * @param {K} name
   * @param {(detail: HeraldEvents[K]) => void} handler
   * @returns {() => void}
   */
  on(name, handler) {
    if (!this.#handlers.has(name)) this.#handlers.set(name, new Set());
    this.#handlers.get(name).add(handler);
    return () => this.off(name, handler);
  }

  /**
   * @template {keyof HeraldEvents} K
   * @param {K} name
   * @param {(detail: HeraldEvents[K]) => void} handler
   */
  off(name, handler) {
    this.#handlers.get(name)?.delete(handler);
  }

  /** @type {HeraldState} */
  get state() {
    return this.#state;
  }

  /** The channels asked for (whether or not the server confirmed them yet). */
  get channels() {
    return [...this.#wanted];
  }

  /** The current WebSocket, if any (diagnostics; closing it makes the client reconnect). */
  get socket() {
    return this.#socket;
  }

  /** Is a connection open? */
  get isOpen() {
    return this.#openedAt !== 0 && this.#socket?.readyState === 1;
  }

  /**
   * Channel -> the id each wanted channel resumes after: keep it (e.g. in sessionStorage)
   * and pass it as `since` to resume across page loads.
   * @returns {Object<string,string>}
   */
  resumePoints() {
    /** @type {Object<string,string>} */
    const points = {};
    for (const channel of this.#wanted) {
      const id = this.#resume.of(channel);
      if (id !== undefined) points[channel] = id;
    }
    return points;
  }

  /**
   * Receive `channel` too (now if connected, and on every reconnect). A channel refused
   * earlier is asked for again.
   * @param {string} channel
   * @param {{since?: string}} [options] Replay what came after this id first.
   */
  subscribe(channel, options = {}) {
    checkName(channel);
    if (options.since !== undefined) {
      if (!parseId(options.since)) throw new TypeError(`not an event id: ${options.since}`);
      this.#resume.forget(channel);
      this.#resume.floor.set(channel, options.since);
    }
    this.#forbidden.delete(channel);
    this.#wanted.add(channel);
    this.#sync();
  }

  /**
   * Stop receiving `channel`. Its resume point is forgotten: subscribed again later, it
   * starts live (pass `since` to `subscribe` to replay).
   * @param {string} channel
   */
  unsubscribe(channel) {
    this.#wanted.delete(channel);
    this.#forbidden.delete(channel);
    this.#resume.forget(channel);
    this.#sync();
  }

  /**
   * Ask for the number of subscribers of `channel` and updates when it changes (at most one
   * a second), as "occupancy" events; asked again on every reconnect.
   * @param {string} channel
   */
  watchOccupancy(channel) {
    checkName(channel);
    this.#occupancy.add(channel);
    this.#send({ op: "occupancy", channel });
  }

  /**
   * Stop the occupancy updates of `channel`.
   * @param {string} channel
   */
  unwatchOccupancy(channel) {
    if (this.#occupancy.delete(channel)) this.#send({ op: "occupancy", channel, watch: false });
  }

  /**
   * Hand a new token to the live connection now (`token`, or one from `getToken`); later
   * connections use it too. Resolves when the server took it; rejects if it refused it.
   * @param {string} [token]
   * @returns {Promise<{exp: number}|null>} null when not connected (the next connection uses it).
   */
  async refreshToken(token) {
    const fresh = token ?? (await this.#renewToken());
    if (!fresh) throw new Error("no token to refresh with");
    this.#token = fresh;
    if (!this.isOpen) return null;
    this.#pendingRefresh?.reject(new Error("superseded by a newer refresh"));
    const answer = new Promise((resolve, reject) => {
      this.#pendingRefresh = { resolve, reject };
    });
    this.#send({ op: "refresh", token: fresh });
    return answer;
  }

  /** Skip the wait before the next attempt (the browser came online, the tab became visible). */
  retryNow() {
    if (this.#stopped || this.#socket || this.#timer === null) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#open();
  }

  /** Close for good. */
  close() {
    this.#stop();
    if (this.#socket) this.#socket.close(1000);
    this.#setState("closed");
  }

  #stop() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    this.#timer = null;
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this.#retryNow);
      document.removeEventListener("visibilitychange", this.#onVisible);
    }
  }

  #emit(name, detail) {
    for (const handler of [...(this.#handlers.get(name) || [])]) {
      try {
        handler(detail);
      } catch (e) {
        // One handler's bug must not break the connection or the other handlers.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  #setState(state, info = {}) {
    this.#state = state;
    this.#emit("state", { state, ...info });
  }

  #send(message) {
    if (!this.isOpen) return false;
    this.#socket.send(JSON.stringify(message));
    return true;
  }

  /** The URL of the next attempt: wanted channels, their resume points, the token. */
  #url() {
    const url = new URL(this.#endpoint);
    const channels = [...this.#wanted].filter((c) => !this.#forbidden.has(c));
    if (channels.length) url.searchParams.set("channels", channels.join(","));
    const resumed = {};
    for (const channel of channels) {
      const id = this.#resume.of(channel);
      if (id !== undefined) resumed[channel] = id;
    }
    const since = Object.entries(resumed).map(([channel, id]) => `${channel}:${id}`);
    if (since.length) url.searchParams.set("since", since.join(","));
    if (this.#token) url.searchParams.set("token", this.#token);
    // Without `channels` the server sends its default channel (left at once if not wanted).
    return { url: url.toString(), channels: channels.length ? channels : [DEFAULT_CHANNEL], resumed };
  }

  #open() {
    this.#timer = null;
    if (this.#stopped) return;
    const exp = tokenExpiry(this.#token);
    if (this.#getToken && (!this.#token || (exp !== null && exp <= Date.now() / 1000))) {
      // No token yet, or it ran out while disconnected: get one first.
      this.#token = "";
      this.#renewToken().then((token) => {
        if (this.#stopped) return;
        if (token) return this.#open();
        this.#attempt += 1;
        this.#schedule(this.#delay());
      });
      return;
    }
    const { url, channels, resumed } = this.#url();
    let socket;
    try {
      socket = new this.#WebSocket(url);
    } catch {
      this.#attempt += 1;
      this.#schedule(this.#delay());
      return;
    }
    this.#socket = socket;
    // Property handlers, not listeners: whoever holds `socket` may detach them.
    socket.onopen = () => socket === this.#socket && this.#opened(channels, resumed);
    socket.onmessage = (e) => socket === this.#socket && this.#received(e.data);
    socket.onclose = (e) => socket === this.#socket && this.#closed(e, url);
    socket.onerror = () => {}; // always followed by a close
  }

  #opened(channels, resumed) {
    this.#openedAt = Date.now();
    this.#requested = new Set(channels);
    this.#active = new Set(channels);
    this.#liveOnly = new Set(channels.filter((c) => !(c in resumed)));
    const reconnected = this.#lostAt !== null;
    const info = {
      reconnected,
      lostAt: this.#lostAt,
      channels,
      resumed,
      blind: reconnected ? channels.filter((c) => !(c in resumed)) : [],
    };
    if (reconnected) {
      this.stats.reconnects += 1;
      if (Object.keys(resumed).length) this.stats.resumed += 1;
    }
    this.#everOpened = true;
    this.#lostAt = null;
    this.#emit("open", info);
    this.#setState("open", { reconnected });
    this.#sync();
    for (const channel of this.#occupancy) this.#send({ op: "occupancy", channel });
    this.#scheduleRefresh();
  }

  /** Brings this connection's subscriptions in line with what the caller wants. */
  #sync() {
    if (!this.isOpen) return;
    for (const channel of this.#wanted) {
      if (this.#requested.has(channel) || this.#forbidden.has(channel)) continue;
      const since = this.#resume.of(channel);
      const message = since === undefined ? { op: "subscribe", channel } : { op: "subscribe", channel, since };
      if (this.#send(message)) this.#requested.add(channel);
    }
    for (const channel of [...this.#requested]) {
      if (this.#wanted.has(channel)) continue;
      if (this.#send({ op: "unsubscribe", channel })) this.#leave(channel);
    }
  }

  #leave(channel) {
    this.#requested.delete(channel);
    this.#active.delete(channel);
    this.#liveOnly.delete(channel);
  }

  #received(data) {
    const frame = parseFrame(data);
    if (frame.notice) return this.#notice(frame.notice);
    const event = frame.event;
    if (event.channel !== null && !this.#active.has(event.channel)) {
      this.stats.ignored += 1;
      return;
    }
    if (!this.#resume.accept(event, this.#liveOnly)) return;
    this.stats.events += 1;
    this.#emit("event", event);
  }

  #notice(notice) {
    const channel = typeof notice.channel === "string" ? notice.channel : null;
    switch (notice.op) {
      case "subscribed":
        if (channel && this.#requested.has(channel)) {
          this.#active.add(channel);
          if (this.#resume.of(channel) === undefined) this.#liveOnly.add(channel);
          this.#emit("subscribed", { channel });
        }
        return;
      case "unsubscribed":
        if (channel && notice.reason === "forbidden") return this.#forbid(channel);
        if (channel) this.#emit("unsubscribed", { channel });
        return;
      case "reset":
        this.stats.resets += 1;
        if (channel) this.#resume.forget(channel);
        this.#emit("reset", {
          channel: channel ?? "",
          since: typeof notice.since === "string" ? notice.since : null,
          reason: asText(notice.reason),
        });
        return;
      case "refreshed":
        this.stats.refreshes += 1;
        this.#pendingRefresh?.resolve({ exp: notice.exp });
        this.#pendingRefresh = null;
        this.#emit("refreshed", { exp: notice.exp });
        // The new token may cover channels the old one did not.
        if (this.#forbidden.size) {
          this.#forbidden.clear();
          this.#sync();
        }
        this.#scheduleRefresh();
        return;
      case "occupancy":
        if (!channel) return;
        if (notice.watching === false) {
          this.#occupancy.delete(channel);
          this.#emit("unwatched", { channel, reason: asText(notice.reason) });
        } else if (typeof notice.subscribers === "number") {
          this.#emit("occupancy", { channel, subscribers: notice.subscribers });
        }
        return;
      case "error": {
        if (notice.error === "forbidden" && channel) return this.#forbid(channel);
        /** @type {HeraldEvents["error"]} */
        const error = { error: asText(notice.error), ...(channel && { channel }) };
        // A refused refresh is the only refusal with a `reason` and no channel.
        if (!channel && typeof notice.reason === "string") {
          error.reason = notice.reason;
          this.#pendingRefresh?.reject(Object.assign(new Error(error.error), error));
          this.#pendingRefresh = null;
        }
        this.#emit("error", error);
        return;
      }
      default:
        this.#emit("notice", notice);
    }
  }

  /** The token does not cover `channel`: stop asking for it (or its occupancy). */
  #forbid(channel) {
    this.#occupancy.delete(channel);
    this.#forbidden.add(channel);
    this.#leave(channel);
    this.#emit("forbidden", { channel });
  }

  #closed(event, url) {
    this.#socket = null;
    const wasOpen = this.#openedAt !== 0;
    this.#pendingRefresh?.reject(new Error("connection closed before the server answered"));
    this.#pendingRefresh = null;
    this.#emit("close", { code: event.code, reason: event.reason, wasOpen });
    if (this.#stopped) return;
    if (!wasOpen) return this.#failedBeforeOpening(url);
    if (this.#lostAt === null) this.#lostAt = new Date();
    const stable = Date.now() - this.#openedAt >= this.#backoff.stableAfterMs;
    this.#openedAt = 0;
    this.#requested = new Set();
    this.#active = new Set();
    this.#liveOnly = new Set();
    if (event.code === CLOSE_GOING_AWAY) {
      // The server is restarting: come back promptly (jittered, so not all at once).
      this.#attempt = 0;
      return this.#schedule(Math.round(Math.random() * 100));
    }
    if (event.code === CLOSE_POLICY && event.reason === EXPIRED_REASON) {
      const refusal = { status: 401, reason: "expired", error: EXPIRED_REASON, channels: [] };
      return this.#expired(refusal);
    }
    this.#attempt = stable ? 0 : this.#attempt + 1;
    this.#schedule(this.#delay());
  }

  /** Refused before opening? A WebSocket cannot tell: ask /sse once, then retry or stop. */
  #failedBeforeOpening(url) {
    this.#attempt += 1;
    const delay = this.#delay();
    const askedAt = Date.now();
    this.#setState("reconnecting", { delay, attempt: this.#attempt });
    const probe = this.#explainRefusals() ? probeAccess(url) : Promise.resolve(null);
    probe.then((refusal) => {
      if (this.#stopped) return;
      if (refusal?.reason === "expired") return this.#expired(refusal);
      if (refusal) return this.#deny(refusal);
      this.#schedule(Math.max(0, delay - (Date.now() - askedAt)));
    });
  }

  /** The token ran out: with `getToken`, reconnect with a new one (resuming); else stop. */
  #expired(refusal) {
    if (!this.#getToken) return this.#deny(refusal);
    this.#token = ""; // the next attempt gets a new one first
    this.#schedule(0);
  }

  #deny(refusal) {
    this.#stop();
    this.#setState("denied");
    this.#emit("denied", refusal);
  }

  #delay() {
    const { baseMs, capMs } = this.#backoff;
    const ceiling = Math.min(capMs, baseMs * 2 ** this.#attempt);
    // "Equal jitter": between half the ceiling and the ceiling, so many clients do not
    // reconnect in lockstep, yet the delay still grows.
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  #schedule(delay) {
    clearTimeout(this.#timer);
    const state = this.#everOpened || this.#attempt > 0 ? "reconnecting" : "connecting";
    this.#setState(state, { delay, attempt: this.#attempt });
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  /** A token from `getToken` (one call at a time), kept for what follows; "" on failure. */
  #renewToken() {
    if (!this.#getToken) return Promise.resolve("");
    this.#tokenRequest ??= Promise.resolve()
      .then(() => this.#getToken())
      .then((token) => {
        if (typeof token !== "string" || !token) throw new Error("getToken returned no token");
        this.#token = token;
        return token;
      })
      .catch((e) => {
        this.#emit("error", { error: `getToken failed: ${e?.message ?? e}` });
        return "";
      })
      .finally(() => {
        this.#tokenRequest = null;
      });
    return this.#tokenRequest;
  }

  /** With `getToken`: refresh the live connection's token a little before it expires. */
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    const exp = tokenExpiry(this.#token);
    if (!this.#getToken || exp === null || this.#stopped) return;
    const remaining = exp - Date.now() / 1000;
    const lead = Math.min(this.#refreshLead, Math.max(1, remaining / 3));
    const wait = (remaining - lead) * 1000;
    this.#refreshTimer = setTimeout(() => {
      if (wait > MAX_TIMER_MS) return this.#scheduleRefresh(); // a long-lived token: later
      this.refreshToken().catch(() => {
        // Refused or failed (an "error" event says why): the close at `exp` then
        // reconnects with a token from `getToken`.
      });
    }, Math.max(0, Math.min(wait, MAX_TIMER_MS)));
  }
}

function checkName(channel) {
  if (!isChannelName(channel)) {
    throw new TypeError(`invalid channel name ${JSON.stringify(channel)}: 1-64 letters, digits, "_", "-" or "."`);
  }
}

/**
 * Why did a WebSocket to `wsUrl` fail before it opened? Browsers do not say, so ask /sse
 * the same question (same channels and token: the server checks both routes alike) with
 * fetch, which shows the status. A refusal for 401/403; null otherwise (the server was
 * down, or the stream opened: it is cancelled at once).
 * @returns {Promise<Refusal|null>}
 */
async function probeAccess(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = "/sse";
  url.searchParams.delete("since");
  const controller = new AbortController();
  try {
    const res = await fetch(url, {
      cache: "no-store",
      headers: { Accept: "text/event-stream" },
      signal: controller.signal,
    });
    if (res.status !== 401 && res.status !== 403) {
      controller.abort();
      return null;
    }
    const body = await res.json().catch(() => ({}));
    return {
      status: res.status,
      error: asText(body?.error),
      reason: asText(body?.reason),
      channels: Array.isArray(body?.channels) ? body.channels.map(asText) : [],
    };
  } catch {
    return null;
  }
}
