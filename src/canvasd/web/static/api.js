// The public API as the page uses it: one request description (`ImageRequest`) that is both sent
// with fetch and printed as curl / Python, so the copies are exactly what was sent.

/** Base URL of the API, relative to the page (works behind a reverse proxy's path prefix). */
export function apiBase() {
  return new URL("v1/", document.baseURI).href.replace(/\/$/, "");
}

/** The server's own OpenAI error, or a plain one when the answer was not an OpenAI envelope. */
export class ApiError extends Error {
  constructor(message, { status = 0, type = null, param = null, code = null } = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param;
    this.code = code;
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) { /* not JSON */ }
  const err = body && body.error;
  if (err && typeof err.message === "string") {
    return new ApiError(err.message, { status: response.status, type: err.type, param: err.param, code: err.code });
  }
  return new ApiError(`HTTP ${response.status} ${response.statusText}`, { status: response.status });
}

function headers(apiKey, extra = {}) {
  const h = { ...extra };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

export async function listModels(apiKey) {
  const r = await fetch(`${apiBase()}/models`, { headers: headers(apiKey) });
  if (!r.ok) throw await errorFrom(r);
  return (await r.json()).data;
}

/**
 * endpoint: "generations" | "edits" | "variations"
 * fields: the request's parameters in the order they are sent (strings, numbers, booleans)
 * files: [{ field: "image" | "image[]" | "mask", name, blob }] (multipart endpoints only)
 */
export class ImageRequest {
  constructor(endpoint, fields, files = []) {
    this.endpoint = endpoint;
    this.fields = fields;
    this.files = files;
  }

  get multipart() {
    return this.endpoint !== "generations";
  }

  get url() {
    return `${apiBase()}/images/${this.endpoint}`;
  }

  /** The body exactly as the openai SDKs send it: JSON, or multipart with `image` for one file,
   *  `image[]` for several, values as strings (booleans as "true"/"false"). */
  body() {
    if (!this.multipart) return JSON.stringify(this.fields);
    const form = new FormData();
    for (const f of this.files) form.append(f.field, f.blob, f.name);
    for (const [k, v] of Object.entries(this.fields)) form.append(k, String(v));
    return form;
  }
}

/** Splits a text/event-stream into {event, data} records. */
async function* sseEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // keep-alive comment
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (name === "event") event = val;
          else if (name === "data") data.push(val);
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  } finally {
    if (signal && signal.aborted) reader.cancel().catch(() => {});
  }
}

/**
 * Sends `req`; calls onPartial(event) for each partial image and onFinal(index, image) for each
 * streamed final one; returns the final images as
 * [{ b64, url, revised_prompt }]. Throws ApiError with the server's message, or the fetch's
 * AbortError when `signal` aborts (the server then cancels the job and frees its slot).
 */
export async function sendImageRequest(req, { apiKey, signal, onPartial, onFinal }) {
  const h = req.multipart ? headers(apiKey) : headers(apiKey, { "Content-Type": "application/json" });
  const response = await fetch(req.url, { method: "POST", headers: h, body: req.body(), signal });
  if (!response.ok) throw await errorFrom(response);
  const type = response.headers.get("content-type") || "";
  if (!type.startsWith("text/event-stream")) {
    const body = await response.json();
    return body.data.map((d) => ({ b64: d.b64_json || null, url: d.url || null, revised_prompt: d.revised_prompt }));
  }
  const finals = [];
  for await (const { data } of sseEvents(response, signal)) {
    if (data.type === "error" || data.error) {
      const e = data.error || {};
      throw new ApiError(e.message || "The stream failed.", { type: e.type, param: e.param, code: e.code });
    }
    if (data.type.endsWith(".partial_image")) onPartial && onPartial(data);
    else if (data.type.endsWith(".completed")) {
      finals.push({ b64: data.b64_json, url: null });
      onFinal && onFinal(finals.length - 1, finals[finals.length - 1]);
    }
  }
  return finals;
}
