// Tollway dashboard: vanilla JS, inline SVG charts, no third-party code.
//
// The admin key: from the URL fragment (#token=..., never sent to a server) or the form;
// kept in sessionStorage (this tab only), removed from the address bar at once, sent only
// as `Authorization: Bearer` to ./dashboard/data. Every number shown carries its exact
// value in a `data-value` attribute (money as the server's decimal string) so tests and
// tools can read it; data is set as text (textContent), never parsed as markup.
"use strict";

(function () {
  const TOKEN_KEY = "tollway.dashboard.admin-key";
  const WINDOW_KEY = "tollway.dashboard.window";
  const POLL_MS = 5000;
  const DATA_URL = "dashboard/data";
  const COLORS = ["#3366cc", "#dc7633", "#1e8e5a", "#8e44ad", "#c0392b", "#16a085", "#d4ac0d", "#5d6d7e", "#95a5a6"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let inFlight = false;

  // --- the credential ---------------------------------------------------------------

  function takeTokenFromFragment() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = fragment.get("token");
    const windowName = fragment.get("window");
    if (windowName) sessionStorage.setItem(WINDOW_KEY, windowName);
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function askForToken(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopPolling();
    document.body.dataset.state = "auth";
    $("auth-message").textContent = message;
    $("auth-form").hidden = false;
    $("panels").hidden = true;
    setStatus("admin key needed");
  }

  // --- polling ----------------------------------------------------------------------

  function setStatus(text) { $("status").textContent = text; }

  function stopPolling() {
    if (timer !== null) clearInterval(timer);
    timer = null;
  }

  function startPolling() {
    stopPolling();
    $("auth-form").hidden = true;
    poll();
    timer = setInterval(poll, POLL_MS);
  }

  async function poll() {
    const key = token();
    if (!key) { askForToken("Enter the admin key (TOLLWAY_ADMIN_KEY). It is kept in this tab only."); return; }
    if (inFlight) return;
    inFlight = true;
    const windowName = $("window").value;
    try {
      const response = await fetch(DATA_URL + "?window=" + encodeURIComponent(windowName), {
        headers: { Authorization: "Bearer " + key, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
      });
      if (response.status === 401) { askForToken("That admin key was refused; enter it again."); return; }
      if (response.status === 403) { askForToken("The dashboard is off: set TOLLWAY_ADMIN_KEY on the ingress."); return; }
      if (!response.ok) {
        let detail = "HTTP " + response.status;
        try { detail = (await response.json()).error.message; } catch (e) { /* keep the status */ }
        throw new Error(detail);
      }
      render(await response.json());
    } catch (error) {
      document.body.dataset.state = "error";
      setStatus("update failed: " + error.message + " (retrying)");
    } finally {
      inFlight = false;
    }
  }

  // --- formatting -------------------------------------------------------------------

  function money(text) {
    const value = Number(text);
    if (value === 0) return "$0";
    if (Math.abs(value) < 0.01) return "$" + value.toPrecision(3);
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function pct(rate) { return (rate * 100).toFixed(1) + "%"; }
  function ms(value) { return value === null ? "-" : value.toFixed(value < 10 ? 1 : 0); }
  function count(value) { return value.toLocaleString("en-US"); }
  function clock(epochMs) { return new Date(epochMs).toISOString().slice(11, 16); }

  function setValue(element, shown, value) {
    element.textContent = shown;
    element.dataset.value = String(value);
  }

  // --- SVG charts -------------------------------------------------------------------

  function svgNode(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function legend(container, names) {
    const box = document.createElement("div");
    box.className = "legend";
    names.forEach((name, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[i % COLORS.length];
      item.append(swatch, document.createTextNode(name === "" ? "(none)" : name));
      box.append(item);
    });
    container.append(box);
  }

  // series: [{name, values: [number]}]; options: {format, limit, height}
  function lineChart(container, times, series, options) {
    container.replaceChildren();
    const opts = Object.assign({ format: String, limit: null, height: 180 }, options || {});
    if (series.length === 0 || times.length === 0) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "no data in this window";
      container.append(empty);
      return;
    }
    // the container's own width: one SVG unit per CSS pixel, so labels keep their size
    const width = Math.max(320, container.clientWidth || 640), height = opts.height;
    const left = 76, right = 12, top = 8, bottom = 20;
    let max = opts.limit === null ? 0 : opts.limit;
    for (const s of series) for (const v of s.values) max = Math.max(max, v);
    if (max <= 0) max = 1;
    const x = (i) => left + (times.length === 1 ? 0 : (i * (width - left - right)) / (times.length - 1));
    const y = (v) => top + (height - top - bottom) * (1 - v / max);
    const svg = svgNode("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    for (const fraction of [0, 0.5, 1]) {
      const value = max * fraction;
      svg.append(svgNode("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
      svg.append(svgNode("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end" }, opts.format(value)));
    }
    for (const i of [0, Math.floor((times.length - 1) / 2), times.length - 1]) {
      const anchor = i === 0 ? "start" : i === times.length - 1 ? "end" : "middle";
      svg.append(svgNode("text", { x: x(i), y: height - 4, "text-anchor": anchor }, clock(times[i])));
    }
    if (opts.limit !== null) {
      svg.append(svgNode("line", { class: "limit", x1: left, x2: width - right, y1: y(opts.limit), y2: y(opts.limit) }));
    }
    series.forEach((s, index) => {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      svg.append(svgNode("polyline", {
        points, fill: "none", stroke: COLORS[index % COLORS.length], "stroke-width": 2,
        "stroke-linejoin": "round", "data-series": s.name,
      }));
    });
    container.append(svg);
    legend(container, series.map((s) => s.name));
  }

  // groups: [{name, values: [number]}], one bar per value (labels name the values)
  function barChart(container, groups, labels) {
    container.replaceChildren();
    if (groups.length === 0) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "no requests in this window";
      container.append(empty);
      return;
    }
    const width = Math.max(320, container.clientWidth || 640), height = 180;
    const left = 76, right = 12, top = 8, bottom = 20;
    let max = 1;
    for (const g of groups) for (const v of g.values) if (v !== null) max = Math.max(max, v);
    const slot = (width - left - right) / groups.length;
    const bar = Math.max(2, (slot * 0.8) / labels.length);
    const y = (v) => top + (height - top - bottom) * (1 - v / max);
    const svg = svgNode("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    for (const fraction of [0, 0.5, 1]) {
      svg.append(svgNode("line", { class: "grid", x1: left, x2: width - right, y1: y(max * fraction), y2: y(max * fraction) }));
      svg.append(svgNode("text", { x: left - 4, y: y(max * fraction) + 4, "text-anchor": "end" }, ms(max * fraction)));
    }
    groups.forEach((g, gi) => {
      const x0 = left + gi * slot + slot * 0.1;
      g.values.forEach((v, vi) => {
        if (v === null) return;
        svg.append(svgNode("rect", {
          x: x0 + vi * bar, y: y(v), width: bar - 1, height: Math.max(0, y(0) - y(v)),
          fill: COLORS[vi % COLORS.length],
        }));
      });
      svg.append(svgNode("text", { x: x0 + (bar * labels.length) / 2, y: height - 4, "text-anchor": "middle" }, g.name || "(none)"));
    });
    container.append(svg);
    legend(container, labels);
  }

  // --- tables -----------------------------------------------------------------------

  function cell(row, field, shown, value) {
    const td = document.createElement("td");
    td.dataset.field = field;
    setValue(td, shown, value);
    row.append(td);
    return td;
  }

  function progress(succeeded, failed) {
    const total = succeeded + failed;
    const box = document.createElement("span");
    box.className = "bar";
    const ok = document.createElement("b");
    ok.style.width = (total ? (100 * succeeded) / total : 0) + "%";
    const bad = document.createElement("b");
    bad.className = "failed";
    bad.style.width = (total ? (100 * failed) / total : 0) + "%";
    box.append(ok, bad);
    return box;
  }

  // --- rendering --------------------------------------------------------------------

  function renderHeadline(h) {
    setValue($("kpi-spend"), money(h.spend_usd), h.spend_usd);
    setValue($("kpi-calls"), count(h.calls), h.calls);
    setValue($("kpi-requests"), count(h.requests), h.requests);
    setValue($("kpi-failed"), count(h.failed), h.failed);
    setValue($("kpi-error-rate"), pct(h.error_rate), h.error_rate);
    setValue($("kpi-fallbacks"), count(h.fallbacks), h.fallbacks);
    setValue($("kpi-cache-hit-rate"), pct(h.cache_hit_rate), h.cache_hit_rate);
    setValue($("kpi-saved"), money(h.saved_usd), h.saved_usd);
  }

  function renderSpend(id, panel) {
    const series = panel.series.map((s) => ({ name: s.name, values: s.values_usd.map(Number) }));
    lineChart($(id), panel.times_ms, series, { format: money });
    $(id).dataset.series = String(series.length);
  }

  function renderBurnDown(panel) {
    const grid = $("burn-down");
    grid.replaceChildren();
    if (panel.scopes.length === 0) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "no spend in this window";
      grid.append(empty);
    }
    for (const scope of panel.scopes) {
      const box = document.createElement("div");
      box.className = "burn";
      box.dataset.scope = scope.scope;
      box.dataset.spent = scope.spent_usd;
      if (scope.limit_usd !== null) box.dataset.limit = scope.limit_usd;
      const title = document.createElement("h3");
      title.textContent = scope.scope + (scope.budget_window ? " - " + scope.budget_window + " budget" : "");
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = scope.limit_usd === null
        ? "spent " + money(scope.spent_usd) + " (no budget)"
        : "spent " + money(scope.spent_usd) + " of " + money(scope.limit_usd) + " (" + scope.used_pct.toFixed(1) + "%), " +
          money(scope.remaining_usd) + " left, " + scope.enforcement;
      if (scope.used_pct !== null && scope.used_pct >= 100) box.classList.add("over");
      const chart = document.createElement("div");
      chart.className = "chart";
      box.append(title, meta, chart);
      grid.append(box);
      lineChart(chart, panel.times_ms, [{ name: "cumulative spend", values: scope.cumulative_usd.map(Number) }], {
        format: money, limit: scope.limit_usd === null ? null : Number(scope.limit_usd), height: 120,
      });
    }
  }

  function renderLatency(rows) {
    barChart($("chart-latency"), rows.map((r) => ({
      name: r.deployment, values: [r.p50_ms, r.p95_ms, r.p99_ms, r.ttft_p50_ms, r.ttft_p95_ms],
    })), ["p50", "p95", "p99", "TTFT p50", "TTFT p95"]);
    const body = $("table-latency").tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.deployment = r.deployment;
      cell(tr, "deployment", r.deployment || "(none)", r.deployment);
      cell(tr, "requests", count(r.requests), r.requests);
      for (const f of ["p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms"]) {
        cell(tr, f, ms(r[f]), r[f] === null ? "" : r[f]);
      }
      body.append(tr);
    }
  }

  function renderReliability(panel) {
    lineChart($("chart-reliability"), panel.times_ms, [
      { name: "requests", values: panel.requests },
      { name: "failed", values: panel.failed },
      { name: "fallbacks", values: panel.fallbacks },
    ], { format: (v) => count(Math.round(v)) });
  }

  function renderTeams(rows) {
    const body = $("table-teams").tBodies[0];
    body.replaceChildren();
    for (const t of rows) {
      const tr = document.createElement("tr");
      tr.dataset.team = t.team_id;
      cell(tr, "team_id", t.team_id, t.team_id);
      cell(tr, "requests", count(t.requests), t.requests);
      cell(tr, "failed", count(t.failed), t.failed);
      cell(tr, "fallbacks", count(t.fallbacks), t.fallbacks);
      cell(tr, "calls", count(t.calls), t.calls);
      cell(tr, "cache_hits", count(t.cache_hits), t.cache_hits);
      cell(tr, "hit_rate", pct(t.hit_rate), t.hit_rate);
      cell(tr, "cost_usd", money(t.cost_usd), t.cost_usd);
      cell(tr, "saved_usd", money(t.saved_usd), t.saved_usd);
      body.append(tr);
    }
  }

  function renderBatches(rows) {
    const body = $("table-batches").tBodies[0];
    body.replaceChildren();
    for (const b of rows) {
      const tr = document.createElement("tr");
      tr.dataset.batch = b.batch_id;
      cell(tr, "batch_id", b.batch_id, b.batch_id);
      cell(tr, "team_id", b.team_id, b.team_id);
      cell(tr, "finished", count(b.finished), b.finished);
      cell(tr, "succeeded", count(b.succeeded), b.succeeded);
      cell(tr, "failed", count(b.failed), b.failed);
      const td = document.createElement("td");
      td.append(progress(b.succeeded, b.failed));
      tr.append(td);
      body.append(tr);
    }
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 6;
      td.className = "empty";
      td.textContent = "no batch requests in this window";
      tr.append(td);
      body.append(tr);
    }
  }

  function render(doc) {
    $("panels").hidden = false;
    renderHeadline(doc.headline);
    renderSpend("chart-spend-team", doc.spend_by_team);
    renderSpend("chart-spend-model", doc.spend_by_model);
    renderBurnDown(doc.burn_down);
    renderLatency(doc.latency);
    renderReliability(doc.reliability);
    renderTeams(doc.teams);
    renderBatches(doc.batches);
    document.body.dataset.state = "ready";
    document.body.dataset.generatedAtMs = String(doc.generated_at_ms);
    document.body.dataset.window = doc.window;
    setStatus("updated " + new Date(doc.generated_at_ms).toISOString().slice(11, 19) + " UTC, every " + POLL_MS / 1000 + " s");
  }

  // --- start ------------------------------------------------------------------------

  function start() {
    takeTokenFromFragment();
    const select = $("window");
    const saved = sessionStorage.getItem(WINDOW_KEY);
    if (saved && Array.from(select.options).some((o) => o.value === saved)) select.value = saved;
    select.addEventListener("change", () => {
      sessionStorage.setItem(WINDOW_KEY, select.value);
      if (token()) startPolling();
    });
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("auth-token").value.trim();
      $("auth-token").value = "";
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      startPolling();
    });
    $("sign-out").addEventListener("click", () => askForToken("Key forgotten. Enter the admin key to continue."));
    if (token()) startPolling();
    else askForToken("Enter the admin key (TOLLWAY_ADMIN_KEY). It is kept in this tab only.");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
