// Switchyard dashboard: reads /v1/usage with the reader token the user pasted, and draws
// Chart.js charts. No inline script (the page's CSP forbids it), no third-party hosts.
(function () {
  "use strict";
  const KEY = "switchyard.token";
  const $ = (id) => document.getElementById(id);
  const charts = {};
  const palette = ["#2f6fed", "#12b76a", "#f79009", "#d92d20", "#7a5af8", "#0ba5ec", "#ee46bc", "#667085"];
  const color = (i) => palette[i % palette.length];
  const fmt = new Intl.NumberFormat("en-US");
  const money = (v) => "$" + Number(v).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });

  function token() { return sessionStorage.getItem(KEY); }

  async function usage(params) {
    const q = new URLSearchParams(params);
    const r = await fetch("/v1/usage?" + q.toString(), { headers: { Authorization: "Bearer " + token() } });
    if (r.status === 401) { signOut("That token was refused."); throw new Error("unauthorized"); }
    const body = await r.json();
    if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
    return body.rows;
  }

  function chart(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    charts[id] = new Chart($(id), config);
    return charts[id];
  }

  // Rows grouped by (series, time) → one dataset per series over the sorted time labels.
  function series(rows, seriesKey, timeKey, value) {
    const labels = [...new Set(rows.map((r) => r[timeKey]))].sort();
    const names = [...new Set(rows.map((r) => r[seriesKey]))].sort();
    const datasets = names.map((name, i) => ({
      label: name || "(none)",
      backgroundColor: color(i),
      borderColor: color(i),
      data: labels.map((t) => rows.filter((r) => r[seriesKey] === name && r[timeKey] === t).reduce((s, r) => s + value(r), 0)),
    }));
    return { labels, datasets };
  }

  async function load() {
    const range = $("range").value;
    const team = $("team").value;
    const bucket = range === "24h" ? "hour" : "day";
    const base = { from: range };
    if (team) base.team = team;
    $("status").className = "";
    $("status").textContent = "Loading…";
    try {
      const [totals, byTeam, byModelTime, byModel, byRoute] = await Promise.all([
        usage(base),
        usage(Object.assign({ group_by: "team," + bucket }, base)),
        usage(Object.assign({ group_by: "model," + bucket }, base)),
        usage(Object.assign({ group_by: "model" }, base)),
        usage(Object.assign({ group_by: "route" }, base)),
      ]);
      const t = totals[0] || { requests: 0, errors: 0, fallbacks: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0 };
      $("t-cost").textContent = money(t.cost_usd);
      $("t-requests").textContent = fmt.format(t.requests);
      $("t-input").textContent = fmt.format(t.input_tokens);
      $("t-output").textContent = fmt.format(t.output_tokens);
      $("t-errors").textContent = t.requests ? (100 * t.errors / t.requests).toFixed(2) + " %" : "–";
      $("t-fallbacks").textContent = fmt.format(t.fallbacks);
      $("t-latency").textContent = t.p50_latency_ms == null ? "–" : t.p50_latency_ms + " / " + t.p95_latency_ms;

      chart("c-spend-team", { type: "bar", data: series(byTeam, "team", bucket, (r) => Number(r.cost_usd)),
        options: { scales: { x: { stacked: true }, y: { stacked: true } } } });
      chart("c-tokens-model", { type: "line", data: series(byModelTime, "model", bucket, (r) => r.input_tokens + r.output_tokens) });
      const topModels = [...byModel].sort((a, b) => Number(b.cost_usd) - Number(a.cost_usd)).slice(0, 10);
      chart("c-top-models", { type: "bar", data: { labels: topModels.map((r) => r.model),
        datasets: [{ label: "USD", backgroundColor: color(0), data: topModels.map((r) => Number(r.cost_usd)) }] },
        options: { indexAxis: "y" } });
      const topRoutes = [...byRoute].sort((a, b) => b.requests - a.requests).slice(0, 10);
      chart("c-top-routes", { type: "bar", data: { labels: topRoutes.map((r) => r.route),
        datasets: [{ label: "requests", backgroundColor: color(1), data: topRoutes.map((r) => r.requests) }] },
        options: { indexAxis: "y" } });
      chart("c-errors", { type: "bar", data: { labels: byModel.map((r) => r.model), datasets: [
        { label: "error rate %", backgroundColor: color(3), data: byModel.map((r) => r.requests ? 100 * r.errors / r.requests : 0) },
        { label: "fallbacks", backgroundColor: color(2), data: byModel.map((r) => r.fallbacks) } ] } });
      chart("c-latency", { type: "bar", data: { labels: byModel.map((r) => r.model), datasets: [
        { label: "p50", backgroundColor: color(0), data: byModel.map((r) => r.p50_latency_ms) },
        { label: "p95", backgroundColor: color(4), data: byModel.map((r) => r.p95_latency_ms) } ] } });

      window.switchyardDashboard = { totals: t, charts };
      $("status").textContent = "Updated " + new Date().toLocaleTimeString();
      document.body.dataset.state = "ready";
    } catch (e) {
      $("status").className = "error";
      $("status").textContent = String(e.message || e);
      document.body.dataset.state = "error";
    }
  }

  async function loadTeams() {
    const rows = await usage({ from: "90d", group_by: "team" });
    const select = $("team");
    const keep = select.value;
    select.length = 1;
    for (const r of rows) {
      const o = document.createElement("option");
      o.value = o.textContent = r.team;
      select.appendChild(o);
    }
    select.value = keep;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    $("app").hidden = true;
    $("login").hidden = false;
    if (message) $("login").querySelector("p").textContent = message;
  }

  async function start() {
    $("login").hidden = true;
    $("app").hidden = false;
    try { await loadTeams(); } catch (e) { /* shown by load() */ }
    await load();
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(KEY, t);
    $("token").value = "";
    start();
  });
  $("range").addEventListener("change", load);
  $("team").addEventListener("change", load);
  $("signout").addEventListener("click", () => signOut());
  if (token()) start();
})();
