// Loom Studio: plain JavaScript over the /v1 API (no build step). The key stays in this tab.
"use strict";
const $ = (sel) => document.querySelector(sel);
let key = sessionStorage.getItem("loom-key") || "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${key}` } };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(path, init);
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) {
    const fields = (data.errors || []).map((e) => `${e.pointer}: ${e.message}`).join("; ");
    throw new Error(`${r.status} ${data.title}${data.detail ? ": " + data.detail : ""}${fields ? " (" + fields + ")" : ""}`);
  }
  return data;
}

function status(text) { $("#status").textContent = text; }
async function guarded(fn) { try { status(""); await fn(); } catch (e) { status(e.message); } }

function show(tab) {
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== tab;
  if (tab === "activities") guarded(loadActivities);
  if (tab === "dead") guarded(loadDead);
  if (tab === "actors") guarded(() => loadRuns(false));
  clearTimeout(clusterTimer);
  clearTimeout(wfTimer);
  if (tab === "cluster") guarded(loadCluster);
}

// -- activities -----------------------------------------------------------------------------
async function loadActivities() {
  const body = $("#activity-list tbody");
  body.replaceChildren();
  for (const a of await api("GET", "/v1/activities")) {
    body.append(el("tr", { class: "clickable", "data-activity": a.name, onclick: () => guarded(() => showActivity(a.name)) },
      el("td", {}, a.name), el("td", {}, a.latest || "-"), el("td", {}, a.versions.join(", "))));
  }
}

function inputField(name, schema) {
  const type = schema.type === "integer" || schema.type === "number" ? "number" : "text";
  return el("label", {}, `${name} `, el("input", { name, type, "data-type": schema.type || "string" }));
}

async function showActivity(name) {
  const a = await api("GET", `/v1/activities/${encodeURIComponent(name)}`);
  const m = a.latest;
  const props = (m.input_schema && m.input_schema.properties) || {};
  const form = el("form", { id: "invoke-form" });
  const names = Object.keys(props);
  for (const p of names) form.append(inputField(p, props[p]), " ");
  const raw = el("textarea", { name: "__json", rows: 3, cols: 60 });
  raw.value = "{}";
  if (!names.length) form.append(el("label", {}, "input JSON ", raw));
  form.append(el("button", {}, "Invoke"));
  const out = el("pre", { id: "invoke-output" });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      let input = {};
      if (!names.length) input = JSON.parse(raw.value || "{}");
      for (const i of form.querySelectorAll("input")) {
        if (i.value === "") continue;
        input[i.name] = ["number", "integer"].includes(i.dataset.type) ? Number(i.value) : i.value;
      }
      const r = await api("POST", `/v1/activities/${encodeURIComponent(name)}/invoke`, { input });
      out.textContent = JSON.stringify(r.output, null, 2) +
        `\n-- ${r.version} in ${r.duration_ms.toFixed(2)} ms, memory ${Math.round(r.memory_bytes / 1024)} KiB` +
        `${r.fuel_used != null ? ", fuel " + r.fuel_used : ""}, ${r.warm ? "warm" : "cold"} instance`;
      await showCalls(name);
    });
  });
  const calls = el("table", { id: "recent-calls" });
  $("#activity-detail").replaceChildren(
    el("h2", {}, `${m.name}@${m.version}`), el("p", {}, m.description || ""),
    el("h3", {}, "Limits"), el("pre", {}, JSON.stringify(m.limits, null, 2)),
    el("h3", {}, "Grants"), el("pre", {}, JSON.stringify(m.capabilities, null, 2)),
    el("h3", {}, "Invoke"), form, out, el("h3", {}, "Recent calls"), calls);
  await showCalls(name);
}

