/* metrics_service browser tracker: no dependencies, no cookies.
 *
 *   <script src="http://127.0.0.1:8001/tracker.js"></script>
 *   <script>
 *     metrics.init({ endpoint: "http://127.0.0.1:8001" });
 *     metrics.track("page_view", { path: location.pathname });
 *   </script>
 *
 * Events are queued and sent as one batch every second (or at 20 events) with a
 * keepalive fetch; when the page is hidden or unloaded the queue goes by sendBeacon.
 * Bodies are text/plain so no CORS preflight is needed. Every event carries an
 * event_id, so a batch retried after a lost response is never counted twice.
 */
(function (global) {
  "use strict";

  var STORAGE_KEY = "metrics_visitor_id";
  var BATCH_SIZE = 20;
  var MAX_QUEUE = 1000; // drop the oldest beyond this while the collector is unreachable
  var KEEPALIVE_LIMIT = 60000; // browsers cap in-flight keepalive bodies at 64 KiB
  var MAX_BACKOFF = 60000;

  var config = null;
  var queue = [];
  var inflight = false;
  var timer = null;
  var listening = false;
  var failures = 0; // consecutive failed sends: retries back off up to MAX_BACKOFF
  var retryAt = 0;

  function uuid() {
    var c = global.crypto;
    if (c && typeof c.randomUUID === "function") {
      return c.randomUUID();
    }
    // randomUUID needs a secure context (https, localhost, 127.0.0.1); plain http elsewhere lacks it.
    var bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") {
      c.getRandomValues(bytes);
    } else {
      for (var i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = [];
    for (var j = 0; j < 16; j++) hex.push((bytes[j] + 0x100).toString(16).slice(1));
    return (
      hex.slice(0, 4).join("") + "-" + hex.slice(4, 6).join("") + "-" +
      hex.slice(6, 8).join("") + "-" + hex.slice(8, 10).join("") + "-" +
      hex.slice(10, 16).join("")
    );
  }

  function storedVisitorId() {
    var id = null;
    try {
      id = global.localStorage.getItem(STORAGE_KEY);
      if (!id) {
        id = uuid();
        global.localStorage.setItem(STORAGE_KEY, id);
      }
    } catch (e) {
      // Storage blocked (privacy mode, sandboxed frame): one id for this page view.
      id = id || uuid();
    }
    return id;
  }

  function url() {
    // The ingest token (if the collector wants one) and the test id go in the query:
    // beacons cannot set headers, and a header would cost a CORS preflight.
    var query = [];
    if (config.token) query.push("token=" + encodeURIComponent(config.token));
    if (config.testId) query.push("test_id=" + encodeURIComponent(config.testId));
    return config.endpoint + "/api/metrics/events" + (query.length ? "?" + query.join("&") : "");
  }

  function body(events) {
    var now = new Date().toISOString();
    for (var i = 0; i < events.length; i++) events[i].sent_at = now;
    return JSON.stringify({ events: events });
  }

  function requeue(events) {
    queue = events.concat(queue);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    failures += 1;
    retryAt = Date.now() + Math.min(MAX_BACKOFF, config.flushInterval * Math.pow(2, failures - 1));
  }

  function tick() {
    if (Date.now() >= retryAt) flush();
  }

  function flush() {
    if (!config || inflight || queue.length === 0) return;
    if (typeof global.fetch !== "function") return beaconAll();
    var events = queue.splice(0, BATCH_SIZE);
    var payload = body(events);
    inflight = true;
    global
      .fetch(url(), {
        method: "POST",
        keepalive: payload.length < KEEPALIVE_LIMIT,
        headers: { "Content-Type": "text/plain" },
        body: payload,
      })
      .then(function (response) {
        // 4xx other than 408/429 means the batch itself is wrong: retrying cannot help.
        var retry = response.status >= 500 || response.status === 408 || response.status === 429;
        if (retry) return requeue(events);
        failures = 0;
        if (!response.ok) warn("the collector refused a batch with " + response.status);
      })
      .catch(function () {
        // Network error, lost response or an origin METRICS_CORS_ORIGINS does not allow:
        // send the same events (same event_ids) again; the collector drops repeats.
        requeue(events);
      })
      .then(function () {
        inflight = false;
        if (queue.length >= BATCH_SIZE && failures === 0) flush();
      });
  }

  function beaconAll() {
    if (!config || queue.length === 0) return;
    if (!global.navigator || typeof global.navigator.sendBeacon !== "function") return;
    while (queue.length > 0) {
      var events = queue.slice(0, BATCH_SIZE);
      var blob = new Blob([body(events)], { type: "text/plain" });
      if (!global.navigator.sendBeacon(url(), blob)) return; // over the beacon quota: keep them
      queue.splice(0, events.length);
    }
  }

  function listen() {
    if (listening) return;
    listening = true;
    global.addEventListener("pagehide", beaconAll);
    global.document.addEventListener("visibilitychange", function () {
      if (global.document.visibilityState === "hidden") beaconAll();
    });
  }

  function warn(message) {
    if (global.console) global.console.warn("metrics: " + message);
  }

  // The collector refuses a whole batch for one bad event: catch what it would refuse here.
  function badName(event) {
    return typeof event !== "string" || !event.trim() || event.length > 64 || /[\u0000-\u001f\u007f-\u009f]/.test(event);
  }

  var metrics = {
    /** options: endpoint (collector base URL); optional visitorId, flushInterval (ms, default 1000),
     *  token (METRICS_INGEST_TOKEN, when the collector requires one), testId (the test_id the
     *  collector stamps on these events; the pytest plugin's tracker_tag() sets it). */
    init: function (options) {
      options = options || {};
      if (!options.endpoint) throw new Error("metrics.init: endpoint is required");
      config = {
        endpoint: String(options.endpoint).replace(/\/+$/, ""),
        visitorId: options.visitorId ? String(options.visitorId).trim() : storedVisitorId(),
        flushInterval: options.flushInterval > 0 ? options.flushInterval : 1000,
        token: options.token ? String(options.token) : null,
        testId: options.testId ? String(options.testId) : null,
      };
      if (config.visitorId.length < 6 || config.visitorId.length > 64) {
        throw new Error("metrics.init: visitorId must be 6 to 64 characters");
      }
      // Events tracked before init were queued without a visitor.
      for (var i = 0; i < queue.length; i++) {
        if (!queue[i].visitor_id) queue[i].visitor_id = config.visitorId;
      }
      if (timer) global.clearInterval(timer);
      timer = global.setInterval(tick, config.flushInterval);
      listen();
      return metrics;
    },
    track: function (event, metadata) {
      if (badName(event)) {
        warn("event names are 1 to 64 characters without control characters; dropped " + JSON.stringify(event));
        return;
      }
      if (metadata === undefined || metadata === null) metadata = {};
      if (typeof metadata !== "object" || Array.isArray(metadata)) {
        warn("metadata must be an object; dropped the " + event + " event");
        return;
      }
      queue.push({
        event_id: uuid(),
        visitor_id: config ? config.visitorId : null,
        event: event,
        timestamp: new Date().toISOString(),
        metadata: metadata,
      });
      if (queue.length > MAX_QUEUE) queue.shift();
      if (queue.length >= BATCH_SIZE) tick();
    },
    flush: flush,
    visitorId: function () {
      return config ? config.visitorId : null;
    },
    pending: function () {
      return queue.length;
    },
  };

  global.metrics = metrics;
})(window);
