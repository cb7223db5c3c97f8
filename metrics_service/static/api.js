/* The dashboard's access to the API: the read token (asked for on a 401) and fetch. */
(function () {
  "use strict";

  var ui = window.metricsUI;
  var $ = ui.$;
  var API = "/api/metrics";

  // ---- access control hook -------------------------------------------------
  // When the collector requires a read token, API calls answer 401: the token form
  // appears, and the token then goes on every request (header for fetch, query
  // parameter for EventSource, which cannot send headers).
  var auth = {
    token: readToken(),
    // params: an object, or a list of [name, value] pairs (a name may repeat).
    url: function (path, params, inQuery) {
      var query = new URLSearchParams();
      var pairs = Array.isArray(params)
        ? params
        : Object.keys(params || {}).map(function (key) {
            return [key, params[key]];
          });
      pairs.forEach(function (pair) {
        var value = pair[1];
        if (value !== undefined && value !== null && value !== "") query.append(pair[0], String(value));
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


  function api(path, params, method) {
    return fetch(auth.url(API + path, params), {
      method: method || "GET",
      headers: auth.headers(),
      cache: "no-store",
    }).then(function (response) {
      if (response.status === 401) {
        auth.ask();
        throw failure("a read token is required", 401);
      }
      return response.json().then(
        function (body) {
          if (!response.ok) {
            var text = ui.detailText(body && body.detail);
            throw failure(path + ": " + response.status + " " + text, response.status, text);
          }
          return body;
        },
        function () {
          throw failure(path + ": " + response.status, response.status);
        }
      );
    });
  }

  function failure(message, status, detail) {
    var error = new Error(message);
    error.status = status;
    error.detail = detail || "";
    return error;
  }

  window.metricsApi = { auth: auth, api: api };
})();
