// The swarm dashboard: polls /v1/swarm/dashboard and draws the peers, the curves and the serving figures; the
// chat box streams from /v1/chat/completions. Every string from the node (and so from peers) goes into the page
// as text (textContent, attribute values), never as markup.
"use strict";

const POLL_MS = 2000;
const MAX_ANSWER_CHARS = 20000;
const CHAT_MAX_TOKENS = 64; // a short answer: the box is for trying the swarm, not for long work
const KEY_STORE = "swarm-api-key";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const SVG_NS = "http://www.w3.org/2000/svg";

let apiKey = sessionStorage.getItem(KEY_STORE) || "";
const peerColors = new Map();

function $(id) {
  return document.getElementById(id);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey) headers["Authorization"] = "Bearer " + apiKey;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) throw new Unauthorized("this node needs an API key");
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(err) {
  const box = $("error");
  if (err instanceof Unauthorized) {
    $("key-form").hidden = false;
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.textContent = String(err && err.message ? err.message : err);
}

function colorOf(peerId) {
  if (!peerColors.has(peerId)) peerColors.set(peerId, COLORS[peerColors.size % COLORS.length]);
  return peerColors.get(peerId);
}

function short(peerId) {
  return peerId.length > 10 ? "…" + peerId.slice(-8) : peerId;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits);
}

function renderPeers(data) {
  const body = $("peers").querySelector("tbody");
  const rows = data.peers.map((p) => {
    const tr = el("tr", p.self ? "self" : "peer-row");
    tr.dataset.peer = p.peer_id;
    const load = p.load || {};
    const t = p.training || {};
    const cells = [
      [p.peer_id, "peer"],
      [p.roles.join(", ") || "peer"],
      [p.device_name ? p.device + " · " + p.device_name : p.device],
      [fmt(load.running, 0) + " running, " + fmt(load.waiting, 0) + " waiting"],
      [p.model_id || "–", "model"],
      [p.version, "version"],
      [fmt(p.age_s, 1) + " s"],
      [t.step ? "round " + fmt(t.round, 0) + ", step " + fmt(t.step, 0) + ", loss " + fmt(t.loss, 3) : "–"],
    ];
    for (const [text, cls] of cells) {
      const td = el("td", cls, text);
      td.title = text;
      tr.appendChild(td);
    }
    return tr;
  });
  body.replaceChildren(...rows);
  $("peer-count").textContent = "(" + data.peers.length + ")";
}

