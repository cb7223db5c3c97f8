/* The counts by name (bars) and the newest events (table); a row opens its JSON, its
 * visitor opens the trail. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var $ = ui.$;
  var el = ui.el;
  var MAX_BARS = 40;

  function panel(ctx) {
    var state = ctx.state;

    function emptyText() {
      if (state.filterError) return "The filter was refused: see the message above.";
      if (!state.loaded) return "Loading…";
      var total = state.all.total;
      if (!total) return "No events yet.";
      return total.toLocaleString() + (total === 1 ? " event" : " events") + " in the ring, none match.";
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
          ctx.setEventFilter(state.filters.event === entry[0] ? "" : entry[0]);
        });
        fragment.appendChild(bar);
      });
      if (entries.length > MAX_BARS) {
        fragment.appendChild(el("p", "muted", "… and " + (entries.length - MAX_BARS) + " more"));
      }
      $("bars").replaceChildren(fragment);
      $("bars-empty").textContent = emptyText();
      $("bars-empty").hidden = entries.length > 0;
      $("counts-total").textContent = tally.total ? tally.total.toLocaleString() + " in the ring" : "";

      var options = document.createDocumentFragment();
      Array.from(state.all.counts.keys())
        .sort()
        .forEach(function (name) {
          var option = el("option");
          option.value = name;
          options.appendChild(option);
        });
      $("event-names").replaceChildren(options);
    }

    function renderRows() {
      var needle = state.filters.text.trim().toLowerCase();
      var shown = needle
        ? state.rows.filter(function (r) {
            return r.text.indexOf(needle) !== -1;
          })
        : state.rows;
      var now = new Date();
      var dated = false;
      var body = document.createDocumentFragment();
      shown.forEach(function (r) {
        body.appendChild(eventRow(r, now));
        if (!ui.isToday(r.data.timestamp)) dated = true;
        if (state.expanded.has(r.seq)) {
          var detailRow = el("tr", "detail");
          var cell = el("td");
          cell.colSpan = 5;
          cell.appendChild(el("pre", "", JSON.stringify(r.data, null, 2)));
          detailRow.appendChild(cell);
          body.appendChild(detailRow);
        }
      });
      $("events").classList.toggle("dated", dated);
      $("events").tBodies[0].replaceChildren(body);
      var empty = $("rows-empty");
      empty.textContent =
        shown.length || !needle || !state.rows.length
          ? emptyText()
          : "None of the newest " + state.rows.length + " events contain that text.";
      empty.hidden = shown.length > 0;
      $("rows-note").textContent =
        needle && shown.length !== state.rows.length
          ? shown.length + " of " + state.rows.length + " match"
          : state.rows.length
            ? "newest " + state.rows.length
            : "";
    }

    function eventRow(r, now) {
      var tr = el("tr", "event-row");
      tr.setAttribute("data-seq", String(r.seq));
      tr.title = "Show the full event";
      if (state.expanded.has(r.seq)) tr.classList.add("open");
      tr.appendChild(el("td", "seq", r.seq));
      var time = el("td", "time", ui.clock(r.data.timestamp, now));
      time.title = String(r.data.timestamp);
      tr.appendChild(time);
      var name = el("td", "event");
      var badge = ui.formatBadge(r.data);
      if (badge) name.appendChild(badge); // first, so a long name's ellipsis never hides it
      name.appendChild(el("span", "ev", r.data.event));
      tr.appendChild(name);
      var visitor = el("td", "visitor");
      var link = el("button", "link", r.data.visitor_id);
      link.type = "button";
      link.title = "Show this visitor's trail";
      link.addEventListener("click", function (event) {
        event.stopPropagation();
        ctx.openTrail(r.data.visitor_id);
      });
      visitor.appendChild(link);
      tr.appendChild(visitor);
      tr.appendChild(el("td", "meta", JSON.stringify(r.data.metadata || {})));
      ui.activate(tr, function () {
        if (state.expanded.has(r.seq)) state.expanded.delete(r.seq);
        else state.expanded.add(r.seq);
        renderRows();
        var again = $("events").querySelector('tr[data-seq="' + r.seq + '"]');
        if (again) again.focus();
      });
      return tr;
    }


    return { renderBars: renderBars, renderRows: renderRows };
  }

  window.metricsPanels = window.metricsPanels || {};
  window.metricsPanels.events = panel;
})();
