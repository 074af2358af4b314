"use strict";
// roomlens page: upload a photo, draw each instance's mask, list the products of the one
// clicked; drag a box to search only that area. Beside them, the scene of the photo (or of
// the area) from /v1/segment: counts, colours, relations, description, COCO download.
// Plain DOM, no build step.
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const statusEl = document.getElementById("status");
const listEl = document.getElementById("instances");
const productsEl = document.getElementById("products");
const filtersEl = document.getElementById("filters");
const categoriesEl = document.getElementById("categories");
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
const K = 12;
const DRAG_PIXELS = 8;

let file = null;       // the photo being searched
let photo = null;      // its decoded <img>
let instances = [];    // detected instances, then a drawn region (label "region") if any
let active = -1;
let drag = null;       // {x0, y0, x1, y1} while a box is being drawn
let sceneBox = null;   // the box the scene panel shows (null: the whole photo)
let sceneRequest = 0;  // the latest scene request; older answers are dropped

const sceneEl = document.getElementById("scene");
const cocoButton = document.getElementById("download-coco");
const PHRASES = {
  on: "on", next_to: "next to", overlaps: "overlapping", in_front_of: "in front of", behind: "behind",
  left_of: "left of", right_of: "right of", above: "above", below: "below",
};
const HEX = /^#[0-9a-f]{6}$/i;

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function tracePolygon(poly) {
  ctx.beginPath();
  for (let j = 0; j < poly.length; j += 2) {
    if (j === 0) ctx.moveTo(poly[j], poly[j + 1]); else ctx.lineTo(poly[j], poly[j + 1]);
  }
  ctx.closePath();
}

function draw() {
  if (!photo) return;
  ctx.drawImage(photo, 0, 0);
  const width = Math.max(2, canvas.width / 300);
  instances.forEach((inst, i) => {
    const color = COLORS[i % COLORS.length];
    ctx.lineWidth = (i === active ? 2.5 : 1.5) * width;
    ctx.strokeStyle = color;
    ctx.fillStyle = color + (i === active ? "55" : "22");
    for (const poly of inst.mask.polygons) { tracePolygon(poly); ctx.fill(); ctx.stroke(); }
  });
  if (drag) {
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = width;
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
    ctx.setLineDash([]);
  }
  canvas.dataset.outlines = String(instances.length);
}

function productCard(p) {
  const price = p.price != null ? `${p.price.toFixed(2)} ${p.currency || ""}` : "";
  return `<div class="product" data-sku="${escapeHtml(p.sku)}">
    <img src="${escapeHtml(p.image_url || "")}" alt="${escapeHtml(p.title)}" loading="lazy">
    <div class="title">${escapeHtml(p.title)}</div>
    <div class="price">${escapeHtml(price)}</div>
    <div class="score">${escapeHtml(p.category || "")} · score ${p.score.toFixed(3)}</div></div>`;
}

function select(i) {
  active = i;
  [...listEl.children].forEach((li, j) => li.classList.toggle("active", j === i));
  const inst = instances[i];
  const body = inst.products.length
    ? `<div class="products">${inst.products.map(productCard).join("")}</div>`
    : `<p class="hint">No product passes the filters for this item.</p>`;
  productsEl.innerHTML = `<h2>${escapeHtml(describe(inst))}</h2>${body}`;
  draw();
}

function describe(inst) {
  return inst.label === "region" ? "the area you drew" : inst.label === "image" ? "the whole photo" : inst.label;
}

function renderList() {
  listEl.innerHTML = "";
  instances.forEach((inst, i) => {
    const li = document.createElement("li");
    li.textContent = `${describe(inst)} (${inst.score.toFixed(2)}) – ${inst.products.length} products`;
    li.style.color = COLORS[i % COLORS.length];
    li.addEventListener("click", () => select(i));
    listEl.appendChild(li);
  });
}

function pointInPolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 2; i < poly.length; j = i, i += 2) {
    const xi = poly[i], yi = poly[i + 1], xj = poly[j], yj = poly[j + 1];
    if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function canvasPoint(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
}

function instanceAt(x, y) {
  let best = -1, bestArea = Infinity;
  instances.forEach((inst, i) => {
    const [x0, y0, x1, y1] = inst.box;
    const area = (x1 - x0) * (y1 - y0);
    if (area < bestArea && inst.mask.polygons.some(p => pointInPolygon(x, y, p))) { best = i; bestArea = area; }
  });
  return best;
}

canvas.addEventListener("mousedown", ev => {
  if (!photo) return;
  const [x, y] = canvasPoint(ev);
  drag = {x0: x, y0: y, x1: x, y1: y, started: false, sx: ev.clientX, sy: ev.clientY};
});
canvas.addEventListener("mousemove", ev => {
  if (!drag) return;
  const [x, y] = canvasPoint(ev);
  drag.x1 = x; drag.y1 = y;
  drag.started = drag.started || Math.hypot(ev.clientX - drag.sx, ev.clientY - drag.sy) > DRAG_PIXELS;
  if (drag.started) draw();
});
window.addEventListener("mouseup", ev => {
  if (!drag) return;
  const d = drag; drag = null;
  if (d.started) {
    const box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)]
      .map(v => Math.round(Math.max(0, v)));
    draw();
    searchRegion(box);
  } else {
    const i = instanceAt(d.x0, d.y0);
    if (i >= 0) select(i);
  }
});

function filterFields(form) {
  for (const box of categoriesEl.querySelectorAll("input:checked")) form.append("category", box.value);
  const min = document.getElementById("min-price").value, max = document.getElementById("max-price").value;
  if (min !== "") form.append("min_price", min);
  if (max !== "") form.append("max_price", max);
  if (document.getElementById("in-stock").checked) form.append("in_stock", "true");
  form.append("k", String(K));
}

async function post(extra) {
  const form = new FormData();
  form.append("image", file);
  filterFields(form);
  form.append("masks", "polygons");  // all the page draws
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  const resp = await fetch("/v1/search", {method: "POST", body: form});
  const body = await resp.json().catch(() => ({detail: resp.statusText}));
  if (!resp.ok) throw new Error(body.detail || resp.statusText);
  return body;
}

function loadPhoto(width, height) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this photo"));
    img.src = URL.createObjectURL(file);
    canvas.width = width; canvas.height = height;
  });
}

async function search() {
  if (!file) return;
  setStatus("Searching…");
  try {
    const started = performance.now();
    const body = await post({});
    // The server applied EXIF orientation, as the browser does: draw at the size it searched.
    photo = await loadPhoto(body.image.width, body.image.height);
    instances = body.instances;
    renderList();
    document.getElementById("stage-hint").hidden = false;
    setStatus(`${instances.length} items found in ${Math.round(performance.now() - started)} ms · index ${body.index.version}`);
    if (instances.length) select(0); else { productsEl.innerHTML = ""; draw(); }
    loadScene(null);
  } catch (err) {
    setStatus(`Error: ${err.message}`, true);
  }
}

async function searchRegion(box) {
  setStatus("Searching the area you drew…");
  try {
    const body = await post({region: box.join(",")});
    instances = instances.filter(inst => inst.label !== "region").concat(body.instances);
    renderList();
    select(instances.length - 1);
    setStatus(`Area ${box.join(", ")} searched`);
    loadScene(box);
  } catch (err) {
    setStatus(`Error: ${err.message}`, true);
  }
}

// --- the scene as facts (/v1/segment) ---------------------------------------------------

async function segment(box, format) {
  const form = new FormData();
  form.append("image", file);
  if (box) form.append("box", box.join(","));
  const resp = await fetch(`/v1/segment${format ? `?format=${format}` : ""}`, {method: "POST", body: form});
  const body = await resp.json().catch(() => ({detail: resp.statusText}));
  if (!resp.ok) throw new Error(body.detail || resp.statusText);
  return body;
}

