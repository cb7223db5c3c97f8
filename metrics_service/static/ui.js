/* Helpers shared by the dashboard's panels. Event and refusal data is attacker-controlled:
 * it only ever reaches the page through textContent (and the page's Trusted Types policy
 * refuses every HTML sink). */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var FORMATS = { segment: true, posthog: true, ga4: true };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attributes) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, String(attributes[name]));
    });
    return node;
  }

  function pad(n, width) {
    return String(n).padStart(width || 2, "0");
  }

  function sameDay(a, b) {
    return (
      a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate()
    );
  }

  // Local time to the millisecond, with the date in front when it is not today.
  function clock(iso, now) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return String(iso);
    var time =
      pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) +
      "." + pad(date.getMilliseconds(), 3);
    if (sameDay(date, now || new Date())) return time;
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " + time;
  }

  function isToday(iso) {
    var date = new Date(iso);
    return isNaN(date.getTime()) || sameDay(date, new Date());
  }

  // A gap between two events: "+340 ms", "+12.3 s", "+4 min 5 s", "+2 h 3 min", "+3 d 4 h".
  function gap(ms) {
    if (!isFinite(ms)) return "";
    var sign = ms < 0 ? "−" : "+";
    ms = Math.abs(ms);
    if (ms < 1000) return sign + Math.round(ms) + " ms";
    var s = ms / 1000;
    if (s < 60) return sign + (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return sign + m + " min " + Math.floor(s % 60) + " s";
    var h = Math.floor(m / 60);
    if (h < 24) return sign + h + " h " + (m % 60) + " min";
    return sign + Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function bytes(n) {
    if (!n) return "0 B";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
    return (i ? (n / Math.pow(1024, i)).toFixed(1) : String(n)) + " " + units[i];
  }

  // An error body's detail as one line: a string, or "loc: msg" for each problem.
  function detailText(detail) {
    if (detail === undefined || detail === null) return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map(function (problem) {
          if (!problem || typeof problem !== "object") return String(problem);
          var loc = Array.isArray(problem.loc)
            ? problem.loc.filter(function (part) {
                return part !== "query" && part !== "body";
              })
            : [];
          // A batch's problems carry the event's index: "#2 visitor_id: ...".
          var index = typeof problem.index === "number" ? "#" + problem.index + " " : "";
          return index + (loc.length ? loc.join(".") + ": " : "") + (problem.msg || JSON.stringify(problem));
        })
        .join("; ");
    }
    return JSON.stringify(detail);
  }

  // The SDK an event came through (metadata.$sdk.format), or "" for our own API.
  function sdkFormat(data) {
    var sdk = data && data.metadata && data.metadata.$sdk;
    var format = sdk && typeof sdk === "object" ? sdk.format : undefined;
    return typeof format === "string" ? format : "";
  }

  function formatBadge(data) {
    var format = sdkFormat(data);
    if (!format) return null;
    // Only known formats pick a colour; the text is whatever the event says.
    var badge = el("span", "fmt" + (FORMATS[format] ? " fmt-" + format : ""), format);
    badge.title = "Sent through the " + format + " SDK endpoint";
    return badge;
  }

  // A click or Enter/Space on a focusable element.
  function activate(node, handler) {
    node.tabIndex = 0;
    node.addEventListener("click", handler);
    node.addEventListener("keydown", function (event) {
      if (event.target !== node) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        handler(event);
      }
    });
  }

  window.metricsUI = {
    $: $,
    el: el,
    svg: svg,
    clock: clock,
    isToday: isToday,
    gap: gap,
    bytes: bytes,
    detailText: detailText,
    sdkFormat: sdkFormat,
    formatBadge: formatBadge,
    activate: activate,
  };
})();
