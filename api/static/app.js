"use strict";
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const statusEl = document.getElementById("status");
const listEl = document.getElementById("instances");
const productsEl = document.getElementById("products");
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
let photo = null;
let result = null;
let active = -1;

function setStatus(text) { statusEl.textContent = text; }

function draw() {
  if (!photo) return;
  ctx.drawImage(photo, 0, 0);
  (result ? result.instances : []).forEach((inst, i) => {
    ctx.lineWidth = i === active ? 5 : 3;
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.fillStyle = COLORS[i % COLORS.length] + (i === active ? "55" : "22");
    for (const poly of inst.mask.polygons) {
      ctx.beginPath();
      for (let j = 0; j < poly.length; j += 2) {
        if (j === 0) ctx.moveTo(poly[j], poly[j + 1]); else ctx.lineTo(poly[j], poly[j + 1]);
      }
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
  });
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function select(i) {
  active = i;
  [...listEl.children].forEach((li, j) => li.classList.toggle("active", j === i));
  const inst = result.instances[i];
  productsEl.innerHTML = `<h2>${escapeHtml(inst.label)}</h2><div class="products">` +
    inst.products.map(p => `<div class="product" data-sku="${escapeHtml(p.sku)}">
      <img src="${escapeHtml(p.image_url || "")}" alt="">
      <div>${escapeHtml(p.title)}</div>
      <div>${p.price != null ? escapeHtml(p.price + " " + (p.currency || "")) : ""}</div>
      <div class="score">${escapeHtml(p.category || "")} · ${p.score.toFixed(3)}</div></div>`).join("") + "</div>";
  draw();
}

function pointInPolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 2; i < poly.length; j = i, i += 2) {
    const xi = poly[i], yi = poly[i + 1], xj = poly[j], yj = poly[j + 1];
    if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

canvas.addEventListener("click", ev => {
  if (!result) return;
  const r = canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) * canvas.width / r.width;
  const y = (ev.clientY - r.top) * canvas.height / r.height;
  let best = -1, bestArea = Infinity;
  result.instances.forEach((inst, i) => {
    const [x0, y0, x1, y1] = inst.box;
    const hit = inst.mask.polygons.some(p => pointInPolygon(x, y, p));
    const area = (x1 - x0) * (y1 - y0);
    if (hit && area < bestArea) { best = i; bestArea = area; }
  });
  if (best >= 0) select(best);
});

async function upload(file) {
  setStatus("Searching…");
  result = null; active = -1; listEl.innerHTML = ""; productsEl.innerHTML = "";
  const form = new FormData();
  form.append("image", file);
  const resp = await fetch("/v1/search", {method: "POST", body: form});
  const body = await resp.json();
  if (!resp.ok) { setStatus(`Error: ${body.detail || resp.statusText}`); return; }
  result = body;
  const url = URL.createObjectURL(file);
  photo = new Image();
  photo.onload = () => {
    // The server applied EXIF orientation; draw at the size it searched.
    canvas.width = body.image.width; canvas.height = body.image.height;
    result.instances.forEach((inst, i) => {
      const li = document.createElement("li");
      li.textContent = `${inst.label} (${inst.score.toFixed(2)}) – ${inst.products.length} products`;
      li.style.color = COLORS[i % COLORS.length];
      li.addEventListener("click", () => select(i));
      listEl.appendChild(li);
    });
    setStatus(`${body.instances.length} instances · ${Math.round(Object.values(body.timings_ms).reduce((a, b) => a + b, 0))} ms · index ${body.index.version}`);
    if (body.instances.length) select(0); else draw();
  };
  photo.src = url;
}

document.getElementById("file").addEventListener("change", ev => { if (ev.target.files[0]) upload(ev.target.files[0]); });
const drop = document.getElementById("drop");
drop.addEventListener("dragover", ev => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", ev => {
  ev.preventDefault(); drop.classList.remove("over");
  if (ev.dataTransfer.files[0]) upload(ev.dataTransfer.files[0]);
});
