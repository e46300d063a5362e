// The SimpleMatch page: two images, points clicked on the source, matches drawn on the target.
// Plain JavaScript served by the package itself (no CDN, works offline). Each image is uploaded once
// (POST /v1/images, encoded and cached by content hash); every edit re-matches all points against the
// cached features (POST /v1/match/cached), so a click costs one matching, not two encodes.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = {
  images: { src: null, tgt: null }, // {id, name, width, height, file}
  points: [], // [[x, y], ...] in source-image pixels
  result: null, // the last match answer: the JSON of `smatch infer --out`
  selected: -1,
  drag: -1,
  seq: 0, // discards answers to superseded requests
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function call(path, options) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const body = await resp.json().catch(() => ({ error: `HTTP ${resp.status}`, fix: "" }));
  if (resp.status === 401) $("token-box").classList.remove("hidden");
  if (!resp.ok) {
    const err = new Error(body.fix ? `${body.error}. Fix: ${body.fix}` : body.error);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function minConfidence() {
  const v = parseFloat($("min-conf").value);
  return v > 0 ? v : null;
}

// ---- images -----------------------------------------------------------------------------------------
async function upload(side, file) {
  const form = new FormData();
  form.append("image", file, file.name);
  setStatus(`encoding ${file.name}…`);
  const info = await call("/v1/images", { method: "POST", body: form });
  state.images[side] = { ...info, name: file.name, file };
  const img = $(`${side}-img`);
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(file);
  img.src = img.dataset.url;
  $(`${side}-svg`).setAttribute("viewBox", `0 0 ${info.width} ${info.height}`);
  if (side === "src") state.points = [];
  await img.decode().catch(() => {});
  setStatus(`${file.name}: ${info.width}×${info.height}${info.cached ? " (cached)" : ""}`);
}

async function pick(side, file) {
  if (!file) return;
  try {
    await upload(side, file);
    await rematch();
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function useExamples() {
  try {
    for (const side of ["src", "tgt"]) {
      const resp = await fetch(`/static/examples/${side}.png`);
      const blob = await resp.blob();
      await upload(side, new File([blob], `${side}.png`, { type: "image/png" }));
    }
    await rematch();
  } catch (err) {
    setStatus(err.message, true);
  }
}

// ---- matching ---------------------------------------------------------------------------------------
async function rematch(retry = true) {
  const { src, tgt } = state.images;
  const seq = ++state.seq;
  if (!src || !tgt || state.points.length === 0) {
    state.result = null;
    draw();
    return;
  }
  const payload = {
    source: src.id, target: tgt.id, keypoints: state.points, min_confidence: minConfidence(),
    source_name: src.name, target_name: tgt.name,
  };
  try {
    const result = await call("/v1/match/cached", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    });
    if (seq !== state.seq) return; // a newer edit already asked again
    state.result = result;
    const kept = result.keypoints.filter((k) => !k.rejected).length;
    setStatus(`${kept} of ${result.keypoints.length} matches kept (match ${result.timing_ms.match.toFixed(1)} ms)`);
  } catch (err) {
    if (err.status === 404 && retry) { // evicted from the server's cache: upload again, once
      await upload("src", src.file).catch(() => {});
      await upload("tgt", tgt.file).catch(() => {});
      state.points = payload.keypoints;
      return rematch(false);
    }
    setStatus(err.message, true);
  }
  draw();
}

let pending = false;
function rematchSoon() { // at most one request per animation frame while dragging
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; rematch(); });
}

// ---- drawing ----------------------------------------------------------------------------------------
function colour(c) { return `hsl(${Math.round(120 * Math.max(0, Math.min(1, c)))}, 80%, 42%)`; }

function unitsPerPixel(svg, width) {
  const shown = svg.getBoundingClientRect().width;
  return shown > 0 && width ? width / shown : 1;
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  parent.appendChild(node);
  return node;
}

function marker(svg, x, y, r, fill, cls, i, label) {
  el("circle", { cx: x, cy: y, r, fill, class: cls, "data-i": i }, svg).appendChild(
    Object.assign(document.createElementNS(SVG, "title"), { textContent: label }),
  );
  el("text", { x: x + 1.3 * r, y: y - 1.3 * r, class: "label", fill }, svg).textContent = String(i + 1);
}

function draw() {
  const rows = state.result ? state.result.keypoints : [];
  const srcSvg = $("src-svg"), tgtSvg = $("tgt-svg");
  srcSvg.replaceChildren();
  tgtSvg.replaceChildren();
  const { src, tgt } = state.images;
  const rs = 7 * unitsPerPixel(srcSvg, src && src.width), rt = 7 * unitsPerPixel(tgtSvg, tgt && tgt.width);
  state.points.forEach(([x, y], i) => {
    const row = rows[i];
    const fill = row ? colour(row.confidence) : "#2b6cd4";
    const cls = `marker source${i === state.selected ? " selected" : ""}`;
    marker(srcSvg, x, y, rs, fill, cls, i, `#${i + 1} (${x.toFixed(1)}, ${y.toFixed(1)})`);
    if (row && row.rejected) { // rejected: crossed out on the source, nothing on the target
      el("path", { d: `M${x - rs},${y - rs}L${x + rs},${y + rs}M${x - rs},${y + rs}L${x + rs},${y - rs}`,
        class: "cross" }, srcSvg);
    }
    if (row && row.target) {
      const [tx, ty] = row.target;
      const cls2 = `marker target${i === state.selected ? " selected" : ""}`;
      marker(tgtSvg, tx, ty, rt, colour(row.confidence), cls2, i,
        `#${i + 1} → (${tx.toFixed(1)}, ${ty.toFixed(1)}), confidence ${row.confidence.toFixed(3)}`);
    }
  });
  table(rows);
  $("download").disabled = !state.result;
}

