/* metrics_service dashboard: a snapshot, then the live SSE stream; no polling.
 * Every piece of event data reaches the page through textContent, never as HTML. */
(function () {
  "use strict";

  var API = "/api/metrics";
  var MAX_ROWS = 200;
  var MAX_BARS = 40;

  // ---- access control hook -------------------------------------------------
  // When the collector requires a read token, API calls answer 401: the token form
  // appears, and the token then goes on every request (header for fetch, query
  // parameter for EventSource, which cannot send headers).
  var auth = {
    token: readToken(),
    // The query parameter only where headers cannot be sent (EventSource).
    url: function (path, params, inQuery) {
      var query = new URLSearchParams();
      Object.keys(params || {}).forEach(function (key) {
        var value = params[key];
        if (value !== undefined && value !== null && value !== "") query.append(key, String(value));
      });
      if (inQuery && auth.token) query.set("token", auth.token);
      var text = query.toString();
      return path + (text ? "?" + text : "");
    },
    headers: function () {
      return auth.token ? { Authorization: "Bearer " + auth.token } : {};
    },
    ask: function () {
      $("token-form").hidden = false;
      $("token").focus();
    },
  };

  function readToken() {
    try {
      return sessionStorage.getItem("metrics_read_token");
    } catch (e) {
      return null;
    }
  }

  // ---- state ---------------------------------------------------------------
  function Tally() {
    this.counts = new Map();
    this.total = 0;
    this.through = 0; // the highest seq already counted
  }
  Tally.prototype.load = function (snapshot) {
    this.counts = new Map();
    for (var i = 0; i < snapshot.by_event.length; i++) {
      this.counts.set(snapshot.by_event[i].event, snapshot.by_event[i].count);
    }
    this.total = snapshot.total;
    this.through = snapshot.last_seq;
  };
  Tally.prototype.add = function (item) {
    if (item.seq <= this.through) return false;
    this.through = item.seq;
    this.counts.set(item.data.event, (this.counts.get(item.data.event) || 0) + 1);
    this.total += 1;
    return true;
  };

  var state = {
    all: new Tally(), // the whole ring: fill, evicted, sink size
    view: null, // the ring under the event/visitor filters (null: same as all)
    capacity: 0,
    evicted: 0,
    fileSize: 0,
    sinkPath: "",
    rows: [], // newest first: {seq, data, text}
    rowsThrough: 0,
    lastSeen: 0, // the highest seq the stream has delivered
    expanded: new Set(),
    filters: { event: "", visitor: "", text: "" },
    paused: false,
    source: null,
    retryTimer: null,
    reconnecting: false,
    loading: null, // events that arrive while a snapshot is in flight, replayed after it
    loadAgain: false,
    loadTimer: null,
    renderPending: false,
  };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function showError(message) {
    var node = $("error");
    node.textContent = message || "";
    node.hidden = !message;
  }

  function api(path, params, method) {
    return fetch(auth.url(API + path, params), {
      method: method || "GET",
      headers: auth.headers(),
      cache: "no-store",
    }).then(function (response) {
      if (response.status === 401) {
        auth.ask();
        throw new Error("a read token is required");
      }
      return response.json().then(
        function (body) {
          if (!response.ok) throw new Error(path + ": " + response.status + " " + detail(body));
          return body;
        },
        function () {
          throw new Error(path + ": " + response.status);
        }
      );
    });
  }

  function detail(body) {
    if (!body || body.detail === undefined) return "";
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  }

  // ---- loading: a snapshot replaces local state, then buffered events replay ----
  function serverFilters() {
    var params = {};
    if (state.filters.event) params.event = state.filters.event;
    if (state.filters.visitor) params.visitor_id = state.filters.visitor;
    return params;
  }

  function filtered() {
    return Boolean(state.filters.event || state.filters.visitor);
  }

  function matches(data) {
    var f = state.filters;
    return (!f.event || data.event === f.event) && (!f.visitor || data.visitor_id === f.visitor);
  }

  function load() {
    if (state.loading) {
      state.loadAgain = true;
      return;
    }
    state.loading = [];
    var requests = [api("/behavior", { limit: filtered() ? 0 : MAX_ROWS })];
    if (filtered()) {
      var params = serverFilters();
      params.limit = MAX_ROWS;
      requests.push(api("/behavior", params));
    }
    Promise.all(requests)
      .then(function (answers) {
        var all = answers[0];
        var view = answers[1] || all;
        state.all.load(all);
        state.capacity = all.capacity;
        state.evicted = all.evicted;
        state.fileSize = all.file_size_bytes;
        if (answers[1]) {
          state.view = new Tally();
          state.view.load(view);
        } else {
          state.view = null;
        }
        state.rows = view.last_events.map(function (data) {
          return row(data.seq, data);
        });
        state.rowsThrough = view.last_seq;
        var missed = state.loading;
        state.loading = null;
        missed.forEach(apply);
        state.lastSeen = Math.max(state.lastSeen, all.last_seq);
        showError("");
        if (!state.paused && !state.source) connect();
      })
      .catch(function (error) {
        state.loading = null;
        showError(error.message);
      })
      .then(function () {
        render();
        if (state.loadAgain) {
          state.loadAgain = false;
          load();
        }
      });
  }

  function scheduleLoad(delay) {
    if (state.loadTimer) return;
    state.loadTimer = setTimeout(function () {
      state.loadTimer = null;
      load();
    }, delay);
  }

  function loadHealth() {
    api("/behavior/health").then(
      function (health) {
        state.sinkPath = health.sink_path;
        $("version").textContent = health.version ? "v" + health.version : "";
        render();
      },
      function () {
        // 503 still tells the path; any other failure shows in the next snapshot error
      }
    );
  }

  function row(seq, data) {
    return { seq: seq, data: data, text: JSON.stringify(data).toLowerCase() };
  }

  // ---- the live stream --------------------------------------------------------
  function connect() {
    if (state.source) state.source.close();
    clearTimeout(state.retryTimer);
    setConnection("connecting");
    var source = new EventSource(auth.url(API + "/behavior/stream", { after: state.lastSeen }, true));
    state.source = source;
    source.onopen = function () {
      setConnection("live");
      if (state.reconnecting) scheduleLoad(0); // back after an outage: counters may have moved on
      state.reconnecting = false;
    };
    source.addEventListener("behavior", function (message) {
      var seq = Number(message.lastEventId);
      if (!(seq > state.lastSeen)) return; // a replay we already have
      var data;
      try {
        data = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      state.lastSeen = seq;
      var item = { seq: seq, data: data, bytes: new TextEncoder().encode(message.data).length + 1 };
      if (state.loading) state.loading.push(item);
      apply(item);
      scheduleRender();
    });
    // The server ends a stream whose client fell behind: resume from the last seen id.
    source.addEventListener("reset", function () {
      if (state.source !== source) return;
      source.close();
      state.source = null;
      connect();
      scheduleLoad(0);
    });
    source.onerror = function () {
      if (state.source !== source) return;
      // EventSource would reconnect by itself, but to its first URL, whose ?after= the
      // server prefers to Last-Event-ID: reconnect from the last seen seq instead.
      var refused = source.readyState === EventSource.CLOSED; // an HTTP error, not a drop
      source.close();
      state.source = null;
      state.reconnecting = true;
      setConnection(refused ? "disconnected" : "reconnecting");
      state.retryTimer = setTimeout(function () {
        if (!state.paused && !state.source) connect();
      }, refused ? 3000 : 1000);
    };
  }

  function apply(item) {
    if (state.all.add(item)) {
      state.fileSize += item.bytes || 0;
      if (state.capacity && state.all.total > state.capacity) {
        // Which event left the ring is only known to the server: recount soon.
        state.all.total = state.capacity;
        state.evicted += 1;
        scheduleLoad(1000);
      }
    }
    if (!matches(item.data)) return;
    if (state.view && state.view.add(item) && state.capacity && state.view.total > state.capacity) {
      scheduleLoad(1000);
    }
    if (item.seq > state.rowsThrough) {
      state.rowsThrough = item.seq;
      state.rows.unshift(row(item.seq, item.data));
      if (state.rows.length > MAX_ROWS) state.rows.length = MAX_ROWS;
    }
  }

  function setConnection(name) {
    $("connection").setAttribute("data-state", name);
    $("connection-text").textContent = name;
  }

  // ---- rendering ----------------------------------------------------------------
  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    setTimeout(render, 30);
  }

  function render() {
    state.renderPending = false;
    renderStats();
    renderBars();
    renderRows();
  }

  function renderStats() {
    var size = state.all.total;
    $("ring-size").textContent = size.toLocaleString();
    $("ring-capacity").textContent = state.capacity ? state.capacity.toLocaleString() : "–";
    $("ring-fill").style.width = state.capacity ? (100 * size) / state.capacity + "%" : "0";
    $("evicted").textContent = state.evicted.toLocaleString();
    var last = Math.max(state.lastSeen, state.all.through);
    $("last-seq").textContent = last ? String(last) : "–";
    $("sink-path").textContent = state.sinkPath || "–";
    $("sink-size").textContent = bytes(state.fileSize);
  }

  function renderBars() {
    var tally = state.view || state.all;
    var entries = Array.from(tally.counts.entries())
      .filter(function (e) {
        return e[1] > 0;
      })
      .sort(function (a, b) {
        return b[1] - a[1] || (a[0] < b[0] ? -1 : 1);
      });
    var max = entries.length ? entries[0][1] : 0;
    var box = $("bars");
    var fragment = document.createDocumentFragment();
    entries.slice(0, MAX_BARS).forEach(function (entry) {
      var bar = el("button", "bar" + (entry[0] === state.filters.event ? " selected" : ""));
      bar.type = "button";
      bar.title = "Filter by this event";
      bar.appendChild(el("span", "name", entry[0]));
      var track = el("span", "track");
      var fill = el("span", "fill");
      fill.style.width = (100 * entry[1]) / max + "%";
      track.appendChild(fill);
      bar.appendChild(track);
      bar.appendChild(el("span", "count", entry[1].toLocaleString()));
      bar.addEventListener("click", function () {
        setEventFilter(state.filters.event === entry[0] ? "" : entry[0]);
      });
      fragment.appendChild(bar);
    });
    if (entries.length > MAX_BARS) {
      fragment.appendChild(el("p", "muted", "… and " + (entries.length - MAX_BARS) + " more"));
    }
    box.replaceChildren(fragment);
    $("bars-empty").hidden = entries.length > 0;
    $("counts-total").textContent = tally.total ? tally.total.toLocaleString() + " in the ring" : "";

    var names = $("event-names");
    var options = document.createDocumentFragment();
    Array.from(state.all.counts.keys())
      .sort()
      .forEach(function (name) {
        var option = el("option");
        option.value = name;
        options.appendChild(option);
      });
    names.replaceChildren(options);
  }

  function renderRows() {
    var needle = state.filters.text.trim().toLowerCase();
    var shown = needle
      ? state.rows.filter(function (r) {
          return r.text.indexOf(needle) !== -1;
        })
      : state.rows;
    var body = document.createDocumentFragment();
    shown.forEach(function (r) {
      var tr = el("tr", "event-row");
      tr.setAttribute("data-seq", String(r.seq));
      tr.title = "Show the full event";
      tr.tabIndex = 0;
      if (state.expanded.has(r.seq)) tr.classList.add("open");
      tr.appendChild(el("td", "seq", r.seq));
      var time = el("td", "time", clock(r.data.timestamp));
      time.title = String(r.data.timestamp);
      tr.appendChild(time);
      tr.appendChild(el("td", "event", r.data.event));
      tr.appendChild(el("td", "visitor", r.data.visitor_id));
      tr.appendChild(el("td", "meta", JSON.stringify(r.data.metadata || {})));
      var toggle = function () {
        if (state.expanded.has(r.seq)) state.expanded.delete(r.seq);
        else state.expanded.add(r.seq);
        renderRows();
        var again = $("events").querySelector('tr[data-seq="' + r.seq + '"]');
        if (again) again.focus();
      };
      tr.addEventListener("click", toggle);
      tr.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          toggle();
        }
      });
      body.appendChild(tr);
      if (state.expanded.has(r.seq)) {
        var detailRow = el("tr", "detail");
        var cell = el("td");
        cell.colSpan = 5;
        cell.appendChild(el("pre", "", JSON.stringify(r.data, null, 2)));
        detailRow.appendChild(cell);
        body.appendChild(detailRow);
      }
    });
    $("events").tBodies[0].replaceChildren(body);
    $("rows-empty").hidden = shown.length > 0;
    $("rows-note").textContent =
      needle && shown.length !== state.rows.length
        ? shown.length + " of " + state.rows.length + " match"
        : state.rows.length
          ? "newest " + state.rows.length
          : "";
  }

  function clock(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return String(iso);
    function pad(n, width) {
      return String(n).padStart(width || 2, "0");
    }
    return (
      pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) +
      "." + pad(date.getMilliseconds(), 3)
    );
  }

  function bytes(n) {
    if (!n) return "0 B";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
    return (i ? (n / Math.pow(1024, i)).toFixed(1) : String(n)) + " " + units[i];
  }

  // ---- controls -----------------------------------------------------------------
  function setEventFilter(name) {
    $("filter-event").value = name;
    state.filters.event = name;
    load();
  }

  function debounce(fn, ms) {
    var timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  function wire() {
    var reload = debounce(function () {
      state.filters.event = $("filter-event").value.trim();
      state.filters.visitor = $("filter-visitor").value.trim();
      load();
    }, 250);
    $("filter-event").addEventListener("input", reload);
    $("filter-visitor").addEventListener("input", reload);
    $("filter-text").addEventListener("input", function () {
      state.filters.text = $("filter-text").value;
      renderRows();
    });
    $("clear-filters").addEventListener("click", function () {
      $("filter-event").value = "";
      $("filter-visitor").value = "";
      $("filter-text").value = "";
      state.filters = { event: "", visitor: "", text: "" };
      load();
    });
    $("pause").addEventListener("click", function () {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      if (state.paused) {
        clearTimeout(state.retryTimer);
        if (state.source) state.source.close();
        state.source = null;
        setConnection("paused");
      } else {
        load(); // catches up and reconnects from the newest seq
      }
    });
    $("reset").addEventListener("click", function () {
      api("/behavior", null, "DELETE").then(function () {
        state.expanded.clear();
        load();
      }, function (error) {
        showError(error.message);
      });
    });
    $("token-form").addEventListener("submit", function (event) {
      event.preventDefault();
      auth.token = $("token").value || null;
      try {
        if (auth.token) sessionStorage.setItem("metrics_read_token", auth.token);
        else sessionStorage.removeItem("metrics_read_token");
      } catch (e) {
        // storage blocked: the token lasts for this page only
      }
      $("token-form").hidden = true;
      loadHealth();
      if (!state.paused) {
        if (state.source) state.source.close();
        state.source = null;
      }
      load();
    });
  }

  window.metricsDashboard = { auth: auth, state: state, reload: load };

  wire();
  loadHealth();
  load();
})();
