// Slipway status page: the node table from /api/v1/nodes, refreshed live on every event
// from /api/v1/stream (server-sent events), and on a timer so a node that stops making
// progress is marked stuck without any event. No build step, no dependencies.
// Outside the cluster's networks every call carries the admin token entered below.
"use strict";

const $ = (sel) => document.querySelector(sel);
let nodes = [];
let selected = null;
let refreshTimer = null;
let stuckTimer = null;
let stuckAfterMs = null;
let source = null;
// Without events, the table is re-read this often (server-side stuck marking).
const RECHECK_MS = 15000;

function ago(ms) {
  if (ms == null) return "-";
  let s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d";
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e[k] = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { headers: authHeaders() });
  if (r.status === 403) throw new Error("outside the cluster's networks: enter the admin token below");
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

function token() {
  return sessionStorage.getItem("slipway-token") || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

// Nodes on their way (not planned, joined or failed) can get stuck.
const waiting = (n) => !["planned", "joined", "failed"].includes(n.state);

// Re-reads the table when the next node would pass --stuck-after, at the latest after
// RECHECK_MS: the server decides what is stuck, the page only asks again in time.
function planRecheck() {
  clearTimeout(stuckTimer);
  let due = RECHECK_MS;
  if (stuckAfterMs != null) {
    for (const n of nodes) {
      if (waiting(n) && !n.stuck && n.updated_at) due = Math.min(due, n.updated_at + stuckAfterMs - Date.now() + 500);
    }
  }
  stuckTimer = setTimeout(scheduleRefresh, Math.max(1000, due));
}

async function action(node, what) {
  const r = await fetch(`/api/v1/nodes/${encodeURIComponent(node)}/${what}`, {
    method: "POST", headers: authHeaders(),
  });
  const body = await r.json().catch(() => ({}));
  $("#action-result").textContent = r.ok ? `${node}: ${what} done` : `${node}: ${body.error || r.status}`;
  scheduleRefresh();
}

function renderTable() {
  const tbody = $("#nodes tbody");
  tbody.replaceChildren(...nodes.map((n) => {
    const id = n.name || n.mac;
    const cls = [n.state, n.stuck ? "stuck" : ""].join(" ");
    const tr = el("tr", { class: cls, "data-node": id, onclick: () => showDetail(id) },
      el("td", {}, n.name || "-"),
      el("td", {}, n.mac),
      el("td", {}, n.ip || "-"),
      el("td", {}, n.role || "-"),
      el("td", {}, n.gpu && n.gpu !== "none" ? n.gpu : ""),
      el("td", { class: "state" }, n.state),
      el("td", { class: "since", "data-at": n.updated_at || "" }, ago(n.updated_at)),
      el("td", {}, n.detail || ""),
      el("td", {},
        el("button", { onclick: (ev) => { ev.stopPropagation(); action(id, "reinstall"); } }, "Reinstall"),
        " ",
        el("button", { onclick: (ev) => { ev.stopPropagation(); action(id, "forget"); } }, "Forget")));
    return tr;
  }));
}

function renderUnknown(list) {
  $("#unknown-section").hidden = list.length === 0;
  $("#unknown tbody").replaceChildren(...list.map((m) => el("tr", { "data-mac": m.mac },
    el("td", {}, m.mac),
    el("td", {}, m.client_class || ""),
    el("td", {}, new Date(m.first_seen * 1000).toLocaleString()),
    el("td", {}, ago(m.last_seen * 1000)),
    el("td", {}, m.requests),
    el("td", {}, m.approved ? "approved" : el("button", {
      onclick: async () => {
        const r = await fetch(`/api/v1/unknown/${encodeURIComponent(m.mac)}/approve`, { method: "POST", headers: authHeaders() });
        const body = await r.json().catch(() => ({}));
        $("#action-result").textContent = r.ok ? `${m.mac}: approved` : `${m.mac}: ${body.error || r.status}`;
        scheduleRefresh();
      },
    }, "Approve")))));
}

async function refresh() {
  refreshTimer = null;
  try {
    nodes = await getJSON("/api/v1/nodes");
    renderTable();
    renderUnknown(await getJSON("/api/v1/unknown"));
    const s = await getJSON("/api/v1/summary");
    stuckAfterMs = s.stuck_after_secs * 1000;
    renderSummary(s);
    if (selected) showDetail(selected);
  } catch (e) {
    $("#action-result").textContent = String(e);
  } finally {
    planRecheck();
  }
}

// Bursts of events (a rack powering on) refresh the table at most twice a second.
function scheduleRefresh() {
  if (!refreshTimer) refreshTimer = setTimeout(refresh, 300);
}

function renderSummary(s) {
  $("#cluster").textContent = `${s.cluster} · ${s.domain}`;
  const soonest = s.certificates[0];
  const items = [
    ["API endpoint", `${s.endpoint} (${s.endpoint_addresses.join(", ")})`],
    ["Kubernetes", s.kubernetes_version],
    ["OS", s.os],
    ["Plan generation", s.plan_generation],
    ["Certificates", soonest ? `${s.certificates.length}, first expiry ${new Date(soonest.not_after * 1000).toISOString().slice(0, 10)} (${soonest.name})` : "none"],
    ["Images mirrored", `${s.images.filter(([, c]) => c === true).length} of ${s.images.length} pinned`],
    ["Stuck after", s.stuck_after_secs < 120 ? s.stuck_after_secs + " s" : Math.round(s.stuck_after_secs / 60) + " min"],
  ];
  $("#summary").replaceChildren(...items.map(([k, v]) => el("div", {}, el("b", {}, k), String(v))));
  $("#counts").replaceChildren(...s.nodes_by_state.map(([state, n]) => el("span", { class: "count-" + state }, `${n} ${state}`)));
  $("#images-section").hidden = s.images.length === 0;
  $("#images").replaceChildren(...s.images.map(([name, cached]) => {
    const [cls, label] = cached === true ? ["cached", "mirrored"]
      : cached === false ? ["missing", "not mirrored yet"] : ["off", "registry not running here"];
    return el("li", { class: cls, "data-image": name }, el("code", {}, name), " ", el("span", { class: "image-state" }, label));
  }));
}

async function showDetail(id) {
  selected = id;
  try {
    const n = await getJSON(`/api/v1/nodes/${encodeURIComponent(id)}`);
    $("#detail").hidden = false;
    $("#detail-title").textContent = `${n.name || n.mac} — ${n.state}${n.stuck ? " (stuck)" : ""}`;
    $("#timeline").replaceChildren(...(n.history || []).map((t) =>
      el("li", {}, `${new Date(t.at).toLocaleString()} · ${t.state}${t.detail ? " · " + t.detail : ""}`)));
    $("#events").replaceChildren(...(n.events || []).slice(-20).reverse().map((e) =>
      el("li", {}, `${new Date(e.at).toLocaleTimeString()} ${e.kind}: ${e.message}`)));
  } catch (e) {
    $("#detail").hidden = true;
  }
}

// EventSource cannot send a header: the token goes in the query (the server keeps it out
// of its logs).
function connect() {
  if (source) source.close();
  const t = token();
  const es = new EventSource("/api/v1/stream" + (t ? "?access_token=" + encodeURIComponent(t) : ""));
  source = es;
  es.onopen = () => { $("#live").textContent = "live"; $("#live").className = "live on"; scheduleRefresh(); };
  es.onerror = () => { $("#live").textContent = "reconnecting"; $("#live").className = "live off"; };
  es.addEventListener("event", scheduleRefresh);
  es.addEventListener("lagged", scheduleRefresh);
}

$("#token").value = sessionStorage.getItem("slipway-token") || "";
$("#token").addEventListener("change", (e) => {
  sessionStorage.setItem("slipway-token", e.target.value.trim());
  $("#action-result").textContent = "";
  connect();
  scheduleRefresh();
});
setInterval(() => document.querySelectorAll("td.since").forEach((td) => {
  td.textContent = ago(td.dataset.at ? Number(td.dataset.at) : null);
}), 1000);
refresh();
connect();
