/* The Rejected panel: refused ingest requests from /behavior/rejected, then live from the
 * stream's `rejected` events. Bodies and details are whatever a sender sent: text only. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var LIMIT = 50;

  function when(value) {
    // received_at is ISO-8601; a number is taken as epoch seconds (or milliseconds).
    if (typeof value === "number") return ui.clock(new Date(value < 1e12 ? value * 1000 : value).toISOString());
    return ui.clock(value);
  }

  function pretty(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value, null, 2);
  }

  function panel(ctx) {
    var r = { total: 0, list: [], through: 0, open: new Set(), available: null };

    function load() {
      return ctx.api("/behavior/rejected", { limit: LIMIT }).then(
        function (body) {
          r.available = true;
          r.total = body.total || 0;
          r.list = (body.rejections || []).slice(0, LIMIT);
          r.through = r.list.reduce(function (max, record) {
            return Math.max(max, record.id || 0);
          }, body.last_id || 0);
          render();
        },
        function (error) {
          // A collector without the quarantine: the panel says so, nothing else breaks.
          if (error.status === 404) r.available = false;
          render();
        }
      );
    }

    function add(record) {
      if (!record || !(record.id > r.through)) return;
      r.available = true;
      r.through = record.id;
      r.total += 1;
      r.list.unshift(record);
      if (r.list.length > LIMIT) r.list.length = LIMIT;
      render();
    }

    function toggle(id) {
      if (r.open.has(id)) r.open.delete(id);
      else r.open.add(id);
      render();
      var again = ui.$("rejected-list").querySelector('[data-id="' + id + '"] .rejection-head');
      if (again) again.focus();
    }

    function item(record) {
      var li = ui.el("li", "rejection");
      li.setAttribute("data-id", String(record.id));
      var head = ui.el("div", "rejection-head");
      head.title = "Show the detail and the body";
      head.setAttribute("role", "button");
      head.setAttribute("aria-expanded", String(r.open.has(record.id)));
      head.appendChild(ui.el("span", "status", record.status));
      head.appendChild(ui.el("span", "when", when(record.received_at)));
      head.appendChild(ui.el("span", "what", record.event ? record.event : "(no event name)"));
      head.appendChild(ui.el("span", "path", record.path));
      head.appendChild(ui.el("span", "summary", ui.detailText(record.detail)));
      ui.activate(head, function () {
        toggle(record.id);
      });
      li.appendChild(head);
      if (!r.open.has(record.id)) return li;
      li.classList.add("open");
      var more = ui.el("div", "rejection-detail");
      var facts = ui.el("dl");
      [
        ["visitor", record.visitor_id],
        ["content type", record.content_type],
        ["origin", record.origin],
        ["user agent", record.user_agent],
        ["test", record.test_id],
      ].forEach(function (fact) {
        if (fact[1] === undefined || fact[1] === null || fact[1] === "") return;
        facts.appendChild(ui.el("dt", "", fact[0]));
        facts.appendChild(ui.el("dd", "", fact[1]));
      });
      more.appendChild(facts);
      more.appendChild(ui.el("h3", "", "detail"));
      more.appendChild(ui.el("pre", "detail", pretty(record.detail)));
      more.appendChild(ui.el("h3", "", record.truncated ? "body (the first 4 KiB)" : "body"));
      more.appendChild(ui.el("pre", "body", record.body === undefined || record.body === null ? "" : record.body));
      li.appendChild(more);
      return li;
    }

    function clear() {
      var question = "Empty the rejected list (" + r.total.toLocaleString() + ")? The .rejected.jsonl file is kept.";
      if (!window.confirm(question)) return;
      ctx.api("/behavior/rejected", null, "DELETE").then(load, function (error) {
        ctx.showError(error.message);
      });
    }

    function render() {
      ui.$("rejected-clear").hidden = !r.list.length;
      var badge = ui.$("rejected-badge");
      badge.textContent = r.available === false ? "–" : r.total.toLocaleString();
      badge.setAttribute("data-count", String(r.total));
      badge.classList.toggle("bad", r.total > 0);
      ui.$("rejected-total").textContent = r.total ? r.total.toLocaleString() + " refused" : "";
      var list = document.createDocumentFragment();
      r.list.forEach(function (record) {
        list.appendChild(item(record));
      });
      ui.$("rejected-list").replaceChildren(list);
      var empty = ui.$("rejected-empty");
      empty.textContent =
        r.available === false ? "This collector keeps no rejected requests." : "Nothing refused.";
      empty.hidden = r.list.length > 0;
    }

    ui.$("rejected-clear").addEventListener("click", clear);

    return { load: load, add: add, render: render, state: r };
  }

  window.metricsPanels = window.metricsPanels || {};
  window.metricsPanels.rejected = panel;
})();
