/*
 * Herald live feed page.
 *
 * Plain browser JavaScript, no framework, no build step: an ES module whose
 * connection is Herald's own client library (/herald.js, the one apps use).
 * Served from the same origin under a strict CSP (script-src 'self';
 * style-src 'self'), so nothing here creates inline scripts or inline styles,
 * and event data is only ever inserted as text (textContent), never parsed as
 * HTML.
 *
 * Layout of this file:
 *   config        readFeedConfig()            channels and token from the page URL
 *   events        renderEvent()               one event -> a list item
 *   resume        createResumeStore()         resume points kept across reloads
 *   feed          createFeed()                list, counter, empty state, notices
 *   channels      createChannelPicker()       followed channels (chips + input)
 *   server info   loadHealth()                GET /health
 *   publish       setupPublishForm()          POST /events
 *   wiring        start()                     the client's events -> the page
 *
 * The client (herald.js) reconnects with capped backoff and jitter, resumes
 * each channel after the last id it saw (no gap, no duplicate), keeps the
 * subscriptions the picker asks for, and explains a refused connection. The
 * page keeps the resume points in sessionStorage so a reload resumes too, and
 * says so when the server answers {"op":"reset"} (events may be missing).
 *
 * Tokens: with auth on (the server has AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY), the page
 * is opened as /?token=<jwt> and passes the token to the client. Refused (401/403, or the
 * token expired: the page has no source for a new one), it says "Not authorised" and
 * stops instead of hammering the server.
 */
import { connect, isChannelName, DEFAULT_CHANNEL } from '/herald.js';

