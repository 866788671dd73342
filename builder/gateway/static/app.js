// edge-llm chat page: streams replies from /v1/chat/completions (SSE over fetch),
// renders Markdown (marked, sanitized by DOMPurify) with highlighted code (highlight.js).
"use strict";

const KEY_STORE = "edge-llm-api-key";
const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] of this conversation
let controller = null;       // AbortController of the reply being streamed
let modelId = null;

function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }

function askKey(message) {
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  $("key-input").value = "";
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key-input").focus();
}

async function api(path, options = {}) {
  const headers = { "Authorization": "Bearer " + apiKey(), ...(options.headers || {}) };
  return fetch(path, { ...options, headers });
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

async function connect() {
  if (!apiKey()) { askKey(); return; }
  const resp = await api("/v1/appliance");
  if (resp.status === 401) { askKey("That key was not accepted."); return; }
  if (!resp.ok) { $("appliance").textContent = await errorText(resp); return; }
  const a = await resp.json();
  modelId = a.model_id;
  const bits = [a.model_id, a.quant, a.engine, a.release_id && "release " + a.release_id];
  $("appliance").textContent = bits.filter(Boolean).join(" · ");
  $("prompt").focus();
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.textContent = text;
  $("messages").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function renderMarkdown(el, text, stats) {
  el.innerHTML = DOMPurify.sanitize(marked.parse(text));
  el.querySelectorAll("pre code").forEach((block) => hljs.highlightElement(block));
  if (stats) {
    const s = document.createElement("span");
    s.className = "stats";
    s.textContent = stats;
    el.appendChild(s);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("prompt").disabled = busy;
}

function statsLine(t0, tFirst, tLast, tokens, note) {
  const parts = [];
  if (tFirst) parts.push(`TTFT ${Math.round(tFirst - t0)} ms`);
  if (tokens > 1 && tLast > tFirst) {
    parts.push(`${((tokens - 1) * 1000 / (tLast - tFirst)).toFixed(1)} tok/s`);
  }
  parts.push(`${tokens} tokens`);
  if (note) parts.push(note);
  return parts.join(" · ");
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const el = addMessage("assistant", "…");
  setBusy(true);
  $("status").textContent = "waiting for the first token…";
  controller = new AbortController();
  const t0 = performance.now();
  let reply = "", tokens = 0, tFirst = 0, tLast = 0, note = "", failed = false;
  let frame = 0;  // a repaint waiting for the next animation frame
  const paint = () => {
    frame = 0;
    renderMarkdown(el, reply);
    el.scrollIntoView({ block: "end" });
  };
  try {
    const resp = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: modelId || undefined, messages: history, stream: true }),
      signal: controller.signal,
    });
    if (resp.status === 401) { askKey("The key was refused; enter it again."); throw new Error("unauthorized"); }
    if (!resp.ok) {
      const retry = resp.headers.get("Retry-After");
      throw new Error(await errorText(resp) + (retry ? ` (retry in ${retry} s)` : ""));
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const obj = JSON.parse(data);
        if (obj.error) throw new Error(obj.error.message);
        const piece = obj.choices && obj.choices[0] && obj.choices[0].delta
          && obj.choices[0].delta.content;
        if (piece) {
          tLast = performance.now();
          if (!tFirst) { tFirst = tLast; $("status").textContent = "streaming…"; }
          tokens += 1;
          reply += piece;
          if (!frame) frame = requestAnimationFrame(paint);
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") note = "stopped";
    else { failed = true; note = err.message; }
  } finally {
    // a repaint still queued would redraw the reply without its stats line
    if (frame) cancelAnimationFrame(frame);
    controller = null;
    setBusy(false);
  }
  if (reply) history.push({ role: "assistant", content: reply });
  else history.pop();  // nothing came back: let the question be asked again
  renderMarkdown(el, reply || (failed ? "" : "(no reply)"), statsLine(t0, tFirst, tLast, tokens, note));
  if (failed) el.classList.add("error");
  $("status").textContent = failed ? "error: " + note : "";
  $("prompt").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  marked.setOptions({ gfm: true, breaks: false });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    $("messages").replaceChildren();
    $("prompt").focus();
  });
  $("change-key").addEventListener("click", () => askKey());
  $("key-form").addEventListener("submit", () => {
    localStorage.setItem(KEY_STORE, $("key-input").value.trim());
    connect();
  });
  connect();
});
