// Runs model.onnx in ONNX Runtime Web (WebAssembly backend) on the inputs in inputs.json, shows
// the outputs and the latency, and publishes the whole result as window.torchshrinkWeb (a
// promise), as JSON in <pre id="results">, and in document.title ("torchshrink web: done").
// Every file comes from this folder: the page works offline once served.

const ORT_MODULE = "./ort/ort.wasm.min.mjs";
const TYPED = {
  float32: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array,
  int8: Int8Array, uint8: Uint8Array, bool: Uint8Array,
};

class InputError extends Error {}

function fail(message) { throw new InputError(message); }

async function fetchFile(name, how) {
  let response;
  try {
    response = await fetch(name, { cache: "no-store" });
  } catch (e) {
    fail(`cannot fetch ${name} (${e.message}); serve this folder with \`python -m http.server\``);
  }
  if (!response.ok) {
    fail(`${name}: HTTP ${response.status}; it must sit beside index.html (re-run torchshrink export --format web)`);
  }
  return how === "json" ? response.text() : response.arrayBuffer();
}

function parseJson(name, text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    fail(`${name} is not valid JSON (${e.message}); fix the file or write it again with ` +
         "torchshrink.export.web.write_inputs");
  }
}

// A nested array's dims and its values in row-major order; ragged arrays are an error.
function flatten(name, value) {
  const dims = [];
  let v = value;
  while (Array.isArray(v)) { dims.push(v.length); v = v[0]; }
  const flat = [];
  const walk = (x, depth) => {
    if (depth === dims.length) { flat.push(x); return; }
    if (!Array.isArray(x) || x.length !== dims[depth]) {
      fail(`inputs.json: input "${name}" is a ragged nested array (dimension ${depth} is not ${dims[depth]} ` +
           "everywhere); give equal-length rows or {\"dims\": [...], \"data\": [...]}");
    }
    x.forEach((y) => walk(y, depth + 1));
  };
  walk(value, 0);
  return { dims, flat };
}

function readInput(spec, value) {
  const name = spec.name;
  let dims, flat;
  if (Array.isArray(value)) {
    ({ dims, flat } = flatten(name, value));
  } else if (value && typeof value === "object" && Array.isArray(value.dims) && Array.isArray(value.data)) {
    dims = value.dims;
    if (!dims.every((d) => Number.isInteger(d) && d >= 0)) {
      fail(`inputs.json: input "${name}" has dims ${JSON.stringify(dims)}; dims are non-negative integers`);
    }
    flat = value.data.flat(Infinity);
    const size = dims.reduce((a, b) => a * b, 1);
    if (flat.length !== size) {
      fail(`inputs.json: input "${name}" has ${flat.length} values but dims ${JSON.stringify(dims)} ` +
           `hold ${size}`);
    }
  } else {
    fail(`inputs.json: input "${name}" must be a nested array or {"dims": [...], "data": [...]}, ` +
         `got ${value === null ? "null" : typeof value}`);
  }
  if (dims.length !== spec.shape.length) {
    fail(`inputs.json: input "${name}" has ${dims.length} dimensions ${JSON.stringify(dims)}; the model ` +
         `takes ${spec.shape.length}: ${JSON.stringify(spec.shape)} (null = any size; the first is the batch)`);
  }
  spec.shape.forEach((want, i) => {
    if (i > 0 && want !== null && dims[i] !== want) {
      fail(`inputs.json: input "${name}" has size ${dims[i]} in dimension ${i}; the model takes ${want} ` +
           `(shape ${JSON.stringify(spec.shape)})`);
    }
  });
  const Typed = TYPED[spec.dtype];
  if (!Typed) fail(`the model's input "${name}" is ${spec.dtype}; this page feeds ${Object.keys(TYPED).join(", ")}`);
  const integer = spec.dtype !== "float32" && spec.dtype !== "float64";
  const bad = flat.findIndex((x) => (spec.dtype === "bool" ? typeof x !== "boolean" && x !== 0 && x !== 1
    : typeof x !== "number" || !Number.isFinite(x) || (integer && !Number.isInteger(x))));
  if (bad >= 0) {
    fail(`inputs.json: input "${name}" value #${bad} is ${JSON.stringify(flat[bad])}; expected ` +
         `${integer ? "an integer" : "a finite number"} (${spec.dtype})`);
  }
  const data = spec.dtype === "int64" ? BigInt64Array.from(flat, (x) => BigInt(x))
    : Typed.from(flat, (x) => Number(x));
  return { spec, dims, data, rowSize: dims.slice(1).reduce((a, b) => a * b, 1) };
}

