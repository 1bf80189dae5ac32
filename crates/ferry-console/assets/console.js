// Ferry console: progressive enhancement only. Every page reads without this script; with it,
// live views refresh their <main> when the server says the view changed (server-sent events),
// the fleet filter applies as you type, and release actions ask before they POST.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="ferry-csrf"]') || {}).content || "";

  async function refresh() {
    const resp = await fetch(location.href, { headers: { "X-Ferry-Fragment": "1" } });
    if (!resp.ok && resp.status !== 404) return;
    const main = document.getElementById("view");
    const focused = document.activeElement && document.activeElement.id;
    const filter = document.getElementById("q");
    const value = filter ? filter.value : null;
    main.innerHTML = await resp.text();
    const again = document.getElementById("q");
    if (again && value !== null) { again.value = value; applyFilter(again); }
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
    main.dataset.refreshed = String((Number(main.dataset.refreshed) || 0) + 1);
  }

  function watch() {
    const main = document.getElementById("view");
    const path = main && main.dataset.watch;
    if (!path || !window.EventSource) return;
    let seen = null;
    const es = new EventSource("/api/watch?path=" + encodeURIComponent(path));
    es.addEventListener("change", (ev) => {
      if (seen !== null && ev.data !== seen) refresh();
      seen = ev.data;
    });
  }

  function applyFilter(input) {
    const q = input.value.trim().toLowerCase();
    document.querySelectorAll(input.dataset.filter).forEach((row) => {
      const text = row.textContent.toLowerCase();
      const stale = row.dataset.stale === "true";
      row.hidden = !(q === "" || text.includes(q) || (q === "stale" && stale));
    });
  }

  document.addEventListener("input", (ev) => {
    if (ev.target.matches("input[data-filter]")) applyFilter(ev.target);
  });

  document.addEventListener("click", async (ev) => {
    const a = ev.target.closest("a[data-action]");
    if (!a) return;
    ev.preventDefault();
    if (!window.confirm(a.dataset.question)) return;
    const url = "/api/releases/" + encodeURIComponent(a.dataset.release) + "/" + a.dataset.action;
    const resp = await fetch(url, { method: "POST", headers: { "X-Ferry-CSRF": csrf() } });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({ error: resp.statusText }));
      window.alert(body.error || resp.statusText);
    }
    refresh();
  });

  document.addEventListener("DOMContentLoaded", watch);
})();
