"use strict";
// The topology page: reads /topology and /metrics every REFRESH_MS, draws
// this node in the middle with its link to every other known node, and the
// traffic per service from two successive readings of the TCP counters.
// Paths are relative, so the page also works behind a path prefix.

const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
// The counters of the traffic table (names from the metrics contract).
const TRAFFIC = {
  edgemesh_tcp_sent_bytes_total: "sent",
  edgemesh_tcp_received_bytes_total: "received",
  edgemesh_tcp_connections_opened_total: "opened",
};
// Above this many nodes on the map, links lose their labels.
const LABELLED_MAX = 16;

let previous = null; // the last traffic reading: { at, rows }
let lastOk = null; // Date of the last complete refresh
let failingSince = null; // Date of the first failed refresh in a row
let lastError = "";
let generation = null;

// ---- reading ----

async function fetchText(path) {
  const resp = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(REFRESH_MS) });
  if (!resp.ok) throw new Error(`/${path} answered HTTP ${resp.status}`);
  return resp.text();
}

/** Traffic rows by service and port, summed over the contract's TCP counters. */
function parseTraffic(text) {
  const rows = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || !Object.hasOwn(TRAFFIC, m[1])) continue;
    const value = Number(m[3]);
    if (!Number.isFinite(value)) continue;
    const labels = parseLabels(m[2] || "");
    const service = labels.service ?? "", port = labels.port ?? "";
    const key = `${service}\u0000${port}`;
    if (!rows.has(key)) rows.set(key, { service, port, sent: 0, received: 0, opened: 0 });
    rows.get(key)[TRAFFIC[m[1]]] += value;
  }
  return rows;
}

function parseLabels(text) {
  const labels = {};
  for (const m of text.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
    labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }
  return labels;
}

/** Per-second change of a counter between two readings (null without an earlier one, or after a reset). */
function rate(now, before, field, seconds) {
  if (!before || seconds <= 0) return null;
  const delta = now[field] - before[field];
  return delta >= 0 ? delta / seconds : null;
}

// ---- formatting ----

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}