function readInputs(manifest, doc) {
  if (!doc || typeof doc !== "object" || Array.isArray(doc) || typeof doc.inputs !== "object" || !doc.inputs) {
    fail('inputs.json must be an object with "inputs": {"<input name>": values, ...}; ' +
         `the model's inputs are ${manifest.inputs.map((i) => i.name).join(", ")}`);
  }
  const missing = manifest.inputs.filter((s) => !(s.name in doc.inputs)).map((s) => s.name);
  const extra = Object.keys(doc.inputs).filter((k) => !manifest.inputs.some((s) => s.name === k));
  if (missing.length || extra.length) {
    fail(`inputs.json: the model's inputs are ${manifest.inputs.map((i) => i.name).join(", ")}; ` +
         (missing.length ? `missing ${missing.join(", ")}` : "") + (missing.length && extra.length ? "; " : "") +
         (extra.length ? `unknown ${extra.join(", ")}` : ""));
  }
  const inputs = manifest.inputs.map((s) => readInput(s, doc.inputs[s.name]));
  const rows = inputs[0].dims[0];
  if (rows < 1 || inputs.some((t) => t.dims[0] !== rows)) {
    fail(`inputs.json: every input needs the same number of rows (dimension 0) and at least one; got ` +
         inputs.map((t) => `${t.spec.name}: ${t.dims[0]}`).join(", "));
  }
  const option = (key, fallback) => {
    const v = doc[key] === undefined ? fallback : doc[key];
    if (!Number.isInteger(v) || v < (key === "warmup" ? 0 : 1)) fail(`inputs.json: "${key}" must be an integer >= ${key === "warmup" ? 0 : 1}, got ${JSON.stringify(v)}`);
    return v;
  };
  const batch = option("batch", 1);
  const fixed = manifest.inputs[0].shape[0];
  if (fixed !== null && batch !== fixed) fail(`inputs.json: "batch" is ${batch} but the model's batch is fixed at ${fixed}`);
  if (fixed !== null && rows % fixed !== 0) fail(`inputs.json: ${rows} rows do not split into batches of ${fixed}, the model's fixed batch`);
  const warmupMs = doc.warmup_ms === undefined ? 0 : doc.warmup_ms;
  if (typeof warmupMs !== "number" || !(warmupMs >= 0)) fail(`inputs.json: "warmup_ms" must be a number >= 0, got ${JSON.stringify(warmupMs)}`);
  return { inputs, rows, batch, warmup: option("warmup", 3), warmupMs, rounds: option("rounds", 20),
           perRound: option("per_round", 10) };
}

