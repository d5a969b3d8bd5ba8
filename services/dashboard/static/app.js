// cropcron dashboard: live rows over server-sent events, the job actions, the charts.
// No framework and no inline script (the Content-Security-Policy forbids it); every value from the
// server goes into the page through textContent, never as HTML.
"use strict";

const ICONS = {started: "▶", succeeded: "✓", failed: "✗", retrying: "↻", dead: "✖", skipped: "⤼", missed: "○"};
const ACTIVE = new Set(["started", "retrying"]);
const MAX_ROWS = 200;
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
const tz = document.body.dataset.tz || undefined;
const lang = document.documentElement.lang || "en";
// the page's words in the farm's language, sent by the server (services/dashboard/words.py JS_MESSAGES)
const MESSAGES = JSON.parse(document.getElementById("messages")?.textContent || "{}");
function t(msgid, values) {
  let text = MESSAGES[msgid] || msgid;
  for (const [k, v] of Object.entries(values || {})) text = text.replaceAll(`%(${k})s`, String(v));
  return text;
}
// as the server writes times (shared/i18n.py): ISO-like in English, "2026년 12월 4일 오후 3:05:00" in Korean
const timeFmt = lang === "ko"
  ? new Intl.DateTimeFormat("ko-KR", {timeZone: tz, year: "numeric", month: "long", day: "numeric",
    hour: "numeric", minute: "2-digit", second: "2-digit"})
  : new Intl.DateTimeFormat("sv-SE", {timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit"});

function fmtTime(iso) { return iso ? timeFmt.format(new Date(iso)) : "—"; }
function fmtDuration(s) {
  if (s === null || s === undefined) return "—";
  return s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? t("%(n)s s", {n: s.toFixed(1)})
    : t("%(n)s min", {n: (s / 60).toFixed(1)});
}
function stateText(s) { return s ? `${ICONS[s] || "?"} ${t(s)}` : "—"; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function runRow(r) {
  const code = r.exit_code !== undefined && r.exit_code !== null ? `${t("exit %(code)s", {code: r.exit_code})} ` : "";
  const why = `${code}${r.error || r.reason || ""}`;
  const tr = el("tr", {"data-run-id": r.run_id, "data-state": r.state},
    el("td", {class: `state s-${r.state}`, "data-label": t("State")}, stateText(r.state)),
    el("td", {"data-label": t("Job")}, el("a", {href: `/jobs/${encodeURIComponent(r.job)}`}, r.job)),
    el("td", {"data-label": t("Trigger")}, r.trigger_kind ? t(r.trigger_kind) : "—"),
    el("td", {"data-label": t("When")}, el("a", {href: `/runs/${encodeURIComponent(r.run_id)}`},
      fmtTime(r.started_at || r.scheduled_at || r.at || r.updated_at))),
    el("td", {"data-label": t("Duration")}, fmtDuration(r.duration_s)),
    el("td", {"data-label": t("Attempt")}, String(r.attempt ?? "")),
    el("td", {class: "why", "data-label": t("Exit / reason")}, why));
  return tr;
}

function notice(text, kind) {
  const p = document.getElementById("notice");
  if (!p) return;
  p.textContent = text;
  p.className = `notice ${kind || ""}`;
  p.hidden = false;
}

async function api(method, url, body) {
  const resp = await fetch(url, {method, headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json"},
    body: body ? JSON.stringify(body) : undefined, credentials: "same-origin"});
  const data = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

// -- live tables ----------------------------------------------------------------------
function tables() { return [...document.querySelectorAll("tbody[data-live]")]; }

function matches(tbody, r) {
  if (tbody.dataset.live === "running") return ACTIVE.has(r.state);
  if (tbody.dataset.frozen) return false;  // an older page or a closed time range does not grow
  if (tbody.dataset.job && tbody.dataset.job !== r.job) return false;
  return !(tbody.dataset.state && tbody.dataset.state !== r.state);
}

function upsert(tbody, r) {
  const old = tbody.querySelector(`tr[data-run-id="${CSS.escape(r.run_id)}"]`);
  if (!matches(tbody, r)) { if (old && tbody.dataset.live === "running") old.remove(); toggleEmpty(tbody); return; }
  if (old) {
    // an event carries one step; keep what earlier steps said (e.g. the trigger, the start time)
    const merged = {...JSON.parse(old.dataset.run || "{}"), ...r};
    const row = runRow(merged);
    row.dataset.run = JSON.stringify(merged);
    old.replaceWith(row);
  } else {
    const row = runRow(r);
    row.dataset.run = JSON.stringify(r);
    tbody.prepend(row);
    while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
  }
  toggleEmpty(tbody);
}

function toggleEmpty(tbody) {
  const empty = tbody.closest("section, main")?.querySelector(".empty");
  if (empty) empty.hidden = tbody.rows.length > 0;
}

async function reload(tbody) {
  const q = new URLSearchParams(location.search);
  let rows;
  if (tbody.dataset.live === "running") {
    const [a, b] = await Promise.all([api("GET", "/api/runs?state=started&limit=50"), api("GET", "/api/runs?state=retrying&limit=50")]);
    rows = [...a.runs, ...b.runs];
  } else {
    if (tbody.dataset.job) q.set("job", tbody.dataset.job);
    for (const [k, v] of [...q.entries()]) if (!v) q.delete(k);
    rows = (await api("GET", `/api/runs?${q}`)).runs;
  }
  tbody.replaceChildren(...rows.map((r) => { const row = runRow(r); row.dataset.run = JSON.stringify(r); return row; }));
  toggleEmpty(tbody);
}

const timers = {};
function later(key, fn, ms) { clearTimeout(timers[key]); timers[key] = setTimeout(fn, ms); }  // debounced

async function refreshOverview() {
  const o = await api("GET", "/api/overview");
  for (const li of document.querySelectorAll("#today li[data-state]")) {
    li.querySelector("b").textContent = String(o.today[li.dataset.state] || 0);
  }
  const rate = document.getElementById("rate");
  if (rate) rate.textContent = o.success_rate_7d === null ? "—" : `${(o.success_rate_7d * 100).toFixed(1)} %`;
}

function onRun(r) {
  for (const tbody of tables()) upsert(tbody, r);
  const page = document.body.dataset.page;
  const done = !ACTIVE.has(r.state);
  if (page === "overview" && done) later("overview", () => refreshOverview().catch(() => {}), 500);
  if (page === "run" && document.getElementById("run")?.dataset.runId === r.run_id) later("run", () => location.reload(), 300);
  // charts follow too; history stores an event a moment after it is published, hence the delay
  const dur = document.getElementById("durations");
  if (done && dur && dur.dataset.job === r.job) later("durations", () => drawDurations(dur), 1500);
  const hourly = document.getElementById("hourly");
  if (done && hourly) later("hourly", () => drawHourly(hourly), 5000);
  const cell = document.querySelector(`tr[data-job="${CSS.escape(r.job)}"] td[data-col="last"]`);
  if (cell) { cell.textContent = stateText(r.state); cell.className = `state s-${r.state}`; }
}

function connectLive() {
  const badge = document.getElementById("live");
  if (!csrf || !tables().length && !["overview", "jobs", "run"].includes(document.body.dataset.page)) {
    if (badge) badge.hidden = true;  // a page without live parts: no "connecting" that never connects
    return;
  }
  const source = new EventSource("/api/events");  // reconnects by itself after a drop
  const resync = () => { for (const t of tables()) reload(t).catch((e) => notice(`✗ ${e.message}`, "error")); };
  source.addEventListener("hello", () => { badge.textContent = `● ${t("live")}`; badge.className = "live on"; resync(); });
  source.addEventListener("resync", resync);
  source.addEventListener("run", (e) => onRun(JSON.parse(e.data)));
  source.onerror = () => { badge.textContent = `○ ${t("reconnecting")}`; badge.className = "live off"; };
}

// -- actions ------------------------------------------------------------------------------
document.addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-action]");
  if (!button) return;
  const {action, job} = button.dataset;
  button.disabled = true;
  try {
    const out = await api("POST", `/api/jobs/${encodeURIComponent(job)}/${action}`);
    if (action === "run") {
      notice("", "ok");
      const p = document.getElementById("notice");
      p.replaceChildren(`✓ ${t("run of %(job)s queued: ", {job})}`, el("a", {href: out.url, id: "queued-run"}, out.run_id));
    } else {
      location.reload();  // the schedule changed: next run and buttons come from the server
    }
  } catch (err) {
    notice(`✗ ${t("%(action)s %(job)s: %(error)s", {action: t(action), job, error: err.message})}`, "error");
  } finally {
    button.disabled = false;
  }
});

document.getElementById("logout")?.addEventListener("click", async () => {
  await fetch("/logout", {method: "POST", headers: {"X-CSRF-Token": csrf}, credentials: "same-origin"});
  location.href = "/login";
});

// -- charts (uPlot, vendored) --------------------------------------------------------------
const SERIES = [["succeeded", "#1a7f37", []], ["failed", "#cf222e", [6, 3]], ["dead", "#82071e", [2, 2]],
  ["missed", "#9a6700", [10, 4]], ["skipped", "#6e7781", [1, 4]], ["retrying", "#bf8700", [4, 4]]];

function chartWidth(node) { return Math.max(280, node.clientWidth || 600); }

// time axis and legend on the 24-hour clock, as everywhere else on the page (uPlot's default is
// 12-hour am/pm). Rows: tick increment (s), label, then the "new year/month/day/hour/minute"
// prefixes uPlot adds where the larger unit changes, as in its own default table.
const AXIS_24H = [
  [3600 * 24 * 365, "{YYYY}", null, null, null, null, null, null, 1],
  [3600 * 24 * 28, "{YYYY}-{MM}", null, null, null, null, null, null, 1],
  [3600 * 24, "{MM}-{DD}", "\n{YYYY}", null, null, null, null, null, 1],
  [3600, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [60, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [1, ":{ss}", "\n{YYYY}-{MM}-{DD} {HH}:{mm}", null, "\n{MM}-{DD} {HH}:{mm}", null, "\n{HH}:{mm}", null, 1],
  [0.001, ":{ss}.{fff}", "\n{YYYY}-{MM}-{DD} {HH}:{mm}", null, "\n{MM}-{DD} {HH}:{mm}", null, "\n{HH}:{mm}", null, 1],
];
const TIME_24H = {value: "{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}"};

async function hourlyChart(node) {
  const data = await api("GET", "/api/charts/hourly?days=7");
  const xs = data.hours.map((h) => Date.parse(h) / 1000);
  const opts = {width: chartWidth(node), height: 260, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
    series: [{...TIME_24H, label: t("Time")}, ...SERIES.map(([name, stroke, dash]) => ({label: `${ICONS[name]} ${t(name)}`, stroke, dash, width: 2}))],
    axes: [{values: AXIS_24H}, {label: t("runs per hour")}]};
  node.replaceChildren();
  new uPlot(opts, [xs, ...SERIES.map(([name]) => data.series[name] || xs.map(() => 0))], node);
}

async function durationChart(node) {
  const data = await api("GET", `/api/charts/durations?job=${encodeURIComponent(node.dataset.job)}`);
  if (!data.runs.length) { node.textContent = t("No finished runs yet."); return; }
  const xs = data.runs.map((r) => Date.parse(r.at) / 1000);
  const opts = {width: chartWidth(node), height: 240, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
    series: [{...TIME_24H, label: t("Time")}, {label: t("duration (s)"), stroke: "#0969da", width: 2, points: {show: true, size: 6}}],
    axes: [{values: AXIS_24H}, {label: t("seconds")}]};
  node.replaceChildren();
  new uPlot(opts, [xs, data.runs.map((r) => r.duration_s)], node);
}

// one series per watch: a colour and a dash pattern each, named in the legend
const WATCH_LOOKS = [["#0969da", []], ["#1a7f37", [6, 3]], ["#8250df", [2, 2]], ["#bc4c00", [10, 4]],
  ["#cf222e", [4, 4]], ["#6e7781", [1, 4]]];

async function filesChart(node) {
  const data = await api("GET", "/api/charts/files?days=7");
  const watches = Object.keys(data.series).sort();
  if (!watches.length) { node.textContent = t("No files arrived in these days."); return; }
  const xs = data.hours.map((h) => Date.parse(h) / 1000);
  const opts = {width: chartWidth(node), height: 240, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
    series: [{...TIME_24H, label: t("Time")}, ...watches.map((w, i) => {
      const [stroke, dash] = WATCH_LOOKS[i % WATCH_LOOKS.length];
      return {label: w, stroke, dash, width: 2};
    })],
    axes: [{values: AXIS_24H}, {label: t("files per hour")}]};
  node.replaceChildren();
  new uPlot(opts, [xs, ...watches.map((w) => data.series[w])], node);
}

function drawFiles(node) {
  if (typeof uPlot === "undefined") return;
  filesChart(node).catch((e) => { node.textContent = `✗ ${t("chart unavailable: %(error)s", {error: e.message})}`; });
}

function drawHourly(node) {
  if (typeof uPlot === "undefined") return;
  hourlyChart(node).catch((e) => { node.textContent = `✗ ${t("chart unavailable: %(error)s", {error: e.message})}`; });
}

function drawDurations(node) {
  if (typeof uPlot === "undefined") return;
  durationChart(node).catch((e) => { node.textContent = `✗ ${t("chart unavailable: %(error)s", {error: e.message})}`; });
}

function charts() {
  const hourly = document.getElementById("hourly");
  if (hourly) drawHourly(hourly);
  const dur = document.getElementById("durations");
  if (dur) drawDurations(dur);
  const files = document.getElementById("files-hourly");
  if (files) drawFiles(files);
}

connectLive();
charts();
