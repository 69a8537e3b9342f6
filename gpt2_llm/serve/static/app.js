// The page of `main.py serve`: a completion view, a chat view and the model card, on the server's
// OpenAI-compatible API (POST /v1/completions and /v1/chat/completions with "stream": true, read as
// server-sent events; GET /model_card; GET /health). For a classifier (the model card names its
// classes) a classify view instead: POST /v1/classify, the label and a bar per class.
//
// Model output and everything a user types reach the page through textContent and text nodes only,
// never innerHTML: a model that writes "<img onerror=...>" shows those characters, nothing runs.
"use strict";

const KEY_STORAGE = "gpt2-toolkit-api-key"; // sessionStorage: forgotten when the tab closes
const $ = (id) => document.getElementById(id);

const state = {
  card: null,       // GET /model_card's answer
  modelId: null,    // the "model" field of requests
  running: null,    // the AbortController of the generation under way, or null
  chat: [],         // [{role, content}] of the chat view
  chatFrom: 0,      // the first message of state.chat still sent (older ones no longer fit)
  view: "completion", // or "chat", or "classify" (a classifier's only view)
};

// ---------------------------------------------------------------------------------------------
// Small DOM helpers: elements are built with text, never parsed from strings.

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "cls") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child); // strings become text nodes
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// ---------------------------------------------------------------------------------------------
// Talking to the server: the API key, error bodies, server-sent events.

class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code; // the OpenAI error body's code, such as "context_length_exceeded"
  }
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// One request; a non-2xx answer becomes an ApiError carrying the OpenAI error body's message.
async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    setHealth("offline");
    throw new ApiError(0, `The server did not answer (${err.message}). Is it still running?`);
  }
  if (response.ok) return response;
  const { message, code } = await errorMessage(response);
  if (response.status === 401) askForKey();
  throw new ApiError(response.status, message, code);
}

async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  let message = text.trim() || response.statusText;
  let code = null;
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code || null;
      if (body.error.param) message += ` (field: ${body.error.param})`;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch (_) { /* not JSON: the text as it came */ }
  if (response.status === 401) message = `The server wants an API key: ${message}`;
  return { message: `Error ${response.status}: ${message}`, code };
}

// The JSON payloads of a server-sent event stream, one per "data:" line, until "data: [DONE]".
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop(); // an incomplete line waits for the rest
    for (const line of lines) {
      if (!line.startsWith("data:")) continue; // blank separators, comments, keep-alives
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const payload = JSON.parse(data);
      if (payload.error) throw new ApiError(0, `Error: ${payload.error.message || JSON.stringify(payload.error)}`);
      yield payload;
    }
  }
}

