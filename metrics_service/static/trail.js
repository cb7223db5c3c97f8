/* The visitor trail: one visitor's events in the ring, oldest first, with the time
 * between each and the one before; new ones are appended live. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var LIMIT = 500;

  function panel(ctx) {
    var t = { visitor: null, events: [], through: 0, pending: null, more: false };

    function open(visitor) {
      t.visitor = visitor;
      t.events = [];
      load();
      render();
      ui.$("trail").scrollIntoView({ block: "nearest" });
    }

    function close() {
      t.visitor = null;
      t.events = [];
      render();
    }

    function load() {
      var visitor = t.visitor;
      if (visitor === null) return;
      t.pending = [];
      ctx.api("/behavior", [["visitor_id", visitor], ["limit", LIMIT]]).then(
        function (body) {
          if (t.visitor !== visitor) return;
          t.events = body.last_events.slice().reverse();
          t.more = body.total > t.events.length;
          t.through = body.last_seq;
          var missed = t.pending || [];
          t.pending = null;
          missed.forEach(add);
          render();
        },
        function (error) {
          t.pending = null;
          ctx.showError(error.message);
        }
      );
    }

    function add(item) {
      if (t.visitor === null || item.data.visitor_id !== t.visitor) return;
      if (t.pending) {
        t.pending.push(item);
        return;
      }
      if (!(item.seq > t.through)) return;
      t.through = item.seq;
      t.events.push(item.data);
      if (t.events.length > LIMIT) {
        t.events.shift();
        t.more = true;
      }
      render();
    }

    function render() {
      var section = ui.$("trail");
      section.hidden = t.visitor === null;
      if (t.visitor === null) return;
      ui.$("trail-visitor").textContent = t.visitor;
      var first = t.events.length ? Date.parse(t.events[0].timestamp) : NaN;
      var last = t.events.length ? Date.parse(t.events[t.events.length - 1].timestamp) : NaN;
      ui.$("trail-note").textContent =
        (t.more ? "newest " : "") + t.events.length + (t.events.length === 1 ? " event" : " events") +
        (t.events.length > 1 ? ", over " + ui.gap(last - first).slice(1) : "");
      var list = document.createDocumentFragment();
      var previous = NaN;
      t.events.forEach(function (data) {
        var li = ui.el("li", "step");
        li.setAttribute("data-seq", String(data.seq));
        var at = Date.parse(data.timestamp);
        li.appendChild(ui.el("span", "when", ui.clock(data.timestamp)));
        li.appendChild(ui.el("span", "gap", isNaN(previous) ? "start" : ui.gap(at - previous)));
        var name = ui.el("span", "name");
        var badge = ui.formatBadge(data);
        if (badge) name.appendChild(badge);
        name.appendChild(ui.el("span", "ev", data.event));
        li.appendChild(name);
        li.appendChild(ui.el("span", "meta", JSON.stringify(data.metadata || {})));
        list.appendChild(li);
        previous = at;
      });
      ui.$("trail-list").replaceChildren(list);
      ui.$("trail-empty").hidden = t.events.length > 0;
    }

    return { open: open, close: close, load: load, add: add, state: t };
  }

  window.metricsPanels = window.metricsPanels || {};
  window.metricsPanels.trail = panel;
})();
