// The playground: wires the form, the mask painter, the results grid and the history to the
// public API. Everything the server decides (sizes, qualities, which parameters a model takes)
// comes from /v1/models' `capabilities`; everything it refuses is shown with its own message.

import { ApiError, ImageRequest, listModels, sendImageRequest } from "./api.js";
import { clearHistory, loadHistory, loadSettings, saveHistory, saveSettings } from "./history.js";
import { MaskPainter } from "./mask.js";
import { asCurl, asPython } from "./snippets.js";

const $ = (id) => document.getElementById(id);
const ENDPOINT = { generate: "generations", edit: "edits", variation: "variations" };
const QUALITY_ALIASES = { standard: "medium", hd: "high" };
const MIME = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp", svg: "image/svg+xml" };

const state = {
  models: [],
  mode: "generate",
  inputs: [], // [{ blob, name, url }]
  running: null, // { controller, cards, started, timer }
  history: loadHistory(),
  settings: loadSettings(),
  needsKey: false,
};

const painter = new MaskPainter($("mask"), { brush: $("brush"), eraser: $("eraser") });

// --- models and the form they shape ---------------------------------------------------------

function currentModel() {
  return state.models.find((m) => m.id === $("model").value) || state.models[0] || null;
}

function caps() {
  const m = currentModel();
  return (m && m.capabilities) || null;
}

function params() {
  const c = caps();
  return new Set((c && c.parameters[ENDPOINT[state.mode]]) || []);
}

async function refreshModels() {
  const key = state.settings.apiKey || "";
  try {
    state.models = await listModels(key);
    hideError();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      state.needsKey = true;
      $("key-field").hidden = false;
    }
    showError(e);
    return;
  }
  state.needsKey = Boolean(key);
  $("key-field").hidden = !key && !state.needsKey;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => {
    const o = document.createElement("option");
    o.value = m.id;
    o.textContent = m.root ? `${m.id} → ${m.root}` : m.id;
    return o;
  }));
  if (state.models.some((m) => m.id === state.settings.model)) select.value = state.settings.model;
  shapeForm();
}

function setOptions(select, values, keep) {
  const previous = keep ? select.value : null;
  select.replaceChildren(...values.map((v) => {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = v;
    return o;
  }));
  if (previous && values.includes(previous)) select.value = previous;
}

function shapeForm() {
  const c = caps();
  if (!c) return;
  const p = params();
  for (const [mode, endpoint] of Object.entries(ENDPOINT)) {
    $(`tab-${mode}`).disabled = !c.endpoints.includes(endpoint);
  }
  if (!c.endpoints.includes(ENDPOINT[state.mode]) && c.endpoints.length) {
    setMode(Object.keys(ENDPOINT).find((m) => c.endpoints.includes(ENDPOINT[m])));
    return;
  }
  const sizes = c.custom_sizes ? [...c.sizes, "custom"] : c.sizes;
  setOptions($("size"), sizes, true);
  $("custom-size-field").hidden = $("size").value !== "custom";
  setOptions($("quality"), c.quality, true);
  if (!$("quality").dataset.touched && c.quality.includes("auto")) $("quality").value = "auto";
  setOptions($("output_format"), c.output_formats, true);
  $("n").max = String(c.n_max);
  $("background").querySelector('option[value="transparent"]').disabled = !c.alpha;
  if (!c.alpha && $("background").value === "transparent") $("background").value = "auto";

  $("prompt").closest("form").classList.toggle("no-prompt", state.mode === "variation");
  $("prompt").disabled = state.mode === "variation";
  $("negative-field").hidden = !(p.has("negative_prompt") && c.negative_prompt);
  $("quality-field").hidden = !p.has("quality");
  $("background-field").hidden = !p.has("background");
  $("format-field").hidden = !p.has("output_format");
  $("partials-field").hidden = !p.has("stream");
  $("strength-field").hidden = !p.has("strength") || state.mode === "generate";
  $("inputs").hidden = state.mode === "generate";
  const max = state.mode === "variation" ? 1 : c.max_input_images;
  $("inputs-hint").textContent = state.mode === "variation"
    ? "One image: the model makes new images like it."
    : `Up to ${max} image${max > 1 ? "s" : ""}; the first one is edited${c.inpaint ? " (paint a mask on it below)" : ""}.`;
  renderInputs();
}

