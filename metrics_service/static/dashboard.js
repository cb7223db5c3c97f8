/* metrics_service dashboard: a snapshot, then the live SSE stream; no polling.
 * Every piece of event data reaches the page through textContent, never as HTML. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var $ = ui.$;
  var auth = window.metricsApi.auth;
  var api = window.metricsApi.api;
  var MAX_ROWS = 200;
  // Set by the page itself; the Where box may not override them.
  var RESERVED = { limit: true, after: true, token: true, interval: true };

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
    view: null, // the ring under the filters (null: same as all)
    capacity: 0,
    evicted: 0,
    fileSize: 0,
    sinkPath: "",
    rows: [], // newest first: {seq, data, text}
    rowsThrough: 0,
    lastSeen: 0, // the highest seq the stream has delivered
    expanded: new Set(),
    filters: { event: "", visitor: "", where: [], text: "" },
    whereError: "", // what is wrong with the Where box's text
    filterError: "", // that, or the server's 422 for the filters
    loaded: false,
    paused: false,
    held: [], // events that arrived while paused
    heldCount: 0,
    link: "connecting", // the stream's own state, shown unless paused
    source: null,
    retryTimer: null,
    reconnecting: false,
    loading: null, // events that arrive while a snapshot is in flight, replayed after it
    loadAgain: false,
    loadTimer: null,
    renderPending: false,
  };

  function showError(message) {
    var node = $("error");
    node.textContent = message || "";
    node.hidden = !message;
  }


  // ---- filters ---------------------------------------------------------------
  // The Where box: `name=value` terms, split on "&" when there is one (so values may hold
  // spaces), else on spaces. They go to the server as they are: its operators, its 422s.
  function parseWhere(text) {
    text = text.trim();
    if (!text) return { pairs: [], error: "" };
    var terms = text.indexOf("&") !== -1 ? text.split("&") : text.split(/\s+/);
    var pairs = [];
    for (var i = 0; i < terms.length; i++) {
      var term = terms[i].trim();
      if (!term) continue;
      var at = term.indexOf("=");
      if (at <= 0) return { pairs: [], error: "expected name=value, got " + JSON.stringify(term) };
      var name = term.slice(0, at).trim();
      if (RESERVED[name]) return { pairs: [], error: JSON.stringify(name) + " is set by the dashboard itself" };
      pairs.push([name, term.slice(at + 1).trim()]);
    }
    return { pairs: pairs, error: "" };
  }

  function serverFilters() {
    var pairs = [];
    if (state.filters.event) pairs.push(["event", state.filters.event]);
    if (state.filters.visitor) pairs.push(["visitor_id", state.filters.visitor]);
    return pairs.concat(state.filters.where);
  }

  function filtered() {
    return serverFilters().length > 0;
  }

  // Whether a live event matches; null when only the server can tell (operators).
  function matches(data) {
    var f = state.filters;
    if (state.filterError) return false;
    if (f.where.length) return null;
    return (!f.event || data.event === f.event) && (!f.visitor || data.visitor_id === f.visitor);
  }

  // ---- loading: a snapshot replaces local state, then buffered events replay ----
  function load() {
    if (state.loading) {
      state.loadAgain = true;
      return;
    }
    if (!state.paused) timeline.refresh();
    state.filterError = state.whereError; // the server's verdict comes with this load
    var narrowed = filtered() || Boolean(state.filterError);
    state.loading = [];
    var requests = [api("/behavior", { limit: narrowed ? 0 : MAX_ROWS })];
    if (narrowed && !state.filterError) {
      requests.push(api("/behavior", serverFilters().concat([["limit", MAX_ROWS]])));
    }
    Promise.all(requests.map(settle))
      .then(function (answers) {
        if (!answers[0].ok) throw answers[0].error;
        var all = answers[0].value;
        state.all.load(all);
        state.capacity = all.capacity;
        state.evicted = all.evicted;
        state.fileSize = all.file_size_bytes;
        var view = all;
        if (narrowed) {
          state.view = new Tally();
          if (answers[1] && answers[1].ok) {
            view = answers[1].value;
            state.view.load(view);
          } else {
            if (answers[1]) state.filterError = "Filter refused: " + answers[1].error.detail;
            view = { last_events: [], last_seq: all.last_seq };
            state.view.through = all.last_seq;
          }
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
        state.loaded = true;
        showError(state.filterError);
        if (!state.source) live.connect();
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

  function settle(promise) {
    return promise.then(
      function (value) {
        return { ok: true, value: value };
      },
      function (error) {
        return { ok: false, error: error };
      }
    );
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
    trail.add(item);
    var match = matches(item.data);
    if (match === null) {
      scheduleLoad(250); // operators: the server decides, with the same semantics everywhere
      return;
    }
    if (!match) return;
    if (state.view && state.view.add(item) && state.capacity && state.view.total > state.capacity) {
      scheduleLoad(1000);
    }
    if (item.seq > state.rowsThrough) {
      state.rowsThrough = item.seq;
      state.rows.unshift(row(item.seq, item.data));
      if (state.rows.length > MAX_ROWS) state.rows.length = MAX_ROWS;
    }
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
    table.renderBars();
    table.renderRows();
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
    $("sink-size").textContent = ui.bytes(state.fileSize);
  }

  // What an empty list says: nothing yet, nothing matching, or a refused filter.
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

  function readFilters() {
    state.filters.event = $("filter-event").value.trim();
    state.filters.visitor = $("filter-visitor").value.trim();
    var where = parseWhere($("filter-where").value);
    state.filters.where = where.pairs;
    state.whereError = where.error ? "Filter: " + where.error : "";
  }

  function reset() {
    var count = state.all.total;
    var question =
      "Empty the in-memory ring (" + count.toLocaleString() + (count === 1 ? " event" : " events") +
      ") and the rejected list? The JSONL file is kept.";
    if (!window.confirm(question)) return;
    api("/behavior", null, "DELETE").then(
      function () {
        state.expanded.clear();
        rejected.load();
        trail.load();
        load();
      },
      function (error) {
        showError(error.message);
      }
    );
  }

  function wire() {
    var reload = debounce(function () {
      readFilters();
      load();
    }, 250);
    ["filter-event", "filter-visitor", "filter-where"].forEach(function (id) {
      $(id).addEventListener("input", reload);
    });
    $("filter-text").addEventListener("input", function () {
      state.filters.text = $("filter-text").value;
      table.renderRows();
    });
    $("clear-filters").addEventListener("click", function () {
      ["filter-event", "filter-visitor", "filter-where", "filter-text"].forEach(function (id) {
        $(id).value = "";
      });
      state.filters = { event: "", visitor: "", where: [], text: "" };
      state.whereError = "";
      load();
    });
    $("pause").addEventListener("click", function () {
      live.setPaused(!state.paused);
    });
    $("reset").addEventListener("click", reset);
    $("timeline-interval").addEventListener("change", function () {
      timeline.setInterval($("timeline-interval").value);
    });
    $("trail-close").addEventListener("click", function () {
      trail.close();
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
      if (state.source) state.source.close();
      state.source = null;
      rejected.load();
      load();
    });
  }

  var context = { api: api, serverFilters: serverFilters, showError: showError };
  var panels = window.metricsPanels;
  var rejected = panels.rejected(context);
  var timeline = panels.timeline(context);
  var trail = panels.trail(context);
  var table = panels.events({ state: state, setEventFilter: setEventFilter, openTrail: trail.open });
  var live = panels.live({
    state: state,
    auth: auth,
    apply: apply,
    load: load,
    scheduleLoad: scheduleLoad,
    render: render,
    scheduleRender: scheduleRender,
    rejected: rejected,
    timeline: timeline,
  });

  window.metricsDashboard = {
    auth: auth,
    state: state,
    reload: load,
    rejected: rejected,
    timeline: timeline,
    trail: trail,
  };

  wire();
  loadHealth();
  rejected.load();
  load();
})();
