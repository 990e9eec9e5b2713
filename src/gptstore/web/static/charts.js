// Charts drawn as inline SVG by our own small functions: a line chart for loss and
// accuracy curves, horizontal bars for label probabilities and rating histograms.
// Written here rather than vendored: ~100 lines cover what the pages draw, and the
// store serves every asset itself (no CDN).

import { h, svgEl } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];

function niceTicks(min, max, count) {
  if (min === max) { min -= 1; max += 1; }
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(12)));
  }
  return ticks;
}

// series: [{name, points: [[x, y], ...]}]. Returns a <figure> with an SVG and a legend.
export function lineChart(series, { title = "", xLabel = "step", height = 220 } = {}) {
  const width = 560;
  const pad = { left: 52, right: 12, top: 12, bottom: 34 };
  const all = series.flatMap((s) => s.points);
  const figure = h("figure", { class: "chart" });
  if (title) figure.append(h("figcaption", {}, title));
  if (!all.length) {
    figure.append(h("p", { class: "muted" }, "No points yet."));
    return figure;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  const [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  const xTicks = niceTicks(xMin, xMax, 5);
  const yTicks = niceTicks(yMin, yMax, 4);
  const x0 = Math.min(xMin, xTicks[0]);
  const x1 = Math.max(xMax, xTicks[xTicks.length - 1]);
  const y0 = Math.min(yMin, yTicks[0]);
  const y1 = Math.max(yMax, yTicks[yTicks.length - 1]);
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0 || 1))
    * (height - pad.top - pad.bottom);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${title || "chart"}: ${series.map((s) => s.name).join(", ")}` });
  for (const t of yTicks) {
    svg.append(svgEl("line", { x1: pad.left, x2: width - pad.right, y1: sy(t), y2: sy(t),
      class: "grid" }));
    const label = svgEl("text", { x: pad.left - 6, y: sy(t) + 4, "text-anchor": "end",
      class: "tick" });
    label.textContent = String(t);
    svg.append(label);
  }
  for (const t of xTicks) {
    const label = svgEl("text", { x: sx(t), y: height - pad.bottom + 16,
      "text-anchor": "middle", class: "tick" });
    label.textContent = String(t);
    svg.append(label);
  }
  const axis = svgEl("text", { x: width / 2, y: height - 4, "text-anchor": "middle",
    class: "axis" });
  axis.textContent = xLabel;
  svg.append(axis);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`)
      .join(" ");
    svg.append(svgEl("path", { d, fill: "none", stroke: COLORS[i % COLORS.length],
      "stroke-width": 2, class: "line", "data-series": s.name,
      "data-points": s.points.length }));
  });
  figure.append(svg);
  figure.append(h("div", { class: "legend" }, series.map((s, i) => h("span", {},
    h("i", { style: `background:${COLORS[i % COLORS.length]}` }), s.name))));
  return figure;
}

// rows: [[label, value, text]] with value in 0..1
export function bars(rows, { label = "" } = {}) {
  return h("div", { class: "bars", role: "list", "aria-label": label },
    rows.map(([name, value, text]) => h("div", { class: "bar-row", role: "listitem" },
      h("span", { class: "bar-name" }, name),
      h("span", { class: "bar-track" },
        h("span", { class: "bar-fill", style: `width:${(Math.max(0, Math.min(1, value)) * 100).toFixed(1)}%` })),
      h("span", { class: "bar-value" }, text))));
}
