/* The timeline: events per second or minute from /behavior/timeseries under the page's
 * filters, stacked by name, as inline SVG. Refetched (at most once a second) when events
 * arrive; the window slides with the clock in between. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var SLOTS = 60;
  var WIDTHS = { "1s": 1000, "1m": 60000 };
  var SERIES = 5; // the busiest names get a colour each; the rest stack as "other"
  var COLORS = ["#3b6fd8", "#1f9d55", "#d39a0b", "#8e44ad", "#d0393e"];
  var OTHER = "#9aa3b5";
  var VIEW_W = 600;
  var VIEW_H = 120;

  function panel(ctx) {
    var t = {
      interval: "1s",
      buckets: new Map(), // bucket start (ms) -> {name: count}
      inflight: false,
      again: false,
      lastFetch: 0,
      timer: null,
      shownEnd: 0,
    };

    function width() {
      return WIDTHS[t.interval];
    }

    function windowEnd() {
      return Math.floor(Date.now() / width()) * width();
    }

    function fetchNow() {
      clearTimeout(t.timer);
      t.timer = null;
      if (t.inflight) {
        t.again = true;
        return;
      }
      t.inflight = true;
      t.lastFetch = Date.now();
      var interval = t.interval;
      var params = ctx.serverFilters();
      params.push(["interval", interval]);
      params.push(["since", new Date(windowEnd() - (SLOTS - 1) * width()).toISOString()]);
      ctx
        .api("/behavior/timeseries", params)
        .then(
          function (body) {
            if (interval !== t.interval) return;
            t.buckets = new Map();
            (body.buckets || []).forEach(function (bucket) {
              t.buckets.set(Date.parse(bucket.start), bucket.by_event || {});
            });
            render();
          },
          function () {
            // A refused filter is reported by the snapshot's load; draw nothing.
            t.buckets = new Map();
            render();
          }
        )
        .then(function () {
          t.inflight = false;
          if (t.again) {
            t.again = false;
            refresh();
          }
        });
    }

    // At most one request a second, however fast events come.
    function refresh() {
      if (t.timer) return;
      var wait = Math.max(0, t.lastFetch + 1000 - Date.now());
      t.timer = setTimeout(fetchNow, wait);
    }

    function setInterval_(interval) {
      if (!WIDTHS[interval]) return;
      t.interval = interval;
      t.buckets = new Map();
      render();
      fetchNow();
    }

    function render() {
      var end = windowEnd();
      var step = width();
      t.shownEnd = end;
      var slots = [];
      var byName = new Map();
      for (var i = 0; i < SLOTS; i++) {
        var start = end - (SLOTS - 1 - i) * step;
        var counts = t.buckets.get(start) || {};
        slots.push({ start: start, counts: counts });
        Object.keys(counts).forEach(function (name) {
          byName.set(name, (byName.get(name) || 0) + counts[name]);
        });
      }
      var ranked = Array.from(byName.entries()).sort(function (a, b) {
        return b[1] - a[1] || (a[0] < b[0] ? -1 : 1);
      });
      var named = ranked.slice(0, SERIES).map(function (e) {
        return e[0];
      });
      var colorOf = new Map();
      named.forEach(function (name, i) {
        colorOf.set(name, COLORS[i]);
      });

      var total = 0;
      var max = 0;
      slots.forEach(function (slot) {
        var sum = 0;
        Object.keys(slot.counts).forEach(function (name) {
          sum += slot.counts[name];
        });
        slot.total = sum;
        total += sum;
        max = Math.max(max, sum);
      });

      var chart = ui.svg("svg", {
        viewBox: "0 0 " + VIEW_W + " " + VIEW_H,
        preserveAspectRatio: "none",
        role: "img",
        "aria-label": total + " events in the last " + SLOTS + " " + (t.interval === "1s" ? "seconds" : "minutes"),
        "data-total": total,
        "data-interval": t.interval,
      });
      var slotW = VIEW_W / SLOTS;
      slots.forEach(function (slot, i) {
        if (!slot.total) return;
        var y = VIEW_H;
        var parts = named
          .filter(function (name) {
            return slot.counts[name];
          })
          .map(function (name) {
            return [name, slot.counts[name], colorOf.get(name)];
          });
        var rest = slot.total - parts.reduce(function (sum, p) {
          return sum + p[1];
        }, 0);
        if (rest > 0) parts.push(["other", rest, OTHER]);
        parts.forEach(function (part) {
          var h = (part[1] / max) * (VIEW_H - 4);
          y -= h;
          var rect = ui.svg("rect", {
            x: i * slotW + 0.5,
            y: y,
            width: slotW - 1,
            height: h,
            fill: part[2],
            "data-event": part[0],
            "data-count": part[1],
          });
          var title = ui.svg("title");
          title.textContent = ui.clock(new Date(slot.start).toISOString()) + " · " + part[0] + ": " + part[1];
          rect.appendChild(title);
          chart.appendChild(rect);
        });
      });
      ui.$("timeline-chart").replaceChildren(chart);

      var unit = t.interval === "1s" ? "/s" : "/min";
      ui.$("timeline-max").textContent = max ? "peak " + max + unit : "";
      ui.$("timeline-from").textContent = ui.clock(new Date(slots[0].start).toISOString()).replace(/\.\d+$/, "");
      ui.$("timeline-total").textContent = total + " in the window";
      var legend = document.createDocumentFragment();
      named.forEach(function (name) {
        legend.appendChild(key(name, colorOf.get(name)));
      });
      if (ranked.length > named.length) legend.appendChild(key("other", OTHER));
      ui.$("timeline-legend").replaceChildren(legend);
    }

    function key(name, color) {
      var item = ui.el("span", "key");
      var swatch = ui.el("span", "swatch");
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(ui.el("span", "key-name", name));
      return item;
    }

    // The window follows the clock even when nothing arrives.
    setInterval(function () {
      if (windowEnd() !== t.shownEnd) render();
    }, 1000);

    return { refresh: refresh, load: fetchNow, render: render, setInterval: setInterval_, state: t };
  }

  window.metricsPanels = window.metricsPanels || {};
  window.metricsPanels.timeline = panel;
})();