function ago(seconds) {
  if (seconds == null) return "—";
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d`;
}

function ms(value) {
  return value == null ? "—" : `${value < 10 ? value.toFixed(2) : value.toFixed(0)} ms`;
}

function shortId(id) {
  return id && id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id || "";
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function clock(date) {
  return date.toLocaleTimeString([], { hour12: false });
}

/** What a link is, in words: the kind, and its relay or why it is down. */
function linkWords(link) {
  if (link.kind === "relayed") return link.via ? `relayed via ${relayName(link.via)}` : "relayed";
  if (link.kind === "unknown") return "unknown (tunnel off)";
  return link.kind;
}

function relayName(via) {
  return via.node || shortId(via.peerId);
}

/** A peer that is no known node: a relay (it relays a link, or holds our reservation), else an agent. */
function peerRole(peer) {
  return peer.relaysLinks || peer.relayReserved ? "relay" : "agent, no Node object";
}

// ---- DOM ----

function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs)) if (v != null) node.setAttribute(k, v);
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// ---- the map ----

function drawMap(topology) {
  const map = document.getElementById("map");
  const self = topology.nodes.find((n) => n.link.kind === "local");
  const around = ring(topology, self);
  const labelled = around.length <= LABELLED_MAX;
  const { w, h, spots } = labelled ? ellipse(around.length) : rings(around.length);
  const [cx, cy] = [w / 2, h / 2];
  map.setAttribute("viewBox", `0 0 ${w.toFixed(0)} ${h.toFixed(0)}`);
  // Where each peer ID is drawn, so a relayed link can start at its relay.
  const at = new Map();
  around.forEach((item, i) => {
    [item.x, item.y] = [cx + spots[i].x, cy + spots[i].y];
    const id = item.node ? item.node.peerId : item.peer.peerId;
    if (id) at.set(id, item);
  });
  const links = svg("g", { class: "links" });
  const labels = svg("g", { class: "labels" });
  const boxes = svg("g", { class: "boxes" });
  for (const item of around) {
    const { x, y } = item;
    if (item.node) {
      const n = item.node;
      // A relayed link is drawn through its relay when the relay is on the map.
      const from = (n.link.kind === "relayed" && n.link.via && at.get(n.link.via.peerId)) || { x: cx, y: cy };
      const line = svg("line", { class: `link ${n.link.kind}`, x1: from.x, y1: from.y, x2: x, y2: y, "data-link-to": n.name, "data-link-kind": n.link.kind });
      line.append(svg("title", {}, `${topology.node} → ${n.name}: ${linkWords(n.link)}`));
      links.append(line);
      const label = n.link.rttMs != null ? ms(n.link.rttMs) : null;
      if (labelled && label) {
        labels.append(svg("text", { class: "link-label", x: (from.x + x) / 2, y: (from.y + y) / 2 - 5, "text-anchor": "middle" }, label));
      }
      boxes.append(box(x, y, n.name, linkWords(n.link), `node ${n.link.kind}`, { "data-node": n.name, "data-link-kind": n.link.kind, "data-via": n.link.via ? relayName(n.link.via) : null }, labelled));
    } else {
      const p = item.peer;
      links.append(svg("line", { class: `link peer ${p.connection}`, x1: cx, y1: cy, x2: x, y2: y }));
      const role = peerRole(p);
      boxes.append(box(x, y, p.node || shortId(p.peerId), `${role} · ${p.connection}`, "peer", { "data-peer": p.peerId, "data-link-kind": p.connection, "data-relay": String(role === "relay") }, labelled));
    }
  }
  const centre = box(cx, cy, self ? self.name : topology.node, topology.tunnel ? "this node" : "this node · tunnel off", "node local", { "data-node": topology.node, "data-link-kind": "local" }, true);
  map.replaceChildren(links, labels, boxes, centre);
  if (around.length === 0) {
    map.append(svg("text", { x: cx, y: cy + 60, "text-anchor": "middle", class: "link-label" }, "No other node is known (no Node objects in the snapshot)."));
  }
}

/** Spots (relative to this node) on one ellipse, for a labelled map. */
function ellipse(count) {
  const [w, h] = [720, 460];
  const spots = [...Array(count).keys()].map((i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / count;
    return { x: (w / 2 - 100) * Math.cos(angle), y: (h / 2 - 32) * Math.sin(angle) };
  });
  return { w, h, spots };
}

/** Spots on as many concentric ellipses as it takes for small boxes not to overlap; the map grows with them. */
function rings(count) {
  const spots = [];
  let [rx, ry, ring] = [170, 110, 0];
  for (; spots.length < count; rx += 105, ry += 34, ring++) {
    const perimeter = Math.PI * (3 * (rx + ry) - Math.sqrt((3 * rx + ry) * (rx + 3 * ry)));
    const n = Math.min(Math.floor(perimeter / 95), count - spots.length);
    for (let i = 0; i < n; i++) {
      const angle = -Math.PI / 2 + (2 * Math.PI * (i + (ring % 2) / 2)) / n;
      spots.push({ x: rx * Math.cos(angle), y: ry * Math.sin(angle) });
    }
  }
  return { w: 2 * (rx - 105 + 60), h: 2 * (ry - 34 + 25), spots };
}

/** The order around this node: the other nodes by name, each relay just before the first node it relays, other peers last. */
function ring(topology, self) {
  const peers = new Map(topology.others.map((p) => [p.peerId, p]));
  const out = [];
  for (const node of topology.nodes) {
    if (node === self) continue;
    const relay = node.link.via && peers.get(node.link.via.peerId);
    if (relay) {
      out.push({ peer: relay });
      peers.delete(relay.peerId);
    }
    out.push({ node });
  }
  for (const peer of peers.values()) out.push({ peer });
  return out;
}

/** A node's box: a name and a line under it (the link kind in words). */
function box(x, y, name, sub, cls, data, withSub) {
  const title = `${name}: ${sub}`;
  [name, sub] = [clip(name, withSub ? 22 : 10), clip(sub, 28)];
  const width = withSub ? Math.min(190, Math.max(96, 7.8 * name.length + 20, 6.3 * sub.length + 16)) : 7.6 * name.length + 12;
  const height = withSub ? 40 : 26;
  const g = svg("g", { class: cls, transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`, ...data });
  g.append(
    svg("title", {}, title),
    svg("rect", { x: -width / 2, y: -height / 2, width, height, rx: 6 }),
    svg("text", { class: "name", y: withSub ? -3 : 4, "text-anchor": "middle" }, name),
  );
  if (withSub) g.append(svg("text", { class: "sub", y: 12, "text-anchor": "middle" }, sub));
  return g;
}

// ---- the tables ----

