/* The reading view: zoom and pan the image, fade the mask and the heat map, draw a region.
 *
 * The stage holds the image at its own pixel size, the layers stretched over it, and an SVG
 * whose viewBox is the SOURCE image's columns x rows. A click is placed by its share of the
 * stage's on-screen box, so it lands in source pixel coordinates (x = column, y = row)
 * whatever the zoom, the pan or the size of the rendered PNG (which may be shrunk,
 * docs/contracts.md "Display size"). Plain script, no build, no library.
 */
(function () {
  "use strict";
  var viewport = document.getElementById("viewport");
  var stage = document.getElementById("stage");
  var image = document.getElementById("image");
  if (!viewport || !stage || !image) return;
  var view = { scale: 1, x: 0, y: 0 };
  var drawing = false;
  var points = [];

  function apply() {
    stage.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.scale + ")";
    document.getElementById("zoom-level").textContent = Math.round(view.scale * 100) + "%";
  }
  function fit() {
    var w = image.naturalWidth, h = image.naturalHeight;
    if (!w || !h) return;
    stage.style.width = w + "px";
    stage.style.height = h + "px";
    var vw = viewport.clientWidth, vh = viewport.clientHeight;
    view.scale = Math.min(vw / w, vh / h);
    view.x = (vw - w * view.scale) / 2;
    view.y = (vh - h * view.scale) / 2;
    apply();
  }
  function zoomAt(factor, cx, cy) {
    var next = Math.min(Math.max(view.scale * factor, 0.05), 40);
    view.x = cx - (cx - view.x) * (next / view.scale);
    view.y = cy - (cy - view.y) * (next / view.scale);
    view.scale = next;
    apply();
  }
  if (image.complete && image.naturalWidth) fit(); else image.addEventListener("load", fit);
  window.addEventListener("resize", fit);
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoomAt(1.25, viewport.clientWidth / 2, viewport.clientHeight / 2);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoomAt(0.8, viewport.clientWidth / 2, viewport.clientHeight / 2);
  });
  viewport.addEventListener("wheel", function (event) {
    event.preventDefault();
    var box = viewport.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });

  var drag = null;
  viewport.addEventListener("pointerdown", function (event) {
    if (drawing) return;
    drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y };
    viewport.classList.add("panning");
    viewport.setPointerCapture(event.pointerId);
  });
  viewport.addEventListener("pointermove", function (event) {
    if (!drag) return;
    view.x = drag.vx + event.clientX - drag.x;
    view.y = drag.vy + event.clientY - drag.y;
    apply();
  });
  function endDrag() { drag = null; viewport.classList.remove("panning"); }
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  ["mask", "heatmap"].forEach(function (name) {
    var layer = document.getElementById(name);
    var box = document.getElementById("toggle-" + name);
    var slider = document.getElementById(name + "-opacity");
    if (!layer) return;
    box.addEventListener("change", function () { layer.hidden = !box.checked; });
    slider.addEventListener("input", function () {
      layer.style.opacity = slider.value / 100;
      if (!box.checked) { box.checked = true; layer.hidden = false; }
    });
  });

  // The review form: show the fields of the chosen decision; hidden ones are disabled, so
  // they are not sent (the server refuses a reason on an acceptance).
  var form = document.getElementById("review-form");
  if (!form) return;
  function showFields() {
    var chosen = form.querySelector("input[name=decision]:checked");
    var value = chosen ? chosen.value : "";
    form.querySelectorAll("fieldset[data-for]").forEach(function (set) {
      var on = set.dataset.for.split(" ").indexOf(value) >= 0;
      set.hidden = !on;
      set.disabled = !on;
    });
    if (value !== "correct") setDrawing(false);
    writeRegion();
  }
  form.querySelectorAll("input[name=decision]").forEach(function (radio) {
    radio.addEventListener("change", showFields);
  });

  var rows = Number(viewport.dataset.rows), columns = Number(viewport.dataset.columns);
  var drawButton = document.getElementById("draw-region");
  function setDrawing(on) {
    drawing = on && !!drawButton;
    viewport.classList.toggle("drawing", drawing);
    if (drawButton) drawButton.setAttribute("aria-pressed", drawing ? "true" : "false");
    if (drawButton) drawButton.textContent = drawing ? "Stop drawing" : "Draw region";
  }
  function writeRegion() {
    var input = document.getElementById("region-input");
    var chosen = form.querySelector("input[name=decision]:checked");
    var use = chosen && chosen.value === "correct" && points.length >= 3;
    input.value = use ? JSON.stringify({ type: "polygon", points: points }) : "";
    document.getElementById("region-shape").setAttribute("points", points.map(function (p) {
      return p[0] + "," + p[1];
    }).join(" "));
    var group = document.getElementById("region-points");
    while (group.firstChild) group.removeChild(group.firstChild);
    var radius = Math.max(columns, rows) / 150;
    points.forEach(function (p) {
      var dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("cx", p[0]); dot.setAttribute("cy", p[1]); dot.setAttribute("r", radius);
      group.appendChild(dot);
    });
    var summary = document.getElementById("region-summary");
    if (summary) summary.textContent = points.length ? points.length + " points" + (points.length < 3 ? " (3 needed)" : "") : "none";
  }
  if (drawButton) {
    drawButton.addEventListener("click", function () { setDrawing(!drawing); });
    document.getElementById("clear-region").addEventListener("click", function () { points = []; writeRegion(); });
    viewport.addEventListener("click", function (event) {
      if (!drawing) return;
      // The stage's box on screen includes the zoom and the pan: its share of the click is the
      // share of the source image's columns and rows.
      var box = stage.getBoundingClientRect();
      var p = { x: (event.clientX - box.left) / box.width * columns, y: (event.clientY - box.top) / box.height * rows };
      if (p.x < 0 || p.y < 0 || p.x > columns || p.y > rows) return; // outside the image
      points.push([Math.round(p.x * 10) / 10, Math.round(p.y * 10) / 10]);
      writeRegion();
    });
  }
  showFields();
})();
