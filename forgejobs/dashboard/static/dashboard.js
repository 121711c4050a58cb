/* forgejobs dashboard: refresh [data-poll] regions from their fragment URL every data-every seconds
   (not while the tab is hidden, the pointer is over the region, or one of its inputs has focus), and
   ask before submitting a form that has data-confirm. No dependencies, no build step. */
(function () {
  "use strict";
  function busy(el) {
    var active = document.activeElement;
    var typing = active && el.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
    return document.hidden || el.matches(":hover") || typing;
  }
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var every = (parseFloat(el.getAttribute("data-every")) || 5) * 1000;
    function tick() {
      if (busy(el)) { window.setTimeout(tick, every); return; }
      window.fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (reply) {
          if (reply.status === 401) { window.location.reload(); return null; }
          return reply.ok ? reply.text() : null;
        })
        .then(function (html) {
          if (typeof html === "string" && !busy(el)) {
            el.innerHTML = html;
            el.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* offline for a moment: try again next time */ })
        .then(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
  Array.prototype.forEach.call(document.querySelectorAll("[data-poll]"), poll);
})();