function setMode(mode) {
  state.mode = mode;
  for (const m of Object.keys(ENDPOINT)) $(`tab-${m}`).setAttribute("aria-selected", String(m === mode));
  shapeForm();
}

// --- input images and the mask ----------------------------------------------------------------

function addInputs(files, { first = false } = {}) {
  const items = [...files].filter((f) => f.type.startsWith("image/")).map((blob, i) => ({
    blob, name: blob.name || `input.${(blob.type.split("/")[1] || "png").replace("jpeg", "jpg")}`,
    url: URL.createObjectURL(blob),
  }));
  state.inputs = first ? [...items, ...state.inputs] : [...state.inputs, ...items];
  renderInputs(true);
}

function removeInput(index) {
  const [gone] = state.inputs.splice(index, 1);
  if (gone) URL.revokeObjectURL(gone.url);
  renderInputs(index === 0);
}

function renderInputs(targetChanged = false) {
  const c = caps();
  const list = $("thumbs");
  list.replaceChildren(...state.inputs.map((item, i) => {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = `Input ${i + 1}`;
    const rm = document.createElement("button");
    rm.type = "button";
    rm.textContent = "×";
    rm.setAttribute("aria-label", `Remove input ${i + 1}`);
    rm.addEventListener("click", () => removeInput(i));
    li.append(img, rm);
    return li;
  }));
  const showMask = state.mode === "edit" && state.inputs.length > 0 && Boolean(c && c.inpaint);
  $("mask-area").hidden = !showMask;
  const base = $("mask-base");
  const first = state.inputs[0];
  if (first && (targetChanged || base.dataset.src !== first.url)) {
    base.dataset.src = first.url;
    base.onload = () => painter.reset(base.naturalWidth, base.naturalHeight);
    base.src = first.url;
  }
}

// --- building the request ---------------------------------------------------------------------

function numberOrRaw(text) {
  const t = text.trim();
  if (t === "") return undefined;
  const v = Number(t);
  return Number.isFinite(v) ? v : t; // the server explains what is wrong with the raw text
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] & 0x7fffffff;
}

async function buildRequest() {
  const c = caps();
  const p = params();
  const endpoint = ENDPOINT[state.mode];
  const f = { model: currentModel().id };
  if (state.mode !== "variation") f.prompt = $("prompt").value;
  const n = numberOrRaw($("n").value);
  if (n !== undefined) f.n = n;
  const size = $("size").value === "custom" ? $("custom-size").value.trim() : $("size").value;
  if (size) f.size = size;
  if (p.has("quality")) f.quality = $("quality").value;
  if (p.has("background")) f.background = $("background").value;
  if (p.has("output_format")) f.output_format = $("output_format").value;
  if (p.has("negative_prompt") && !$("negative-field").hidden && $("negative").value.trim()) {
    f.negative_prompt = $("negative").value;
  }
  // an explicit seed, so every result (and its copied request) can be reproduced
  const seed = numberOrRaw($("seed").value);
  f.seed = seed === undefined ? randomSeed() : seed;
  const steps = numberOrRaw($("steps").value);
  if (steps !== undefined) f.num_inference_steps = steps;
  const guidance = numberOrRaw($("guidance").value);
  if (guidance !== undefined) f.guidance_scale = guidance;
  if (state.mode !== "generate" && p.has("strength")) {
    const strength = numberOrRaw($("strength").value);
    if (strength !== undefined) f.strength = strength;
  }
  // svg output is one image, never streamed (the API's rule)
  if (p.has("stream") && f.output_format !== "svg") {
    const partials = Number($("partials").value);
    f.stream = true;
    if (partials > 0) f.partial_images = partials;
  } else if (p.has("response_format")) {
    f.response_format = "b64_json";
  }
  const files = [];
  if (state.mode !== "generate") {
    const images = state.mode === "variation" ? state.inputs.slice(0, 1) : state.inputs;
    images.forEach((item, i) => {
      const ext = (item.blob.type.split("/")[1] || "png").replace("jpeg", "jpg");
      files.push({ field: images.length === 1 ? "image" : "image[]", name: `input-${i + 1}.${ext}`, blob: item.blob });
    });
    if (state.mode === "edit" && c.inpaint && images.length && !painter.empty) {
      files.push({ field: "mask", name: "mask.png", blob: await painter.toBlob() });
    }
  }
  return new ImageRequest(endpoint, f, files);
}

