/* The live stream: the EventSource from the last seen seq, its reconnects and the status
 * beside the title; and Pause, which keeps the stream open while what arrives waits and is
 * counted, to be applied on Resume. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var $ = ui.$;
  var API = "/api/metrics";
  var MAX_HELD = 5000; // events kept while paused; past it, Resume reloads instead

  function panel(ctx) {
    var state = ctx.state;

    function connect() {
      if (state.source) state.source.close();
      clearTimeout(state.retryTimer);
      setConnection("connecting");
      var url = ctx.auth.url(API + "/behavior/stream", { after: state.lastSeen }, true);
      var source = new EventSource(url);
      state.source = source;
      source.onopen = function () {
        setConnection("live");
        if (state.reconnecting) {
          // Back after an outage: counters may have moved on, refusals may have come.
          ctx.scheduleLoad(0);
          ctx.rejected.load();
        }
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
        if (state.paused) {
          hold(item);
          return;
        }
        if (state.loading) state.loading.push(item);
        ctx.apply(item);
        ctx.timeline.refresh();
        ctx.scheduleRender();
      });
      source.addEventListener("rejected", function (message) {
        try {
          ctx.rejected.add(JSON.parse(message.data));
        } catch (e) {
          // not JSON: nothing to show
        }
      });
      // The server ends a stream whose client fell behind: resume from the last seen id.
      source.addEventListener("reset", function () {
        if (state.source !== source) return;
        source.close();
        state.source = null;
        connect();
        ctx.scheduleLoad(0);
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
          if (!state.source) connect();
        }, refused ? 3000 : 1000);
      };
    }

    function hold(item) {
      state.heldCount += 1;
      if (state.held && state.held.length < MAX_HELD) state.held.push(item);
      else state.held = null; // too many: Resume reloads
      renderPause();
    }

    function setPaused(paused) {
      state.paused = paused;
      if (!paused) {
        var held = state.held;
        state.held = [];
        state.heldCount = 0;
        if (held) {
          held.forEach(function (item) {
            if (state.loading) state.loading.push(item);
            ctx.apply(item);
          });
          ctx.timeline.refresh();
          ctx.render();
        } else {
          ctx.load();
        }
      }
      renderPause();
      setConnection(state.link);
    }

    function renderPause() {
      var button = $("pause");
      button.textContent = state.paused
        ? "Resume" + (state.heldCount ? " (" + state.heldCount.toLocaleString() + " new)" : "")
        : "Pause";
      button.setAttribute("aria-pressed", String(state.paused));
    }

    function setConnection(name) {
      state.link = name;
      var shown = state.paused ? "paused" : name;
      $("connection").setAttribute("data-state", shown);
      $("connection-text").textContent = shown;
    }

    return { connect: connect, setPaused: setPaused };
  }

  window.metricsPanels = window.metricsPanels || {};
  window.metricsPanels.live = panel;
})();