async function showCalls(name) {
  const a = await api("GET", `/v1/activities/${encodeURIComponent(name)}`);
  const rows = a.recent_calls.map((c) => el("tr", { class: c.ok ? "done" : "failed" },
    el("td", {}, new Date(c.at * 1000).toLocaleTimeString()), el("td", {}, c.ok ? "ok" : c.code),
    el("td", {}, `${c.duration_ms} ms`), el("td", {}, c.fuel != null ? `fuel ${c.fuel}` : ""),
    el("td", {}, c.memory_bytes ? `${Math.round(c.memory_bytes / 1024)} KiB` : ""),
    el("td", {}, c.warm ? "warm" : "")));
  $("#recent-calls").replaceChildren(el("tr", {}, ...["time", "outcome", "duration", "fuel", "memory", ""].map((h) => el("th", {}, h))), ...rows);
}

// -- actors -----------------------------------------------------------------------------------
function describe(e) {
  let text = `step ${e.step}: ${e.op} ${e.name}`;
  if (e.attempts) text += ` (attempts ${e.attempts})`;
  if (e.error) text += ` error ${e.error.code}: ${e.error.message}`;
  if (e.fire_at) text += ` fires ${new Date(e.fire_at * 1000).toLocaleTimeString()}`;
  for (const r of e.resources || []) {
    text += ` [${r.duration_ms} ms, ${Math.round((r.memory_bytes || 0) / 1024)} KiB` +
      `${r.fuel != null ? ", fuel " + r.fuel : ""}${r.warm ? ", warm" : ""}]`;
  }
  return text;
}

// -- runs (the journal's run index: GET /v1/runs) ---------------------------------------------
let runsNext = null;
function when(ts) { return ts == null ? "-" : new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19); }
async function loadRuns(more) {
  const q = new URLSearchParams({ limit: "50" });
  for (const [name, sel] of [["type", "#run-type"], ["status", "#run-status"], ["activity", "#run-activity"], ["since", "#run-since"], ["until", "#run-until"]]) {
    const v = $(sel).value.trim();
    if (v) q.set(name, v);
  }
  if (more && runsNext) q.set("after", runsNext);
  const page = await api("GET", `/v1/runs?${q}`);
  const body = $("#run-list tbody");
  if (!more) body.replaceChildren();
  for (const r of page.runs) {
    const [type, ...rest] = r.actor.split("/");
    const id = rest.join("/");
    const open = () => guarded(async () => { $("#actor-type").value = type; $("#actor-id").value = id; await showActor(type, id); });
    body.append(el("tr", { class: `run run-${r.status}`, "data-actor": r.actor, "data-msg": r.msg },
      el("td", {}, el("a", { href: "#", class: "actor-link", onclick: (ev) => { ev.preventDefault(); open(); } }, r.actor)),
      el("td", {}, r.handler || "-"), el("td", { class: "run-status" }, r.status + (r.waiting ? ` (${r.waiting})` : "")),
      el("td", {}, when(r.started)), el("td", {}, when(r.ended)), el("td", {}, r.activities.join(", ")),
      el("td", { class: r.error ? "failed" : "" }, r.error ? `${r.error.code}: ${r.error.message}` : "")));
  }
  runsNext = page.next;
  $("#run-more").hidden = !page.next;
}

async function showActor(type, id) {
  const path = `/v1/actors/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  const a = await api("GET", path);
  const j = await api("GET", `${path}/journal`);
  const items = j.commits.map((c) => el("li", { class: c.kind === "failed" ? "failed" : (c.kind === "completed" ? "done" : "") },
    `#${c.seq} ${c.kind || "step"}${c.message ? " " + (c.message.handler || c.message.name) : ""}`,
    el("ul", {}, ...(c.events || []).map((e) => el("li", { class: "event" }, describe(e))),
      ...(c.error ? [el("li", { class: "failed" }, `${c.error.type}: ${c.error.message}`)] : []))));
  $("#actor-detail").replaceChildren(el("h2", {}, a.actor),
    el("h3", {}, "State"), el("pre", { id: "actor-state" }, JSON.stringify(a.state, null, 2)),
    el("h3", {}, "Journal"), el("ol", { class: "timeline", id: "timeline" }, ...items));
}