function setSceneStatus(text, isError = false) {
  const el = document.getElementById("scene-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function loadScene(box) {
  const request = ++sceneRequest;
  sceneBox = box;
  sceneEl.hidden = false;
  cocoButton.disabled = true;
  document.getElementById("scene-scope").textContent = box ? "· the area you drew" : "· the whole photo";
  setSceneStatus("Reading the scene…");
  try {
    const body = await segment(box);
    if (request !== sceneRequest) return;  // a newer photo or area asked meanwhile
    renderScene(body);
    setSceneStatus(`${body.instances.length} objects`);
    cocoButton.disabled = false;
  } catch (err) {
    if (request === sceneRequest) setSceneStatus(`Error: ${err.message}`, true);
  }
}

function swatches(colors) {
  return colors.filter(c => HEX.test(c.hex)).map(c =>
    `<span class="swatch" style="background:${c.hex}" title="${escapeHtml(`${c.name} (${c.css}) ${Math.round(c.share * 100)}%`)}"></span>` +
    `<span class="swatch-name">${escapeHtml(c.name)}</span>`).join(" ");
}

function relationWords(rel, byId) {
  const other = byId.get(rel.object);
  const label = other ? other.label : "object";
  return `${escapeHtml(PHRASES[rel.predicate] || rel.predicate.replace(/_/g, " "))} the ${escapeHtml(label)}` +
    ` <span class="hint">#${rel.object}</span>`;
}

function renderScene(body) {
  const byId = new Map(body.instances.map(inst => [inst.id, inst]));
  document.getElementById("scene-description").textContent = body.description;
  const counts = Object.entries(body.counts).map(([label, n]) =>
    `<li class="count"><b>${n}</b> ${escapeHtml(label)}</li>`);
  const byColor = Object.entries(body.counts_by_color).map(([label, n]) =>
    `<li class="count-color"><b>${n}</b> ${escapeHtml(label)}</li>`);
  document.getElementById("scene-counts").innerHTML = counts.concat(byColor).join("");
  document.getElementById("scene-objects").innerHTML = body.instances.map(inst => {
    const relations = inst.relations.length
      ? `<ul class="relations">${inst.relations.map(r => `<li>${relationWords(r, byId)}</li>`).join("")}</ul>`
      : "";
    return `<li class="object" data-id="${inst.id}"><span class="label">#${inst.id} ${escapeHtml(inst.label)}</span>
      <span class="colors">${swatches(inst.colors)}</span>${relations}</li>`;
  }).join("");
}

async function downloadCoco() {
  cocoButton.disabled = true;
  try {
    const doc = await segment(sceneBox, "coco");
    const blob = new Blob([JSON.stringify(doc)], {type: "application/json"});
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${(file.name || "photo").replace(/\.[^.]*$/, "")}.coco.json`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    setSceneStatus(`Error: ${err.message}`, true);
  } finally {
    cocoButton.disabled = false;
  }
}

cocoButton.addEventListener("click", downloadCoco);

function start(chosen) {
  file = chosen;
  photo = null; instances = []; active = -1;
  listEl.innerHTML = ""; productsEl.innerHTML = "";
  sceneRequest++; sceneEl.hidden = true;
  search();
}

async function loadCategories() {
  try {
    const resp = await fetch("/v1/categories");
    const cats = await resp.json();
    categoriesEl.innerHTML = cats.length ? cats.map(c =>
      `<label><input type="checkbox" value="${escapeHtml(c.name)}"> ${escapeHtml(c.name)} <span class="hint">${c.count}</span></label>`
    ).join("") : `<span class="hint">no catalog yet</span>`;
  } catch (err) {
    categoriesEl.innerHTML = `<span class="hint">unavailable</span>`;
  }
}

filtersEl.addEventListener("submit", ev => { ev.preventDefault(); search(); });
document.getElementById("file").addEventListener("change", ev => { if (ev.target.files[0]) start(ev.target.files[0]); });
const drop = document.getElementById("drop");
drop.addEventListener("dragover", ev => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", ev => {
  ev.preventDefault(); drop.classList.remove("over");
  if (ev.dataTransfer.files[0]) start(ev.dataTransfer.files[0]);
});
loadCategories();