// POST a streaming request; onText(piece) gets each new piece of text. Resolves to what the
// stats line shows; an abort (Stop) ends it early with what came so far.
async function stream(path, body, onText, controller) {
  const started = performance.now();
  const result = { tokens: 0, exact: false, finish: null, firstMs: null, seconds: 0, stopped: false };
  try {
    const response = await request(path, {
      method: "POST", headers: headers(true), signal: controller.signal,
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
    for await (const chunk of events(response)) {
      for (const choice of chunk.choices || []) {
        const piece = choice.text ?? (choice.delta && choice.delta.content) ?? "";
        if (piece) {
          if (result.firstMs === null) result.firstMs = performance.now() - started;
          result.tokens += 1; // about a token a chunk, until the usage chunk says exactly
          onText(piece);
        }
        if (choice.finish_reason) result.finish = choice.finish_reason;
      }
      if (chunk.usage) {
        result.tokens = chunk.usage.completion_tokens;
        result.exact = true;
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") throw err;
    result.stopped = true;
  } finally {
    result.seconds = (performance.now() - started) / 1000;
  }
  return result;
}

function describe(result) {
  const parts = [`${result.exact ? "" : "≈"}${result.tokens} tokens`];
  if (result.seconds > 0 && result.tokens > 0) {
    const rate = result.tokens / result.seconds;
    parts.push(`${rate >= 100 ? fmt.format(Math.round(rate)) : rate.toFixed(1)} tokens/s`);
  }
  if (result.firstMs !== null) parts.push(`first token ${Math.round(result.firstMs)} ms`);
  if (result.stopped) parts.push("stopped");
  else if (result.finish === "length") parts.push("max tokens");
  else if (result.finish === "stop") parts.push("end of text");
  return parts.join(" · ");
}

// ---------------------------------------------------------------------------------------------
// Sampling settings, read from the controls on each request.

function sampling() {
  const number = (id) => {
    const raw = $(id).value.trim();
    return raw === "" ? null : Number(raw);
  };
  const body = { model: state.modelId };
  const maxTokens = number("max-tokens");
  if (maxTokens !== null) body.max_tokens = maxTokens;
  const temperature = number("temperature");
  if (temperature !== null) body.temperature = temperature;
  const topP = number("top-p");
  if (topP !== null) body.top_p = topP;
  const topK = number("top-k");
  if (topK) body.top_k = topK; // 0 or empty: no top-k
  const seed = number("seed");
  if (seed !== null) body.seed = seed;
  return body;
}

function setRunning(controller) {
  state.running = controller;
  const busy = controller !== null;
  $("generate").disabled = busy;
  $("send").disabled = busy;
  $("classify").disabled = busy;
  $("stop").disabled = !busy;
  $("chat-stop").disabled = !busy;
  $("continue").disabled = busy || !$("output").querySelector(".generated");
}

function stop() {
  if (state.running) state.running.abort();
}

// ---------------------------------------------------------------------------------------------
// The completion view: the prompt in grey, the continuation streamed after it.

async function generate() {
  if (state.running) return;
  const prompt = $("prompt").value;
  const output = $("output");
  const generated = el("span", { cls: "generated streaming" });
  output.replaceChildren(el("span", { cls: "prompt-text", text: prompt }), generated);
  output.dataset.filled = "true";
  showError("");
  $("stats").textContent = "generating…";
  const controller = new AbortController();
  setRunning(controller);
  try {
    const result = await stream("/v1/completions", { ...sampling(), prompt },
      (piece) => { generated.append(piece); output.scrollTop = output.scrollHeight; }, controller);
    $("stats").textContent = describe(result);
  } catch (err) {
    if (!generated.textContent) output.replaceChildren(); // nothing came: back to the empty box
    $("stats").textContent = "";
    showError(err.message);
  } finally {
    generated.classList.remove("streaming");
    setRunning(null);
  }
}

function continueFromHere() {
  $("prompt").value = $("output").textContent;
  $("prompt").focus();
}

// ---------------------------------------------------------------------------------------------
// The chat view: the conversation is sent each turn, from state.chatFrom on; the answer streams into
// its bubble. When the server says the conversation no longer fits the model's context, the oldest
// exchange is left out and the request sent again, until it fits or only the question is left; the
// turns left out stay on the page, dimmed.

function bubble(role, content) {
  return el("div", { cls: `message ${role}` },
    el("div", { cls: "role", text: role === "user" ? "You" : role === "assistant" ? "Model" : role }),
    el("div", { cls: "content", text: content }));
}

function renderChat() {
  $("messages").replaceChildren(...state.chat.map((m) => bubble(m.role, m.content)));
  markLeftOut();
}

function markLeftOut() {
  [...$("messages").children].forEach((node, i) => {
    const out = i < state.chatFrom;
    node.classList.toggle("left-out", out);
    node.title = out ? "not sent any more: the conversation outgrew the model's context" : "";
  });
}

// The index of the next user message after `from`: the start of the conversation without its
// oldest exchange (null when the question being asked is all that is left).
function afterOldestExchange(from) {
  for (let i = from + 1; i < state.chat.length; i++) if (state.chat[i].role === "user") return i;
  return null;
}

async function send() {
  if (state.running) return;
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  showError("");
  state.chat.push({ role: "user", content: text });
  renderChat();
  const answer = bubble("assistant", "");
  const content = answer.querySelector(".content");
  content.classList.add("streaming");
  const list = $("messages");
  list.append(answer);
  list.scrollTop = list.scrollHeight;
  $("chat-stats").textContent = "answering…";
  const controller = new AbortController();
  setRunning(controller);
  const sentFrom = state.chatFrom;
  try {
    let started = false; // the answer's leading blank lines are left out
    const onText = (piece) => {
      if (!started) piece = piece.trimStart();
      started = started || piece !== "";
      content.append(piece);
      list.scrollTop = list.scrollHeight;
    };
    let result;
    for (;;) {
      try {
        const messages = state.chat.slice(state.chatFrom);
        result = await stream("/v1/chat/completions", { ...sampling(), messages }, onText, controller);
        break;
      } catch (err) {
        const next = afterOldestExchange(state.chatFrom);
        if (!(err instanceof ApiError) || err.code !== "context_length_exceeded" || next === null) throw err;
        state.chatFrom = next; // nothing was streamed yet: the server refuses before it starts
        markLeftOut();
      }
    }
    state.chat.push({ role: "assistant", content: content.textContent });
    const leftOut = state.chatFrom ? ` · ${state.chatFrom} earlier messages not sent (the context is full)` : "";
    $("chat-stats").textContent = describe(result) + leftOut;
  } catch (err) {
    // Unanswered: the question leaves the conversation and goes back in the box, to send again.
    state.chatFrom = sentFrom;
    state.chat.pop();
    answer.remove();
    renderChat();
    $("chat-input").value = text;
    $("chat-stats").textContent = "";
    showError(err.message);
  } finally {
    content.classList.remove("streaming");
    setRunning(null);
  }
}

function clearChat() {
  if (state.running) return;
  state.chat = [];
  state.chatFrom = 0;
  renderChat();
  $("chat-stats").textContent = "";
}

function showView(view) {
  state.view = view;
  for (const name of ["completion", "chat", "classify"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`tab-${name}`).setAttribute("aria-selected", String(name === view));
  }
  $({ chat: "chat-input", classify: "classify-input" }[view] || "prompt").focus();
}

// ---------------------------------------------------------------------------------------------
// The classify view (a classifier): one text in, its label and each class's probability as a bar.

const percent = (p) => (p >= 0.001 || p === 0 ? `${(100 * p).toFixed(1)}%` : "<0.1%");

async function classify() {
  if (state.running) return;
  const text = $("classify-input").value;
  showError("");
  $("classify-stats").textContent = "classifying…";
  const controller = new AbortController();
  setRunning(controller);
  const started = performance.now();
  try {
    const response = await request("/v1/classify", {
      method: "POST", headers: headers(true), signal: controller.signal,
      body: JSON.stringify({ model: state.modelId, input: text }),
    });
    const answer = await response.json();
    showClassification(answer.data[0]);
    const tokens = answer.usage.prompt_tokens;
    const context = state.card && state.card.architecture && state.card.architecture.block_size;
    const cut = tokens === context ? " (the beginning: the text was cut to the context)" : "";
    $("classify-stats").textContent = `${fmt.format(tokens)} tokens${cut} · ${Math.round(performance.now() - started)} ms`;
  } catch (err) {
    $("classify-stats").textContent = "";
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    setRunning(null);
  }
}

// The label on top, then a row per class in the model's order: its name, a bar as long as its
// probability, and the figure (the exact value in data-probability and the row's title).
function showClassification(item) {
  const box = $("classification");
  const rows = Object.entries(item.probabilities).map(([name, p]) => {
    const fill = el("span", { cls: "fill" });
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    return el("div", { cls: name === item.label ? "class-row chosen" : "class-row", "data-probability": String(p),
                       title: `${name}: ${p}` },
      el("span", { cls: "class-name", text: name }),
      el("span", { cls: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": String(p),
                   "aria-label": name }, fill),
      el("span", { cls: "class-p", text: percent(p) }));
  });
  box.replaceChildren(
    el("div", { cls: "class-label" }, el("span", { cls: "muted", text: "Label " }),
      el("strong", { id: "class-label", text: item.label }),
      el("span", { cls: "muted", text: ` · ${percent(item.probabilities[item.label])}` })),
    el("div", { cls: "class-rows" }, ...rows));
}

// ---------------------------------------------------------------------------------------------
// The model card: facts, then the training curves drawn as an SVG.

const fmt = new Intl.NumberFormat("en-US");

function short(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

function fact(term, value, title) {
  const dd = el("dd", {}, value);
  if (title) dd.title = title;
  return [el("dt", { text: term }), dd];
}

function renderCard(card) {
  const a = card.architecture || {};
  const t = card.tokenizer || {};
  const rows = [];
  rows.push(fact("Parameters", el("span", {},
    el("strong", { id: "param-count", text: fmt.format(card.parameters) }),
    el("span", { cls: "muted", text: ` (${short(card.parameters)})` }))));
  rows.push(fact("Shape", `${a.n_layer} layers · ${a.n_head} heads · ${a.n_embd} wide`));
  rows.push(fact("Context", `${fmt.format(a.block_size)} tokens`));
  rows.push(fact("Positions", a.rope ? "rotary (RoPE)" : "learned"));
  const names = { layernorm: "LayerNorm", rmsnorm: "RMSNorm", gelu: "GELU", swiglu: "SwiGLU", relu2: "ReLU²" };
  const options = [names[a.norm] || a.norm, a.mlp && `${names[a.mlp] || a.mlp} MLP`];
  if (a.kv_heads && a.kv_heads !== a.n_head) options.push(`${a.kv_heads} KV heads`);
  if (a.qk_norm) options.push("QK-norm");
  rows.push(fact("Blocks", options.filter(Boolean).join(" · ")));
  rows.push(fact("Tokenizer", `${fmt.format(t.vocab_size ?? a.vocab_size)} tokens, byte-level BPE`));
  const named = { gpt2: "GPT-2's", gpt4: "GPT-4's" }[t.pattern];
  if (named) rows.push(fact("Split pattern", named));
  else if (t.pattern) rows.push(fact("Split pattern", el("code", { cls: "clip", text: t.pattern }), t.pattern));
  const special = Array.isArray(t.special_tokens) ? t.special_tokens : Object.keys(t.special_tokens || {});
  if (special.length) rows.push(fact("Special tokens", el("code", { text: special.join(" ") })));
  if (card.classes) rows.push(fact("Classes", `${card.classes.length}: ${card.classes.join(", ")}`));
  else rows.push(fact("Chat template", card.chat_template || "none"));
  const tr = card.training;
  if (tr) {
    if (tr.step != null) rows.push(fact("Training step", fmt.format(tr.step)));
    if (tr.tokens != null) rows.push(fact("Tokens seen", short(tr.tokens)));
    if (tr.best_val_loss != null) {
      rows.push(fact("Best val loss", el("span", {}, el("strong", { id: "best-val-loss", text: tr.best_val_loss.toFixed(4) }),
        el("span", { cls: "muted", text: ` (perplexity ${Math.exp(tr.best_val_loss).toFixed(2)})` }))));
    }
  }
  $("facts").replaceChildren(...rows.flat());
  $("model-name").textContent = `${card.id} · ${card.source}`;
  $("model-name").title = `the model this server loaded, from a ${card.source}`;
  drawChart($("chart"), card.metrics);
  const max = $("max-tokens");
  if (a.block_size) {
    max.max = a.block_size;
    if (Number(max.value) > a.block_size) max.value = a.block_size;
  }
}

// Round steps for axis ticks: 1, 2 or 5 times a power of ten, about `count` of them.
function ticks(lo, hi, count) {
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

const CHART = { W: 340, H: 220, left: 44, right: 10, top: 12, bottom: 36 }; // the SVG's size and margins

function drawChart(box, metrics) {
  const train = metrics && metrics.train && metrics.train.step ? metrics.train : { step: [], loss: [] };
  const val = metrics && metrics.eval && metrics.eval.step ? metrics.eval : { step: [], val_loss: [] };
  const series = [
    { name: "train loss", cls: "train", xs: train.step, ys: train.loss },
    { name: "val loss", cls: "val", xs: val.step, ys: val.val_loss },
  ].filter((s) => s.xs.length > 0);
  if (!series.length) {
    box.replaceChildren(el("p", { cls: "muted", text: "No training log." }));
    return;
  }
  const { W, H, left, right, top, bottom } = CHART;
  const xsAll = series.flatMap((s) => s.xs), ysAll = series.flatMap((s) => s.ys).filter(Number.isFinite);
  const x0 = Math.min(0, ...xsAll), x1 = Math.max(...xsAll, x0 + 1);
  let y0 = Math.min(...ysAll), y1 = Math.max(...ysAll);
  const pad = (y1 - y0) * 0.06 || 0.5;
  y0 -= pad; y1 += pad;
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (W - left - right);
  const py = (y) => top + (1 - (y - y0) / (y1 - y0)) * (H - top - bottom);

  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "training and validation loss against step" });
  for (const y of ticks(y0, y1, 5)) {
    chart.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: py(y), y2: py(y) }));
    chart.append(svg("text", { class: "tick", x: left - 6, y: py(y) + 3, "text-anchor": "end" }, Number(y.toFixed(3)).toString()));
  }
  for (const x of ticks(x0, x1, 5)) {
    chart.append(svg("line", { class: "axis", x1: px(x), x2: px(x), y1: H - bottom, y2: H - bottom + 4 }));
    chart.append(svg("text", { class: "tick", x: px(x), y: H - bottom + 15, "text-anchor": "middle" }, x >= 1e4 ? short(x) : fmt.format(x)));
  }
  chart.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }));
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: H - bottom }));
  chart.append(svg("text", { class: "label", x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle" }, "step"));
  chart.append(svg("text", { class: "label", x: 11, y: (top + H - bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 11 ${(top + H - bottom) / 2})` }, "loss"));

  for (const s of series) {
    const points = s.xs.map((x, i) => [x, s.ys[i]]).filter(([, y]) => Number.isFinite(y));
    const d = points.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
    chart.append(svg("path", { class: `line ${s.cls}`, d }));
    if (s.cls === "val") {
      for (const [x, y] of points.length <= 24 ? points : []) { // dots while they stay apart
        const dot = svg("circle", { class: `dot ${s.cls}`, cx: px(x), cy: py(y), r: 2.6 });
        dot.append(svg("title", {}, `step ${fmt.format(x)}: val loss ${y.toFixed(4)}`));
        chart.append(dot);
      }
      const [lastX, lastY] = points[points.length - 1]; // the latest value, written above its point
      chart.append(svg("text", { class: "value", x: px(lastX) - 2, y: py(lastY) - 7, "text-anchor": "end" }, lastY.toFixed(3)));
    }
  }
  // The legend, top right, one row per series, on a backing that hides the grid and the rule.
  chart.append(svg("rect", { class: "legend-box", x: W - right - 90, y: top, width: 88, height: 15 * series.length + 3 }));
  series.forEach((s, i) => {
    const y = top + 8 + i * 15, x = W - right - 86;
    chart.append(svg("line", { class: `line ${s.cls}`, x1: x, x2: x + 16, y1: y, y2: y }));
    chart.append(svg("text", { class: "legend", x: x + 21, y: y + 3.5 }, s.name));
  });
  box.replaceChildren(chart, readout(chart, series, px, x0, x1));
}

// Under the chart: the values at the step under the pointer, and a rule across the plot there.
function readout(chart, series, px, x0, x1) {
  const { W, H, left, right, top, bottom } = CHART;
  const line = el("p", { cls: "readout muted", text: "Point at the chart to read the losses." });
  const rule = svg("line", { class: "rule", y1: top, y2: H - bottom, visibility: "hidden" });
  chart.prepend(rule); // beneath the lines and the legend
  const nearest = (xs, x) => xs.reduce((best, v, i) => (Math.abs(v - x) < Math.abs(xs[best] - x) ? i : best), 0);
  chart.addEventListener("mousemove", (event) => {
    const box = chart.getBoundingClientRect();
    const share = ((event.clientX - box.left) * (W / box.width) - left) / (W - left - right); // 0..1 across the plot
    const x = x0 + Math.min(1, Math.max(0, share)) * (x1 - x0);
    const step = series[0].xs[nearest(series[0].xs, x)];
    const values = series.map((s) => `${s.name} ${s.ys[nearest(s.xs, step)].toFixed(3)}`);
    line.textContent = [`step ${fmt.format(step)}`, ...values].join(" · ");
    rule.setAttribute("x1", px(step));
    rule.setAttribute("x2", px(step));
    rule.setAttribute("visibility", "visible");
  });
  chart.addEventListener("mouseleave", () => rule.setAttribute("visibility", "hidden"));
  return line;
}

// ---------------------------------------------------------------------------------------------
// Start-up: wait for /health, read the model card, pick the view.

function setHealth(status) {
  const badge = $("health");
  badge.dataset.state = status;
  badge.textContent = status;
}

async function waitForHealth() {
  for (;;) {
    try {
      const response = await fetch("/health");
      // 401: a server that guards /health too is up; the model card will ask for the key.
      if (response.ok || response.status === 401) { setHealth("ready"); return; }
      setHealth("loading");
    } catch (_) {
      setHealth("offline");
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function loadCard() {
  try {
    const card = await (await request("/model_card", { headers: headers(false) })).json();
    state.card = card;
    state.modelId = card.id;
    renderCard(card);
    const classifier = Array.isArray(card.classes);
    for (const name of ["completion", "chat"]) $(`tab-${name}`).hidden = classifier;
    $("tab-classify").hidden = !classifier;
    $("sampling").hidden = classifier;
    if (classifier) {
      $("chat-note").textContent = `a classifier of ${card.classes.length} classes: it generates no text`;
      showView("classify");
    } else {
      $("chat-note").textContent = card.chat_template
        ? `chat template: ${card.chat_template}`
        : "no chat template: chat uses the server's plain one";
      showView(card.chat_template ? "chat" : "completion");
    }
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

function askForKey() {
  const form = $("key-form");
  form.hidden = false;
  $("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  $("key-form").hidden = true;
  showError("");
  if (!state.card) loadCard();
}

function bindKeys() {
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("classify-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); classify(); }
  });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") stop();
  });
}

function init() {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("continue").addEventListener("click", continueFromHere);
  $("send").addEventListener("click", send);
  $("chat-stop").addEventListener("click", stop);
  $("chat-clear").addEventListener("click", clearChat);
  $("classify").addEventListener("click", classify);
  $("key-form").addEventListener("submit", useKey);
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  bindKeys();
  waitForHealth().then(loadCard);
}

document.addEventListener("DOMContentLoaded", init);