// -- workflows: the graph drawn as SVG from its nodes and edges, coloured by step status ------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}
const measure = document.createElement("canvas").getContext("2d");
measure.font = "12px system-ui, sans-serif";

// A layered layout (Sugiyama, simplified): rank = longest path from the start; an edge that
// spans ranks gets a waypoint in each rank between; each rank is ordered by the mean position
// of its predecessors (ties: the order the workflow lists them), then centred.
function layoutGraph(nodes, edges) {
  const info = new Map(nodes.map((n, i) => [n.id, { n, order: i, lines: n.label.split("\n") }]));
  const succs = new Map(nodes.map((n) => [n.id, []]));
  const indeg = new Map(nodes.map((n) => [n.id, 0]));
  for (const e of edges) { succs.get(e.from).push(e.to); indeg.set(e.to, indeg.get(e.to) + 1); }
  const queue = nodes.filter((n) => indeg.get(n.id) === 0).map((n) => n.id);
  const rank = new Map(queue.map((id) => [id, 0]));
  while (queue.length) {
    const id = queue.shift();
    for (const s of succs.get(id)) {
      rank.set(s, Math.max(rank.get(s) ?? 0, rank.get(id) + 1));
      indeg.set(s, indeg.get(s) - 1);
      if (indeg.get(s) === 0) queue.push(s);
    }
  }
  const layers = [];
  const items = new Map();
  const put = (id, r, item) => { items.set(id, { ...item, id, rank: r, preds: [] }); (layers[r] ||= []).push(id); };
  for (const n of nodes) {
    const { lines, order } = info.get(n.id);
    const w = Math.min(320, Math.max(...lines.map((l) => measure.measureText(l).width)) + 28);
    const h = 26 + 15 * lines.length + (n.shape === "diamond" ? 14 : 0);
    put(n.id, rank.get(n.id) ?? 0, { node: n, lines, order, w, h });
  }
  const routes = edges.map((e, i) => {
    const pts = [e.from];
    for (let r = items.get(e.from).rank + 1; r < items.get(e.to).rank; r++) {
      const id = `${e.from}>${e.to}@${r}`;
      put(id, r, { order: nodes.length + i, w: 16, h: 0 });
      pts.push(id);
    }
    pts.push(e.to);
    for (let k = 1; k < pts.length; k++) items.get(pts[k]).preds.push(pts[k - 1]);
    return { ...e, pts };
  });
  const pos = new Map();
  let width = 0, y = 20;
  const rows = [];
  for (const layer of layers) {
    if (!layer) continue;
    const mean = (id) => {
      const p = items.get(id).preds.filter((q) => pos.has(q));
      return p.length ? p.reduce((a, q) => a + pos.get(q), 0) / p.length : items.get(id).order;
    };
    layer.sort((a, b) => mean(a) - mean(b) || items.get(a).order - items.get(b).order);
    layer.forEach((id, i) => pos.set(id, i));
    const total = layer.reduce((a, id) => a + items.get(id).w, 0) + 36 * (layer.length - 1);
    const height = Math.max(...layer.map((id) => items.get(id).h));
    rows.push({ layer, total, y, height });
    width = Math.max(width, total);
    y += height + 46;
  }
  for (const row of rows) {
    let x = 20 + (width - row.total) / 2;
    for (const id of row.layer) {
      const it = items.get(id);
      Object.assign(it, { x, y: row.y + (row.height - it.h) / 2, cx: x + it.w / 2, cy: row.y + row.height / 2 });
      x += it.w + 36;
    }
  }
  return { items, routes, width: width + 40, height: y };
}

