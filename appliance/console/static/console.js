// The linerelay console: refresh the parts of a page marked data-poll="URL" from their
// server-rendered fragments every few seconds (no full reload), only while the tab is
// visible. The fragments are escaped HTML from the relay's own templates.
(function () {
  "use strict";
  var interval = Number(document.body.getAttribute("data-poll-ms")) || 2000;
  var last = new WeakMap();
  var busy = false;

  function toLogin() {
    var here = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(here));
  }

  function refresh(el) {
    return fetch(el.getAttribute("data-poll"), {
      headers: { "X-Console-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store",
    }).then(function (response) {
      if (response.status === 401) { toLogin(); return; }
      if (!response.ok) { el.classList.add("stale"); return; }
      return response.text().then(function (html) {
        el.classList.remove("stale");
        if (last.get(el) !== html) { last.set(el, html); el.innerHTML = html; }
      });
    }).catch(function () { el.classList.add("stale"); });
  }

  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    var parts = Array.prototype.slice.call(document.querySelectorAll("[data-poll]"));
    Promise.all(parts.map(refresh)).then(function () { busy = false; });
  }

  setInterval(tick, interval);
  document.addEventListener("visibilitychange", tick);
})();