function table(rows) {
  const body = document.querySelector("#points tbody");
  body.replaceChildren();
  state.points.forEach(([x, y], i) => {
    const row = rows[i];
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.className = `${i === state.selected ? "selected" : ""} ${row && row.rejected ? "rejected" : ""}`;
    const target = !row ? "…" : row.target ? `${row.target[0].toFixed(1)}, ${row.target[1].toFixed(1)}` : "rejected";
    const conf = row ? row.confidence.toFixed(3) : "";
    const swatch = row ? `<span class="swatch" style="background:${colour(row.confidence)}"></span>` : "";
    tr.innerHTML = `<td>${i + 1}</td><td>${x.toFixed(1)}, ${y.toFixed(1)}</td><td>${target}</td>` +
      `<td>${swatch}${conf}</td><td><button type="button" aria-label="remove point ${i + 1}">✕</button></td>`;
    tr.addEventListener("focus", () => { state.selected = i; highlight(); });
    tr.querySelector("button").addEventListener("click", () => remove(i));
    body.appendChild(tr);
  });
}

function highlight() { // selection change only: no new request
  document.querySelectorAll("#points tbody tr").forEach((tr, i) => tr.classList.toggle("selected", i === state.selected));
  document.querySelectorAll("circle.marker").forEach((c) =>
    c.classList.toggle("selected", Number(c.dataset.i) === state.selected));
}

// ---- editing: pointer (mouse, touch, pen) and keyboard ----------------------------------------------
function toImage(evt) {
  const svg = $("src-svg");
  const pt = svg.createSVGPoint();
  pt.x = evt.clientX;
  pt.y = evt.clientY;
  const p = pt.matrixTransform(svg.getScreenCTM().inverse());
  const { width, height } = state.images.src;
  return [Math.min(Math.max(p.x, 0), width - 1), Math.min(Math.max(p.y, 0), height - 1)];
}

function nearest(p, radius) {
  let best = -1, bestD = radius;
  state.points.forEach(([x, y], i) => {
    const d = Math.hypot(x - p[0], y - p[1]);
    if (d <= bestD) { best = i; bestD = d; }
  });
  return best;
}

function remove(i) {
  state.points.splice(i, 1);
  state.selected = Math.min(state.selected, state.points.length - 1);
  rematch();
}

function onPointerDown(evt) {
  if (!state.images.src) return;
  const svg = $("src-svg");
  const p = toImage(evt);
  let i = nearest(p, 12 * unitsPerPixel(svg, state.images.src.width));
  const added = i < 0;
  if (added) {
    state.points.push(p);
    i = state.points.length - 1;
  }
  state.selected = state.drag = i;
  state.moved = false;
  svg.setPointerCapture(evt.pointerId);
  svg.focus({ preventScroll: true });
  draw();
  if (added) rematch();
  evt.preventDefault();
}

function onPointerMove(evt) {
  if (state.drag < 0) return;
  state.points[state.drag] = toImage(evt);
  state.moved = true;
  draw();
  rematchSoon();
}

function onPointerUp() {
  if (state.drag < 0) return;
  state.drag = -1;
  if (state.moved) rematch();
}

function onKey(evt) {
  const src = state.images.src;
  if (!src) return;
  const n = state.points.length, i = state.selected;
  const step = evt.shiftKey ? 10 : 1;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (evt.key === "+" || evt.key === "=") {
    state.points.push([(src.width - 1) / 2, (src.height - 1) / 2]);
    state.selected = state.points.length - 1;
  } else if ((evt.key === "]" || evt.key === "[") && n) {
    state.selected = ((i < 0 ? 0 : i) + (evt.key === "]" ? 1 : n - 1)) % n;
    highlight();
    evt.preventDefault();
    return;
  } else if (moves[evt.key] && i >= 0) {
    const [dx, dy] = moves[evt.key];
    const [x, y] = state.points[i];
    state.points[i] = [Math.min(Math.max(x + dx, 0), src.width - 1), Math.min(Math.max(y + dy, 0), src.height - 1)];
  } else if ((evt.key === "Delete" || evt.key === "Backspace") && i >= 0) {
    remove(i);
    evt.preventDefault();
    return;
  } else {
    return;
  }
  evt.preventDefault();
  draw();
  rematchSoon();
}

function download() {
  if (!state.result) return;
  const text = JSON.stringify(state.result, null, 2) + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  a.download = "matches.json";
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ---- wiring -----------------------------------------------------------------------------------------
$("src-file").addEventListener("change", (e) => pick("src", e.target.files[0]));
$("tgt-file").addEventListener("change", (e) => pick("tgt", e.target.files[0]));
$("examples").addEventListener("click", useExamples);
$("clear").addEventListener("click", () => { state.points = []; state.selected = -1; rematch(); });
$("download").addEventListener("click", download);
$("min-conf").addEventListener("input", () => {
  const v = minConfidence();
  $("min-conf-value").textContent = v === null ? "off" : v.toFixed(2);
  rematchSoon();
});
$("token").addEventListener("change", () => { loadModel(); rematch(); });
const srcSvg = $("src-svg");
srcSvg.addEventListener("pointerdown", onPointerDown);
srcSvg.addEventListener("pointermove", onPointerMove);
srcSvg.addEventListener("pointerup", onPointerUp);
srcSvg.addEventListener("pointercancel", onPointerUp);
srcSvg.addEventListener("keydown", onKey);
window.addEventListener("resize", draw);

async function loadModel() {
  try {
    const m = await call("/v1/model", { method: "GET" });
    $("model").textContent = `${m.meta.backbone} at ${m.meta.img_size} px on ${m.provider}`;
  } catch (err) {
    $("model").textContent = "";
    setStatus(err.message, true);
  }
}
loadModel();
