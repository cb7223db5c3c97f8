/* The pytest plugin's tagging of a page (MetricsClient.tag_context runs it in each
 * page of a Playwright context before the page's own scripts): requests to the
 * collector's origin by fetch (keepalive too), XMLHttpRequest and sendBeacon get
 * `?test_id=`, which no CORS rule looks at; other origins are untouched. Called as
 * (origin, query parameter name, test id). */
(function (origin, name, id) {
  "use strict";
  if (window.__metricsTestTag) return;
  window.__metricsTestTag = id;
  function tagged(url) {
    try {
      var u = new URL(String(url), location.href);
      if (u.origin !== origin || u.searchParams.has(name)) return null;
      u.searchParams.set(name, id);
      return u.href;
    } catch (e) {
      return null;
    }
  }
  var fetch0 = window.fetch;
  if (typeof fetch0 === "function") {
    window.fetch = function (input, init) {
      var isRequest = typeof Request === "function" && input instanceof Request;
      var url = tagged(isRequest ? input.url : input);
      if (!url) return fetch0.apply(this, arguments);
      if (!isRequest) return fetch0.call(this, url, init);
      // A Request's body is a stream, which Chromium uploads only over HTTP/2: copy it.
      var self = this;
      var read = /^(GET|HEAD)$/.test(input.method) ? Promise.resolve(null) : input.clone().blob();
      return read.then(function (body) {
        var copy = new Request(url, {
          method: input.method, headers: input.headers, body: body, mode: input.mode,
          credentials: input.credentials, cache: input.cache, redirect: input.redirect,
          referrer: input.referrer, integrity: input.integrity,
          keepalive: input.keepalive, signal: input.signal,
        });
        return fetch0.call(self, copy, init);
      });
    };
  }
  var nav = window.navigator;
  if (nav && typeof nav.sendBeacon === "function") {
    var beacon0 = nav.sendBeacon;
    nav.sendBeacon = function (url, data) {
      return beacon0.call(nav, tagged(url) || url, data);
    };
  }
  if (typeof XMLHttpRequest === "function") {
    var open0 = XMLHttpRequest.prototype.open;
    XMLHttpRequest.prototype.open = function (method, url) {
      var args = Array.prototype.slice.call(arguments);
      args[1] = tagged(url) || url;
      return open0.apply(this, args);
    };
  }
})
