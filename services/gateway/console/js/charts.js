// Tiny inline SVG charts: line, bar and interval charts with axes and labels. Each comes in a
// <figure> with a caption, an accessible name summarising it, and its numbers in a table.

import { h, fmtNum } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1d4ed8", "#b45309", "#047857"];

function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// About `count` round tick values covering [low, high].
export function ticks(low, high, count = 5) {
  if (!Number.isFinite(low) || !Number.isFinite(high)) return [0];
  if (low === high) {
    const pad = Math.abs(low) || 1;
    low -= pad / 2;
    high += pad / 2;
  }
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= raw) || raw;
  const first = Math.floor(low / step) * step;
  const out = [];
  for (let i = 0; first + i * step <= high + step * 1e-9; i += 1) {
    const value = first + i * step;
    out.push(Math.abs(value) < step * 1e-9 ? 0 : Number(value.toPrecision(12)));
  }
  if (out[out.length - 1] < high) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
  return out;
}

function short(value) {
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${fmtNum(value / 1e6, 1)}M`;
  if (abs >= 1e4) return `${fmtNum(value / 1e3, 1)}k`;
  return fmtNum(value, abs < 1 ? 3 : 2);
}

function empty(caption, text) {
  return h("figure", { class: "chart" }, h("figcaption", {}, caption), h("p", { class: "muted" }, text));
}

function figure(caption, svg, summary, dataTable, legend) {
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${caption}. ${summary}`);
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, caption),
    legend,
    svg,
    dataTable ? h("details", { class: "data" }, h("summary", {}, "The numbers"), dataTable) : null,
  );
}

function numbersTable(headers, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell) => h("td", {}, cell))))),
  );
}

function timeLabel(value) {
  const date = value instanceof Date ? value : new Date(value);
  return date.toISOString().slice(11, 16);
}

