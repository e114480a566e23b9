// nnlib serve: the drawing pad, the live prediction and what the network sees. No framework, no build step.
"use strict";

const PEN = 18;            // pen width in pad pixels (280 px pad): a marker on paper
const DEBOUNCE_MS = 120;   // predict this long after the last change
const LIVE_MS = 250;       // while the pen keeps moving, predict at least this often
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const strokes = [];        // each stroke: [{x, y}, ...]
let current = null;        // the stroke being drawn
let timer = null;
let asked = 0;             // number of the latest prediction request
let newest = 0;            // number of the request whose answer is shown (older answers are dropped)
let sentAt = -Infinity;    // when the drawing was last sent (performance.now())
let shown = 0;             // predictions rendered so far (document.body.dataset.predictions)

function say(text, error = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", error);
}

// ---- drawing ---------------------------------------------------------------------------------------
function paper() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function drawStroke(points) {
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = PEN;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  if (points.length === 1) {
    ctx.beginPath();
    ctx.arc(points[0].x, points[0].y, PEN / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(points[0].x, points[0].y);
  for (let i = 1; i < points.length; i++) ctx.lineTo(points[i].x, points[i].y);
  ctx.stroke();
}

function redraw() {
  paper();
  for (const s of strokes) drawStroke(s);
}

function where(event) {
  const r = pad.getBoundingClientRect();
  return { x: (event.clientX - r.left) * pad.width / r.width, y: (event.clientY - r.top) * pad.height / r.height };
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 && event.pointerType === "mouse") return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = [where(event)];
  strokes.push(current);
  drawStroke(current);
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (!current) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of (events.length ? events : [event])) current.push(where(e));
  redraw();
  changed();
});

function endStroke() {
  if (!current) return;
  current = null;
  changed(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("undo").addEventListener("click", () => { strokes.pop(); redraw(); changed(0); });
document.getElementById("clear").addEventListener("click", clear);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") clear();
  if ((event.ctrlKey || event.metaKey) && event.key === "z") { strokes.pop(); redraw(); changed(0); }
});

function clear() {
  strokes.length = 0;
  redraw();
  changed(0);
}

function changed(delay = DEBOUNCE_MS) {
  document.querySelectorAll("#label-buttons button, #undo").forEach((b) => { b.disabled = strokes.length === 0; });
  clearTimeout(timer);
  asked++;  // the drawing changed: an answer to an earlier request is shown but no longer ends the wait
  if (strokes.length === 0) { blank(); return; }
  document.body.dataset.state = "waiting";
  if (current && performance.now() - sentAt >= LIVE_MS) delay = 0;  // live while a long stroke goes on
  timer = setTimeout(predictDrawing, delay);
}

// ---- prediction ------------------------------------------------------------------------------------
function padBlob() {
  return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
}

async function predictDrawing() {
  sentAt = performance.now();
  const blob = await padBlob();
  await ask(blob, { "Content-Type": "image/png" });
}

async function ask(body, headers = {}) {
  const number = ++asked;
  document.body.dataset.state = "waiting";
  let answer;
  try {
    const response = await fetch("/api/predict", { method: "POST", body, headers });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
  } catch (err) {
    if (number === asked) {
      say(`cannot read it: ${err.message}`, true);
      document.body.dataset.state = "error";
    }
    return;
  }
  if (number < newest) return; // a newer answer is shown already
  newest = number;
  render(answer);
  if (number !== asked) document.body.dataset.state = "waiting"; // the drawing changed since: more to come
}

function blank() {
  document.getElementById("digit").textContent = "?";
  document.getElementById("confidence").textContent = "draw a digit";
  bars(new Array(10).fill(0), -1);
  const seen = document.getElementById("seen").getContext("2d");
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 196, 196);
  document.getElementById("maps").replaceChildren();
  document.body.dataset.digit = "";
  document.body.dataset.state = "blank";
}

