// The status page of a bifrost-cluster node: reads the node's own JSON routes every few seconds and renders
// them. Only GET requests; every value from the node reaches the DOM through textContent, never as markup.
// A token (read scope), when the node needs one, is typed by the user and kept in this tab's sessionStorage.
"use strict";

const TOKEN_KEY = "bifrost-cluster-token";
const HISTORY = 90; // chart samples kept
const params = new URLSearchParams(location.search);
const intervalSeconds = Math.min(60, Math.max(1, Number(params.get("refresh")) || 2));
const samples = []; // {t, admitted, refused} per second
let lastDecisions = null; // {t, admitted, refused} cumulative
let updates = 0;

const $ = (id) => document.getElementById(id);

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function getJson(path) {
  const headers = { "Accept": "application/json" };
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const body = await response.json(); if (body && body.error) message = response.status + ": " + body.error; } catch (e) { /* not JSON */ }
    throw new HttpError(response.status, path + ": " + message);
  }
  return response.json();
}

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (className) e.className = className;
  return e;
}

function cell(row, text, className) {
  const td = el("td", text, className);
  row.appendChild(td);
  return td;
}

function replaceRows(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

function bytes(n) {
  if (n === undefined || n === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

function ago(nowMs, thenMs) {
  if (!thenMs) return "never";
  const s = Math.max(0, (nowMs - thenMs) / 1000);
  if (s < 1) return "now";
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function duration(ms) {
  if (ms <= 0) return "0 s";
  const s = ms / 1000;
  if (s < 90) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function number(n) {
  return n === undefined || n === null ? "-" : Number(n).toLocaleString("en-US");
}

function renderSummary(status) {
  $("node").textContent = status.local_node;
  document.title = status.local_node + " · bifrost-cluster";
  const health = $("health");
  health.textContent = status.cluster_health;
  health.className = "badge " + (status.cluster_health === "HEALTHY" ? "ok" : "bad");
  $("leader").textContent = status.leader || "none";
  $("healthy-count").textContent = status.healthy_members;
  $("member-count").textContent = status.members;
  $("ready").textContent = status.ready ? "ready" : "not ready (joining)";
}

function renderMembers(status, peers, nodes) {
  const now = peers ? peers.now_ms : Date.now();
  const peerById = new Map((peers ? peers.peers : []).map((p) => [p.node_id, p]));
  const recordById = new Map((nodes || []).map((n) => [n.node_id, n]));
  const rows = [];
  const local = status.local;
  const localActive = local.state === "joined" || local.state === "alone";
  const members = [{
    node_id: local.node_id, state: localActive ? "alive" : local.state, healthy: localActive,
    health_reason: "this node (" + local.state + (local.local_health ? ", local health " + local.local_health : "") + ")",
    address: local.address || "-", rtt_ms: null, last_seen_ms: null, self: true,
  }].concat(status.member_details);
  for (const m of members) {
    const row = el("tr");
    row.dataset.node = m.node_id;
    row.dataset.state = m.state;
    row.dataset.healthy = String(m.healthy);
    if (m.self) row.className = "self";
    if (m.node_id === status.leader) row.dataset.leader = "true";
    cell(row, m.node_id + (m.node_id === status.leader ? " ★" : ""));
    cell(row, m.state, "state-" + m.state);
    cell(row, m.healthy ? "healthy" : "unhealthy", m.healthy ? "healthy" : "unhealthy");
    cell(row, m.health_reason, "wrap");
    cell(row, m.address);
    cell(row, m.rtt_ms === null || m.rtt_ms === undefined ? "-" : m.rtt_ms + " ms", "num");
    cell(row, m.self ? "-" : (m.last_seen_ms ? ago(now, m.last_seen_ms) : "never"));
    const p = peerById.get(m.node_id);
    if (p) {
      cell(row, p.lag_ms + " ms", "num");
      cell(row, bytes(p.bytes_sent) + " / " + bytes(p.bytes_received), "num");
      cell(row, number(p.sequence_gaps), "num");
      cell(row, p.last_check_answered_ms
        ? p.check_rtt_ms + " ms, " + ago(now, p.last_check_answered_ms) : "no answer yet");
    } else {
      for (let i = 0; i < 4; i++) cell(row, m.self ? "" : "no link", "muted");
    }
    const rec = recordById.get(m.node_id);
    cell(row, rec ? (rec.cpu_millicores / 1000).toFixed(2) : "-", "num");
    cell(row, rec ? bytes(rec.memory_bytes) : "-", "num");
    rows.push(row);
  }
  replaceRows("members", rows);
  $("checks").textContent = peers
    ? "Data-plane checks from this node: " + number(peers.checks.sent) + " sent, " +
      number(peers.checks.answered) + " answered, " + number(peers.checks.timed_out) + " timed out."
    : "";
}

function renderKeys(hot) {
  const rows = [];
  for (const k of hot.keys) {
    const row = el("tr");
    row.dataset.key = k.key;
    row.dataset.used = String(k.used);
    cell(row, k.key, "wrap");
    cell(row, k.window + (k.algorithm === "sliding_window" ? " sliding" : ""));
    const usage = cell(row, "");
    const bar = el("div", null, "bar");
    const fill = el("div");
    const fraction = k.limit ? Math.min(1, k.used / k.limit) : 0;
    fill.style.width = (fraction * 100).toFixed(1) + "%";
    if (k.limit && k.used >= k.limit) bar.className = "bar full";
    bar.appendChild(fill);
    usage.appendChild(bar);
    cell(row, number(k.used) + " / " + (k.limit === null ? "no limit" : number(k.limit)), "num");
    cell(row, number(k.local) + " + " + number(k.remote), "num");
    cell(row, duration(k.window_end_ms - hot.now_ms), "num");
    rows.push(row);
  }
  if (rows.length === 0) {
    const row = el("tr");
    const td = cell(row, "no key counted in its current window", "muted");
    td.colSpan = 6;
    rows.push(row);
  }
  replaceRows("keys", rows);
  $("keys-held").textContent = "(" + number(hot.keys_held) + " keys held)";
}

function renderConfig(entries) {
  const rows = entries.map((e) => {
    const row = el("tr");
    row.dataset.configKey = e.key;
    cell(row, e.key, "wrap");
    cell(row, e.value.length > 200 ? e.value.slice(0, 200) + "…" : e.value, "wrap");
    cell(row, e.encoding);
    return row;
  });
  if (rows.length === 0) {
    const row = el("tr");
    const td = cell(row, "no cluster-wide config entries", "muted");
    td.colSpan = 3;
    rows.push(row);
  }
  replaceRows("config", rows);
  $("config-count").textContent = "(" + entries.length + ")";
}

function recordDecisions(hot) {
  const d = { t: hot.now_ms, admitted: hot.decisions.admitted, refused: hot.decisions.refused };
  if (lastDecisions && d.t > lastDecisions.t && d.admitted >= lastDecisions.admitted && d.refused >= lastDecisions.refused) {
    const seconds = (d.t - lastDecisions.t) / 1000;
    samples.push({
      t: d.t,
      admitted: (d.admitted - lastDecisions.admitted) / seconds,
      refused: (d.refused - lastDecisions.refused) / seconds,
    });
    while (samples.length > HISTORY) samples.shift();
  }
  lastDecisions = d;
  const last = samples[samples.length - 1];
  $("admitted-rate").textContent = last ? number(Math.round(last.admitted)) : "-";
  $("refused-rate").textContent = last ? number(Math.round(last.refused)) : "-";
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = 480, h = 180;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, w, h);
  const left = 52, right = 8, top = 8, bottom = 20;
  const max = Math.max(1, ...samples.map((s) => Math.max(s.admitted, s.refused)));
  const scale = niceCeil(max);
  ctx.strokeStyle = "#dde1e8";
  ctx.fillStyle = "#6b7385";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - right, y); ctx.stroke();
    ctx.fillText(shortNumber(scale * i / 4), 4, y + 4);
  }
  ctx.fillText("last " + Math.round(HISTORY * intervalSeconds / 60 * 10) / 10 + " min", left, h - 5);
  if (samples.length === 0) {
    ctx.fillText("waiting for a second sample…", left + 110, h / 2);
    return;
  }
  const x = (i) => left + (w - left - right) * (i + HISTORY - samples.length) / (HISTORY - 1);
  const y = (v) => top + (h - top - bottom) * (1 - v / scale);
  for (const [field, color] of [["refused", "#d9534f"], ["admitted", "#2f6fde"]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    samples.forEach((s, i) => (i === 0 ? ctx.moveTo(x(i), y(s[field])) : ctx.lineTo(x(i), y(s[field]))));
    if (samples.length === 1) ctx.lineTo(x(0) + 2, y(samples[0][field]));
    ctx.stroke();
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function shortNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return String(Math.round(v));
}

function showError(message) {
  const e = $("error");
  e.textContent = message || "";
  e.hidden = !message;
}

async function refresh() {
  try {
    // Status first: it tells whether a token is needed before the other requests are made.
    const status = await getJson("cluster/status");
    const [peers, nodes, hot, config] = await Promise.all([
      getJson("cluster/peers"), getJson("cluster/nodes"), getJson("v1/keys/hot?n=10"), getJson("v1/config"),
    ]);
    renderSummary(status);
    renderMembers(status, peers, nodes);
    renderKeys(hot);
    renderConfig(config);
    recordDecisions(hot);
    $("token-form").hidden = true;
    showError("");
    updates++;
    document.body.dataset.updates = String(updates);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
  } catch (e) {
    if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
      $("token-form").hidden = false;
      $("health").textContent = "no access";
      $("health").className = "badge bad";
    }
    showError(e.message || String(e));
  }
}

function start() {
  $("interval").textContent = intervalSeconds;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { showError("this browser keeps no sessionStorage: " + e); }
    $("token").value = "";
    refresh();
  });
  drawChart();
  refresh();
  setInterval(refresh, intervalSeconds * 1000);
}

document.addEventListener("DOMContentLoaded", start);
