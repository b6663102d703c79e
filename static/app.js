/*
 * Herald live feed page.
 *
 * Plain browser JavaScript, no framework, no build step. Served from the
 * same origin under a strict CSP (script-src 'self'; style-src 'self'), so
 * nothing here creates inline scripts or inline styles, and event data is
 * only ever inserted as text (textContent), never parsed as HTML.
 *
 * Layout of this file:
 *   config        readFeedConfig()           page options from the URL
 *   URLs          buildWsUrl()               ws(s)://host/ws[?channels=..&since=..]
 *   events        parseEvent(), renderEvent() one JSON frame -> one <li class="event">
 *   feed          createFeed()               list, counter, empty state
 *   connection    connectFeed()              WebSocket with capped backoff + jitter
 *   server info   loadHealth()               GET /health
 *   publish       setupPublishForm()         POST /events
 */
(function () {
  'use strict';

  var STATUS_TEXT = {
    connecting: 'Connecting…',
    open: 'Connected',
    reconnecting: 'Reconnecting…'
  };

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

  /* ------------------------------------------------------------------ */
  /* config                                                              */
  /* ------------------------------------------------------------------ */

  /**
   * Options for the feed, from the page URL. `channels` is passed through to
   * the WebSocket URL (`?channels=a,b`) when given; `resume` makes
   * reconnects ask for `since=<last id>` so missed events can be replayed
   * once the server supports it.
   */
  function readFeedConfig(search) {
    var params = new URLSearchParams(search || '');
    var channels = (params.get('channels') || '')
      .split(',')
      .map(function (c) { return c.trim(); })
      .filter(Boolean);
    return {
      channels: channels,
      resume: params.get('resume') === '1'
    };
  }

  /* ------------------------------------------------------------------ */
  /* URLs                                                                */
  /* ------------------------------------------------------------------ */

  /**
   * WebSocket URL on the page's own host: wss: for https pages, ws: otherwise.
   * opts.channels: array of channel names -> ?channels=a,b
   * opts.since: last event id seen -> &since=<id>
   */
  function buildWsUrl(loc, opts) {
    opts = opts || {};
    var url = new URL('/ws', loc.href);
    url.protocol = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    if (opts.channels && opts.channels.length) {
      url.searchParams.set('channels', opts.channels.join(','));
    }
    if (opts.since !== undefined && opts.since !== null && opts.since !== '') {
      url.searchParams.set('since', String(opts.since));
    }
    return url.toString();
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

  /**
   * One WebSocket text frame -> normalized event, or null if unusable.
   * Unknown fields are kept on `raw` and otherwise ignored.
   */
  function parseEvent(data) {
    if (typeof data !== 'string') return null;
    var obj;
    try {
      obj = JSON.parse(data);
    } catch (e) {
      // Not JSON: still show it, as plain text.
      return { type: 'message', message: data, id: null, channel: null, raw: null };
    }
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
      return { type: 'message', message: asText(obj), id: null, channel: null, raw: obj };
    }
    return {
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
   *   <li class="event">
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

    var meta = el('div', 'event-meta');
    var type = el('span', 'event-type type-color-' + typeColor(evt.type), evt.type);
    type.title = evt.type;
    meta.appendChild(type);

    if (evt.channel !== null) {
      var channel = el('span', 'event-channel', '#' + evt.channel);
      channel.title = 'Channel ' + evt.channel;
      meta.appendChild(channel);
    }

    var time = el('time', 'event-time', formatTime(receivedAt));
    time.dateTime = receivedAt.toISOString();
    time.title = 'Received ' + receivedAt.toLocaleString();
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
  /* feed                                                                */
  /* ------------------------------------------------------------------ */

  function createFeed(opts) {
    var list = opts.list;
    var empty = opts.empty;
    var counter = opts.counter;
    var clearButton = opts.clearButton;
    var received = 0;
    var lastId = null;

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
      if (evt.id !== null) lastId = evt.id;
      var item = renderEvent(evt, new Date());
      item.classList.add('is-new');
      list.insertBefore(item, list.firstChild);
      // Drop the highlight after the CSS animation; harmless if it never runs.
      setTimeout(function () { item.classList.remove('is-new'); }, 1600);
      trim();
      update();
    }

    /** A divider noting that events sent while disconnected may be missing. */
    function markGap(since) {
      if (!list.querySelector('.event')) return; // nothing to separate
      if (list.firstElementChild && list.firstElementChild.classList.contains('feed-gap')) return;
      var gap = el('li', 'feed-gap');
      gap.appendChild(el('span', 'feed-gap-text',
        'Connection lost at ' + formatTime(since) + ' · events sent before reconnecting may be missing'));
      list.insertBefore(gap, list.firstChild);
      update();
    }

    function clear() {
      list.textContent = '';
      received = 0;
      update();
    }

    clearButton.addEventListener('click', clear);
    update();

    return {
      add: add,
      markGap: markGap,
      clear: clear,
      lastId: function () { return lastId; }
    };
  }

  /* ------------------------------------------------------------------ */
  /* connection                                                          */
  /* ------------------------------------------------------------------ */

  /**
   * Keep a WebSocket open to the feed, reconnecting by itself.
   *   opts.url():        URL for the next attempt (called on every attempt)
   *   opts.onEvent(evt): parsed event
   *   opts.onState(state, info): 'connecting' | 'open' | 'reconnecting'
   */
  function connectFeed(opts) {
    var ws = null;
    var attempt = 0;
    var timer = null;
    var everOpened = false;
    var openedAt = 0;
    var lostAt = null;
    var stopped = false;

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
        socket = new WebSocket(opts.url());
      } catch (e) {
        attempt += 1;
        schedule(backoffDelay(attempt));
        return;
      }
      ws = socket;

      socket.onopen = function () {
        if (ws !== socket) return;
        openedAt = Date.now();
        var wasLost = lostAt;
        everOpened = true;
        lostAt = null;
        setState('open', { reconnected: wasLost !== null, lostAt: wasLost });
      };

      socket.onmessage = function (e) {
        if (ws !== socket) return;
        var evt = parseEvent(e.data);
        if (evt) opts.onEvent(evt);
      };

      socket.onclose = function (e) {
        if (ws !== socket) return;
        ws = null;
        if (stopped) return;
        if (openedAt) {
          if (lostAt === null) lostAt = new Date();
          var stable = Date.now() - openedAt >= STABLE_AFTER_MS;
          openedAt = 0;
          if (e.code === CLOSE_GOING_AWAY) {
            // Server shutting down or restarting: come back promptly.
            attempt = 0;
            schedule(Math.round(Math.random() * 100));
            return;
          }
          attempt = stable ? 0 : attempt + 1;
        } else {
          attempt += 1;
        }
        schedule(backoffDelay(attempt));
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

    window.addEventListener('online', retryNow);
    document.addEventListener('visibilitychange', function () {
      if (document.visibilityState === 'visible') retryNow();
    });

    setState('connecting', {});
    open();

    return {
      retryNow: retryNow,
      close: function () {
        stopped = true;
        clearTimeout(timer);
        if (ws) ws.close(1000);
      }
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

  function setupPublishForm(ui) {
    var form = ui.form;
    var inFlight = false;

    function showResult(kind, text) {
      ui.result.dataset.kind = kind;
      ui.result.textContent = text;
    }

    function showToken(required) {
      ui.tokenField.hidden = !required;
      ui.token.required = !!required;
    }

    form.addEventListener('submit', function (e) {
      e.preventDefault();
      if (inFlight) return;
      var type = ui.type.value.trim();
      var message = ui.message.value;
      if (!type) {
        showResult('error', 'Enter an event type.');
        ui.type.focus();
        return;
      }
      var headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
      var token = ui.token.value.trim();
      if (!ui.tokenField.hidden && token) headers.Authorization = 'Bearer ' + token;

      inFlight = true;
      ui.submit.disabled = true;
      showResult('pending', 'Publishing…');

      fetch('/events', {
        method: 'POST',
        headers: headers,
        body: JSON.stringify({ type: type, message: message })
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
              ? ' to ' + n + (n === 1 ? ' receiver' : ' receivers')
              : '';
            showResult('ok', 'Published “' + asText(r.data.type || type) + '”' + to + '.');
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

    return { showTokenField: showToken };
  }

  /* ------------------------------------------------------------------ */
  /* wiring                                                              */
  /* ------------------------------------------------------------------ */

  function byId(id) { return document.getElementById(id); }

  function start() {
    var config = readFeedConfig(location.search);
    var statusText = byId('status');
    var statusPill = byId('status-pill');

    var feed = createFeed({
      list: byId('feed'),
      empty: byId('empty-state'),
      counter: byId('event-count'),
      clearButton: byId('clear-feed')
    });

    var publish = setupPublishForm({
      form: byId('publish-form'),
      type: byId('publish-type'),
      message: byId('publish-message'),
      tokenField: byId('publish-token-field'),
      token: byId('publish-token'),
      submit: byId('publish-submit'),
      result: byId('publish-result')
    });

    function wsUrl() {
      return buildWsUrl(location, {
        channels: config.channels,
        since: config.resume ? feed.lastId() : null
      });
    }

    var endpoint = byId('ws-endpoint');
    endpoint.textContent = wsUrl().split('?')[0];
    byId('curl-hint').textContent =
      'curl -X POST "' + location.origin + '/events?event_type=order&message=Order+%23123+placed"';

    function refreshHealth() {
      loadHealth().then(function (health) {
        var info = byId('server-info');
        if (!health) {
          info.textContent = 'Herald';
          return;
        }
        var broker = health.broker ? asText(health.broker) : 'unknown';
        if (health.broker === 'redis' && health.redis) broker += ' (' + asText(health.redis) + ')';
        info.textContent = 'Herald · broker: ' + broker;
        publish.showTokenField(health.publish_token_required === true);
      });
    }

    connectFeed({
      url: wsUrl,
      onEvent: feed.add,
      onState: function (state, info) {
        statusText.textContent = STATUS_TEXT[state];
        statusPill.dataset.state = state;
        if (state === 'reconnecting' && info.delay !== undefined) {
          statusPill.title = 'Next attempt in ' + (info.delay / 1000).toFixed(1) + ' s';
        } else {
          statusPill.title = '';
        }
        if (state === 'open' && info.reconnected) {
          if (!config.resume) feed.markGap(info.lostAt);
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