function bars(probabilities, top) {
  const list = document.getElementById("bars");
  if (list.children.length !== 10) {
    list.replaceChildren();
    for (let d = 0; d < 10; d++) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="d">${d}</span><span class="track"><span class="bar"></span></span><span class="pct"></span>`;
      list.append(li);
    }
  }
  probabilities.forEach((p, d) => {
    const li = list.children[d];
    li.classList.toggle("top", d === top);
    li.querySelector(".bar").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".pct").textContent = top < 0 ? "" : `${(100 * p).toFixed(1)}%`;
    li.dataset.p = p;
  });
}

function render(answer) {
  document.getElementById("digit").textContent = answer.digit;
  document.getElementById("confidence").textContent = `${(100 * answer.probability).toFixed(1)}% sure`;
  bars(answer.probabilities, answer.digit);
  seen(answer.input);
  maps(answer.maps);
  say("");
  shown++;
  document.body.dataset.digit = answer.digit;
  document.body.dataset.predictions = shown;
  document.body.dataset.state = "shown";
}

function seen(input) {
  // 28x28, 7 px per pixel with a 1 px gap, so every pixel shows
  const c = document.getElementById("seen").getContext("2d");
  c.fillStyle = "#333";
  c.fillRect(0, 0, 196, 196);
  for (let r = 0; r < 28; r++) {
    for (let col = 0; col < 28; col++) {
      const v = input[r][col];
      c.fillStyle = `rgb(${v},${v},${v})`;
      c.fillRect(col * 7, r * 7, 6, 6);
    }
  }
}

function maps(m) {
  document.getElementById("maps-title").textContent = m.count
    ? (m.kind === "conv" ? `${m.count} feature maps of the ${m.layers} for this drawing (bright: strong response)`
                         : `the ${m.count} most active units of the ${m.layers}: their weights (light +, dark -)`)
    : "";
  const raw = atob(m.data);
  const box = document.getElementById("maps");
  box.replaceChildren();
  const size = m.height * m.width;
  for (let i = 0; i < m.count; i++) {
    const canvas = document.createElement("canvas");
    canvas.width = m.width;
    canvas.height = m.height;
    const c = canvas.getContext("2d");
    const img = c.createImageData(m.width, m.height);
    for (let j = 0; j < size; j++) {
      const v = raw.charCodeAt(i * size + j);
      img.data[4 * j] = img.data[4 * j + 1] = img.data[4 * j + 2] = v;
      img.data[4 * j + 3] = 255;
    }
    c.putImageData(img, 0, 0);
    if (m.units) canvas.title = `unit ${m.units[i]}: activation ${m.activations[i].toFixed(2)}`;
    box.append(canvas);
  }
}

// ---- upload ----------------------------------------------------------------------------------------
function upload(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  say(`reading ${file.name}…`);
  strokes.length = 0;
  redraw();
  document.querySelectorAll("#label-buttons button").forEach((b) => { b.disabled = true; });
  clearTimeout(timer);
  ask(form).then(() => { if (!statusLine.classList.contains("error")) say(`uploaded: ${file.name}`); });
}
document.getElementById("file").addEventListener("change", (event) => upload(event.target.files[0]));
pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("drop"); });
pad.addEventListener("dragleave", () => pad.classList.remove("drop"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("drop");
  upload(event.dataTransfer.files[0]);
});

// ---- your handwriting ------------------------------------------------------------------------------
async function saveAs(label) {
  if (!strokes.length) return;
  try {
    const response = await fetch("/api/drawn", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label, image: pad.toDataURL("image/png") }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    say(`saved as a ${label}: ${answer.folder}/${answer.file}`);
    document.body.dataset.saved = answer.file;
  } catch (err) {
    say(`not saved: ${err.message}`, true);
  }
}
const labelButtons = document.getElementById("label-buttons");
for (let d = 0; d < 10; d++) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = d;
  b.title = `it was a ${d}: save the drawing with this label`;
  b.dataset.label = d;
  b.addEventListener("click", () => saveAs(d));
  labelButtons.append(b);
}

// ---- model card ------------------------------------------------------------------------------------
async function card() {
  const dl = document.getElementById("card");
  try {
    const m = await (await fetch("/api/model")).json();
    const rows = [
      ["preset", m.preset ?? "(none matches)"],
      ["seed", Array.isArray(m.seed) ? m.seed.map((s) => s ?? "?").join(", ") : m.seed ?? "(not recorded)"],
      ...(m.members ? [["committee", `${m.members} networks, their probabilities averaged (layers: the first's)`]] : []),
      ["parameters", m.parameters.toLocaleString("en")],
      ["test accuracy", m.test_accuracy == null ? m.test_accuracy_source : `${(100 * m.test_accuracy).toFixed(2)}%`],
      ["layers", m.layers.join(" · ")], ["file", `${m.file} (sha256 ${m.sha256.slice(0, 12)}…)`],
    ];
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
  } catch (err) {
    dl.textContent = `cannot read the model card: ${err.message}`;
  }
}

paper();
changed(0);
card();