function renderChart(chart, legend, curves, emptyText) {
  const W = 600, H = 260, L = 48, R = 12, T = 12, B = 28;
  const entries = Object.entries(curves).filter(([, pts]) => pts.length > 0);
  const nodes = [];
  if (entries.length === 0) {
    nodes.push(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, emptyText));
    chart.replaceChildren(...nodes);
    legend.replaceChildren();
    chart.dataset.curves = "0";
    return;
  }
  const xs = entries.flatMap(([, pts]) => pts.map((p) => p[0]));
  const ys = entries.flatMap(([, pts]) => pts.map((p) => p[1]));
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  nodes.push(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  nodes.push(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    nodes.push(svg("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, fmt(y, 3)));
  }
  for (const x of [x0, x1]) {
    nodes.push(svg("text", { x: sx(x), y: H - 8, "text-anchor": "middle", class: "tick" }, fmt(x, 0)));
  }
  const items = [];
  for (const [peer, pts] of entries) {
    const points = pts.map(([x, y]) => sx(x).toFixed(1) + "," + sy(y).toFixed(1)).join(" ");
    const line = svg("polyline", { points, class: "curve", stroke: colorOf(peer), "data-peer": peer });
    line.appendChild(svg("title", {}, peer));
    nodes.push(line);
    const item = el("span", "legend-item");
    const swatch = el("span", "swatch");
    swatch.style.background = colorOf(peer);
    item.append(swatch, document.createTextNode(short(peer) + " (" + pts.length + " pts)"));
    item.title = peer;
    items.push(item);
  }
  chart.replaceChildren(...nodes);
  legend.replaceChildren(...items);
  chart.dataset.curves = String(entries.length);
}

function renderServing(serving) {
  const box = $("serving");
  if (!serving) {
    box.replaceChildren(el("dd", "muted", "This node does not serve a model."));
    return;
  }
  const figures = [
    ["model", serving.model_id],
    ["requests", serving.requests],
    ["refused", serving.refused],
    ["tokens/s", fmt(serving.tokens_per_s, 1)],
    ["TTFT (mean)", serving.ttft_ms === null ? "–" : fmt(serving.ttft_ms, 1) + " ms"],
    ["TPOT (mean)", serving.tpot_ms === null ? "–" : fmt(serving.tpot_ms, 1) + " ms"],
    ["inter-token (mean)", serving.itl_ms === null ? "–" : fmt(serving.itl_ms, 1) + " ms"],
    ["end-to-end (mean)", serving.e2e_ms === null ? "–" : fmt(serving.e2e_ms, 0) + " ms"],
    ["running", serving.running],
    ["waiting", serving.waiting],
    ["KV cache", fmt(100 * serving.kv_usage, 1) + " %"],
    ["generated tokens", serving.generation_tokens],
  ];
  const nodes = [];
  for (const [label, value] of figures) {
    const cell = el("div");
    cell.append(el("dt", null, label), el("dd", null, value));
    cell.dataset.figure = label;
    nodes.push(cell);
  }
  box.replaceChildren(...nodes);
}

async function poll() {
  try {
    const data = await (await api("/v1/swarm/dashboard")).json();
    $("node-id").textContent = data.self;
    const health = $("health");
    health.textContent = data.health;
    health.className = "badge " + data.health;
    renderPeers(data);
    renderChart($("loss-chart"), $("loss-legend"), data.loss, "no training peer has reported a loss yet");
    renderChart($("reward-chart"), $("reward-legend"), data.reward, "no RL peer has reported a reward yet");
    renderServing(data.serving);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("error").hidden = true;
    document.body.dataset.state = "ok";
    if ($("chat-model").options.length === 0) loadModels();
  } catch (err) {
    showError(err);
    document.body.dataset.state = "error";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function loadModels() {
  try {
    const models = (await (await api("/v1/models")).json()).data || [];
    const select = $("chat-model");
    select.replaceChildren(...models.map((m) => {
      const option = el("option", null, m.id);
      option.value = m.id;
      return option;
    }));
  } catch (err) {
    showError(err);
  }
}

// Reads an SSE body and calls onData with each parsed `data:` JSON object until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return;
        onData(JSON.parse(payload));
      }
    }
  }
}

async function sendChat(event) {
  event.preventDefault();
  const answer = $("chat-answer");
  const meta = $("chat-meta");
  const button = $("chat-send");
  const model = $("chat-model").value;
  if (!model) {
    meta.textContent = "no model is served in this swarm yet";
    return;
  }
  button.disabled = true;
  answer.textContent = "";
  answer.dataset.status = "streaming";
  answer.dataset.chunks = "0";
  meta.textContent = "";
  const started = performance.now();
  let firstMs = null;
  let finish = null;
  let chunks = 0;
  try {
    const body = {
      model,
      messages: [{ role: "user", content: $("chat-input").value }],
      max_tokens: CHAT_MAX_TOKENS,
      stream: true,
    };
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    await readEvents(response, (data) => {
      if (data.error) throw new Error(data.error.message);
      for (const choice of data.choices || []) {
        const text = (choice.delta && choice.delta.content) || "";
        if (text) {
          if (firstMs === null) firstMs = performance.now() - started;
          chunks += 1;
          answer.textContent = (answer.textContent + text).slice(0, MAX_ANSWER_CHARS);
          answer.dataset.chunks = String(chunks);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    answer.dataset.status = "done";
    answer.dataset.finish = finish || "";
    meta.textContent = chunks + " chunks, first after " + fmt(firstMs, 0) + " ms, finish: " + (finish || "–");
  } catch (err) {
    answer.dataset.status = "error";
    showError(err);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("key-input").value.trim();
    sessionStorage.setItem(KEY_STORE, apiKey);
    $("key-form").hidden = true;
    loadModels();
  });
  $("chat-form").addEventListener("submit", sendChat);
  poll();
});
