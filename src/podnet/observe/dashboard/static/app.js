// podnet dashboard: draws /api/snapshot as SVG and tables, follows /api/events
// (server-sent events), runs /api/trace from the form. No library; every value from
// the cluster goes in through textContent or setAttribute, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_FLOWS = 300;
const RACK_W = 320, RACK_GAP = 40, NODE_HEAD = 44, POD_H = 26, NODE_GAP = 16, TOP = 20;
const CHAR_W = 7.2;  // about one character of the pod labels' font, for cutting long names

// A name cut to `max` characters, its end marked, so it never runs into the addresses.
function fit(text, max) {
  return text.length <= max ? text : text.slice(0, Math.max(max - 1, 1)) + "\u2026";
}

const state = { snapshot: null, selected: null, trace: null, positions: { node: {}, pod: {} }, flows: 0 };

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function health(value) { return ["ok", "warn", "down", "unknown"].includes(value) ? value : "unknown"; }

// ---------------------------------------------------------------- topology

function drawTopology(snap) {
  const root = document.getElementById("topology");
  clear(root);
  state.positions = { node: Object.create(null), pod: Object.create(null) };  // no prototype keys
  const nodes = Object.fromEntries(snap.nodes.map((n) => [n.name, n]));
  const podsOf = {};
  for (const pod of snap.pods) (podsOf[pod.node] = podsOf[pod.node] || []).push(pod);
  const hasRouter = snap.routers.length > 0 || snap.outside;
  const rackTop = TOP + (hasRouter ? 80 : 0);
  let height = rackTop;
  const rackX = {};
  snap.racks.forEach((rack, i) => {
    const x = 20 + i * (RACK_W + RACK_GAP);
    rackX[rack.rack] = x;
    const group = svg("g", { class: "rack-group", "data-rack": rack.rack });
    const box = svg("rect", { class: "rack", x, y: rackTop, width: RACK_W, rx: 8 });
    group.appendChild(box);
    group.appendChild(svg("text", { class: "rack-label", x: x + 10, y: rackTop + 18 }, rack.label || `rack ${rack.rack}`));
    let y = rackTop + 30;
    for (const name of rack.nodes) {
      const node = nodes[name];
      if (!node) continue;
      y = drawNode(group, node, podsOf[name] || [], x + 12, y) + NODE_GAP;
    }
    box.setAttribute("height", Math.max(y - rackTop, 60));
    height = Math.max(height, y + 10);
    root.appendChild(group);
  });
  drawRouters(root, snap, rackX, rackTop);
  drawLinks(root, snap.links);
  const width = 40 + snap.racks.length * (RACK_W + RACK_GAP) + 60;
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const scale = Math.min(Math.max((root.parentNode.clientWidth - 32) / width, 1), 1.5);  // fill, within reason
  root.style.height = `${Math.round(height * scale)}px`;
  if (state.trace) drawTrace(state.trace);
}

function drawNode(parent, node, pods, x, y) {
  const w = RACK_W - 24, h = NODE_HEAD + pods.length * POD_H + 6;
  const g = svg("g", { class: "node", "data-node": node.name, "data-health": health(node.health) });
  g.appendChild(svg("rect", { class: "node-box" + (isSelected("node", node.name) ? " selected" : ""),
                              x, y, width: w, height: h, rx: 6 }));
  g.appendChild(svg("circle", { class: `health-${health(node.health)}`, cx: x + 14, cy: y + 16, r: 7 }));
  g.appendChild(svg("text", { class: "node-title", x: x + 28, y: y + 20 }, node.name));
  const sub = [node.underlay_ip, node.fabric, (node.blocks || []).join(", ")].filter(Boolean).join("  ");
  g.appendChild(svg("text", { class: "muted", x: x + 28, y: y + 36 }, sub));
  g.addEventListener("click", (ev) => { ev.stopPropagation(); select("node", node.name); });
  state.positions.node[node.name] = { x: x + w, y: y + 16, left: x, hopX: x + w - 22 };
  pods.forEach((pod, i) => {
    const py = y + NODE_HEAD + i * POD_H;
    const p = svg("g", { class: "pod" + (isSelected("pod", pod.ref) ? " selected" : ""), "data-pod": pod.ref,
                         "data-health": health(pod.health) });
    p.appendChild(svg("rect", { x: x + 10, y: py, width: w - 20, height: POD_H - 4, rx: 4 }));
    p.appendChild(svg("circle", { class: `health-${health(pod.health)}`, cx: x + 22, cy: py + 11, r: 5 }));
    const ips = (pod.ips || []).join(", ");
    const label = svg("text", { x: x + 34, y: py + 15 }, fit(pod.ref, Math.floor((w - 64) / CHAR_W) - ips.length));
    label.appendChild(svg("title", {}, pod.ref));  // the whole name on hover
    p.appendChild(label);
    p.appendChild(svg("text", { class: "muted", x: x + w - 20, y: py + 15, "text-anchor": "end" }, ips));
    p.addEventListener("click", (ev) => { ev.stopPropagation(); select("pod", pod.ref); });
    g.appendChild(p);
    state.positions.pod[pod.ref] = { x: x + 22, y: py + 11, node: pod.node };
  });
  parent.appendChild(g);
  return y + h;
}