function shapeOf(it) {
  const { x, y, w, h } = it;
  if (it.node.shape === "diamond") return svg("polygon", { class: "shape", points: `${x + w / 2},${y} ${x + w},${y + h / 2} ${x + w / 2},${y + h} ${x},${y + h / 2}` });
  if (it.node.shape === "hex") return svg("polygon", { class: "shape", points: `${x + 12},${y} ${x + w - 12},${y} ${x + w},${y + h / 2} ${x + w - 12},${y + h} ${x + 12},${y + h} ${x},${y + h / 2}` });
  const rx = { box: 3, round: 12, stadium: h / 2 }[it.node.shape] ?? 3;
  return svg("rect", { class: "shape", x, y, width: w, height: h, rx });
}

function drawGraph(g) {
  const { items, routes, width, height } = layoutGraph(g.nodes, g.edges);
  const out = svg("svg", { id: "wf-graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#667" }))));
  for (const r of routes) {
    const pts = r.pts.map((id) => items.get(id));
    const first = pts[0], last = pts[pts.length - 1];
    const coords = [[first.cx, first.y + first.h], ...pts.slice(1, -1).map((p) => [p.cx, p.cy]), [last.cx, last.y]];
    let d = `M ${coords[0][0]} ${coords[0][1]}`;
    for (let k = 1; k < coords.length; k++) {
      const [x0, y0] = coords[k - 1], [x1, y1] = coords[k];
      d += ` C ${x0} ${(y0 + y1) / 2} ${x1} ${(y0 + y1) / 2} ${x1} ${y1}`;
    }
    out.append(svg("path", { class: "edge", d, "marker-end": "url(#arrow)", "data-from": r.from, "data-to": r.to }));
    if (r.label) {
      const [x0, y0] = coords[0], [x1, y1] = coords[1];
      out.append(svg("text", { class: "edge-label", x: (x0 + x1) / 2 + 4, y: (y0 + y1) / 2 }, r.label));
    }
  }
  for (const it of items.values()) {
    if (!it.node) continue;
    const text = svg("text", { x: it.cx, y: it.cy - 7.5 * (it.lines.length - 1) + 4, "text-anchor": "middle" },
      ...it.lines.map((l, i) => svg("tspan", { x: it.cx, dy: i ? 15 : 0 }, l)));
    out.append(svg("g", { class: "node", "data-node": it.node.id, "data-step": it.node.step || "" },
      svg("title", {}, it.node.label), shapeOf(it), text));
  }
  return out;
}

function colourGraph(root, g) {
  for (const node of root.querySelectorAll("g.node")) {
    const status = node.dataset.step ? g.steps[node.dataset.step] : undefined;
    node.setAttribute("class", `node ${status ? "step-" + status : "plain"}`);
    node.querySelector(".shape").setAttribute("fill", status ? g.colours[status] : "#ffffff");
    if (status) node.dataset.status = status; else delete node.dataset.status;
  }
}

let wfTimer = null;
let wfShown = null;  // {instance, shape}: what #wf-graph shows, to update it in place
async function showWorkflow(instance) {
  clearTimeout(wfTimer);
  const g = await api("GET", `/v1/workflows/${encodeURIComponent(instance)}/graph`);
  const shape = JSON.stringify([g.nodes, g.edges]);
  const steps = Object.entries(g.steps).map(([id, s]) => el("li", { class: `step-${s}`, "data-step": id }, `${id}: ${s}`));
  if (!wfShown || wfShown.instance !== instance || wfShown.shape !== shape || !$("#wf-graph")) {
    $("#wf-detail").replaceChildren(el("h2", { id: "wf-title" }), el("div", { id: "wf-canvas" }, drawGraph(g)),
      el("ol", { id: "wf-steps" }), el("details", {}, el("summary", {}, "Mermaid"), el("pre", { id: "wf-mermaid" })));
    wfShown = { instance, shape };
  }
  $("#wf-title").textContent = `${instance}: ${g.status}`;
  colourGraph($("#wf-graph"), g);
  $("#wf-steps").replaceChildren(...steps);
  $("#wf-mermaid").textContent = g.mermaid;
  if (g.status === "running" && !$("#workflows").hidden) wfTimer = setTimeout(() => guarded(() => showWorkflow(instance)), 1000);
}