// lineChart({caption, series: [{name, points: [[x, y], ...]}], xLabel, yLabel, time: true})
export function lineChart({ caption, series, xLabel = "", yLabel = "", time = true, width = 560, height = 200 }) {
  const margin = { top: 12, right: 14, bottom: 38, left: 54 };
  const points = series.flatMap((line) => line.points);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "xMidYMid meet" });
  const xs = points.map(([x]) => (time ? new Date(x).getTime() : Number(x)));
  const ys = points.map(([, y]) => Number(y));
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  if (!points.length) return empty(caption, "No data yet.");
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const yTicks = ticks(Math.min(0, ...ys), Math.max(...ys, 0) || 1, 4);
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const px = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const py = (y) => margin.top + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH;
  for (const tick of yTicks) {
    svg.append(
      s("line", { class: "gridline", x1: margin.left, x2: width - margin.right, y1: py(tick), y2: py(tick) }),
      s("text", { x: margin.left - 6, y: py(tick) + 4, "text-anchor": "end" }, short(tick)),
    );
  }
  const xTickCount = Math.min(6, new Set(xs).size);
  for (let i = 0; i < xTickCount; i += 1) {
    const x = x0 + ((x1 - x0) * i) / Math.max(1, xTickCount - 1);
    svg.append(
      s("line", { class: "axis", x1: px(x), x2: px(x), y1: margin.top + plotH, y2: margin.top + plotH + 4 }),
      s("text", { x: px(x), y: margin.top + plotH + 16, "text-anchor": "middle" }, time ? timeLabel(x) : short(x)),
    );
  }
  svg.append(
    s("line", { class: "axis", x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH }),
    s("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: margin.top + plotH, y2: margin.top + plotH }),
    s("text", { class: "label", x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle" }, xLabel),
    s("text", { class: "label", x: 12, y: margin.top + plotH / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${margin.top + plotH / 2})` }, yLabel),
  );
  series.forEach((line, index) => {
    const colour = COLOURS[index % COLOURS.length];
    const coords = line.points.map(([x, y]) => `${px(time ? new Date(x).getTime() : Number(x)).toFixed(1)},${py(Number(y)).toFixed(1)}`);
    svg.append(s("polyline", { points: coords.join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
    if (line.points.length === 1) {
      const [cx, cy] = coords[0].split(",");
      svg.append(s("circle", { cx, cy, r: 3, fill: colour }));
    }
  });
  const last = series.map((line) => {
    const end = line.points[line.points.length - 1];
    return `${line.name}: latest ${end ? short(Number(end[1])) : "none"}`;
  });
  const legend = series.length > 1
    ? h("ul", { class: "legend" }, series.map((line, i) => h("li", { class: `s${(i % 3) + 1}` }, line.name)))
    : null;
  const rows = series.flatMap((line) => line.points.map(([x, y]) => [line.name, time ? new Date(x).toISOString().slice(0, 16) : String(x), fmtNum(Number(y), 3)]));
  return figure(caption, svg, `${points.length} points; ${last.join("; ")}.`, numbersTable(["series", xLabel || "x", yLabel || "y"], rows), legend);
}

// barChart({caption, bars: [{label, value}], yLabel, format})
export function barChart({ caption, bars, yLabel = "", format = short, width = 560, height = 200 }) {
  const margin = { top: 16, right: 10, bottom: 44, left: 54 };
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "xMidYMid meet" });
  if (!bars.length) return empty(caption, "No data yet.");
  const values = bars.map((bar) => Number(bar.value) || 0);
  const yTicks = ticks(Math.min(0, ...values), Math.max(0, ...values) || 1, 4);
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const py = (y) => margin.top + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH;
  for (const tick of yTicks) {
    svg.append(
      s("line", { class: "gridline", x1: margin.left, x2: width - margin.right, y1: py(tick), y2: py(tick) }),
      s("text", { x: margin.left - 6, y: py(tick) + 4, "text-anchor": "end" }, short(tick)),
    );
  }
  const slot = plotW / bars.length;
  const labelEvery = Math.ceil(bars.length / 12);
  const barW = Math.max(4, Math.min(60, slot * 0.65));
  bars.forEach((bar, index) => {
    const value = Number(bar.value) || 0;
    const x = margin.left + slot * index + (slot - barW) / 2;
    const top = py(Math.max(0, value));
    const bottom = py(Math.min(0, value));
    svg.append(s("g", {},
      s("rect", { x, y: top, width: barW, height: Math.max(1, bottom - top), fill: COLOURS[(bar.series ?? 0) % COLOURS.length] },
        s("title", {}, `${bar.label}: ${format(value)}`)),
      bars.length <= 12 || value !== 0 ? s("text", { x: x + barW / 2, y: top - 3, "text-anchor": "middle" }, format(value)) : null,
      index % labelEvery === 0
        ? s("text", { x: x + barW / 2, y: margin.top + plotH + 14, "text-anchor": "middle" },
          String(bar.label).length > 14 ? `${String(bar.label).slice(0, 13)}…` : bar.label)
        : null,
    ));
  });
  svg.append(
    s("line", { class: "axis", x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH }),
    s("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: py(0), y2: py(0) }),
    s("text", { class: "label", x: 12, y: margin.top + plotH / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${margin.top + plotH / 2})` }, yLabel),
  );
  const summary = bars.map((bar) => `${bar.label} ${format(Number(bar.value) || 0)}`).join(", ");
  return figure(caption, svg, summary, numbersTable(["", yLabel || "value"], bars.map((bar) => [bar.label, format(Number(bar.value) || 0)])));
}

// intervalChart({caption, rows: [{label, value, low, high}], xLabel}): a point and its
// interval per row, against a dashed line at zero (or `reference`).
export function intervalChart({ caption, rows, xLabel = "", reference = 0, format = short, width = 560 }) {
  const rowH = 30;
  const margin = { top: 10, right: 20, bottom: 36, left: 150 };
  const height = margin.top + margin.bottom + rowH * Math.max(1, rows.length);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "xMidYMid meet" });
  const usable = rows.filter((row) => Number.isFinite(row.value));
  if (!usable.length) return empty(caption, "No estimate yet.");
  const all = usable.flatMap((row) => [row.value, row.low, row.high]).filter(Number.isFinite);
  const xTicks = ticks(Math.min(reference, ...all), Math.max(reference, ...all), 5);
  const [x0, x1] = [xTicks[0], xTicks[xTicks.length - 1]];
  const plotW = width - margin.left - margin.right;
  const px = (x) => margin.left + ((x - x0) / (x1 - x0 || 1)) * plotW;
  const bottom = height - margin.bottom;
  for (const tick of xTicks) {
    svg.append(
      s("line", { class: "gridline", x1: px(tick), x2: px(tick), y1: margin.top, y2: bottom }),
      s("text", { x: px(tick), y: bottom + 14, "text-anchor": "middle" }, format(tick)),
    );
  }
  svg.append(
    s("line", { class: "zero", x1: px(reference), x2: px(reference), y1: margin.top, y2: bottom }),
    s("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: bottom, y2: bottom }),
    s("text", { class: "label", x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle" }, xLabel),
  );
  rows.forEach((row, index) => {
    const y = margin.top + rowH * index + rowH / 2;
    const label = String(row.label);
    svg.append(s("text", { x: margin.left - 8, y: y + 4, "text-anchor": "end" }, label.length > 24 ? `${label.slice(0, 23)}…` : label));
    if (!Number.isFinite(row.value)) return;
    const colour = row.significant === false ? "#6b7280" : COLOURS[index % COLOURS.length];
    if (Number.isFinite(row.low) && Number.isFinite(row.high)) {
      svg.append(
        s("line", { x1: px(row.low), x2: px(row.high), y1: y, y2: y, stroke: colour, "stroke-width": 6, "stroke-linecap": "round", opacity: 0.35 }),
        s("line", { x1: px(row.low), x2: px(row.low), y1: y - 7, y2: y + 7, stroke: colour, "stroke-width": 2 }),
        s("line", { x1: px(row.high), x2: px(row.high), y1: y - 7, y2: y + 7, stroke: colour, "stroke-width": 2 }),
      );
    }
    svg.append(s("circle", { cx: px(row.value), cy: y, r: 5, fill: colour },
      s("title", {}, `${label}: ${format(row.value)} [${format(row.low)}, ${format(row.high)}]`)));
  });
  const summary = usable.map((row) => `${row.label} ${format(row.value)} from ${format(row.low)} to ${format(row.high)}`).join("; ");
  return figure(
    caption,
    svg,
    summary,
    numbersTable(["", "estimate", "low", "high"], rows.map((row) => [row.label, format(row.value), format(row.low), format(row.high)])),
  );
}

// A sparkline for a table cell: values only, with an accessible name.
export function sparkline(values, label) {
  const width = 80;
  const height = 20;
  const svg = s("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label });
  if (values.length < 2) return svg;
  const low = Math.min(...values);
  const high = Math.max(...values);
  const coords = values.map((value, i) => `${((i / (values.length - 1)) * width).toFixed(1)},${(height - 2 - ((value - low) / (high - low || 1)) * (height - 4)).toFixed(1)}`);
  svg.append(s("polyline", { points: coords.join(" "), fill: "none", stroke: COLOURS[0], "stroke-width": 1.5 }));
  return svg;
}