function drawRouters(root, snap, rackX, rackTop) {
  const racks = snap.racks.map((r) => r.rack);
  const mid = (list) => list.reduce((s, r) => s + rackX[r] + RACK_W / 2, 0) / Math.max(list.length, 1);
  snap.routers.forEach((router, i) => {
    const served = (router.racks || []).filter((r) => r in rackX);
    const cx = served.length ? mid(served) : 20 + RACK_W / 2 + i * 140;
    const g = svg("g", { class: "router", "data-router": router.name });
    for (const r of served) {
      g.appendChild(svg("path", { class: "uplink", d: `M${cx},${TOP + 40} L${rackX[r] + RACK_W / 2},${rackTop}` }));
    }
    g.appendChild(svg("rect", { x: cx - 50, y: TOP, width: 100, height: 40, rx: 6 }));
    g.appendChild(svg("text", { x: cx, y: TOP + 25, "text-anchor": "middle" }, `router ${router.name}`));
    root.appendChild(g);
  });
  if (snap.outside && racks.length) {
    const x = rackX[racks[0]];
    const g = svg("g", { class: "outside" });
    g.appendChild(svg("path", { class: "uplink", d: `M${x + 60},${TOP + 40} L${x + 60},${rackTop}` }));
    g.appendChild(svg("rect", { x, y: TOP, width: 120, height: 40, rx: 6 }));
    g.appendChild(svg("text", { x: x + 60, y: TOP + 18, "text-anchor": "middle" }, "outside"));
    g.appendChild(svg("text", { class: "muted", x: x + 60, y: TOP + 33, "text-anchor": "middle" }, snap.outside.ip));
    root.appendChild(g);
  }
}

function drawLinks(root, links) {
  links.forEach((link, i) => {
    let a = state.positions.node[link.a], b = state.positions.node[link.b];
    if (!a || !b) return;
    if (b.left < a.left) [a, b] = [b, a];
    const bulge = 30 + 12 * (i % 4);
    const d = b.left > a.x  // another rack, to the right: from this box's right edge to that one's left
      ? `M${a.x},${a.y} C${a.x + 40},${a.y} ${b.left - 40},${b.y} ${b.left},${b.y}`
      : `M${a.x},${a.y} C${a.x + bulge},${a.y} ${b.x + bulge},${b.y} ${b.x},${b.y}`;
    const path = svg("path", { class: `link health-${health(link.health)}`, d, "data-link": `${link.a}~${link.b}` });
    path.appendChild(svg("title", {}, `fabric ${link.a} - ${link.b}: ${link.state}`));
    root.appendChild(path);
  });
}

// ---------------------------------------------------------------- details and tables

function isSelected(kind, name) { return state.selected && state.selected.kind === kind && state.selected.name === name; }

function select(kind, name) {
  state.selected = { kind, name };
  if (state.snapshot) render(state.snapshot);
}

