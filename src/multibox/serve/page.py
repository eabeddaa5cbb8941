"""``GET /``: one self-contained page (HTML, CSS and JavaScript inline; nothing loaded from elsewhere).

Drop images on it or pick them; each is sent to ``POST /v1/detect`` and shown on a canvas with its boxes, class
names and scores. The score slider filters the boxes already received (they are fetched with a low threshold), so
moving it redraws without a new request. For scripts and tests every canvas lists the labels it drew in its
``data-labels`` attribute (JSON), and ``#status`` says what happened (or the server's error message).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

__all__ = ["FETCH_SCORE", "page_html"]

#: The score threshold the page asks the server for; the slider filters above it.
FETCH_SCORE = 0.05

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>multibox: __NAME__</title>
<style>
  body { font: 15px system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5em; text-align: center; background: #fff; }
  #drop.over { border-color: #1a73e8; background: #eef4ff; }
  #controls { margin: 1em 0; display: flex; gap: 1em; align-items: center; }
  #results { display: flex; flex-wrap: wrap; gap: 1em; }
  figure { margin: 0; background: #fff; padding: .5em; border: 1px solid #ddd; border-radius: 6px; }
  figcaption { font-size: .85em; color: #555; margin-top: .3em; max-width: 640px; }
  canvas { display: block; max-width: 640px; }
  #status.error { color: #b00020; }
  .muted { color: #666; font-size: .9em; }
</style>
</head>
<body>
<h1>multibox &middot; __NAME__</h1>
<div class="muted">classes: __CLASSES__</div>
<div id="controls">
  <label for="score">score &ge; <output id="score-value">0.30</output></label>
  <input type="range" id="score" min="0.05" max="1" step="0.01" value="0.30">
  <span id="status" role="status">drop images or pick them</span>
</div>
<div id="drop">Drop JPEG, PNG or WebP images here, or
  <input type="file" id="file" accept="image/jpeg,image/png,image/webp" multiple></div>
<div id="results"></div>
<script>
"use strict";
const FETCH_SCORE = __FETCH_SCORE__;
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000",
                "#469990", "#000075", "#808000"];
const shown = [];  // {canvas, image, result, caption}
const slider = document.getElementById("score");
const statusLine = document.getElementById("status");

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function draw(item) {
  const threshold = parseFloat(slider.value);
  const c = item.canvas, ctx = c.getContext("2d");
  const scale = c.width / item.result.width;
  ctx.drawImage(item.image, 0, 0, c.width, c.height);
  ctx.font = "bold 13px sans-serif";
  ctx.lineWidth = 2;
  const kept = item.result.detections.filter(d => d.score >= threshold);
  const labels = kept.map(d => d.class + " " + d.score.toFixed(2));
  for (let k = kept.length - 1; k >= 0; k--) {  // the best-scored drawn last, on top
    const d = kept[k], text = labels[k];
    const [x1, y1, x2, y2] = d.box.map(v => v * scale);
    const color = COLORS[(d.label - 1 + COLORS.length) % COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const tw = ctx.measureText(text).width + 6, ty = Math.max(y1 - 17, 0);
    ctx.fillStyle = color;
    ctx.fillRect(x1, ty, tw, 17);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 + 3, ty + 13);
  }
  c.dataset.labels = JSON.stringify(labels);
  item.caption.textContent = item.name + ": " + labels.length + " of " + item.result.detections.length +
    " detections at score >= " + threshold.toFixed(2);
}

function redrawAll() {
  document.getElementById("score-value").textContent = parseFloat(slider.value).toFixed(2);
  shown.forEach(draw);
}

async function detect(file) {
  setStatus("detecting " + file.name + " ...", false);
  const t0 = performance.now();
  let response;
  try {
    response = await fetch("/v1/detect?score=" + FETCH_SCORE, {method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream"}});
  } catch (err) {
    setStatus(file.name + ": the server did not answer (" + err + ")", true);
    return;
  }
  const body = await response.json().catch(() => ({error: "HTTP " + response.status}));
  if (!response.ok) {
    setStatus(file.name + ": " + response.status + " " + (body.error || ""), true);
    return;
  }
  const image = new Image();
  image.src = URL.createObjectURL(file);
  await image.decode();
  const fig = document.createElement("figure");
  const canvas = document.createElement("canvas");
  const fit = Math.min(1, 640 / body.width);
  canvas.width = Math.round(body.width * fit);
  canvas.height = Math.round(body.height * fit);
  const caption = document.createElement("figcaption");
  fig.append(canvas, caption);
  document.getElementById("results").prepend(fig);
  const item = {canvas, image, result: body, caption, name: file.name};
  shown.push(item);
  draw(item);
  setStatus(file.name + ": " + body.detections.length + " detections in " +
            Math.round(performance.now() - t0) + " ms", false);
}

async function detectAll(files) {
  for (const f of files) await detect(f);
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault();
  drop.classList.remove("over");
  detectAll(e.dataTransfer.files);
});
document.getElementById("file").addEventListener("change", e => detectAll(e.target.files));
slider.addEventListener("input", redrawAll);
</script>
</body>
</html>
"""


def page_html(model_name: str, classes: Sequence[str]) -> str:
    """The page for a model (its name and class names shown, escaped)."""
    names = ", ".join(classes) if classes else "(none recorded)"
    return (
        _PAGE.replace("__NAME__", html.escape(model_name or "detector"))
        .replace("__CLASSES__", html.escape(names))
        .replace("__FETCH_SCORE__", json.dumps(FETCH_SCORE))
    )