function drawLinks(topology) {
  const rows = topology.nodes.filter((n) => n.link.kind !== "local").map((n) => {
    const detail = n.link.via
      ? el("div", { class: "via", title: n.link.via.address || "" }, `via ${relayName(n.link.via)}`)
      : n.link.reason ? el("div", { class: "reason" }, n.link.reason) : null;
    return el("tr", { "data-node": n.name, "data-link-kind": n.link.kind },
      el("td", {}, n.name, el("div", { class: "id", title: n.peerId || "" }, n.peerId ? shortId(n.peerId) : "no peer ID")),
      el("td", {}, el("span", { class: `kind ${n.link.kind}` }, n.link.kind), detail),
      el("td", {}, ms(n.link.rttMs)),
      el("td", {}, n.link.kind === "direct" || n.link.kind === "relayed" ? String(n.link.openStreams) : "—"),
      el("td", {}, ago(n.link.sinceSeconds)));
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No other node is known.")));
  document.getElementById("links-body").replaceChildren(...rows);

  const others = document.getElementById("others");
  if (topology.others.length === 0) { others.replaceChildren(); return; }
  others.replaceChildren(
    el("h3", {}, "Other peers ", el("small", {}, "(relays, and agents without a Node object)")),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["Peer", "Role", "Link", "RTT"].map((t) => el("th", { scope: "col" }, t)))),
      el("tbody", {}, ...topology.others.map((p) => el("tr", { "data-peer": p.peerId, "data-link-kind": p.connection },
        el("td", { title: p.peerId }, p.node || shortId(p.peerId)),
        el("td", { title: p.relayReserved ? "it holds a relay reservation for this node" : "" }, `${peerRole(p)}${p.relayReserved ? " (reserved)" : ""}`),
        el("td", {}, el("span", { class: `kind ${p.connection}` }, p.connection)),
        el("td", {}, ms(p.rttMs))))))));
}

function drawTraffic(reading, before) {
  const seconds = before ? (reading.at - before.at) / 1000 : 0;
  const rows = [...reading.rows.values()]
    .sort((a, b) => a.service.localeCompare(b.service) || Number(a.port) - Number(b.port))
    .map((row) => {
      const old = before?.rows.get(`${row.service}\u0000${row.port}`) ?? (before ? { sent: 0, received: 0, opened: 0 } : null);
      const per = (field, fmt) => { const r = rate(row, old, field, seconds); return r == null ? "…" : fmt(r); };
      return el("tr", { "data-service": row.service, "data-port": row.port, "data-sent-bytes": row.sent, "data-received-bytes": row.received, "data-connections": row.opened },
        el("td", {}, row.service), el("td", {}, row.port),
        el("td", { class: "num" }, per("sent", (r) => `${bytes(r)}/s`)),
        el("td", { class: "num" }, per("received", (r) => `${bytes(r)}/s`)),
        el("td", { class: "num" }, per("opened", (r) => r.toFixed(r < 10 ? 2 : 0))),
        el("td", { class: "num" }, bytes(row.sent)), el("td", { class: "num" }, bytes(row.received)),
        el("td", { class: "num" }, String(row.opened)));
    });
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No TCP traffic counted yet: /metrics has no edgemesh_tcp_sent_bytes_total, edgemesh_tcp_received_bytes_total or edgemesh_tcp_connections_opened_total series.")));
  }
  document.getElementById("traffic-body").replaceChildren(...rows);
}

// ---- status ----

function showStatus() {
  const body = document.body;
  const updated = document.getElementById("updated");
  const banner = document.getElementById("banner");
  const now = new Date();
  if (lastOk) {
    body.dataset.updated = lastOk.toISOString();
    updated.textContent = `Updated ${clock(lastOk)} (${ago((now - lastOk) / 1000)} ago) · generation ${generation} · every ${REFRESH_MS / 1000} s`;
  }
  if (failingSince) {
    body.dataset.state = "error";
    const shown = lastOk ? `Showing what it said at ${clock(lastOk)}.` : "Nothing to show yet.";
    banner.textContent = `The agent is not answering since ${clock(failingSince)} (${lastError}). ${shown} Retrying every ${REFRESH_MS / 1000} s.`;
    banner.hidden = false;
    if (!lastOk) updated.textContent = "No answer from the agent";
  } else if (lastOk) {
    body.dataset.state = "ok";
    banner.hidden = true;
  }
}

/** Why a refresh failed, in words. */
function failure(e) {
  if (e.name === "TimeoutError") return `no answer within ${REFRESH_MS / 1000} s`;
  // fetch() says only "Failed to fetch" when it cannot connect.
  if (e instanceof TypeError) return "cannot connect";
  return e.message;
}

async function refresh() {
  try {
    const [topologyText, metricsText] = await Promise.all([fetchText("topology"), fetchText("metrics")]);
    const topology = JSON.parse(topologyText);
    const reading = { at: performance.now(), rows: parseTraffic(metricsText) };
    document.title = `${topology.node} · edgemesh topology`;
    document.getElementById("self-name").textContent = `${topology.node}${topology.peerId ? "" : " (tunnel off)"}`;
    drawMap(topology);
    drawLinks(topology);
    drawTraffic(reading, previous);
    previous = reading;
    generation = topology.generation;
    lastOk = new Date();
    failingSince = null;
  } catch (e) {
    failingSince ??= new Date();
    lastError = failure(e);
  }
  showStatus();
  setTimeout(refresh, REFRESH_MS);
}

setInterval(showStatus, 1000);
refresh();