/** Steps the request runs: what it asked for, else its quality's (as the server resolves it),
 * plus the second stage's one step when the model has one and the answer is larger than native. */
function plannedSteps(fields) {
  const c = caps();
  return denoisingSteps(fields, c) + (c.refined_size && sideOf(fields.size) > sideOf(c.native_size) ? 1 : 0);
}

function denoisingSteps(fields, c) {
  if (typeof fields.num_inference_steps === "number") return fields.num_inference_steps;
  let q = fields.quality || "auto";
  if (q === "auto") q = c.default_quality;
  q = QUALITY_ALIASES[q] || q;
  return c.quality_steps[q] || c.quality_steps.high || c.quality_steps[c.default_quality];
}

/** The larger side of a "WxH" size (size auto answers 1024x1024, as upstream). */
function sideOf(size) {
  const m = /^(\d+)x(\d+)$/.exec(size || "");
  return m ? Math.max(+m[1], +m[2]) : 1024;
}


// --- running ---------------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  if (state.running || !currentModel()) return;
  hideError();
  const req = await buildRequest();
  const n = Number.isInteger(req.fields.n) && req.fields.n > 0 ? Math.min(req.fields.n, 16) : 1;
  const entry = {
    id: `${Date.now()}-${Math.random().toString(16).slice(2, 8)}`,
    created: Date.now(),
    endpoint: req.endpoint,
    prompt: req.fields.prompt || "",
    fields: req.fields,
    files: req.files.map(({ field, name }) => ({ field, name })),
    steps: plannedSteps(req.fields),
    needsKey: state.needsKey,
    images: [],
  };
  const cards = Array.from({ length: n }, (_, i) => pendingCard(entry, i));
  $("grid").prepend(...cards.map((c) => c.el));
  $("empty").hidden = true;
  const controller = new AbortController();
  const run = { controller, cards, started: performance.now(), entry, partials: 0 };
  state.running = run;
  setRunning(true);
  const totalPartials = Math.min(req.fields.partial_images || 0, Math.max(entry.steps - 1, 0));
  const tick = () => updateProgress(run, n, totalPartials);
  run.timer = setInterval(tick, 100);
  tick();
  try {
    const images = await sendImageRequest(req, {
      apiKey: state.settings.apiKey,
      signal: controller.signal,
      onPartial: (ev) => {
        // partial_image_index counts per image; images advance together, so the first card
        // that has seen that many partials is the one this event belongs to
        const card = cards.find((c) => c.partials === ev.partial_image_index && !c.final) || cards[0];
        card.partials += 1;
        run.partials += 1;
        showImage(card, `data:${MIME[ev.output_format] || "image/png"};base64,${ev.b64_json}`, "partial",
          `Partial ${card.partials} of ${totalPartials}`);
        tick();
      },
      onFinal: (i, image) => {
        if (cards[i]) {
          cards[i].final = true;
          showImage(cards[i], imageSrc(entry, image), "final");
        }
      },
    });
    entry.images = images.map((im) => ({ b64: im.b64, url: im.url }));
    cards.forEach((c) => c.el.remove());
    state.history = saveHistory([entry, ...state.history]);
    $("grid").prepend(...entry.images.map((_, i) => resultCard(entry, i)));
    $("progress-text").textContent = `Done: ${entry.images.length} image${entry.images.length > 1 ? "s" : ""} in ${elapsed(run)}`;
    $("progress-bar").value = 1;
  } catch (e) {
    cards.forEach((c) => c.el.remove());
    if (e.name === "AbortError") {
      $("progress-text").textContent = `Cancelled after ${elapsed(run)}`;
    } else {
      $("progress").hidden = true;
      showError(e);
    }
  } finally {
    clearInterval(run.timer);
    state.running = null;
    setRunning(false);
    $("empty").hidden = $("grid").children.length > 0;
  }
}

