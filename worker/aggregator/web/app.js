// The consumption page. Plain script, no build step, nothing loaded from elsewhere: it reads the aggregator's
// /v1 endpoints with the bearer token it asks for once per tab (sessionStorage), and draws the charts as SVG
// with a table behind each one. Every text from the API goes in through textContent, never as markup.
"use strict";

(function () {
  const TOKEN_KEY = "byok.apiToken";
  const DRIVERS = "/v1/workspaces/{workspace_id}/drivers";
  const BUDGETS = "/v1/workspaces/{workspace_id}/budgets";
  const HOUR_MS = 3600 * 1000;
  const DAY_MS = 24 * HOUR_MS;
  const MAX_SERIES = 7;
  // Okabe-Ito, darkened where needed for 3:1 against white; "other" last.
  const PALETTE = ["#0072b2", "#c34f00", "#007a5a", "#b0569a", "#8a6d00", "#3c5a99", "#5c5c5c", "#9a3324"];
  const OTHER_COLOUR = "#8c959f";
  const BUCKETS = [
    ["input_tokens", "Input tokens"],
    ["cache_read_tokens", "Cache read tokens"],
    ["cache_write_tokens", "Cache write tokens"],
    ["output_tokens", "Output tokens"],
    ["reasoning_tokens", "Reasoning tokens"],
  ];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = { scope: null, endpoints: [], pricesAsOf: null, stack: "automation", data: null, loading: 0 };
  const $ = (id) => document.getElementById(id);
  const tokensRequired = document.querySelector('meta[name="byok-tokens-required"]').content === "true";

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function usd(value) {
    if (value === null || value === undefined) return "unpriced";
    const abs = Math.abs(value);
    const digits = abs === 0 ? 2 : abs < 0.01 ? 6 : abs < 1 ? 4 : 2;
    return new Intl.NumberFormat("en-US", {
      style: "currency", currency: "USD", minimumFractionDigits: digits, maximumFractionDigits: digits,
    }).format(value);
  }

  const count = (value) => new Intl.NumberFormat("en-US").format(value || 0);
  const percent = (share) => (share === null || share === undefined ? "–" : `${(share * 100).toFixed(1)}%`);

  function isoInstant(date) {
    return date.toISOString().replace(".000Z", "Z");
  }

  function utcDay(date) {
    return new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  }

  function utcLabel(date, unit) {
    const iso = date.toISOString();
    return unit === "hour" ? `${iso.slice(0, 10)} ${iso.slice(11, 16)}` : iso.slice(0, 10);
  }

  // The key the consumption API gives a row's period: "2025-03-01" by day, "2025-03-01T10:00:00+00:00" by hour.
  function periodKey(date, unit) {
    return unit === "hour" ? `${date.toISOString().slice(0, 19)}+00:00` : date.toISOString().slice(0, 10);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    let body = null;
    if ((response.headers.get("content-type") || "").includes("application/json")) body = await response.json();
    return { status: response.status, ok: response.ok, body };
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ------------------------------------------------------------------ the period

  function readHash() {
    return new URLSearchParams(location.hash.slice(1));
  }

  function writeHash() {
    const params = new URLSearchParams();
    params.set("ws", $("workspace").value);
    params.set("period", $("period").value);
    if ($("period").value === "custom") {
      params.set("from", $("from").value);
      params.set("to", $("to").value);
    }
    if (state.stack !== "automation") params.set("stack", state.stack);
    history.replaceState(null, "", `#${params.toString()}`);
  }

  // [since, until) of the chosen period, the same length just before it, and the chart's unit.
  function currentRange() {
    const now = new Date();
    const today = utcDay(now);
    let since;
    let until;
    let previousSince;
    let label;
    switch ($("period").value) {
      case "today":
        since = today;
        until = new Date(today.getTime() + DAY_MS);
        label = "today";
        break;
      case "month":
        since = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
        until = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
        previousSince = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
        label = "this month";
        break;
      case "custom": {
        const from = $("from").valueAsDate;
        const to = $("to").valueAsDate;
        if (!from || !to) throw new RangeError("Choose both dates of the custom range.");
        if (to < from) throw new RangeError("The range ends before it starts.");
        since = from;
        until = new Date(to.getTime() + DAY_MS);
        if (until - since > 366 * DAY_MS) throw new RangeError("Choose a range of at most a year.");
        label = `${utcLabel(since, "day")} to ${utcLabel(to, "day")}`;
        break;
      }
      default:
        until = new Date(today.getTime() + DAY_MS);
        since = new Date(until.getTime() - 7 * DAY_MS);
        label = "the last 7 days";
    }
    previousSince = previousSince || new Date(since.getTime() - (until - since));
    const unit = until - since <= 2 * DAY_MS ? "hour" : "day";
    return { since, until, previousSince, previousUntil: since, unit, label };
  }

  // ------------------------------------------------------------------ sign-in

  function showLogin(message) {
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token-input").focus();
  }

  async function openApp() {
    let answer;
    try {
      answer = await api("/v1/token");
    } catch (error) {
      showLogin("The aggregator did not answer.");
      return;
    }
    if (answer.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("That token was refused. Check it, or ask for a new one.");
      return;
    }
    if (!answer.ok) {
      showLogin(`The aggregator answered ${answer.status}.`);
      return;
    }
    state.scope = answer.body.scope;
    state.endpoints = answer.body.endpoints || [];
    state.pricesAsOf = answer.body.prices_as_of;
    $("login").hidden = true;
    $("app").hidden = false;
    $("forget").hidden = !tokensRequired;
    const hash = readHash();
    $("workspace").value = hash.get("ws") || (state.scope && state.scope !== "*" ? state.scope : "");
    if (hash.get("period")) $("period").value = hash.get("period");
    if (hash.get("from")) $("from").value = hash.get("from");
    if (hash.get("to")) $("to").value = hash.get("to");
    if (hash.get("stack") === "model") setStack("model", false);
    $("custom-range").hidden = $("period").value !== "custom";
    $("prices-note").textContent =
      `Costs are estimates from the price table of ${state.pricesAsOf}, priced with the entry in effect on the day ` +
      "of each call; models without a price are shown as unpriced, never as $0.";
    if ($("workspace").value) {
      await load();
    } else {
      setStatus("Enter a workspace id to see its consumption.");
      $("workspace").focus();
    }
  }

  // ------------------------------------------------------------------ loading

  async function load() {
    const workspace = $("workspace").value.trim();
    if (!$("workspace").checkValidity() || !workspace) {
      setStatus("A workspace id is letters, digits, _ or -, at most 64 characters.");
      return;
    }
    let range;
    try {
      range = currentRange();
    } catch (error) {
      setStatus(error.message);
      return;
    }
    writeHash();
    const ticket = ++state.loading;
    setStatus(`Loading ${workspace}…`);
    const base = `/v1/workspaces/${encodeURIComponent(workspace)}`;
    const within = (since, until, extra) =>
      new URLSearchParams({ since: isoInstant(since), until: isoInstant(until), ...extra }).toString();
    const now = within(range.since, range.until, {});
    const calls = [
      api(`${base}/consumption?${within(range.since, range.until, { group_by: `${range.unit},automation` })}`),
      api(`${base}/consumption?${within(range.since, range.until, { group_by: `${range.unit},model` })}`),
      api(`${base}/consumption?${within(range.previousSince, range.previousUntil, { group_by: "automation" })}`),
      api(`${base}/anomalies?${now}&limit=200`),
      state.endpoints.includes(DRIVERS) ? api(`${base}/drivers?${now}`) : Promise.resolve(null),
      state.endpoints.includes(BUDGETS) ? api(`${base}/budgets`) : Promise.resolve(null),
    ];
    let answers;
    try {
      answers = await Promise.all(calls);
    } catch (error) {
      if (ticket === state.loading) setStatus("The aggregator did not answer; try again.");
      return;
    }
    if (ticket !== state.loading) return; // a newer request won
    const [byAutomation, byModel, previous, anomalies, drivers, budgets] = answers;
    if (answers.some((a) => a && a.status === 401)) {
      sessionStorage.removeItem(TOKEN_KEY);
      clearContent();
      showLogin("The token is no longer accepted (revoked?). Enter another one.");
      return;
    }
    if (byAutomation.status === 404) {
      clearContent();
      setStatus(`Nothing to show for “${workspace}”: this token may not read that workspace.`);
      return;
    }
    const failed = [byAutomation, byModel, previous, anomalies].find((a) => !a.ok);
    if (failed) {
      clearContent();
      setStatus(`The aggregator answered ${failed.status}: ${(failed.body && failed.body.message) || "error"}.`);
      return;
    }
    state.data = {
      workspace, range, byAutomation: byAutomation.body, byModel: byModel.body, previous: previous.body,
      anomalies: anomalies.body.anomalies,
      drivers: drivers && drivers.ok ? drivers.body : null,
      budgets: budgets && budgets.ok ? budgetList(budgets.body) : null,
    };
    render();
    setStatus(`${workspace}, ${range.label}: updated ${new Date().toISOString().slice(11, 16)} UTC.`);
  }

  function budgetList(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.budgets)) return body.budgets;
    return null;
  }

  function clearContent() {
    state.data = null;
    $("content").hidden = true;
    for (const id of ["headline", "chart", "legend", "chart-table-wrap", "automations", "models", "anomalies",
      "budgets", "budgets-table-wrap"]) {
      $(id).replaceChildren();
    }
  }

  // ------------------------------------------------------------------ rendering

  function render() {
    const data = state.data;
    if (!data) return;
    $("content").hidden = false;
    const { range } = data;
    const asOf = data.byAutomation.prices_as_of || data.byAutomation.price_table;
    $("range-note").textContent =
      `${data.workspace}: ${utcLabel(range.since, "hour")} to ${utcLabel(range.until, "hour")} UTC ` +
      `(${range.label}), compared with the same length before it. Estimated costs, price table of ${asOf}.`;
    $("content").dataset.since = isoInstant(range.since);
    $("content").dataset.until = isoInstant(range.until);
    $("content").dataset.unit = range.unit;
    renderHeadline(data);
    renderChart(data);
    renderAutomations(data);
    renderAnomalies(data.anomalies);
    renderBudgets(data.budgets);
  }

  function change(current, before) {
    if (before === null || before === undefined || current === null || current === undefined) {
      return { text: "no comparison", trend: "" };
    }
    if (before === 0 && current === 0) return { text: "no change from the previous period", trend: "" };
    if (before === 0) return { text: "new: none in the previous period", trend: "up" };
    const delta = ((current - before) / before) * 100;
    const arrow = delta > 0 ? "▲" : delta < 0 ? "▼" : "";
    const trend = delta > 0 ? "up" : delta < 0 ? "down" : "";
    return { text: `${arrow} ${Math.abs(delta).toFixed(1)}% vs previous period`.trim(), trend };
  }

  function figure(key, title, value, shown, before, shownBefore) {
    const delta = change(value, before);
    const changeText = `${delta.text}${shownBefore === null ? "" : ` (${shownBefore})`}`;
    return el("div", { class: "figure", "data-figure": key, "data-value": value === null ? "" : value },
      el("dt", {}, title),
      el("dd", {},
        el("span", { class: "value" }, shown),
        el("span", { class: `change ${delta.trend}` }, changeText)));
  }

  function renderHeadline(data) {
    const now = data.byAutomation.totals;
    const before = data.previous.totals;
    const figures = [
      figure("cost_usd", "Estimated cost", now.cost_usd, usd(now.cost_usd) + (now.unpriced ? " + unpriced" : ""),
        before.cost_usd, usd(before.cost_usd)),
      figure("requests", "Requests (billed calls)", now.requests, count(now.requests), before.requests,
        count(before.requests)),
    ];
    for (const [key, title] of BUCKETS) {
      figures.push(figure(key, title, now[key], count(now[key]), before[key], count(before[key])));
    }
    if ("unreported_calls" in now) {
      figures.push(figure("unreported_calls", "Unreported calls (tokens unknown)", now.unreported_calls,
        count(now.unreported_calls), before.unreported_calls, count(before.unreported_calls)));
    }
    $("headline").replaceChildren(...figures);
  }

  // Periods of the range, series of the chosen grouping (the costliest first, the rest as "other").
  function chartModel(data) {
    const { range } = data;
    const step = range.unit === "hour" ? HOUR_MS : DAY_MS;
    const periods = [];
    for (let t = range.since.getTime(); t < range.until.getTime(); t += step) periods.push(new Date(t));
    const source = state.stack === "model" ? data.byModel : data.byAutomation;
    const seriesOf = (row) => (state.stack === "model"
      ? `${row.provider}/${row.model}`
      : row.automation_id === null || row.automation_id === undefined ? "(no automation)" : row.automation_id);
    const totals = new Map();
    for (const row of source.rows) {
      const name = seriesOf(row);
      totals.set(name, (totals.get(name) || 0) + (row.cost_usd || 0));
    }
    const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map((e) => e[0]);
    const shown = ranked.length > MAX_SERIES + 1 ? ranked.slice(0, MAX_SERIES) : ranked;
    const series = shown.map((name, i) => ({ name, colour: PALETTE[i % PALETTE.length] }));
    if (shown.length < ranked.length) series.push({ name: "other", colour: OTHER_COLOUR });
    const index = new Map(series.map((s, i) => [s.name, i]));
    const otherIndex = index.get("other");
    const values = periods.map(() => series.map(() => 0));
    const position = new Map(periods.map((p, i) => [periodKey(p, range.unit), i]));
    for (const row of source.rows) {
      const at = position.get(range.unit === "hour" ? row.hour : row.day);
      if (at === undefined) continue;
      const which = index.has(seriesOf(row)) ? index.get(seriesOf(row)) : otherIndex;
      values[at][which] += row.cost_usd || 0;
    }
    return { periods, series, values, unit: range.unit };
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const factor of [1, 2, 2.5, 5, 10]) if (factor * power >= value) return factor * power;
    return 10 * power;
  }

  function axisUsd(value, top) {
    const digits = top >= 10 ? 0 : top >= 0.1 ? 2 : 4;
    return `$${value.toFixed(digits)}`;
  }

  function renderChart(data) {
    const model = chartModel(data);
    const width = Math.max(300, Math.floor($("chart").clientWidth || 800));
    const height = width < 500 ? 220 : 260;
    const margin = { left: 64, right: 8, top: 10, bottom: 30 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const stacked = model.values.map((v) => v.reduce((a, b) => a + b, 0));
    const top = niceMax(Math.max(0, ...stacked));
    const y = (value) => margin.top + plotH - (value / top) * plotH;
    const slot = plotW / Math.max(1, model.periods.length);
    const barW = Math.max(1, slot * 0.72);
    const what = state.stack === "model" ? "model" : "automation";
    const total = stacked.reduce((a, b) => a + b, 0);
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img", "data-stack": state.stack,
      "data-series": model.series.map((s) => s.name).join("\n"),
      "aria-label": `Estimated cost by ${model.unit}, stacked by ${what}: ${usd(total)} in all. ` +
        "The table of the same numbers follows.",
    });
    for (let i = 0; i <= 4; i += 1) {
      const value = (top * i) / 4;
      chart.append(
        svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value) }),
        svg("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end" }, axisUsd(value, top)),
      );
    }
    const labelEvery = Math.max(1, Math.ceil(model.periods.length / Math.max(2, Math.floor(plotW / 70))));
    model.periods.forEach((period, p) => {
      const x = margin.left + p * slot + (slot - barW) / 2;
      let base = 0;
      model.series.forEach((s, k) => {
        const value = model.values[p][k];
        if (value <= 0) return;
        chart.append(svg("rect", {
          x, width: barW, y: y(base + value), height: Math.max(0.5, y(base) - y(base + value)), fill: s.colour,
        }, svg("title", {}, `${utcLabel(period, model.unit)} UTC · ${s.name}: ${usd(value)}`)));
        base += value;
      });
      if (p % labelEvery === 0) {
        const text = model.unit === "hour" ? period.toISOString().slice(11, 16) : period.toISOString().slice(5, 10);
        chart.append(svg("text", { x: x + barW / 2, y: height - 10, "text-anchor": "middle" }, text));
      }
    });
    chart.append(svg("line", {
      class: "axis", x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0),
    }));
    $("chart").replaceChildren(chart);
    $("legend").replaceChildren(...model.series.map((s) => el("li", {},
      svg("svg", { width: 14, height: 14, viewBox: "0 0 14 14" }, svg("rect", { width: 14, height: 14, fill: s.colour })),
      s.name)));
    renderChartTable(model, what);
  }

  function renderChartTable(model, what) {
    const head = el("tr", {}, el("th", { scope: "col" }, `${model.unit === "hour" ? "Hour" : "Day"} (UTC)`),
      ...model.series.map((s) => el("th", { scope: "col", class: "num" }, s.name)),
      el("th", { scope: "col", class: "num" }, "Total"));
    const rows = model.periods.map((period, p) => el("tr", {},
      el("th", { scope: "row" }, utcLabel(period, model.unit)),
      ...model.values[p].map((value) => el("td", { class: "num" }, usd(value))),
      el("td", { class: "num" }, usd(model.values[p].reduce((a, b) => a + b, 0)))));
    const table = el("table", { id: "chart-table" },
      el("caption", {}, `Estimated cost (USD) by ${model.unit}, by ${what}`),
      el("thead", {}, head), el("tbody", {}, ...rows));
    $("chart-table-wrap").replaceChildren(table);
  }

  function automationRows(data) {
    const costs = new Map();
    for (const row of data.byAutomation.rows) {
      const key = row.automation_id === undefined ? null : row.automation_id;
      const sum = costs.get(key) || { automation_id: key, cost_usd: 0, requests: 0, priced: false };
      sum.requests += row.requests;
      if (row.cost_usd !== null) {
        sum.cost_usd += row.cost_usd;
        sum.priced = true;
      }
      costs.set(key, sum);
    }
    const total = data.byAutomation.totals.cost_usd || 0;
    return [...costs.values()]
      .map((s) => ({ ...s, cost_usd: s.priced ? s.cost_usd : null, cost_share: total ? (s.cost_usd || 0) / total : null }))
      .sort((a, b) => (b.cost_usd || 0) - (a.cost_usd || 0));
  }

  function table(caption, columns, rows) {
    return el("table", {},
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, ...columns.map(([title, numeric]) =>
        el("th", { scope: "col", class: numeric ? "num" : null }, title)))),
      el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((cell, i) => (i === 0
        ? el("th", { scope: "row" }, cell)
        : el("td", { class: columns[i][1] ? "num" : null }, cell)))))));
  }

  const automationName = (id) => (id === null || id === undefined ? "(no automation)" : id);

  function renderAutomations(data) {
    const drivers = data.drivers;
    $("drivers-note").hidden = !drivers;
    $("models").hidden = !drivers;
    if (!drivers) {
      const rows = automationRows(data).map((a, i) => [
        `${i + 1}. ${automationName(a.automation_id)}`, usd(a.cost_usd), percent(a.cost_share), count(a.requests)]);
      $("automations").replaceChildren(table("Automations ranked by estimated cost",
        [["Automation", false], ["Est. cost", true], ["Share", true], ["Requests", true]], rows));
      $("models").replaceChildren();
      return;
    }
    $("drivers-note").textContent =
      "What drives each automation's cost: the estimated share of its input that is system prompt (counted on " +
      "every call), calls and cost per agent run, what prompt caching saved or could still save, and the same " +
      `tokens on the cheapest model of the same provider (price table of ${drivers.prices_as_of}).`;
    const runs = (r, key, format) => (r ? `${format(r[key].p50)} / ${format(r[key].p95)} / ${format(r[key].max)}` : "–");
    const rows = drivers.automations.map((a, i) => [
      `${i + 1}. ${automationName(a.automation_id)}`, usd(a.cost_usd), percent(a.cost_share), count(a.requests),
      percent(a.system_prompt_share), a.runs ? count(a.runs.count) : "–", runs(a.runs, "calls_per_run", count),
      runs(a.runs, "cost_per_run_usd", usd), a.cache ? usd(a.cache.saved_usd) : "–",
      a.cache ? usd(a.cache.open_saving_usd) : "–",
    ]);
    $("automations").replaceChildren(table("Automations ranked by estimated cost, with their cost drivers", [
      ["Automation", false], ["Est. cost", true], ["Share", true], ["Requests", true], ["System prompt share", true],
      ["Agent runs", true], ["Calls per run p50/p95/max", true], ["Cost per run p50/p95/max", true],
      ["Caching saved", true], ["Caching could save", true]], rows));
    const models = (drivers.models || []).map((m) => [
      `${m.provider}/${m.model}`, count(m.requests), usd(m.cost_usd),
      m.cheapest ? m.cheapest.model : "–", m.cheapest ? usd(m.cheapest.cost_usd) : "–"]);
    $("models").replaceChildren(table("Models, and the same tokens on the cheapest model of the same provider", [
      ["Model", false], ["Requests", true], ["Est. cost", true], ["Cheapest same-provider model", false],
      ["Its est. cost", true]], models));
  }

  function detailValue(value) {
    if (typeof value === "number") return Number.isInteger(value) ? count(value) : String(Math.round(value * 1e6) / 1e6);
    if (value !== null && typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function renderAnomalies(anomalies) {
    const sorted = [...anomalies].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
    if (!sorted.length) {
      $("anomalies").replaceChildren(el("li", {}, "None in this period."));
      return;
    }
    $("anomalies").replaceChildren(...sorted.map((a) => el("li", { "data-kind": a.kind },
      el("p", {}, el("span", { class: "kind" }, a.kind.replace(/_/g, " ")), ` (${a.severity}), raised `,
        el("time", { datetime: a.created_at }, `${a.created_at.slice(0, 16).replace("T", " ")} UTC`),
        `, window ${a.window_start.slice(0, 16).replace("T", " ")} to ${a.window_end.slice(0, 16).replace("T", " ")} UTC`),
      el("p", {}, a.message),
      el("dl", {}, ...Object.entries(a.details || {}).flatMap(([name, value]) => [
        el("dt", {}, name.replace(/_/g, " ")), el("dd", {}, detailValue(value))])))));
  }

  // What the page shows of a budget, in the bar's summary and in the table behind the bars alike.
  function budgetFigures(b) {
    const spent = b.spent_usd || 0;
    const reserved = b.reserved_usd || 0;
    const limited = b.limit_usd !== null && b.limit_usd !== undefined;
    return {
      scope: b.automation_id ? `Automation ${b.automation_id}` : "Whole workspace",
      spent, reserved, limited,
      used: limited ? (spent + reserved) / b.limit_usd : null,
      resets: b.resets_at ? `${b.resets_at.slice(0, 16).replace("T", " ")} UTC` : null,
      // The cap on calls in flight, with or without a spending limit.
      flight: b.max_in_flight ? `${count(b.in_flight || 0)} of ${count(b.max_in_flight)} calls in flight` : null,
    };
  }

  function renderBudgets(budgets) {
    $("budgets-section").hidden = !budgets;
    if (!budgets) return;
    $("budgets-note").textContent =
      `Spent and reserved are estimates from the price table of ${state.pricesAsOf}: spent is this period's ` +
      "calls, reserved the worst case of the calls in flight now. Times are UTC.";
    if (!budgets.length) {
      $("budgets").replaceChildren(el("li", {}, "No budget is set for this workspace."));
      $("budgets-table-wrap").replaceChildren();
      return;
    }
    $("budgets").replaceChildren(...budgets.map((b) => {
      const f = budgetFigures(b);
      const heading = el("p", {}, el("strong", {}, f.scope), ` · per ${b.period || "month"} · ${b.action || "block"}`);
      const tail = `${f.flight ? `; ${f.flight}` : ""}${f.resets ? `; resets ${f.resets}` : ""}`;
      if (!f.limited) {
        // A budget may cap concurrent calls only, without a spending limit.
        return el("li", { "data-budget": b.automation_id || "" }, heading,
          el("p", { class: "note" }, `${usd(f.spent)} spent + ${usd(f.reserved)} reserved, no spending limit${tail}`));
      }
      const { spent, reserved, used } = f;
      const scale = Math.max(b.limit_usd, spent + reserved) || 1;
      const summary = `${usd(spent)} spent + ${usd(reserved)} reserved of ${usd(b.limit_usd)} ` +
        `(${(used * 100).toFixed(0)}%)${tail}`;
      const bar = svg("svg", { viewBox: "0 0 100 6", preserveAspectRatio: "none", role: "img", "aria-label": summary },
        svg("rect", { x: 0, y: 0, width: 100, height: 6, fill: "#e1e4e9" }),
        svg("rect", { x: 0, y: 0, width: (spent / scale) * 100, height: 6, fill: used >= 1 ? "#a3280f" : "#0b5cad" }),
        svg("rect", { x: (spent / scale) * 100, y: 0, width: (reserved / scale) * 100, height: 6, fill: "#6fa8dc" }),
        svg("rect", { x: Math.max(0, (b.limit_usd / scale) * 100 - 0.4), y: 0, width: 0.4, height: 6, fill: "#1b1f24" }));
      return el("li", { "data-budget": b.automation_id || "" }, heading, bar, el("p", { class: "note" }, summary));
    }));
    const rows = budgets.map((b) => {
      const f = budgetFigures(b);
      return [f.scope, b.period || "month", b.action || "block", usd(f.spent), usd(f.reserved),
        f.limited ? usd(b.limit_usd) : "no limit", f.limited ? `${(f.used * 100).toFixed(0)}%` : "–",
        f.flight ? `${count(b.in_flight || 0)} of ${count(b.max_in_flight)}` : "no cap", count(b.weight || 1),
        f.resets || "–"];
    });
    $("budgets-table-wrap").replaceChildren(table("Budgets: estimated spent, reserved and limit this period", [
      ["Budget", false], ["Period", false], ["Action", false], ["Est. spent", true], ["Est. reserved", true],
      ["Limit", true], ["Used", true], ["Calls in flight (cap)", true], ["Fair-share weight", true],
      ["Resets (UTC)", false]], rows));
  }

  // ------------------------------------------------------------------ events

  function setStack(which, redraw = true) {
    state.stack = which;
    for (const button of document.querySelectorAll("button[data-stack]")) {
      button.setAttribute("aria-pressed", String(button.dataset.stack === which));
    }
    if (redraw && state.data) {
      renderChart(state.data);
      writeHash();
    }
  }

  function bind() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      openApp();
    });
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });
    $("period").addEventListener("change", () => {
      const custom = $("period").value === "custom";
      $("custom-range").hidden = !custom;
      if (custom && !$("from").value && !$("to").value) {
        // Start from the last 7 days; the user changes either end and presses Show.
        const today = utcDay(new Date());
        $("to").value = today.toISOString().slice(0, 10);
        $("from").value = new Date(today.getTime() - 6 * DAY_MS).toISOString().slice(0, 10);
      }
      if (!custom) load();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      clearContent();
      showLogin("");
    });
    for (const button of document.querySelectorAll("button[data-stack]")) {
      button.addEventListener("click", () => setStack(button.dataset.stack));
    }
    // The table behind a chart or the budget bars: kept for screen readers, shown on request.
    for (const [toggle, wrap] of [["chart-table-toggle", "chart-table-wrap"], ["budgets-table-toggle",
      "budgets-table-wrap"]]) {
      $(toggle).addEventListener("click", () => {
        const show = $(wrap).classList.contains("sr-only");
        $(wrap).classList.toggle("sr-only", !show);
        $(toggle).setAttribute("aria-expanded", String(show));
        $(toggle).textContent = show ? "Hide the table" : "Show as a table";
      });
    }
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => state.data && renderChart(state.data), 150);
    });
  }

  bind();
  if (tokensRequired && !token()) {
    showLogin("");
  } else {
    openApp();
  }
})();
