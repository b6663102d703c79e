/*
 * Herald live feed page.
 *
 * Plain browser JavaScript, no framework, no build step. Served from the
 * same origin under a strict CSP (script-src 'self'; style-src 'self'), so
 * nothing here creates inline scripts or inline styles, and event data is
 * only ever inserted as text (textContent), never parsed as HTML.
 *
 * Layout of this file:
 *   config        readFeedConfig()            channels and token from the page URL
 *   URLs          buildWsUrl()                ws(s)://host/ws?channels=..&since=..&token=..
 *   access        probeAccess()               why a WebSocket failed before opening
 *   events        parseEvent(), renderEvent() one JSON frame -> event or notice
 *   resume        createResume()              last id per channel, dedupe, stats
 *   feed          createFeed()                list, counter, empty state, notices
 *   connection    connectFeed()               WebSocket with capped backoff + jitter
 *   channels      createChannelPicker()       followed channels (chips + input)
 *   server info   loadHealth()                GET /health
 *   publish       setupPublishForm()          POST /events
 *
 * Resuming: the page remembers the id of the last event it saw on each
 * channel (in memory, and in sessionStorage so a reload resumes too) and
 * reconnects with `since=<channel>:<id>,...`; the server then replays what
 * was missed before going live. If it cannot (history lost or too short) it
 * sends {"op":"reset"} and the page says events may be missing.
 *
 * Tokens: with auth on (the server has AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY), the page
 * is opened as /?token=<jwt> and passes the token on to /ws (browsers cannot set headers on
 * a WebSocket). A refused WebSocket only says "closed before opening", so after such a
 * failure the page asks /sse the same question over fetch, which does show the 401 or 403;
 * then it says "Not authorised" and stops reconnecting instead of hammering the server.
 */