function elapsed(run) {
  return `${((performance.now() - run.started) / 1000).toFixed(1)} s`;
}

function updateProgress(run, n, totalPartials) {
  const S = run.entry.steps;
  // The stream carries no step numbers; the engine emits partial k of P after step
  // round(S * (k + 1) / (P + 1)) (engine/jobs.py preview_steps), which places each one.
  let done = 0;
  for (const c of run.cards) {
    done += c.final ? S : c.partials ? Math.round((S * c.partials) / (totalPartials + 1)) : 0;
  }
  const bar = $("progress-bar");
  const text = $("progress-text");
  if (done === 0) {
    bar.removeAttribute("value");
    text.textContent = `Working… ${elapsed(run)}`;
  } else {
    bar.value = done / (n * S);
    text.textContent = `Step ${Math.round(done / n)} of ${S} · ${elapsed(run)}`;
  }
}

function setRunning(on) {
  $("generate").disabled = on;
  $("cancel").disabled = !on;
  if (on) $("progress").hidden = false;
}

function cancel() {
  if (state.running) state.running.controller.abort();
}

// --- results ---------------------------------------------------------------------------------

function imageSrc(entry, image) {
  if (image.b64) return `data:${MIME[entry.fields.output_format] || "image/png"};base64,${image.b64}`;
  return image.url;
}

function describe(entry, i) {
  const f = entry.fields;
  const seed = typeof f.seed === "number" ? f.seed + i : f.seed;
  const shown = (v) => (v && v !== "auto" ? v : null);
  const bits = [`seed ${seed}`, shown(f.size), shown(f.quality) && `${f.quality} quality`, `${entry.steps} steps`, f.model];
  if (f.guidance_scale !== undefined) bits.push(`guidance ${f.guidance_scale}`);
  if (f.negative_prompt) bits.push(`not “${f.negative_prompt}”`);
  if (entry.endpoint !== "generations") bits.unshift(entry.endpoint === "edits" ? "edit" : "variation");
  return bits.filter(Boolean).join(" · ");
}

function altText(entry) {
  return entry.prompt || "Variation of the input image";
}

function caption(entry, i) {
  const cap = document.createElement("figcaption");
  const prompt = document.createElement("strong");
  prompt.textContent = altText(entry);
  const meta = document.createElement("span");
  meta.textContent = describe(entry, i);
  cap.append(prompt, meta);
  return cap;
}

function pendingCard(entry, i) {
  const el = document.createElement("figure");
  el.className = "card pending";
  const box = document.createElement("div");
  box.className = "frame";
  const img = document.createElement("img");
  img.alt = altText(entry);
  img.dataset.state = "pending";
  img.hidden = true;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = "Waiting";
  box.append(img, badge);
  el.append(box, caption(entry, i));
  return { el, img, badge, partials: 0, final: false };
}