function feedsFor(ort, inputs, start, end) {
  const feeds = {};
  for (const t of inputs) {
    const data = t.data.subarray(start * t.rowSize, end * t.rowSize);
    feeds[t.spec.name] = new ort.Tensor(t.spec.dtype, data, [end - start, ...t.dims.slice(1)]);
  }
  return feeds;
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

async function run() {
  const manifest = parseJson("model.json", await fetchFile("model.json", "json"));
  document.getElementById("model-name").textContent = manifest.model;
  const doc = parseJson("inputs.json", await fetchFile("inputs.json", "json"));
  const plan = readInputs(manifest, doc);

  let ort;
  try {
    ort = await import(ORT_MODULE);
  } catch (e) {
    fail(`ONNX Runtime Web is missing (${ORT_MODULE}: ${e.message}); export again with --npm-install, or ` +
         "run `npm install onnxruntime-web` and copy its dist/ort.wasm.min.mjs, ort-wasm-simd-threaded.mjs " +
         "and ort-wasm-simd-threaded.wasm into ort/");
  }
  // One thread: several need SharedArrayBuffer, which needs cross-origin isolation headers that a
  // plain `python -m http.server` does not send. SIMD is on wherever the browser has it.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = new URL("./ort/", location.href).href;

  const bytes = await fetchFile(manifest.model, "bytes");
  let t0 = performance.now();
  const session = await ort.InferenceSession.create(new Uint8Array(bytes), {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  const sessionMs = performance.now() - t0;

  const batches = [];
  for (let s = 0; s < plan.rows; s += plan.batch) batches.push([s, Math.min(plan.rows, s + plan.batch)]);
  t0 = performance.now();
  await session.run(feedsFor(ort, plan.inputs, ...batches[0]));
  const firstMs = performance.now() - t0;
  // Warm-up by count and by time: the browser first runs WebAssembly from a quick baseline
  // compile and swaps in optimized code in the background, later on a busy machine.
  const warmFeeds = feedsFor(ort, plan.inputs, ...batches[0]);
  const warmEnd = performance.now() + plan.warmupMs;
  for (let i = 0; i < plan.warmup || performance.now() < warmEnd; i++) await session.run(warmFeeds);

  // Outputs: every row, one inference per batch, each timed.
  const collected = Object.fromEntries(session.outputNames.map((n) => [n, { dims: null, data: [] }]));
  const perInference = [];
  for (const [start, end] of batches) {
    const feeds = feedsFor(ort, plan.inputs, start, end);
    t0 = performance.now();
    const out = await session.run(feeds);
    perInference.push(performance.now() - t0);
    for (const n of session.outputNames) {
      const c = collected[n];
      c.dims = c.dims ? [c.dims[0] + out[n].dims[0], ...out[n].dims.slice(1)] : [...out[n].dims];
      for (const v of out[n].data) c.data.push(Number(v));
    }
  }
  // Latency: rounds of back-to-back inferences on the first batch, per-inference time of each
  // round, median over rounds (browsers coarsen performance.now() to ~0.1 ms, so one timed
  // inference of a small model is mostly rounding).
  const feeds = feedsFor(ort, plan.inputs, ...batches[0]);
  const rounds = [];
  for (let r = 0; r < plan.rounds; r++) {
    t0 = performance.now();
    for (let i = 0; i < plan.perRound; i++) await session.run(feeds);
    rounds.push((performance.now() - t0) / plan.perRound);
  }
  return {
    status: "ok", model: manifest.model, model_bytes: bytes.byteLength, form: manifest.form,
    versions: { onnxruntime_web: (ort.env.versions && ort.env.versions.web) || manifest.onnxruntime_web.version,
                user_agent: navigator.userAgent },
    backend: "wasm", threads: ort.env.wasm.numThreads, rows: plan.rows, batch: plan.batch,
    session_ms: sessionMs, first_inference_ms: firstMs,
    latency_ms: { median: median(rounds), min: Math.min(...rounds), max: Math.max(...rounds),
                  rounds: plan.rounds, per_round: plan.perRound, batch: batches[0][1] - batches[0][0],
                  round_ms: rounds,
                  per_inference_median: median(perInference) },
    outputs: collected,
  };
}

const fmt = (x, d = 3) => (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : x.toFixed(d));

function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }

function table(parent, head, rows) {
  const t = document.createElement("table");
  const hr = head ? t.createTHead().insertRow() : null;
  if (head) head.forEach(([h, cls]) => { const th = document.createElement("th"); th.textContent = h; if (cls) th.className = cls; hr.appendChild(th); });
  const body = t.createTBody();
  rows.forEach((r) => { const tr = body.insertRow(); r.forEach(([v, cls]) => cell(tr, v, cls)); });
  parent.appendChild(t);
  return t;
}

function show(result) {
  const L = result.latency_ms;
  table(document.getElementById("summary"), null, [
    [["model"], [`${result.model} (${result.model_bytes.toLocaleString()} bytes, ${result.form} form)`]],
    [["runtime"], [`ONNX Runtime Web ${result.versions.onnxruntime_web}, ${result.backend}, ${result.threads} thread`]],
    [["browser"], [result.versions.user_agent]],
    [["session created"], [`${fmt(result.session_ms, 1)} ms (first inference ${fmt(result.first_inference_ms, 2)} ms)`]],
    [["latency, batch " + L.batch], [`${fmt(L.median)} ms per inference (median of ${L.rounds} rounds x ${L.per_round}; ` +
      `min ${fmt(L.min)}, max ${fmt(L.max)})`]],
    [["rows run"], [`${result.rows} in batches of ${result.batch}`]],
  ]);
  const out = document.getElementById("outputs");
  for (const [name, o] of Object.entries(result.outputs)) {
    const h = document.createElement("h2"); h.style.fontSize = "1rem"; h.textContent = `output "${name}" ${JSON.stringify(o.dims)}`;
    out.appendChild(h);
    const width = o.dims.slice(1).reduce((a, b) => a * b, 1);
    const rows = [];
    for (let r = 0; r < Math.min(o.dims[0], 12); r++) {
      const row = o.data.slice(r * width, (r + 1) * width);
      const top = row.indexOf(Math.max(...row));
      rows.push([[String(r), "num"], [String(top), "num"], [fmt(row[top]), "num"], [row.slice(0, 10).map((v) => fmt(v, 2)).join("  ")]]);
    }
    table(out, [["row", "num"], ["top-1", "num"], ["score", "num"], [`values${width > 10 ? " (first 10)" : ""}`]], rows);
    if (o.dims[0] > 12) { const p = document.createElement("p"); p.textContent = `… ${o.dims[0] - 12} more rows in the JSON result`; out.appendChild(p); }
  }
}

window.torchshrinkWeb = run().then((result) => {
  show(result);
  const s = document.getElementById("status");
  s.className = "ok";
  s.textContent = `ran ${result.rows} rows: ${fmt(result.latency_ms.median)} ms per inference at batch ${result.latency_ms.batch}`;
  document.getElementById("results").textContent = JSON.stringify(result);
  document.title = "torchshrink web: done";
  return result;
}, (e) => {
  const message = e instanceof InputError ? e.message : `${e && e.name ? e.name + ": " : ""}${e && e.message ? e.message : e}`;
  const s = document.getElementById("status");
  s.className = "error";
  s.textContent = message;
  const result = { status: "error", error: message };
  document.getElementById("results").textContent = JSON.stringify(result);
  document.title = "torchshrink web: error";
  return result;
});
