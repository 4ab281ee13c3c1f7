// The status page: asks for a token once per tab, then shows GET /status every few seconds.
// Everything from the API is put into the page as text (textContent), never as markup.
"use strict";

const STATUS_URL = "../status";
const REFRESH_MS = 3000;
const KEY = "bismuth-token";
const $ = (id) => document.getElementById(id);
let timer = null;

function show(element, visible) { element.hidden = !visible; }

function fail(message) {
  $("error").textContent = message;
  show($("error"), Boolean(message));
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  return td;
}

function fill(tableId, items, columns, emptyText) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (items.length === 0) {
    const td = cell(body.insertRow(), emptyText, "empty");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    return;
  }
  for (const item of items) {
    const row = body.insertRow();
    for (const [value, className] of columns(item)) cell(row, value, className);
  }
}

function bytes(n) {
  const units = ["", "Ki", "Mi", "Gi", "Ti"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${Number(n.toFixed(1))}${units[i]}`;
}

function cpus(n) { return String(Number(n.toFixed(3))); }

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "-";
}

function active(fn) { return fn.backends.filter((b) => !b.retiring); }

function summary(fn) {
  const counts = {};
  for (const b of active(fn)) counts[b.status] = (counts[b.status] || 0) + 1;
  const kinds = Object.keys(counts).sort();
  if (kinds.length === 0) return "no replicas";
  if (kinds.length === 1) return kinds[0];
  return kinds.map((k) => `${counts[k]} ${k}`).join(", ");
}

function routes(list) { return list.length ? list.join(", ") : "-"; }

function render(doc) {
  $("who").textContent = doc.scope === "admin" ? "admin" : `tenant ${doc.tenant}`;
  $("updated").textContent = `updated ${new Date(doc.time * 1000).toLocaleTimeString()}`;
  show($("nodes-section"), doc.nodes !== null);
  if (doc.nodes !== null) {
    fill("nodes", doc.nodes, (n) => [
      [n.ip, "id"],
      [n.alive ? "alive" : "gone", n.alive ? "alive-yes" : "alive-no"],
      [n.enabled ? "enabled" : "drained"],
      [n.version],
      [`${cpus(n.reserved_cpu)} / ${cpus(n.cpus)}`],
      [`${bytes(n.reserved_memory)} / ${bytes(n.memory)}`],
      [n.containers],
    ], "no nodes provisioned");
  }
  fill("functions", doc.functions, (f) => {
    const running = active(f).filter((b) => b.status === "Running").length;
    const status = summary(f);
    const replicas = f.backends.map((b) =>
      `${b.backend.ip}: ${b.status}${b.retiring ? " (retiring)" : ""}`).join("; ");
    return [
      [f.id, "id"],
      [routes(f.definition.routes.map((r) => r.hostname))],
      [f.definition.image],
      [`${running}/${f.definition.max_instances}`],
      [status, `status-${status}`],
      [replicas || "-"],
    ];
  }, "no functions");
  fill("failures", doc.failures, (x) => [
    [when(x.since)],
    [`${routes(x.routes)} (${x.function})`],
    [x.node, "id"],
    [x.container_id, "id"],
    [x.status, "status-Failed"],
  ], "no failed replicas");
}

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(KEY);
  if (!token) return signOut("");
  let response;
  try {
    response = await fetch(STATUS_URL, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
  } catch (err) {
    fail(`The API cannot be reached (${err.message}); retrying.`);
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  const reason = body && body.error ? body.error : `HTTP ${response.status}`;
  if (response.status === 401 || response.status === 403) {
    return signOut(`The API refused this token: ${reason}`);
  }
  if (!response.ok || body === null) {
    fail(`The API answered ${response.status}: ${reason}; retrying.`);
  } else {
    fail("");
    render(body);
    show($("status"), true);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function signOut(message) {
  clearTimeout(timer);
  sessionStorage.removeItem(KEY);
  show($("status"), false);
  show($("signout"), false);
  show($("login"), true);
  $("who").textContent = "";
  $("updated").textContent = "";
  fail(message);
  $("token").focus();
}

function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(KEY, token);
  $("token").value = "";
  show($("login"), false);
  show($("signout"), true);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut(""));
  if (sessionStorage.getItem(KEY)) {
    show($("signout"), true);
    refresh();
  } else {
    signOut("");
  }
});
