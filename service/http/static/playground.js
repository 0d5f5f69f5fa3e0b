// The playground: streams /v1/completions (server-sent events) and colours each character by the value of
// one hidden unit after the model read it, with the terminal's map (`charrnn generate --watch`): blue
// negative, near-white at 0, red positive, text in black or white, whichever reads better. No build step,
// no dependencies: this file is served as it is.
"use strict";

const $ = (id) => document.getElementById(id);

// State the page shows; `window.playground` lets a test (or a curious user) read it.
const playground = { text: "", values: [], unit: "", scale: 0, finish: null, controller: null, model: null };
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

// Colours, as charrnn/client/heatmap.py makes them for the terminal: ColorBrewer RdBu interpolated from
// -scale to +scale, and black or white text, whichever contrasts more (a WCAG ratio of 4.5 or more
// everywhere on this map). The scale: 1 for h (a tanh output); for an LSTM's cell state c (unbounded) the
// largest |value| so far, and the text is repainted when it grows, so every character ends on the scale
// of the whole text.
const RDBU = [
  [5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247],
  [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31],
];
const BLACK = [0, 0, 0];
const WHITE = [255, 255, 255];

function shown(value, scale) {
  return scale > 0 ? Math.max(-1, Math.min(1, value / scale)) : 0;
}
function rgb(value, scale) {
  const position = ((shown(value, scale) + 1) / 2) * (RDBU.length - 1);
  const i = Math.min(Math.floor(position), RDBU.length - 2);
  const f = position - i;
  return RDBU[i].map((a, k) => Math.round(a + (RDBU[i + 1][k] - a) * f));
}
function luminance(colour) {
  const [r, g, b] = colour.map((channel) => {
    const c = channel / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function contrast(a, b) {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}
function ink(background) {
  return contrast(BLACK, background) >= contrast(WHITE, background) ? BLACK : WHITE;
}
const css = (colour) => `rgb(${colour.join(", ")})`;

function paint(span, scale) {
  const background = rgb(Number(span.dataset.v), scale);
  span.style.backgroundColor = css(background);
  span.style.color = css(ink(background));
}

// The scale after `values` arrive; a grown one repaints what is already shown.
function rescale(values) {
  if (playground.unit[0] !== "c") {
    playground.scale = 1;
    return;
  }
  const largest = values.reduce((m, v) => Math.max(m, Math.abs(v)), playground.scale);
  if (largest > playground.scale) {
    playground.scale = largest;
    for (const span of $("output").querySelectorAll("span[data-v]")) paint(span, largest);
  }
  showScale("c", playground.scale);
}

// The legend's ends: ±1 for h; for c the scale so far (none before the first value).
function showScale(kind, scale) {
  const label = kind !== "c" ? "1" : scale > 0 ? scale.toPrecision(3) : "|c|";
  $("legend-low").textContent = `−${label}`;
  $("legend-high").textContent = `+${label}`;
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
  select.replaceChildren();
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
  $("legend-note").textContent = kind === "c" ? "(cell state: the scale is the largest |value| so far)" : "";
  if (!playground.controller) showScale(kind, 0); // a running stream keeps its own unit's legend
}

async function getJSON(url) {
  const response = await fetch(url, { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

// The served models in the picker (the default first, as /v1/models lists them), then the picked one's card.
async function loadModels() {
  const body = await getJSON("/v1/models");
  const picker = $("model-picker");
  picker.replaceChildren(...body.data.map((card) => option(card.id, card.charrnn.default ? `${card.id} (default)` : card.id)));
  await loadModel();
}

// The picked model's card: its shape, its limits and its units (GET /v1/models/{id}).
async function loadModel() {
  const id = $("model-picker").value;
  const card = await getJSON(`/v1/models/${encodeURIComponent(id)}`);
  if ($("model-picker").value !== id) return; // picked again meanwhile: that load shows its own
  playground.model = card;
  const info = card.charrnn;
  $("model").textContent = `${card.id} (${info.name} ${info.version}): ${info.cell} ${info.layers}×${info.hidden_size}`;
  $("length").max = info.limits.max_tokens;
  fillUnits(card);
}

function drawSparkline() {
  const values = playground.values;
  const scale = playground.scale;
  const n = values.length;
  const points = values.map((v, i) => `${n > 1 ? (i / (n - 1)) * 1000 : 0},${(50 - 48 * shown(v, scale)).toFixed(1)}`);
  $("spark").setAttribute("points", points.join(" "));
}

function append(text, values) {
  rescale(values);
  const chars = Array.from(text); // code points, as the server counts them
  const fragment = document.createDocumentFragment();
  chars.forEach((c, i) => {
    const span = document.createElement("span");
    const v = values[i];
    span.textContent = c === "\n" ? "↵\n" : c;
    span.dataset.v = v;
    paint(span, playground.scale);
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
  Object.assign(playground, { text: "", values: [], unit, scale: 0, finish: null, controller: new AbortController() });
  showScale(unit[0], 0);
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
$("model-picker").addEventListener("change", () => loadModel().catch((e) => setStatus(e.message, true)));
$("token").addEventListener("change", () => { if (!playground.model) loadModels().catch((e) => setStatus(e.message, true)); });
loadModels().catch((err) => setStatus(`cannot load the models: ${err.message}`, true));
