// The playground: streams /v1/completions (server-sent events) and colours each character by the value of
// one hidden unit after the model read it: white at 0, red at +1, blue at -1 (a cell state c, unbounded, is
// shown through tanh). No build step, no dependencies: this file is served as it is.
"use strict";

const $ = (id) => document.getElementById(id);

// State the page shows; `window.playground` lets a test (or a curious user) read it.
const playground = { text: "", values: [], unit: "", finish: null, controller: null, model: null };
window.playground = playground;

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

// The colour of a value: white at 0, red at +1, blue at -1 (the analysis pages' mapping; c through tanh).
function shown(value, kind) {
  return Math.max(-1, Math.min(1, kind === "c" ? Math.tanh(value) : value));
}
function colour(value, kind) {
  const v = shown(value, kind);
  const fade = Math.round(255 * (1 - Math.abs(v)));
  return v >= 0 ? `rgb(255, ${fade}, ${fade})` : `rgb(${fade}, ${fade}, 255)`;
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

// The picker: the model's interpretable units first (from its manifest), then every unit by index.
function fillUnits(card) {
  const info = card.charrnn;
  const select = $("unit");
  if (info.units.length) {
    const group = document.createElement("optgroup");
    group.label = "Interpretable units (charrnn analyze units)";
    for (const u of info.units) {
      const sign = u.sign > 0 ? "rises" : "falls";
      const label = `${u.unit}: ${u.tracks} (${u.sign > 0 ? "+" : "−"}, ${u.metric} ${u.score.toFixed(3)})`;
      const o = option(u.unit, label);
      o.dataset.note = `${u.unit} ${sign} with “${u.tracks}”: held-out ${u.metric.toUpperCase()} ${u.score.toFixed(3)}`;
      group.appendChild(o);
    }
    select.appendChild(group);
  }
  for (const kind of info.states) {
    for (let layer = 0; layer < info.layers; layer++) {
      const group = document.createElement("optgroup");
      group.label = `${kind === "c" ? "cell state c" : "hidden state h"}, layer ${layer}`;
      for (let i = 0; i < info.hidden_size; i++) group.appendChild(option(`${kind}${layer}:${i}`, `${kind}${layer}:${i}`));
      select.appendChild(group);
    }
  }
  describeUnit();
}

function describeUnit() {
  const o = $("unit").selectedOptions[0];
  const kind = o ? o.value[0] : "h";
  $("unit-note").textContent = o && o.dataset.note ? o.dataset.note : "";
  $("legend-note").textContent = kind === "c" ? "(tanh of the cell state)" : "";
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  const card = body.data[0];
  playground.model = card;
  const info = card.charrnn;
  $("model").textContent = `${card.id} ${info.version}: ${info.cell} ${info.layers}×${info.hidden_size}`;
  $("length").max = info.limits.max_tokens;
  fillUnits(card);
}

function drawSparkline() {
  const values = playground.values;
  const kind = playground.unit[0];
  const n = values.length;
  const points = values.map((v, i) => `${n > 1 ? (i / (n - 1)) * 1000 : 0},${(50 - 48 * shown(v, kind)).toFixed(1)}`);
  $("spark").setAttribute("points", points.join(" "));
}

function append(text, values) {
  const kind = playground.unit[0];
  const chars = Array.from(text); // code points, as the server counts them
  const fragment = document.createDocumentFragment();
  chars.forEach((c, i) => {
    const span = document.createElement("span");
    const v = values[i];
    span.textContent = c === "\n" ? "↵\n" : c;
    span.dataset.v = v;
    span.style.backgroundColor = colour(v, kind);
    span.title = `${playground.unit} = ${v.toFixed(4)}`;
    fragment.appendChild(span);
  });
  $("output").appendChild(fragment);
  playground.text += text;
  playground.values.push(...values);
  drawSparkline();
}

// One server-sent event: `data: {json}` or `data: [DONE]`.
function onEvent(event, started) {
  const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
  if (!data || data === "[DONE]") return;
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  const choice = chunk.choices[0];
  const ext = chunk.charrnn || {};
  append(choice.text, ext.values || []);
  if (choice.finish_reason) playground.finish = choice.finish_reason;
  const seconds = (performance.now() - started) / 1000;
  const rate = seconds > 0 ? Math.round(playground.text.length / seconds) : 0;
  const done = playground.finish ? `, finished: ${playground.finish}` : "";
  setStatus(`${Array.from(playground.text).length} characters, ${rate}/s${done}`);
}

async function generate(e) {
  e.preventDefault();
  const unit = $("unit").value;
  Object.assign(playground, { text: "", values: [], unit, finish: null, controller: new AbortController() });
  $("output").replaceChildren($("prompt-echo"));
  $("prompt-echo").textContent = $("prompt").value;
  drawSparkline();
  const body = {
    model: playground.model ? playground.model.id : undefined,
    prompt: $("prompt").value,
    max_tokens: Number($("length").value),
    temperature: Number($("temperature").value),
    stream: true,
    charrnn: { watch: [unit] },
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const started = performance.now();
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: playground.controller.signal,
    });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        onEvent(buffer.slice(0, end), started);
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (err) {
    if (err.name === "AbortError") {
      playground.finish = "stopped";
      setStatus(`stopped after ${Array.from(playground.text).length} characters`);
    } else {
      setStatus(err.message, true);
    }
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    playground.controller = null;
  }
}

$("controls").addEventListener("submit", generate);
$("stop").addEventListener("click", () => playground.controller && playground.controller.abort());
$("unit").addEventListener("change", describeUnit);
$("token").addEventListener("change", () => { if (!playground.model) loadModel().catch((e) => setStatus(e.message, true)); });
loadModel().catch((err) => setStatus(`cannot load the model: ${err.message}`, true));
