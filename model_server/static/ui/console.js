// The operator's console: reads the server's own API and /metrics, nothing else.
// Every value goes into the page as text (textContent), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const text = (id, value) => { $(id).textContent = value ?? ""; };
const REFRESH_MS = 2000;

// The token box's key (an API key or the admin token) goes with every request:
// a server that needs keys answers with it, and /model shows refusal reasons to
// the admin scope only.
function credentials(headers) {
  const token = $("token").value;
  if (token) headers["Authorization"] = `Bearer ${token}`;
  return headers;
}

// A refusal throws with the API's error code (`code`) beside its status.
async function getJson(path) {
  const answer = await fetch(path, {headers: credentials({"Accept": "application/json"})});
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({}));
    const error = new Error(`${path}: ${answer.status}${body.error ? " " + body.error : ""}`);
    error.code = body.error;
    throw error;
  }
  return answer.json();
}

function item(list, label, className) {
  const li = document.createElement("li");
  li.textContent = label;
  if (className) li.className = className;
  list.appendChild(li);
  return li;
}

// Before the first version (STREAMREC_SERVE_WAIT_FOR_MODEL) /v1/model is a 503
// no_model: the server is up and answers from trending, which the page says.
const NO_MODEL = "none yet: answering from trending until the first version is published";

async function showModel() {
  let model;
  try {
    model = await getJson("/v1/model");
  } catch (error) {
    if (error.code !== "no_model") throw error;
    model = {model_version: NO_MODEL, created_at: "", parent: "", items: 0, swaps: []};
  }
  text("model-version", model.model_version);
  text("model-created", model.created_at);
  text("model-parent", model.parent ?? "none (trained from scratch)");
  text("model-items", model.items.toLocaleString());
  const dataWindow = model.data_window || {};
  text("model-window", `${(dataWindow.events ?? 0).toLocaleString()} events, ${dataWindow.source ?? ""}`);
  const gate = ((model.metrics || {}).validation || {}).retriever_ranker || {};
  text("model-gate", gate.p20 === undefined ? "not measured" : `${gate.p20} / ${gate.mrr20} (${gate.cases} cases)`);
  const swaps = $("swap-list");
  swaps.replaceChildren();
  for (const entry of [...(model.swaps || [])].reverse()) {
    const when = new Date(entry.at_s * 1000).toLocaleTimeString();
    if (entry.outcome === "swapped") {
      item(swaps, `${when} swapped to ${entry.version} (was ${entry.previous ?? "none"})`);
    } else {
      item(swaps, `${when} refused ${entry.version}: ${entry.reason}`, "refused");
    }
  }
  if (!swaps.children.length) item(swaps, "none since this process started", "quiet");
}