function showImage(card, src, stateName, label = "") {
  card.img.src = src;
  card.img.hidden = false;
  card.img.dataset.state = stateName;
  card.img.dataset.partials = String(card.partials);
  card.badge.textContent = label;
  card.badge.hidden = !label;
  card.el.classList.toggle("pending", stateName !== "final");
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function resultCard(entry, i) {
  const image = entry.images[i];
  const el = document.createElement("figure");
  el.className = "card";
  el.dataset.entry = entry.id;
  const box = document.createElement("div");
  box.className = "frame";
  const img = document.createElement("img");
  img.src = imageSrc(entry, image);
  img.alt = altText(entry);
  img.dataset.state = "final";
  img.loading = "lazy";
  box.append(img);
  const cap = caption(entry, i);
  const actions = document.createElement("div");
  actions.className = "card-actions";
  const ext = (entry.fields.output_format || "png").replace("jpeg", "jpg");
  const seed = typeof entry.fields.seed === "number" ? entry.fields.seed + i : i;
  const dl = document.createElement("a");
  dl.href = img.src;
  dl.download = `canvasd-${seed}.${ext}`;
  dl.textContent = "Download";
  dl.className = "button";
  const req = () => new ImageRequest(entry.endpoint, entry.fields, entry.files);
  actions.append(
    dl,
    button("Use as input", () => useAsInput(img.src, `result-${seed}.${ext}`)),
    button("Copy as curl", () => showSnippet("curl", asCurl(req(), { needsKey: entry.needsKey }))),
    button("Copy as Python", () => showSnippet("Python (openai SDK)", asPython(req(), { needsKey: entry.needsKey }))),
  );
  el.append(box, cap, actions);
  return el;
}

async function useAsInput(src, name) {
  const blob = await (await fetch(src)).blob();
  addInputs([new File([blob], name, { type: blob.type })], { first: true });
  if (state.mode === "generate") setMode(caps().endpoints.includes("edits") ? "edit" : "variation");
  $("inputs").scrollIntoView({ behavior: "smooth", block: "start" });
}

function renderHistory() {
  $("grid").replaceChildren(...state.history.flatMap((entry) => entry.images.map((_, i) => resultCard(entry, i))));
  $("empty").hidden = state.history.length > 0;
}

// --- snippets, errors ---------------------------------------------------------------------------

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    return false; // no clipboard (plain http on another host): the dialog shows the text to select
  }
}

async function showSnippet(kind, text) {
  $("snippet-title").textContent = `Request as ${kind}`;
  $("snippet").textContent = text;
  const dialog = $("snippet-dialog");
  if (!dialog.open) dialog.showModal();
  $("snippet-copy").textContent = (await copyText(text)) ? "Copied" : "Copy";
}

function showError(e) {
  const box = $("error");
  box.replaceChildren();
  const msg = document.createElement("p");
  msg.textContent = e.message;
  box.append(msg);
  if (e instanceof ApiError && (e.param || e.code)) {
    const small = document.createElement("small");
    small.textContent = [e.param && `param: ${e.param}`, e.code && `code: ${e.code}`].filter(Boolean).join(" · ");
    box.append(small);
  }
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

// --- wiring ------------------------------------------------------------------------------------

function wire() {
  $("form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  for (const mode of Object.keys(ENDPOINT)) $(`tab-${mode}`).addEventListener("click", () => setMode(mode));
  $("model").addEventListener("change", () => {
    state.settings.model = $("model").value;
    saveSettings(state.settings);
    shapeForm();
  });
  $("quality").addEventListener("change", () => { $("quality").dataset.touched = "1"; });
  $("size").addEventListener("change", () => { $("custom-size-field").hidden = $("size").value !== "custom"; });
  $("api-key").value = state.settings.apiKey || "";
  const applyKey = (e) => {
    if (e) e.preventDefault();
    if ((state.settings.apiKey || "") === $("api-key").value.trim() && state.models.length) return;
    state.settings.apiKey = $("api-key").value.trim();
    saveSettings(state.settings);
    refreshModels();
  };
  $("api-key").addEventListener("change", applyKey);
  $("key-field").addEventListener("submit", applyKey);
  $("files").addEventListener("change", (e) => {
    addInputs(e.target.files);
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addInputs(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => {
    if (state.mode !== "generate" && e.clipboardData && e.clipboardData.files.length) addInputs(e.clipboardData.files);
  });
  $("mask-undo").addEventListener("click", () => painter.undo());
  $("mask-clear").addEventListener("click", () => painter.clear());
  $("clear-history").addEventListener("click", () => {
    clearHistory();
    state.history = [];
    renderHistory();
  });
  $("snippet-copy").addEventListener("click", async () => {
    $("snippet-copy").textContent = (await copyText($("snippet").textContent)) ? "Copied" : "Select the text to copy";
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
  });
}

wire();
renderHistory();
refreshModels();