function showDetails(snap) {
  const table = document.getElementById("details");
  clear(table);
  const title = document.getElementById("details-title");
  const sel = state.selected;
  const item = sel && (sel.kind === "node" ? snap.nodes.find((n) => n.name === sel.name)
                                           : snap.pods.find((p) => p.ref === sel.name));
  document.getElementById("details-hint").hidden = Boolean(item);
  title.textContent = item ? `${sel.kind} ${sel.name}` : "";
  if (!item) return;
  const rows = sel.kind === "node"
    ? [["health", item.health], ["agent", item.agent], ["rack", item.rack], ["underlay", item.underlay_ip],
       ["fabric", item.fabric], ["mtu", item.mtu], ["blocks", (item.blocks || []).join(", ")],
       ["peers", item.peers === undefined ? "" : `${item.peers_ok}/${item.peers} ok`],
       ["lease", item.lease ? `age ${item.lease_age_s}s, expires in ${item.lease_expires_s}s` : "none"],
       ["bgp", item.bgp], ["pods", snap.pods.filter((p) => p.node === item.name).length],
       ...(item.reasons || []).map((r) => ["degraded", r])]
    : [["health", item.health], ["kind", item.kind], ["node", item.node], ["addresses", (item.ips || []).join(", ")],
       ["ready", item.ready ? "yes" : "no"],
       ["labels", Object.entries(item.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
       ["ports", (item.ports || []).map((p) => `${p.name ? p.name + " " : ""}${p.port}/${p.protocol || "TCP"}`).join(", ")]];
  for (const [k, v] of rows) {
    if (v === undefined || v === null || v === "") continue;
    const tr = el("tr");
    tr.appendChild(el("th", {}, k));
    tr.appendChild(el("td", {}, v));
    table.appendChild(tr);
  }
}

function showServices(snap) {
  const body = document.querySelector("#services tbody");
  clear(body);
  for (const svc of snap.services) {
    for (const port of svc.ports.length ? svc.ports : [null]) {
      const tr = el("tr", { "data-service": svc.ref });
      tr.appendChild(el("td", {}, svc.ref));
      tr.appendChild(el("td", {}, svc.type));
      tr.appendChild(el("td", {}, svc.cluster_ip || "-"));
      tr.appendChild(el("td", {}, port ? `${port.port}/${port.protocol}${port.node_port ? " node " + port.node_port : ""}` : "-"));
      const td = el("td", { class: "endpoints" });
      const endpoints = port ? port.endpoints : [];
      if (!endpoints.length) td.appendChild(el("span", { class: "muted" }, "none: connections are refused"));
      for (const e of endpoints) {
        td.appendChild(el("div", { class: e.ready ? "" : "muted", "data-endpoint": `${e.ip}:${e.port}` },
                          `${e.ip}:${e.port} ${e.target}${e.ready ? "" : " (not ready)"}`));
      }
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }
}

function showPods(snap) {
  const body = document.querySelector("#pods tbody");
  clear(body);
  const targets = document.getElementById("trace-targets");
  clear(targets);
  for (const pod of snap.pods) {
    const tr = el("tr", { "data-pod": pod.ref });
    for (const v of [pod.ref, pod.node, (pod.ips || []).join(", "),
                     Object.entries(pod.labels || {}).map(([k, v]) => `${k}=${v}`).join(", "), pod.ready ? "yes" : "no"]) {
      tr.appendChild(el("td", {}, v));
    }
    tr.addEventListener("click", () => select("pod", pod.ref));
    body.appendChild(tr);
    targets.appendChild(el("option", { value: pod.ref }));
  }
  for (const svc of snap.services) targets.appendChild(el("option", { value: svc.ref }));
}

function showHeader(snap) {
  document.getElementById("title").textContent = `podnet: ${snap.title}`;
  const counts = Object.entries(snap.counts || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  const store = snap.store || {};
  document.getElementById("summary").textContent =
    `${snap.nodes.length} nodes, ${counts} - store ${store.backend || "?"}${store.error ? " (not answering)" : ""}`;
  const list = document.getElementById("degraded");
  clear(list);
  for (const reason of snap.degraded || []) list.appendChild(el("li", {}, reason));
}

function render(snap) {
  state.snapshot = snap;
  showHeader(snap);
  drawTopology(snap);
  showDetails(snap);
  showServices(snap);
  showPods(snap);
}

// ---------------------------------------------------------------- flows

function side(ip, port, name) { return `${name || ip}${port === null || port === undefined ? "" : ":" + port}`; }

function addFlow(flow) {
  const body = document.querySelector("#flows tbody");
  const verdict = String(flow.verdict || "");
  const tr = el("tr", { class: `verdict-${verdict.replace(/[^a-z]/g, "")} fresh`, "data-verdict": verdict,
                        "data-rule": flow.rule || "" });
  const time = new Date(flow.time * 1000).toLocaleTimeString([], { hour12: false });
  const cells = [["time", time], ["node", flow.node], ["verdict", verdict],
                 ["src", side(flow.src, flow.sport, flow.src_name)], ["dst", side(flow.dst, flow.dport, flow.dst_name)],
                 ["proto", flow.protocol], ["rule", flow.rule]];
  for (const [cls, v] of cells) tr.appendChild(el("td", { class: cls }, v));
  body.insertBefore(tr, body.firstChild);
  while (body.children.length > MAX_FLOWS) body.removeChild(body.lastChild);
  state.flows += 1;
  document.getElementById("flow-count").textContent = `${state.flows} seen since the page opened`;
}

// ---------------------------------------------------------------- trace

function hopPoint(hop, index) {
  // a hop at a pod names it in `where` ("ns/pod (pod)", "veth -> ns/pod eth0"); else its node
  const pos = state.positions;
  const ref = String(hop.where || "").split(/\s+/).find((word) => Object.hasOwn(pos.pod, word));
  const p = (ref && pos.pod[ref]) || pos.node[hop.node];
  return p ? { x: p.hopX || p.x, y: p.y, index } : null;
}

function drawTrace(result) {
  const root = document.getElementById("topology");
  for (const old of root.querySelectorAll(".trace")) old.remove();
  for (const on of root.querySelectorAll(".on-path")) on.classList.remove("on-path");
  const hops = result.hops || [];
  const points = [];
  const src = result.src && state.positions.pod[result.src.name];
  if (src) points.push({ x: src.x, y: src.y, index: -1 });
  hops.forEach((hop, i) => {
    const p = hopPoint(hop, i);
    if (!p) return;
    const last = points[points.length - 1];
    if (last && Math.abs(last.x - p.x) < 1 && Math.abs(last.y - p.y) < 1) p.x += 8;  // same place: step aside
    points.push(p);
    const g = root.querySelector(`[data-node="${CSS.escape(hop.node || "")}"]`);
    if (g) g.classList.add("on-path");
  });
  const delivered = result.verdict === "delivered";
  const dst = result.dst && state.positions.pod[result.dst.name];
  if (dst && delivered) points.push({ x: dst.x, y: dst.y, index: hops.length });
  for (const end of [result.src, result.dst]) {
    const g = end && root.querySelector(`[data-pod="${CSS.escape(end.name || "")}"]`);
    if (g) g.classList.add("on-path");
  }
  const group = svg("g", { class: "trace" });
  if (points.length > 1) {
    group.appendChild(svg("polyline", { class: "trace-path", points: points.map((p) => `${p.x},${p.y}`).join(" ") }));
  }
  for (const p of points) {
    const died = p.index === result.died_at;
    const dot = svg("circle", { class: "trace-hop" + (died ? " died" : ""), cx: p.x, cy: p.y, r: died ? 8 : 5,
                                "data-hop": p.index });
    if (p.index >= 0 && p.index < hops.length) dot.appendChild(svg("title", {}, hopText(hops[p.index])));
    group.appendChild(dot);
  }
  root.appendChild(group);
}

function hopText(hop) { return `${hop.node || "?"} ${hop.kind || ""}: ${hop.detail || ""}`; }

function showTrace(result) {
  state.trace = result;
  const verdict = document.getElementById("trace-verdict");
  verdict.setAttribute("data-verdict", result.verdict);
  verdict.textContent = `${result.verdict}${result.reason ? ": " + result.reason : ""}`;
  const list = document.getElementById("trace-hops");
  clear(list);
  (result.hops || []).forEach((hop, i) => {
    const li = el("li", { class: i === result.died_at ? "died" : (hop.ok ? "ok" : "bad"), "data-hop": i });
    li.appendChild(el("span", { class: "what" }, `${hop.node || "?"} ${hop.kind || ""}`));
    li.appendChild(el("span", { class: "where" }, hop.where ? ` (${hop.where})` : ""));
    // confirmed: true/false after a real probe, null for a trace read from the kernel only
    const mark = hop.confirmed === true ? " [confirmed]" : hop.confirmed === false ? " [not confirmed]" : "";
    li.appendChild(el("div", {}, `${hop.detail || ""}${mark}`));
    list.appendChild(li);
  });
  drawTrace(result);
}

async function runTrace(event) {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const name of ["src", "dst", "port", "protocol"]) params.set(name, document.getElementById(`trace-${name}`).value);
  params.set("live", document.getElementById("trace-live").checked ? "yes" : "no");
  const verdict = document.getElementById("trace-verdict");
  verdict.setAttribute("data-verdict", "running");
  verdict.textContent = "tracing...";
  try {
    const reply = await fetch(`/api/trace?${params}`, { headers: { "X-Podnet-Dashboard": "1" } });
    const body = await reply.json();
    if (!reply.ok) {
      state.trace = null;
      clear(document.getElementById("trace-hops"));
      verdict.setAttribute("data-verdict", "error");
      verdict.textContent = `${body.error || reply.statusText}${body.details ? " (" + body.details + ")" : ""}`;
      if (state.snapshot) drawTopology(state.snapshot);
      return;
    }
    showTrace(body);
  } catch (err) {
    verdict.setAttribute("data-verdict", "error");
    verdict.textContent = `trace failed: ${err}`;
  }
}

// ---------------------------------------------------------------- start

function follow() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => { live.dataset.state = "live"; live.textContent = "live"; });
  events.addEventListener("error", () => { live.dataset.state = "lost"; live.textContent = "reconnecting"; });
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.addEventListener("flow", (e) => addFlow(JSON.parse(e.data)));
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("trace-form").addEventListener("submit", runTrace);
  fetch("/api/snapshot").then((r) => r.json()).then((snap) => { if (snap.nodes) render(snap); }).catch(() => {});
  follow();
});