async function showVersions() {
  const listing = await getJson("/v1/versions");
  const rows = $("versions");
  rows.replaceChildren();
  for (const version of [...listing.versions].reverse()) {
    const row = document.createElement("tr");
    row.dataset.version = version.version;
    if (version.version === listing.current) row.className = "current";
    const gate = (version.validation || {}).retriever_ranker || {};
    for (const cell of [version.version, version.created_at, version.parent ?? "",
                        (version.events ?? "").toLocaleString(), gate.p20 ?? ""]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    const action = document.createElement("td");
    if (version.version !== listing.current) {
      const button = document.createElement("button");
      button.textContent = "Roll back to this";
      button.className = "rollback";
      button.addEventListener("click", () => rollback(version.version));
      action.appendChild(button);
    } else {
      action.textContent = "current";
    }
    row.appendChild(action);
    rows.appendChild(row);
  }
}

async function rollback(version) {
  const token = $("token").value;
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = `Bearer ${token}`;
  text("rollback-status", `rolling back to ${version}…`);
  const answer = await fetch("/v1/admin/rollback", {method: "POST", headers, body: JSON.stringify({version})});
  const body = await answer.json().catch(() => ({}));
  if (answer.ok) {
    text("rollback-status", `${body.outcome}: serving ${body.model_version}`);
  } else {
    text("rollback-status", `refused (${answer.status} ${body.error ?? ""}): ${typeof body.detail === "string" ? body.detail : ""}`);
  }
  refresh();
}

// Prometheus text: the sum of a family's samples whose labels include `match`.
function total(metrics, name, match = {}) {
  let sum = 0;
  for (const line of metrics.split("\n")) {
    if (!line.startsWith(name)) continue;
    const parsed = line.match(/^([a-z_:]+)(\{([^}]*)\})? ([^ ]+)/);
    if (!parsed || parsed[1] !== name) continue;
    const labels = Object.fromEntries([...(parsed[3] || "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(match).every(([k, v]) => labels[k] === v)) sum += Number(parsed[4]);
  }
  return sum;
}

function buckets(metrics, name, match) {
  const found = new Map();
  for (const line of metrics.split("\n")) {
    const parsed = line.match(/^([a-z_:]+)\{([^}]*)\} ([^ ]+)/);
    if (!parsed || parsed[1] !== `${name}_bucket`) continue;
    const labels = Object.fromEntries([...parsed[2].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (!Object.entries(match).every(([k, v]) => labels[k] === v)) continue;
    found.set(labels.le, (found.get(labels.le) || 0) + Number(parsed[3]));
  }
  return [...found.entries()].map(([le, n]) => [le === "+Inf" ? Infinity : Number(le), n]).sort((a, b) => a[0] - b[0]);
}

let previous = null;

async function showLive() {
  const answer = await fetch("/metrics");
  const metrics = await answer.text();
  const now = performance.now() / 1000;
  const sample = {
    at: now,
    requests: total(metrics, "streamrec_serve_requests_total"),
    fallbacks: total(metrics, "streamrec_serve_fallbacks_total"),
    buckets: buckets(metrics, "streamrec_serve_request_seconds", {endpoint: "recommend"}),
  };
  if (previous) {
    const seconds = Math.max(1e-3, sample.at - previous.at);
    text("live-rate", ((sample.requests - previous.requests) / seconds).toFixed(1));
    text("live-fallbacks", ((sample.fallbacks - previous.fallbacks) / seconds).toFixed(1));
    const counts = sample.buckets.map(([le, n], i) => [le, n - ((previous.buckets[i] || [0, 0])[1])]);
    const all = counts.length ? counts[counts.length - 1][1] : 0;
    const p99 = counts.find(([, n]) => n >= 0.99 * all);
    text("live-p99", all > 0 && p99 ? `≤ ${(p99[0] * 1000).toFixed(1)} ms (${all} requests)` : "no requests");
  }
  previous = sample;
}

async function tryUser(event) {
  event.preventDefault();
  const user = $("user-input").value.trim();
  text("user-status", "asking…");
  const answer = await fetch("/v1/recommend", {
    method: "POST", headers: credentials({"Content-Type": "application/json"}),
    body: JSON.stringify({user_id: user, k: 10, explain: true}),
  });
  const body = await answer.json();
  if (!answer.ok) {
    text("user-status", `${answer.status} ${body.error}`);
    return;
  }
  text("user-status", `${body.model_version ?? "no model yet"}${body.fallback ? ", fallback: " + body.fallback : ""}`);
  const history = $("history");
  history.replaceChildren();
  for (const e of body.history || []) {
    item(history, `${e.item_id} (${e.type}, ${new Date(e.ts).toLocaleString()})`);
  }
  if (!(body.history || []).length) item(history, "no events", "quiet");
  const shown = $("recommendations");
  shown.replaceChildren();
  for (const rec of body.items) {
    const li = item(shown, `${rec.item_id}  ${rec.score.toFixed(3)}`);
    li.dataset.item = rec.item_id;
    if (rec.features) {
      const top = Object.entries(rec.features).filter(([, v]) => v !== 0).slice(0, 4);
      const span = document.createElement("div");
      span.className = "features";
      span.textContent = top.map(([k, v]) => `${k}=${Number(v).toFixed(2)}`).join("  ");
      li.appendChild(span);
    }
  }
}

async function refresh() {
  try {
    await Promise.all([showModel(), showVersions(), showLive()]);
    text("refreshed", `updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    text("refreshed", `cannot read the server: ${error.message}`);
  }
}

$("user-form").addEventListener("submit", tryUser);
refresh();
setInterval(refresh, REFRESH_MS);
