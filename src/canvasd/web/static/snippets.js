// "Copy as curl" and "Copy as Python": the request the page sent, printed for a shell or the
// official openai SDK. Input files are named input-1.png … and mask.png (download them next to
// the command); an API key is read from $OPENAI_API_KEY instead of being copied around.

const SDK_PARAMS = {
  generations: ["prompt", "model", "n", "size", "quality", "background", "output_format", "output_compression",
    "moderation", "response_format", "style", "user", "stream", "partial_images"],
  edits: ["prompt", "model", "n", "size", "quality", "background", "output_format", "output_compression",
    "input_fidelity", "response_format", "user", "stream", "partial_images"],
  variations: ["model", "n", "size", "response_format", "user"],
};
const SDK_METHOD = { generations: "generate", edits: "edit", variations: "create_variation" };

function shellQuote(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}

export function asCurl(req, { needsKey }) {
  const lines = [`curl -sS -N ${shellQuote(req.url)}`];
  if (needsKey) lines.push(`  -H "Authorization: Bearer $OPENAI_API_KEY"`);
  if (!req.multipart) {
    lines.push(`  -H 'Content-Type: application/json'`);
    lines.push(`  -d ${shellQuote(JSON.stringify(req.fields))}`);
  } else {
    for (const f of req.files) lines.push(`  -F ${shellQuote(`${f.field}=@${f.name}`)}`);
    // --form-string: the value is sent as is (no @file or <file reading)
    for (const [k, v] of Object.entries(req.fields)) lines.push(`  --form-string ${shellQuote(`${k}=${v}`)}`);
  }
  return lines.join(" \\\n");
}

function py(v) {
  if (v === true) return "True";
  if (v === false) return "False";
  if (v === null || v === undefined) return "None";
  if (typeof v === "number") return String(v);
  return JSON.stringify(String(v)); // a JSON string literal is a valid Python one
}

export function asPython(req, { needsKey }) {
  const known = SDK_PARAMS[req.endpoint];
  const args = [];
  const extra = [];
  if (req.multipart) {
    const images = req.files.filter((f) => f.field.startsWith("image"));
    const opened = images.map((f) => `open(${py(f.name)}, "rb")`);
    args.push(`    image=${images.length === 1 && images[0].field === "image" ? opened[0] : `[${opened.join(", ")}]`},`);
    const mask = req.files.find((f) => f.field === "mask");
    if (mask) args.push(`    mask=open(${py(mask.name)}, "rb"),`);
  }
  for (const [k, v] of Object.entries(req.fields)) {
    if (known.includes(k)) args.push(`    ${k}=${py(v)},`);
    else extra.push(`${py(k)}: ${py(v)}`);
  }
  if (extra.length) args.push(`    extra_body={${extra.join(", ")}},`);
  const key = needsKey ? `os.environ["OPENAI_API_KEY"]` : `"unused"`;
  const out = [
    "import base64",
    ...(needsKey ? ["import os"] : []),
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${py(req.url.replace(/\/images\/[a-z]+$/, ""))}, api_key=${key})`,
  ];
  const ext = (req.fields.output_format || "png").replace("jpeg", "jpg");
  if (req.fields.stream) {
    out.push(`stream = client.images.${SDK_METHOD[req.endpoint]}(`, ...args, ")", "images = 0",
      "for event in stream:",
      `    if event.type.endswith(".completed"):`,
      `        with open(f"image-{images}.${ext}", "wb") as f:`,
      "            f.write(base64.b64decode(event.b64_json))",
      "        images += 1");
  } else {
    out.push(`result = client.images.${SDK_METHOD[req.endpoint]}(`, ...args, ")",
      "for i, image in enumerate(result.data):",
      `    with open(f"image-{i}.${ext}", "wb") as f:`,
      "        f.write(base64.b64decode(image.b64_json))");
  }
  return out.join("\n");
}
