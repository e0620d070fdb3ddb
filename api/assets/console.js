// Conveyor console: refreshes a page's live region (#live) in place.
// data-sse="URL": follow an execution's event stream; each event re-reads
// the page and swaps the region, until the execution is final.
// data-stream="URL": follow a workspace's stream of `changed` signals (the
// executions list); each re-reads the page, at most one re-read at a time,
// and none while the tab is hidden (one when it shows again).
// Pages work without this script; it only saves the reload.
(function () {
  "use strict";
  var FINAL = ["succeeded", "failed", "cancelled"];

  function refresh() {
    return fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var here = document.getElementById("live");
        if (!next || !here) { return null; }
        var focused = document.activeElement && document.activeElement.id;
        // Keep what the person opened: the n-th <details> stays open.
        var opened = Array.prototype.map.call(here.querySelectorAll("details"), function (d) { return d.open; });
        next.querySelectorAll("details").forEach(function (d, i) { if (opened[i]) { d.open = true; } });
        here.replaceWith(next);
        if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
        return next;
      });
  }

  function follow(url) {
    var source = new EventSource(url);
    var pending = null;
    function later() {
      if (pending) { return; }
      pending = setTimeout(function () { pending = null; refresh(); }, 100);
    }
    ["claimed", "step_started", "step_finished", "retry_scheduled", "cancel_requested", "released", "lease_lost"]
      .forEach(function (kind) { source.addEventListener(kind, later); });
    source.addEventListener("status", function (event) {
      var status = "";
      try { status = JSON.parse(event.data).status; } catch (e) { status = ""; }
      if (FINAL.indexOf(status) >= 0) {
        source.close();
        if (pending) { clearTimeout(pending); pending = null; }
        refresh();
      } else {
        later();
      }
    });
    source.onerror = function () {
      // The stream ended or broke: one re-read shows the latest state.
      source.close();
      refresh();
    };
  }

  function watch(url) {
    var root = document.documentElement;
    var busy = false, again = false, timer = null, stale = false;
    function done() {
      busy = false;
      if (again) { again = false; soon(); }
    }
    function run() {
      timer = null;
      if (document.visibilityState === "hidden") { stale = true; return; }
      busy = true;
      refresh().then(done, done);
    }
    function soon() {
      if (busy) { again = true; return; }
      if (!timer) { timer = setTimeout(run, 50); }
    }
    var source = new EventSource(url);
    source.addEventListener("changed", soon);
    // Every (re)connection re-reads once: what changed while no stream
    // was open shows, and from now on each change is signalled.
    source.addEventListener("open", function () { root.dataset.live = "open"; soon(); });
    source.addEventListener("error", function () { root.dataset.live = "reconnecting"; });
    document.addEventListener("visibilitychange", function () {
      if (stale && document.visibilityState === "visible") { stale = false; soon(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (!live || !window.fetch) { return; }
    if (live.dataset.sse && window.EventSource) { follow(live.dataset.sse); }
    if (live.dataset.stream && window.EventSource) { watch(live.dataset.stream); }
  });
})();