(function () {
  'use strict';

  var STATUS_TEXT = {
    connecting: 'Connecting…',
    open: 'Connected',
    reconnecting: 'Reconnecting…',
    denied: 'Not authorised'
  };
  // Close code 1008 with this reason: the token ran out while connected.
  var CLOSE_POLICY = 1008;
  var EXPIRED_REASON = 'token expired';

  // Reconnect backoff: ~250 ms first, doubling, capped at 5 s, with jitter.
  var BACKOFF_BASE_MS = 250;
  var BACKOFF_CAP_MS = 5000;
  // A connection that stayed open this long counts as healthy: the next
  // failure starts the backoff from the beginning again.
  var STABLE_AFTER_MS = 5000;
  // Close code 1001 = "going away" (server shutdown or restart).
  var CLOSE_GOING_AWAY = 1001;
  // Keep the DOM bounded on long-running tabs.
  var MAX_RENDERED_EVENTS = 500;
  // Number of colour variants for type badges (see .type-color-N in app.css).
  var TYPE_COLORS = 8;

  // Channels: same rules as the server (1-64 letters, digits, _ - ., not
  // starting with a dot). `events` is the server's default channel.
  var DEFAULT_CHANNEL = 'events';
  var CHANNEL_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;
  var MAX_CHANNELS = 64;
  var CHANNEL_RULES = 'Channel names are 1–64 letters, digits, “_”, “-” or “.”.';

  // Event keys remembered for de-duplication (a safety net; see createResume).
  var SEEN_LIMIT = 5000;
  var STORAGE_KEY = 'herald.resume.v1';

  /* ------------------------------------------------------------------ */
  /* config                                                              */
  /* ------------------------------------------------------------------ */

  function isChannelName(name) {
    return typeof name === 'string' && CHANNEL_NAME.test(name);
  }

  /** "a, b,,#c" -> { names: ['a', 'b', 'c'], invalid: [] } (deduplicated, in order). */
  function parseChannelList(text) {
    var names = [];
    var invalid = [];
    String(text || '').split(',').forEach(function (part) {
      var name = part.trim().replace(/^#/, '');
      if (!name) return;
      if (!isChannelName(name)) invalid.push(name);
      else if (names.indexOf(name) < 0) names.push(name);
    });
    return { names: names, invalid: invalid };
  }

  /**
   * Options for the feed, from the page URL: `?channels=orders,deploys`
   * (default: the server's default channel, `events`) and `?token=<jwt>`.
   */
  function readFeedConfig(search) {
    var params = new URLSearchParams(search || '');
    var parsed = parseChannelList(params.get('channels'));
    var channels = parsed.names.slice(0, MAX_CHANNELS);
    return {
      channels: channels.length ? channels : [DEFAULT_CHANNEL],
      invalidChannels: parsed.invalid,
      token: (params.get('token') || '').trim()
    };
  }

  /* ------------------------------------------------------------------ */
  /* URLs                                                                */
  /* ------------------------------------------------------------------ */

  /**
   * WebSocket URL on the page's own host: wss: for https pages, ws: otherwise.
   * opts.channels: array of channel names -> ?channels=a,b
   * opts.since: { channel: lastId } -> &since=a:<id>,b:<id> (channels with an id only)
   * opts.token: a JWT -> &token=<jwt>
   */
  function buildWsUrl(loc, opts) {
    opts = opts || {};
    var url = new URL('/ws', loc.href);
    url.protocol = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    var channels = opts.channels || [];
    if (channels.length) {
      url.searchParams.set('channels', channels.join(','));
    }
    var since = opts.since || {};
    var pairs = channels
      .filter(function (c) { return typeof since[c] === 'string' && since[c] !== ''; })
      .map(function (c) { return c + ':' + since[c]; });
    if (pairs.length) url.searchParams.set('since', pairs.join(','));
    if (opts.token) url.searchParams.set('token', opts.token);
    return url.toString();
  }

  /* ------------------------------------------------------------------ */
  /* access                                                              */
  /* ------------------------------------------------------------------ */

  /**
   * Why did a WebSocket to `wsUrl` fail before it opened? The browser does not say, so ask
   * /sse the same question (same channels, same token: the server checks both routes the
   * same way) over fetch, which shows the status. Resolves to
   * { status: 401|403, error, reason, channels } when access is refused, or null when it
   * is not (the server was down, or the stream opened: it is cancelled at once).
   */
  function probeAccess(wsUrl) {
    var ws = new URL(wsUrl);
    var url = new URL('/sse', location.href);
    url.search = ws.search;
    url.searchParams.delete('since');
    var controller = typeof AbortController === 'function' ? new AbortController() : null;
    return fetch(url.toString(), {
      cache: 'no-store',
      headers: { Accept: 'text/event-stream' },
      signal: controller ? controller.signal : undefined
    })
      .then(function (res) {
        if (res.status !== 401 && res.status !== 403) {
          if (controller) controller.abort();
          return null;
        }
        return res.json().catch(function () { return {}; }).then(function (body) {
          return {
            status: res.status,
            error: body && body.error ? asText(body.error) : '',
            reason: body && body.reason ? asText(body.reason) : '',
            channels: body && Array.isArray(body.channels) ? body.channels.map(asText) : []
          };
        });
      })
      .catch(function () { return null; });
  }

  /** Delay before reconnect attempt number `attempt` (0-based). */
  function backoffDelay(attempt) {
    var ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    // "Equal jitter": somewhere between half the ceiling and the ceiling, so
    // many tabs do not reconnect in lockstep, yet the delay still grows.
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  }

  /* ------------------------------------------------------------------ */
  /* events                                                              */
  /* ------------------------------------------------------------------ */

  function asText(value) {
    if (value === undefined || value === null) return '';
    if (typeof value === 'string') return value;
    try { return JSON.stringify(value); } catch (e) { return String(value); }
  }

  /** "1718000000000-3" -> [1718000000000, 3], or null if it is not an event id. */
  function parseId(id) {
    var m = /^(\d{1,16})-(\d{1,16})$/.exec(typeof id === 'string' ? id : '');
    return m ? [Number(m[1]), Number(m[2])] : null;
  }

  /** <0, 0, >0 like a comparator; null if either is not an event id. */
  function compareIds(a, b) {
    var x = parseId(a);
    var y = parseId(b);
    if (!x || !y) return null;
    return x[0] !== y[0] ? x[0] - y[0] : x[1] - y[1];
  }

  /**
   * One WebSocket text frame -> { kind: 'event', type, message, id, channel }
   * or, for server messages with an "op" field, { kind: 'notice', op, ... }.
   * Unknown fields are kept on `raw` and otherwise ignored.
   */
  function parseEvent(data) {
    if (typeof data !== 'string') return null;
    var obj;
    try {
      obj = JSON.parse(data);
    } catch (e) {
      // Not JSON: still show it, as plain text.
      return { kind: 'event', type: 'message', message: data, id: null, channel: null, raw: null };
    }
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
      return { kind: 'event', type: 'message', message: asText(obj), id: null, channel: null, raw: obj };
    }
    if (typeof obj.op === 'string') {
      return {
        kind: 'notice',
        op: obj.op,
        channel: typeof obj.channel === 'string' ? obj.channel : null,
        since: typeof obj.since === 'string' ? obj.since : null,
        reason: asText(obj.reason),
        error: asText(obj.error),
        raw: obj
      };
    }
    return {
      kind: 'event',
      type: asText(obj.type) || 'event',
      message: asText(obj.message),
      id: obj.id === undefined || obj.id === null ? null : asText(obj.id),
      channel: obj.channel === undefined || obj.channel === null ? null : asText(obj.channel),
      raw: obj
    };
  }

  /** Stable colour bucket for a type name, so "order" always looks the same. */
  function typeColor(type) {
    var h = 0;
    for (var i = 0; i < type.length; i++) {
      h = (h * 31 + type.charCodeAt(i)) | 0;
    }
    return Math.abs(h) % TYPE_COLORS;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatTime(date) {
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  /**
   * Render one event as a list item. All event data goes in via textContent.
   *   <li class="event" data-id="…" data-channel="orders">
   *     <div class="event-meta">
   *       <span class="event-type">order</span>
   *       <span class="event-channel">#orders</span>      (only with a channel)
   *       <time class="event-time" datetime="…">12:00:01</time>
   *     </div>
   *     <p class="event-message">Order #123 placed</p>
   *   </li>
   */
  function renderEvent(evt, receivedAt) {
    var li = el('li', 'event');
    if (evt.id !== null) li.dataset.id = evt.id;
    if (evt.channel !== null) li.dataset.channel = evt.channel;

    var meta = el('div', 'event-meta');
    var type = el('span', 'event-type type-color-' + typeColor(evt.type), evt.type);
    type.title = 'Type ' + evt.type;
    meta.appendChild(type);

    if (evt.channel !== null) {
      var channel = el('span', 'event-channel', '#' + evt.channel);
      channel.title = 'Channel ' + evt.channel;
      meta.appendChild(channel);
    }

    var time = el('time', 'event-time', formatTime(receivedAt));
    time.dateTime = receivedAt.toISOString();
    time.title = 'Received ' + receivedAt.toLocaleString() + (evt.id !== null ? ' · id ' + evt.id : '');
    meta.appendChild(time);

    li.appendChild(meta);

    var message = el('p', 'event-message', evt.message);
    if (evt.message === '') {
      message.classList.add('is-empty');
      message.textContent = '(no message)';
    }
    li.appendChild(message);
    return li;
  }

  /* ------------------------------------------------------------------ */
  /* resume                                                              */
  /* ------------------------------------------------------------------ */

  function sessionStore() {
    try {
      var s = window.sessionStorage;
      var probe = STORAGE_KEY + '.probe';
      s.setItem(probe, '1');
      s.removeItem(probe);
      return s;
    } catch (e) {
      return null; // storage disabled: resume within this page only
    }
  }

  /**
   * Where to resume each channel from, and a de-duplication safety net.
   *
   * - last[ch]: id of the newest event seen on `ch`. Ids increase per channel.
   * - floor[ch]: for a channel that has had no event yet, the newest id seen
   *   live on another channel while both were subscribed (without a replay)
   *   on the same connection. Ids are time-based and ordered across
   *   channels, so nothing on `ch` after it was missed: resuming from it
   *   loses nothing on a quiet channel.
   * - seen: recent channel+id keys. The server never sends an event twice;
   *   anything dropped here is counted in stats.duplicates (or
   *   stats.outOfOrder for an id older than the channel's last one).
   *
   * last/floor are kept in sessionStorage (when available) so a reload of the
   * tab resumes where it left off; only for `channels`, the ones followed now.
   */
  function createResume(stats, storage, channels) {
    var last = Object.create(null);
    var floor = Object.create(null);
    var seen = new Set();
    var seenOrder = [];

    (function load() {
      if (!storage) return;
      try {
        var saved = JSON.parse(storage.getItem(STORAGE_KEY) || 'null');
        if (!saved || typeof saved !== 'object') return;
        ['last', 'floor'].forEach(function (k) {
          var src = saved[k] && typeof saved[k] === 'object' ? saved[k] : {};
          Object.keys(src).forEach(function (ch) {
            if (channels.indexOf(ch) >= 0 && parseId(src[ch])) (k === 'last' ? last : floor)[ch] = src[ch];
          });
        });
      } catch (e) { /* ignore a corrupt entry */ }
    })();

    var saveTimer = null;
    function save() {
      if (!storage || saveTimer !== null) return;
      saveTimer = setTimeout(flush, 200);
    }
    function flush() {
      clearTimeout(saveTimer);
      saveTimer = null;
      if (!storage) return;
      try {
        storage.setItem(STORAGE_KEY, JSON.stringify({ last: last, floor: floor }));
      } catch (e) { /* quota or disabled: in-memory only */ }
    }
    window.addEventListener('pagehide', flush);

    function remember(key) {
      seen.add(key);
      seenOrder.push(key);
      if (seenOrder.length > SEEN_LIMIT) seen.delete(seenOrder.shift());
    }

    /**
     * True if `evt` is new (and records it), false if it was already shown.
     * `liveOnly`: channels subscribed on this connection without a replay.
     */
    function accept(evt, liveOnly) {
      if (evt.id === null) return true; // published without an id: nothing to compare
      var ch = evt.channel === null ? '' : evt.channel;
      var key = ch + '\n' + evt.id;
      if (seen.has(key)) {
        stats.duplicates += 1;
        return false;
      }
      var cmp = last[ch] !== undefined ? compareIds(evt.id, last[ch]) : null;
      if (cmp !== null && cmp <= 0) {
        stats.outOfOrder += 1;
        return false;
      }
      remember(key);
      if (ch && parseId(evt.id)) {
        last[ch] = evt.id;
        delete floor[ch];
        if (liveOnly.has(ch)) {
          liveOnly.forEach(function (other) {
            if (other === ch || last[other] !== undefined) return;
            var c = floor[other] !== undefined ? compareIds(evt.id, floor[other]) : 1;
            if (c !== null && c > 0) floor[other] = evt.id;
          });
        }
        save();
      }
      return true;
    }

    /** { channel: id } to resume from, for the channels that have one. */
    function sinceFor(channels) {
      var out = {};
      channels.forEach(function (ch) {
        var id = last[ch] !== undefined ? last[ch] : floor[ch];
        if (id !== undefined) out[ch] = id;
      });
      return out;
    }

    /** Stop resuming `channel` (after a reset, or when it is unfollowed). */
    function forget(channel) {
      delete last[channel];
      delete floor[channel];
      save();
    }

    return { accept: accept, sinceFor: sinceFor, forget: forget };
  }

  /* ------------------------------------------------------------------ */
  /* feed                                                                */
  /* ------------------------------------------------------------------ */

  function createFeed(opts) {
    var list = opts.list;
    var empty = opts.empty;
    var counter = opts.counter;
    var clearButton = opts.clearButton;
    var received = 0;

    function update() {
      counter.textContent = received === 1 ? '1 event' : received + ' events';
      empty.hidden = list.children.length > 0;
      clearButton.disabled = list.children.length === 0;
    }

    function trim() {
      while (list.querySelectorAll('.event').length > MAX_RENDERED_EVENTS) {
        list.removeChild(list.lastElementChild);
      }
    }

    function add(evt) {
      received += 1;
      var item = renderEvent(evt, new Date());
      item.classList.add('is-new');
      list.insertBefore(item, list.firstChild);
      // Drop the highlight after the CSS animation; harmless if it never runs.
      setTimeout(function () { item.classList.remove('is-new'); }, 1600);
      trim();
      update();
    }

    /**
     * A divider in the feed: events around it may be missing. `kind` is
     * 'reset' (the server could not replay) or 'gap' (no resume point).
     */
    function addNotice(kind, text, title) {
      var first = list.firstElementChild;
      if (first && first.classList.contains('feed-gap')
        && first.querySelector('.feed-gap-text').textContent === text) return;
      var li = el('li', 'feed-gap');
      li.dataset.kind = kind;
      li.appendChild(el('span', 'feed-gap-icon', '!'));
      li.lastChild.setAttribute('aria-hidden', 'true');
      li.appendChild(el('span', 'feed-gap-text', text));
      if (title) li.title = title;
      list.insertBefore(li, list.firstChild);
      update();
    }

    function hasEvents() {
      return !!list.querySelector('.event');
    }

    function clear() {
      list.textContent = '';
      received = 0;
      update();
    }

    clearButton.addEventListener('click', clear);
    update();

    return { add: add, addNotice: addNotice, hasEvents: hasEvents, clear: clear };
  }

  /* ------------------------------------------------------------------ */
  /* connection                                                          */
  /* ------------------------------------------------------------------ */

  /**
   * Keep a WebSocket open to the feed, reconnecting by itself.
   *   opts.url():               URL for the next attempt (called on every attempt)
   *   opts.onSocket(ws):        a new WebSocket was created
   *   opts.onOpen(info):        connected (info.reconnected, info.lostAt)
   *   opts.onMessage(msg):      parsed event or notice
   *   opts.onClose():           the open connection was lost
   *   opts.onState(state, info): 'connecting' | 'open' | 'reconnecting'
   *   opts.probe(url):          after a failure before opening: Promise of a refusal or null
   *   opts.onDenied(refusal):   access refused (401/403, or the token expired): no more tries
   * Returns { send(obj) -> bool, isOpen(), retryNow(), close() }.
   */
  function connectFeed(opts) {
    var ws = null;
    var attempt = 0;
    var timer = null;
    var everOpened = false;
    var openedAt = 0;
    var lostAt = null;
    var stopped = false;
    var noop = function () {};
    var onSocket = opts.onSocket || noop;
    var onOpen = opts.onOpen || noop;
    var onClose = opts.onClose || noop;
    var probe = opts.probe || function () { return Promise.resolve(null); };
    var onDenied = opts.onDenied || noop;
    var lastUrl = null;

    /** Access refused: stop for good (a new token means a new page load). */
    function deny(refusal) {
      stopped = true;
      clearTimeout(timer);
      timer = null;
      onDenied(refusal);
    }

    function setState(state, info) {
      opts.onState(state, info || {});
    }

    function schedule(delay) {
      clearTimeout(timer);
      setState(everOpened ? 'reconnecting' : (attempt === 0 ? 'connecting' : 'reconnecting'),
        { delay: delay, attempt: attempt });
      timer = setTimeout(open, delay);
    }

    function open() {
      timer = null;
      if (stopped) return;
      var socket;
      try {
        lastUrl = opts.url();
        socket = new WebSocket(lastUrl);
      } catch (e) {
        attempt += 1;
        schedule(backoffDelay(attempt));
        return;
      }
      ws = socket;
      onSocket(socket);

      socket.onopen = function () {
        if (ws !== socket) return;
        openedAt = Date.now();
        var info = { reconnected: lostAt !== null, lostAt: lostAt };
        everOpened = true;
        lostAt = null;
        onOpen(info);
        setState('open', info);
      };

      socket.onmessage = function (e) {
        if (ws !== socket) return;
        var msg = parseEvent(e.data);
        if (msg) opts.onMessage(msg);
      };

      socket.onclose = function (e) {
        if (ws !== socket) return;
        ws = null;
        var wasOpen = openedAt !== 0;
        if (wasOpen) onClose();
        if (stopped) return;
        if (wasOpen) {
          if (lostAt === null) lostAt = new Date();
          var stable = Date.now() - openedAt >= STABLE_AFTER_MS;
          openedAt = 0;
          if (e.code === CLOSE_GOING_AWAY) {
            // Server shutting down or restarting: come back promptly.
            attempt = 0;
            schedule(Math.round(Math.random() * 100));
            return;
          }
          if (e.code === CLOSE_POLICY && e.reason === EXPIRED_REASON) {
            deny({ status: 401, reason: 'expired', error: EXPIRED_REASON, channels: [] });
            return;
          }
          attempt = stable ? 0 : attempt + 1;
          schedule(backoffDelay(attempt));
          return;
        }
        // Refused before opening: a 401/403 looks like any other failure here. Ask why
        // before trying again; show "reconnecting" meanwhile.
        attempt += 1;
        var delay = backoffDelay(attempt);
        var probedAt = Date.now();
        setState('reconnecting', { delay: delay, attempt: attempt });
        probe(lastUrl).then(function (refusal) {
          if (stopped) return;
          if (refusal) {
            deny(refusal);
            return;
          }
          schedule(Math.max(0, delay - (Date.now() - probedAt)));
        });
      };

      // Errors are always followed by a close event; handled there.
      socket.onerror = function () {};
    }

    /** Skip the wait and try right now (e.g. the tab became visible again). */
    function retryNow() {
      if (stopped || ws || timer === null) return;
      clearTimeout(timer);
      open();
    }

    function isOpen() {
      return !!ws && ws.readyState === WebSocket.OPEN && openedAt !== 0;
    }

    function send(obj) {
      if (!isOpen()) return false;
      ws.send(JSON.stringify(obj));
      return true;
    }

    window.addEventListener('online', retryNow);
    document.addEventListener('visibilitychange', function () {
      if (document.visibilityState === 'visible') retryNow();
    });

    setState('connecting', {});
    open();

    return {
      send: send,
      isOpen: isOpen,
      retryNow: retryNow,
      close: function () {
        stopped = true;
        clearTimeout(timer);
        if (ws) ws.close(1000);
      }
    };
  }

  /* ------------------------------------------------------------------ */
  /* channels                                                            */
  /* ------------------------------------------------------------------ */

  /**
   * The followed channels as removable chips, plus an input to add more.
   *   ui.list (<ul>), ui.form, ui.input, ui.status (role=status)
   *   initial: channel names; onChange(names): called after every change.
   * Chips carry data-state="live" (receiving), "pending" (subscribing or
   * disconnected) or "forbidden" (the token does not cover it), set with setState().
   */
  function chipTitle(name, state) {
    if (state === 'live') return 'Receiving #' + name;
    if (state === 'forbidden') return 'Not authorised for #' + name;
    return 'Subscribing to #' + name + '…';
  }

  function createChannelPicker(ui, initial, onChange) {
    var channels = initial.slice();
    var states = Object.create(null);

    function say(text, kind) {
      ui.status.dataset.kind = kind || 'info';
      ui.status.textContent = text;
    }

    function render(focusAfter) {
      ui.list.textContent = '';
      channels.forEach(function (name) {
        var li = el('li', 'chip');
        li.dataset.channel = name;
        li.dataset.state = states[name] || 'pending';
        li.title = chipTitle(name, states[name]);
        var dot = el('span', 'chip-dot');
        dot.setAttribute('aria-hidden', 'true');
        li.appendChild(dot);
        li.appendChild(el('span', 'chip-name', '#' + name));
        var remove = el('button', 'chip-remove', '×');
        remove.type = 'button';
        remove.setAttribute('aria-label', 'Stop following ' + name);
        if (channels.length === 1) {
          remove.disabled = true;
          remove.title = 'Follow another channel before removing this one';
        } else {
          remove.title = 'Stop following #' + name;
        }
        remove.addEventListener('click', function () { removeChannel(name); });
        li.appendChild(remove);
        ui.list.appendChild(li);
      });
      if (focusAfter !== undefined) {
        var buttons = ui.list.querySelectorAll('.chip-remove:not(:disabled)');
        var target = buttons[Math.min(focusAfter, buttons.length - 1)];
        (target || ui.input).focus();
      }
    }

    function add(text) {
      var parsed = parseChannelList(text);
      if (parsed.invalid.length) {
        say('“' + parsed.invalid[0] + '” is not a channel name. ' + CHANNEL_RULES, 'error');
        return false;
      }
      var fresh = parsed.names.filter(function (n) { return channels.indexOf(n) < 0; });
      if (!parsed.names.length) {
        say('Type a channel name to follow.', 'error');
        return false;
      }
      if (!fresh.length) {
        say('Already following ' + parsed.names.map(function (n) { return '#' + n; }).join(', ') + '.', 'info');
        return true;
      }
      if (channels.length + fresh.length > MAX_CHANNELS) {
        say('Follow at most ' + MAX_CHANNELS + ' channels.', 'error');
        return false;
      }
      channels = channels.concat(fresh);
      render();
      say('Following ' + fresh.map(function (n) { return '#' + n; }).join(', ') + '.', 'ok');
      onChange(channels.slice());
      return true;
    }

    function removeChannel(name) {
      var i = channels.indexOf(name);
      if (i < 0 || channels.length === 1) return;
      channels.splice(i, 1);
      delete states[name];
      render(i);
      say('Stopped following #' + name + '.', 'ok');
      onChange(channels.slice());
    }

    ui.form.addEventListener('submit', function (e) {
      e.preventDefault();
      if (add(ui.input.value)) ui.input.value = '';
      ui.input.focus();
    });
    ui.input.addEventListener('input', function () {
      if (ui.status.dataset.kind === 'error') say('');
    });

    render();

    return {
      channels: function () { return channels.slice(); },
      setState: function (name, state) {
        if (states[name] === state) return;
        states[name] = state;
        var chip = ui.list.querySelector('.chip[data-channel="' + name + '"]'); // names are [\w.-]
        if (chip) {
          chip.dataset.state = state;
          chip.title = chipTitle(name, state);
        }
      },
      say: say
    };
  }

  /* ------------------------------------------------------------------ */
  /* server info                                                         */
  /* ------------------------------------------------------------------ */

  function loadHealth() {
    return fetch('/health', { cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (res) { return res.ok ? res.json() : null; })
      .catch(function () { return null; });
  }

  /* ------------------------------------------------------------------ */
  /* publish                                                             */
  /* ------------------------------------------------------------------ */

  /**
   * The publish form. ui.channel follows `defaultChannel()` (the first
   * followed channel) until the person types another one; call
   * refreshChannel() when the followed channels change.
   */
  function setupPublishForm(ui, defaultChannel) {
    var form = ui.form;
    var inFlight = false;
    var shownDefault = null;

    function showResult(kind, text) {
      ui.result.dataset.kind = kind;
      ui.result.textContent = text;
    }

    function showToken(required) {
      ui.tokenField.hidden = !required;
      ui.token.required = !!required;
    }

    function refreshChannel(followed) {
      var def = defaultChannel();
      var current = ui.channel.value.trim();
      if (current === '' || current === shownDefault) ui.channel.value = def;
      shownDefault = def;
      ui.channel.placeholder = def;
      if (ui.channelOptions) {
        ui.channelOptions.textContent = '';
        (followed || []).forEach(function (name) {
          var option = document.createElement('option');
          option.value = name;
          ui.channelOptions.appendChild(option);
        });
      }
    }

    form.addEventListener('submit', function (e) {
      e.preventDefault();
      if (inFlight) return;
      var type = ui.type.value.trim();
      var message = ui.message.value;
      var channel = ui.channel.value.trim().replace(/^#/, '') || defaultChannel();
      if (!type) {
        showResult('error', 'Enter an event type.');
        ui.type.focus();
        return;
      }
      if (!isChannelName(channel)) {
        showResult('error', CHANNEL_RULES);
        ui.channel.focus();
        return;
      }
      var headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
      var token = ui.token.value.trim();
      if (!ui.tokenField.hidden && token) headers.Authorization = 'Bearer ' + token;
      else if (ui.pageToken) headers.Authorization = 'Bearer ' + ui.pageToken;

      inFlight = true;
      ui.submit.disabled = true;
      showResult('pending', 'Publishing…');

      fetch('/events', {
        method: 'POST',
        headers: headers,
        body: JSON.stringify({ type: type, message: message, channel: channel })
      })
        .then(function (res) {
          return res.text().then(function (body) {
            var data = null;
            try { data = body ? JSON.parse(body) : null; } catch (err) { data = null; }
            return { res: res, data: data };
          });
        })
        .then(function (r) {
          if (r.res.ok && r.data && r.data.published) {
            var n = r.data.receivers;
            var to = typeof n === 'number'
              ? ' (' + n + (n === 1 ? ' receiver' : ' receivers') + ')'
              : '';
            showResult('ok', 'Published “' + asText(r.data.type || type) + '” to #' +
              asText(r.data.channel || channel) + to + '.');
            ui.message.value = '';
            ui.message.focus();
            return;
          }
          var reason = r.data && r.data.error ? asText(r.data.error) : (r.res.statusText || 'request failed');
          showResult('error', 'Error ' + r.res.status + ': ' + reason);
          if (r.res.status === 401) {
            showToken(true);
            ui.token.focus();
          }
        })
        .catch(function () {
          showResult('error', 'Could not reach the server. Check the connection and try again.');
        })
        .then(function () {
          inFlight = false;
          ui.submit.disabled = false;
        });
    });

    return { showTokenField: showToken, refreshChannel: refreshChannel };
  }

  /* ------------------------------------------------------------------ */
  /* wiring                                                              */
  /* ------------------------------------------------------------------ */

  function byId(id) { return document.getElementById(id); }

  function channelTags(names) {
    return names.map(function (n) { return '#' + n; }).join(', ');
  }

  function start() {
    var config = readFeedConfig(location.search);
    var statusText = byId('status');
    var statusPill = byId('status-pill');

    // Counters for tests and debugging (read-only for the page itself).
    var stats = {
      events: 0,       // events rendered
      duplicates: 0,   // events dropped because that channel+id was already shown
      outOfOrder: 0,   // events dropped because their id was older than the channel's last
      ignored: 0,      // events of channels no longer followed (in flight while unsubscribing)
      resets: 0,       // {"op":"reset"} notices
      reconnects: 0,   // connections opened after the first
      resumed: 0       // reconnects that asked for a replay (since=...)
    };
    window.__heraldStats = stats;

    var resume = createResume(stats, sessionStore(), config.channels);

    var feed = createFeed({
      list: byId('feed'),
      empty: byId('empty-state'),
      counter: byId('event-count'),
      clearButton: byId('clear-feed')
    });

    // Per connection: channels the server has been asked for on this socket,
    // channels it confirmed (events flowing), and channels joined without a
    // replay (their events are live, so they can advance quiet channels' floors).
    var requested = new Set();
    var active = new Set();
    var liveOnly = new Set();
    var nextUrl = null; // { channels, since } used for the socket being opened
    var forbidden = new Set(); // channels the token does not cover: not asked for again

    var picker = createChannelPicker({
      list: byId('channel-list'),
      form: byId('channel-form'),
      input: byId('channel-input'),
      status: byId('channel-status')
    }, config.channels, onChannelsChanged);
    var followed = picker.channels();
    if (config.invalidChannels.length) {
      picker.say('Ignored “' + config.invalidChannels[0] + '” from the address: ' + CHANNEL_RULES, 'error');
    }

    var publish = setupPublishForm({
      form: byId('publish-form'),
      type: byId('publish-type'),
      message: byId('publish-message'),
      channel: byId('publish-channel'),
      channelOptions: byId('channel-options'),
      tokenField: byId('publish-token-field'),
      token: byId('publish-token'),
      submit: byId('publish-submit'),
      result: byId('publish-result'),
      pageToken: config.token
    }, function () { return picker.channels()[0]; });
    publish.refreshChannel(picker.channels());

    function wsUrl() {
      var channels = picker.channels().filter(function (ch) { return !forbidden.has(ch); });
      var since = resume.sinceFor(channels);
      nextUrl = { channels: channels, since: since };
      return buildWsUrl(location, { channels: channels, since: since, token: config.token });
    }

    var endpoint = byId('ws-endpoint');
    endpoint.textContent = buildWsUrl(location, {}).split('?')[0];
    byId('curl-hint').textContent =
      'curl -X POST "' + location.origin + '/events/' + config.channels[0] +
      '?event_type=order&message=Order+%23123+placed"';

    /** Keep ?channels= in the address bar, so a reload or a shared link follows the same channels. */
    function updateAddress(channels) {
      try {
        var url = new URL(location.href);
        url.searchParams.delete('channels');
        var query = url.searchParams.toString();
        if (!(channels.length === 1 && channels[0] === DEFAULT_CHANNEL)) {
          // Channel names are URL-safe: keep the commas readable.
          query += (query ? '&' : '') + 'channels=' + channels.join(',');
        }
        history.replaceState(history.state, '', url.pathname + (query ? '?' + query : '') + url.hash);
      } catch (e) { /* not fatal */ }
    }

    /** Bring this socket's subscriptions in line with the picker. */
    function syncSubscriptions() {
      if (!conn || !conn.isOpen()) return;
      var wanted = picker.channels();
      wanted.forEach(function (ch) {
        if (requested.has(ch) || forbidden.has(ch)) return;
        var msg = { op: 'subscribe', channel: ch };
        var since = resume.sinceFor([ch])[ch];
        if (since !== undefined) msg.since = since;
        if (conn.send(msg)) requested.add(ch);
      });
      requested.forEach(function (ch) {
        if (wanted.indexOf(ch) >= 0) return;
        if (conn.send({ op: 'unsubscribe', channel: ch })) {
          requested.delete(ch);
          active.delete(ch);
          liveOnly.delete(ch);
        }
      });
    }

    function onChannelsChanged(channels) {
      // An unfollowed channel starts afresh (live) if it is followed again later.
      followed.forEach(function (ch) {
        if (channels.indexOf(ch) < 0) resume.forget(ch);
      });
      followed = channels;
      channels.forEach(function (ch) { if (!active.has(ch)) picker.setState(ch, 'pending'); });
      updateAddress(channels);
      publish.refreshChannel(channels);
      syncSubscriptions();
    }

    function onNotice(n) {
      switch (n.op) {
        case 'subscribed':
          if (n.channel && requested.has(n.channel)) {
            active.add(n.channel);
            if (resume.sinceFor([n.channel])[n.channel] === undefined) liveOnly.add(n.channel);
            picker.setState(n.channel, 'live');
          }
          break;
        case 'reset': {
          stats.resets += 1;
          var ch = n.channel || '';
          var since = parseId(n.since);
          var when = since ? ' since ' + formatTime(new Date(since[0])) : '';
          feed.addNotice('reset',
            'History not available' + when + (ch ? ' on #' + ch : '') + ': some events may be missing',
            n.reason ? 'Server: ' + n.reason : '');
          if (ch) resume.forget(ch);
          break;
        }
        case 'error':
          if (n.error === 'forbidden' && n.channel) {
            forbid(n.channel);
            break;
          }
          picker.say('Server: ' + (n.error || 'request refused'), 'error');
          break;
        case 'unsubscribed':
          if (n.reason === 'forbidden' && n.channel) forbid(n.channel);
          break;
        default:
          // Anything newer: nothing to show.
          break;
      }
    }

    /** The token does not cover `channel`: say so, and stop asking for it. */
    function forbid(channel) {
      forbidden.add(channel);
      requested.delete(channel);
      active.delete(channel);
      liveOnly.delete(channel);
      picker.setState(channel, 'forbidden');
      picker.say('Not authorised to follow #' + channel + '.', 'error');
    }

    /** Access refused for good: show why, and what to do about it. */
    function showDenied(refusal) {
      var box = byId('auth-state');
      var text = refusal.reason === 'expired' || refusal.reason === 'missing'
        ? (refusal.reason === 'expired'
          ? 'Your access to this feed has expired.'
          : 'This feed needs a token, and this page was opened without one.')
        : (refusal.status === 403 && refusal.channels.length
          ? 'Your token does not allow ' + channelTags(refusal.channels) + '.'
          : 'Your token was refused' + (refusal.error ? ' (' + refusal.error + ')' : '') + '.');
      byId('auth-state-text').textContent = text + ' Open the link you were given again, or ask for a new one.';
      box.hidden = false;
      box.dataset.status = String(refusal.status);
      byId('empty-state').hidden = true;
      picker.channels().forEach(function (ch) { picker.setState(ch, 'forbidden'); });
    }

    function onMessage(msg) {
      if (msg.kind === 'notice') {
        onNotice(msg);
        return;
      }
      if (msg.channel !== null && !active.has(msg.channel)) {
        stats.ignored += 1;
        return;
      }
      if (!resume.accept(msg, liveOnly)) return;
      stats.events += 1;
      feed.add(msg);
    }

    var authOn = null; // from /health: null until known
    function refreshHealth() {
      loadHealth().then(function (health) {
        var info = byId('server-info');
        if (health) authOn = health.auth === true;
        if (!health) {
          info.textContent = 'Herald';
          return;
        }
        var broker = health.broker ? asText(health.broker) : 'unknown';
        if (health.broker === 'redis' && health.redis) broker += ' (' + asText(health.redis) + ')';
        info.textContent = 'Herald · broker: ' + broker;
        // With auth on, the page's own token (if any) publishes; otherwise ask for one.
        publish.showTokenField(health.publish_token_required === true ||
          (health.auth === true && !config.token));
      });
    }

    var conn = connectFeed({
      url: wsUrl,
      // Test and debugging hook: the current socket (tests close it to simulate a drop).
      onSocket: function (socket) { window.__heraldSocket = socket; },
      onOpen: function (info) {
        var opened = nextUrl || { channels: [], since: {} };
        requested = new Set(opened.channels);
        active = new Set(opened.channels);
        liveOnly = new Set(opened.channels.filter(function (ch) { return !(ch in opened.since); }));
        opened.channels.forEach(function (ch) { picker.setState(ch, 'live'); });
        if (info.reconnected) {
          stats.reconnects += 1;
          if (Object.keys(opened.since).length) stats.resumed += 1;
          // Channels with no resume point (nothing seen on any channel yet):
          // events sent meanwhile cannot be replayed.
          var blind = opened.channels.filter(function (ch) { return !(ch in opened.since); });
          if (blind.length && feed.hasEvents()) {
            feed.addNotice('gap', 'Connection lost at ' + formatTime(info.lostAt) +
              ' · events on ' + channelTags(blind) + ' sent before reconnecting may be missing');
          }
        }
        syncSubscriptions();
      },
      onClose: function () {
        requested = new Set();
        active = new Set();
        liveOnly = new Set();
        picker.channels().forEach(function (ch) { picker.setState(ch, 'pending'); });
      },
      onMessage: onMessage,
      // Only where a refusal is possible: a probe while a server without auth is down would
      // only add a failed request to each attempt.
      probe: function (url) {
        return config.token || authOn !== false ? probeAccess(url) : Promise.resolve(null);
      },
      onDenied: function (refusal) {
        statusText.textContent = STATUS_TEXT.denied;
        statusPill.dataset.state = 'denied';
        statusPill.title = refusal.error || '';
        window.__heraldDenied = refusal;
        showDenied(refusal);
      },
      onState: function (state, info) {
        statusText.textContent = STATUS_TEXT[state];
        statusPill.dataset.state = state;
        if (state === 'reconnecting' && info.delay !== undefined) {
          statusPill.title = 'Next attempt in ' + (info.delay / 1000).toFixed(1) + ' s';
        } else {
          statusPill.title = '';
        }
        if (state === 'open' && info.reconnected) {
          // The server may have restarted with other settings (e.g. a token).
          refreshHealth();
        }
      }
    });
    refreshHealth();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