(function () {
  'use strict';

  var STATUS_TEXT = {
    connecting: 'Connecting…',
    open: 'Connected',
    reconnecting: 'Reconnecting…',
    denied: 'Not authorised',
    closed: 'Disconnected'
  };
  // Keep the DOM bounded on long-running tabs.
  var MAX_RENDERED_EVENTS = 500;
  // Number of colour variants for type badges (see .type-color-N in app.css).
  var TYPE_COLORS = 8;

  // Channels: same rules as the server (isChannelName). `events` is the
  // server's default channel.
  var MAX_CHANNELS = 64;
  var CHANNEL_RULES = 'Channel names are 1–64 letters, digits, “_”, “-” or “.”.';

  var STORAGE_KEY = 'herald.resume.v2';

  /* ------------------------------------------------------------------ */
  /* config                                                              */
  /* ------------------------------------------------------------------ */

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
  /* events                                                              */
  /* ------------------------------------------------------------------ */

  function asText(value) {
    if (value === undefined || value === null) return '';
    if (typeof value === 'string') return value;
    try { return JSON.stringify(value); } catch (e) { return String(value); }
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
   * The client's resume points (channel -> last id), kept in sessionStorage so
   * a reload of the tab resumes where it left off. load(channels) gives the
   * saved points of the channels followed now; save(points) writes at most
   * every 200 ms, and at once when the page goes away.
   */
  function createResumeStore(storage) {
    var pending = null;
    var timer = null;

    function load(channels) {
      if (!storage) return {};
      try {
        var saved = JSON.parse(storage.getItem(STORAGE_KEY) || 'null');
        var since = saved && typeof saved.since === 'object' && saved.since ? saved.since : {};
        var out = {};
        channels.forEach(function (ch) {
          if (typeof since[ch] === 'string') out[ch] = since[ch];
        });
        return out;
      } catch (e) {
        return {}; // a corrupt entry: start live
      }
    }

    function flush() {
      clearTimeout(timer);
      timer = null;
      if (!storage || pending === null) return;
      try {
        storage.setItem(STORAGE_KEY, JSON.stringify({ since: pending() }));
      } catch (e) { /* quota or disabled: in-memory only */ }
    }

    /** `points`: a function returning the points now (read when written). */
    function save(points) {
      pending = points;
      if (storage && timer === null) timer = setTimeout(flush, 200);
    }

    window.addEventListener('pagehide', flush);
    return { load: load, save: save };
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

    var feed = createFeed({
      list: byId('feed'),
      empty: byId('empty-state'),
      counter: byId('event-count'),
      clearButton: byId('clear-feed')
    });

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

    var endpoint = byId('ws-endpoint');
    endpoint.textContent = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    byId('curl-hint').textContent =
      'curl -X POST "' + location.origin + '/events/' + config.channels[0] +
      '?event_type=order&message=Order+%23123+placed"';

    var authOn = null; // from /health: null until known
    var store = createResumeStore(sessionStore());
    var client = connect({
      channels: config.channels,
      since: store.load(config.channels),
      token: config.token || undefined,
      // Ask /sse why a connection failed only where a refusal is possible: while a server
      // without auth is down, a probe would only add a failed request to each attempt.
      explainRefusals: function () { return !!config.token || authOn !== false; }
    });
    var saveResumePoints = function () { store.save(function () { return client.resumePoints(); }); };

    // Counters and the current socket, for tests and debugging (tests close the socket to
    // simulate a dropped connection).
    window.__heraldStats = client.stats;
    Object.defineProperty(window, '__heraldSocket', { get: function () { return client.socket; } });

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

    function onChannelsChanged(channels) {
      followed.forEach(function (ch) {
        if (channels.indexOf(ch) < 0) client.unsubscribe(ch);
      });
      channels.forEach(function (ch) {
        if (followed.indexOf(ch) < 0) {
          picker.setState(ch, 'pending');
          client.subscribe(ch);
        }
      });
      followed = channels;
      watchFirstChannel();
      updateAddress(channels);
      publish.refreshChannel(channels);
      saveResumePoints();
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

    client.on('event', function (evt) {
      feed.add(evt);
      saveResumePoints();
    });
    client.on('open', function (info) {
      info.channels.forEach(function (ch) { picker.setState(ch, 'live'); });
      // Channels with no resume point (nothing seen on any channel yet): events sent
      // meanwhile cannot be replayed.
      if (info.blind.length && feed.hasEvents()) {
        feed.addNotice('gap', 'Connection lost at ' + formatTime(info.lostAt) +
          ' · events on ' + channelTags(info.blind) + ' sent before reconnecting may be missing');
      }
    });
    client.on('close', function (info) {
      if (info.wasOpen) picker.channels().forEach(function (ch) { picker.setState(ch, 'pending'); });
    });
    client.on('subscribed', function (n) { picker.setState(n.channel, 'live'); });
    client.on('reset', function (n) {
      var at = n.since ? Number(n.since.split('-')[0]) : NaN;
      var when = isFinite(at) ? ' since ' + formatTime(new Date(at)) : '';
      feed.addNotice('reset',
        'History not available' + when + (n.channel ? ' on #' + n.channel : '') + ': some events may be missing',
        n.reason ? 'Server: ' + n.reason : '');
      saveResumePoints();
    });
    client.on('forbidden', function (n) {
      picker.setState(n.channel, 'forbidden');
      picker.say('Not authorised to follow #' + n.channel + '.', 'error');
    });
    client.on('error', function (n) {
      picker.say('Server: ' + (n.error || 'request refused'), 'error');
    });
    client.on('denied', function (refusal) {
      statusPill.title = refusal.error || '';
      window.__heraldDenied = refusal;
      showDenied(refusal);
    });
    client.on('state', function (change) {
      statusText.textContent = STATUS_TEXT[change.state];
      statusPill.dataset.state = change.state;
      if (change.state === 'reconnecting' && change.delay !== undefined) {
        statusPill.title = 'Next attempt in ' + (change.delay / 1000).toFixed(1) + ' s';
      } else if (change.state !== 'denied') {
        statusPill.title = '';
      }
      if (change.state === 'open' && change.reconnected) {
        // The server may have restarted with other settings (e.g. a token).
        refreshHealth();
      }
    });
    statusText.textContent = STATUS_TEXT[client.state];
    statusPill.dataset.state = client.state;

    // "N watching": subscribers of the first followed channel (the one the publish form
    // defaults to) on every replica, as the server's occupancy updates say (at most one a
    // second). Other channels' updates, from an earlier first channel, are ignored.
    var occupancy = byId('occupancy');
    var watched = null;
    function watchFirstChannel() {
      var ch = picker.channels()[0];
      if (!ch || ch === watched) return;
      if (watched) client.unwatchOccupancy(watched);
      watched = ch;
      occupancy.hidden = true;
      client.watchOccupancy(ch);
    }
    client.on('occupancy', function (n) {
      if (n.channel !== watched) return;
      occupancy.textContent = n.subscribers + ' watching';
      occupancy.title = n.subscribers + (n.subscribers === 1 ? ' subscriber' : ' subscribers') +
        ' of #' + n.channel + ', this page included';
      occupancy.hidden = false;
    });
    watchFirstChannel();

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
    refreshHealth();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