// -- dead letters -----------------------------------------------------------------------------
async function loadDead() {
  const body = $("#dead-list tbody");
  body.replaceChildren();
  for (const d of await api("GET", "/v1/dead-letters")) {
    const [type, id] = d.actor.split("/");
    const path = `/v1/dead-letters/${type}/${encodeURIComponent(id)}/${encodeURIComponent(d.msg_id)}`;
    body.append(el("tr", {}, el("td", {}, d.actor), el("td", {}, d.msg_id), el("td", {}, d.deliveries),
      el("td", {}, el("button", { onclick: () => guarded(async () => { await api("POST", `${path}/retry`); await loadDead(); }) }, "Retry"),
        el("button", { onclick: () => guarded(async () => { await api("DELETE", path); await loadDead(); }) }, "Drop"))));
  }
}

// -- cluster (GET /v1/cluster, admin keys): refreshed every 2 s while the tab is open -------
let clusterTimer = null;
function table(id, headers, rows) {
  return el("table", { id }, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}
function cells(...values) { return values.map((v) => el("td", {}, v == null ? "-" : v)); }
function limitsTable(limits) {
  const rows = Object.entries(limits || {}).map(([name, l]) => el("tr", { "data-limit": name },
    ...cells(name, l.concurrency, l.rate_per_s, l.in_use == null ? "(this server)" : l.in_use)));
  return rows.length ? table("cluster-limits", ["activity", "concurrency", "rate/s", "in use"], rows)
    : el("p", { id: "cluster-limits", class: "muted" }, "No limits configured (LOOM_LIMITS).");
}
function breakersTable(breakers) {
  const rows = Object.entries(breakers || {}).map(([name, state]) =>
    el("tr", { "data-breaker": name }, el("td", {}, name), el("td", { class: `breaker-${state}` }, state)));
  return rows.length ? table("cluster-breakers", ["breaker", "state"], rows)
    : el("p", { id: "cluster-breakers", class: "muted" }, "Every breaker is closed.");
}
function versionsTable(byVersion) {
  const rows = Object.entries(byVersion).map(([v, d]) => el("tr",
    { "data-version": v, class: d.resumed_by.length ? "" : "stranded" },
    ...cells(v, d.runs, d.resumed_by.length ? d.resumed_by.join(", ") : "nobody: stranded")));
  return rows.length ? table("cluster-versions", ["code version", "runs", "resumed by"], rows)
    : el("p", { id: "cluster-versions", class: "muted" }, "No runs pinned to a code version.");
}
function fleetView(c) {
  const due = c.due_actors_per_partition || {};
  const lag = Object.values(due).reduce((a, b) => a + b, 0);
  const workers = c.workers.map((w) => el("tr", { class: "worker", "data-worker": w.id },
    ...cells(w.id, `${w.host}:${w.pid}`, w.version, w.compatible.join(", "),
      w.heartbeat_age_ms == null ? null : `${w.heartbeat_age_ms} ms`, w.partitions, w.in_flight)));
  const partitions = [];
  for (let p = 0; p < c.partitions; p++) {
    const o = c.owners[p] || c.owners[String(p)];
    const n = due[p] || due[String(p)] || 0;
    partitions.push(el("tr", { class: `partition${o ? "" : " unowned"}${n ? " lagging" : ""}`, "data-partition": p },
      ...cells(p, o ? o.worker : "unowned", o ? o.epoch : null, o ? `${o.lease_left_ms} ms` : null),
      el("td", { class: "lag" }, n)));
  }
  const dead = c.dead_letters || { count: 0, latest: [] };
  const stranded = c.stranded_versions || [];
  return [
    el("p", { id: "cluster-summary" }, `Fleet on ${String(c.redis).replace(/\/\/[^@]*@/, "//")}: ` +
      `${c.workers.length} worker(s), ${c.partitions} partitions (${c.unowned.length} unowned), ` +
      `code versions ${c.versions.join(", ") || "-"}, ${lag} actor(s) due.`),
    el("h3", {}, "Workers"), table("cluster-workers", ["worker", "host:pid", "version", "resumes also", "heartbeat", "partitions", "in flight"], workers),
    el("h3", {}, "Partitions"), table("cluster-partitions", ["partition", "owner", "epoch", "lease left", "due actors (lag)"], partitions),
    el("h3", {}, "Runs by code version"), versionsTable(c.runs_by_version || {}),
    el("p", { id: "cluster-stranded", class: stranded.length ? "failed" : "muted" },
      stranded.length ? `Stranded (no live worker resumes them): ${stranded.join(", ")}` : "No stranded versions."),
    el("h3", {}, "Dead letters"), el("p", { id: "cluster-dead" }, `${dead.count} dead-lettered message(s)`),
    el("ul", {}, ...dead.latest.map((d) => el("li", {}, `${d.actor} ${d.msg} (${d.deliveries} deliveries): ${d.error || ""}`))),
    el("h3", {}, "Limits in use"), limitsTable(c.limits),
    el("h3", {}, "Breakers not closed"), breakersTable(c.breakers_not_closed)];
}
function aloneView(c) {
  const owners = c.workers.map((w) => el("tr", { class: "worker", "data-worker": w.id }, ...cells(w.id, w.actors)));
  return [
    el("p", { id: "cluster-mode" }, "This server is not in a fleet (no LOOM_REDIS_URL, or no worker has " +
      "set the fleet up in that Redis): no partitions or heartbeats; the journal's view follows."),
    el("p", { id: "cluster-summary" }, `${c.due} actor(s) due, ${c.dead_letters} dead-lettered message(s); ` +
      `this server: ${c.this_server.activations} active actor(s) of ${c.this_server.types.join(", ") || "no types"}.`),
    el("h3", {}, "Lease holders"), owners.length ? table("cluster-workers", ["owner", "actors leased"], owners)
      : el("p", { class: "muted" }, "No actor leases held."),
    el("h3", {}, "Runs by code version"), versionsTable(Object.fromEntries(
      Object.entries(c.run_versions).map(([v, n]) => [v, { runs: n, resumed_by: ["this server"] }]))),
    el("h3", {}, "Limits"), limitsTable(c.limits),
    el("h3", {}, "Breakers not closed"), breakersTable(c.breakers_not_closed)];
}
async function loadCluster() {
  clearTimeout(clusterTimer);
  const view = $("#cluster-view");
  let c;
  try {
    c = await api("GET", "/v1/cluster");
  } catch (e) {
    view.replaceChildren(el("p", { id: "cluster-denied", class: "failed" },
      e.message.startsWith("403") ? "The cluster view needs a key with the admin scope." : e.message));
    throw e;
  }
  view.replaceChildren(...(c.fleet ? fleetView(c) : aloneView(c)),
    el("p", { class: "muted" }, `Updated ${new Date().toLocaleTimeString()}`));
  if (!$("#cluster").hidden) clusterTimer = setTimeout(() => guarded(loadCluster), 2000);
}

$("#key").value = key;
$("#use-key").addEventListener("click", () => { key = $("#key").value.trim(); sessionStorage.setItem("loom-key", key); show("activities"); });
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.tab));
$("#actor-search").addEventListener("submit", (ev) => { ev.preventDefault(); guarded(() => showActor($("#actor-type").value, $("#actor-id").value)); });
$("#run-filters").addEventListener("submit", (ev) => { ev.preventDefault(); guarded(() => loadRuns(false)); });
$("#run-more").addEventListener("click", () => guarded(() => loadRuns(true)));
$("#wf-search").addEventListener("submit", (ev) => { ev.preventDefault(); guarded(() => showWorkflow($("#wf-instance").value)); });
if (key) show("activities");
