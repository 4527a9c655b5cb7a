// Small DOM helpers. Every value from the API goes in as text, never as HTML.

import { ApiError, needs } from "./api.js";

let ids = 0;
export function uid(prefix = "c") {
  ids += 1;
  return `${prefix}-${ids}`;
}

// h("button", {class: "primary", onclick: fn}, "Save"): an element with attributes,
// properties (value, checked, disabled...), listeners (on...) and children.
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (["value", "checked", "disabled", "selected", "hidden", "open"].includes(name)) {
      element[name] = value;
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function clear(element) {
  while (element.firstChild) element.firstChild.remove();
  return element;
}

export function replace(element, ...children) {
  clear(element);
  return append(element, children);
}

// A labelled control: field("Member id", h("input", {...})) -> <div><label for>...</div>.
export function field(labelText, control, { hint, inline = false } = {}) {
  if (!control.id) control.id = uid("f");
  const parts = [h("label", { for: control.id }, labelText)];
  if (hint) {
    const hintId = uid("h");
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("span", { class: "hint", id: hintId }, hint));
  }
  return inline
    ? h("div", { class: "field inline" }, control, ...parts)
    : h("div", { class: "field" }, parts[0], control, ...parts.slice(1));
}

export function select(options, value, attrs = {}) {
  return h(
    "select",
    attrs,
    options.map((option) => {
      const [optionValue, text] = Array.isArray(option) ? option : [option, option];
      return h("option", { value: optionValue, selected: optionValue === value }, text);
    }),
  );
}

// A button for an action that needs `scope`: disabled, with the reason shown beside it and
// read with it, when the key lacks the scope.
export function action(text, scope, onclick, attrs = {}) {
  const reason = scope ? needs(scope) : null;
  const button = h("button", { type: "button", ...attrs, onclick: reason ? null : onclick }, text);
  if (!reason) return button;
  button.disabled = true;
  const noteId = uid("n");
  button.setAttribute("aria-describedby", noteId);
  return h("span", { class: "nowrap" }, button, h("span", { class: "needs", id: noteId }, reason));
}

// What a page says when its data needs a scope the key lacks.
export function unavailable(scope, what) {
  return h(
    "p",
    { class: "warning" },
    h("strong", {}, "Unavailable: "),
    `${what} ${what.endsWith("s") ? "need" : "needs"} scope ${scope}, which this access key does not have.`,
  );
}

export function errorBox(error, context) {
  const text = error instanceof ApiError ? error.detail : String(error?.message || error);
  const status = error instanceof ApiError && error.status ? ` (${error.status})` : "";
  return h("p", { class: "alert", role: "alert" }, h("strong", {}, `${context}${status}: `), text);
}

const notices = () => document.getElementById("notices");

export function notify(text, kind = "notice") {
  const box = h("p", { class: kind, role: kind === "alert" ? "alert" : null, "data-at": String(Date.now()) }, text);
  const close = h("button", { type: "button", class: "quiet", "aria-label": "Dismiss" }, "×");
  close.addEventListener("click", () => box.remove());
  box.append(close);
  notices().append(box);
  if (kind === "notice") setTimeout(() => box.remove(), 6000);
  return box;
}

// On a page change: notices of an earlier page go (what was just said stays a moment).
export function clearOldNotices(olderThanMs = 1500) {
  for (const box of notices().querySelectorAll(".notice")) {
    if (Date.now() - Number(box.dataset.at || 0) > olderThanMs) box.remove();
  }
}

export function notifyError(error, context) {
  const text = error instanceof ApiError ? error.detail : String(error?.message || error);
  const status = error instanceof ApiError && error.status ? ` (${error.status})` : "";
  return notify(`${context}${status}: ${text}`, "alert");
}

// table(["Name", {text: "Size", num: true}], rows, {caption}) where each row is a list of
// cells (text, nodes, or {value, num}).
export function table(columns, rows, { caption, empty = "Nothing yet.", className } = {}) {
  const head = h(
    "thead",
    {},
    h(
      "tr",
      {},
      columns.map((column) => {
        const spec = typeof column === "string" ? { text: column } : column;
        return h("th", { scope: "col", class: spec.num ? "num" : null }, spec.text);
      }),
    ),
  );
  const numeric = columns.map((column) => typeof column === "object" && column.num);
  const body = h(
    "tbody",
    {},
    rows.length
      ? rows.map((row) =>
          h(
            "tr",
            {},
            row.map((cell, index) => {
              const tag = index === 0 ? "th" : "td";
              const attrs = { class: numeric[index] ? "num" : null };
              if (tag === "th") attrs.scope = "row";
              return h(tag, attrs, cell ?? "–");
            }),
          ),
        )
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty)),
  );
  return h(
    "div",
    { class: "table-wrap" },
    h("table", { class: className }, caption ? h("caption", {}, caption) : null, head, body),
  );
}

export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "–")]),
  );
}

export function chips(values, kind = "") {
  if (!values.length) return h("span", { class: "muted" }, "none");
  return h(
    "ul",
    { class: "chips" },
    values.map((value) => h("li", { class: `chip ${kind}` }, value)),
  );
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

export function debounce(fn, ms) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  debounced.cancel = () => clearTimeout(timer);
  return debounced;
}

// Formatting
const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
export function fmtInt(value) {
  return value === null || value === undefined ? "–" : integer.format(value);
}
export function fmtNum(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return new Intl.NumberFormat("en", { maximumFractionDigits: digits }).format(value);
}
export function fmtPct(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return `${fmtNum(value * 100, digits)}%`;
}
export function fmtSigned(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  const text = fmtNum(value, digits);
  if (Number(text.replace(/,/g, "")) === 0) return "0";
  return `${value > 0 ? "+" : ""}${text}`;
}
export function fmtTime(value) {
  if (!value) return "–";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}
export function fmtInterval(figure, digits = 3) {
  if (!figure || figure.value === null || figure.value === undefined) return "–";
  const low = figure.low ?? null;
  const high = figure.high ?? null;
  const range = low === null || high === null ? "" : ` [${fmtNum(low, digits)}, ${fmtNum(high, digits)}]`;
  return `${fmtNum(figure.value, digits)}${range}`;
}

export function link(href, text) {
  return h("a", { href }, text);
}

export function enc(value) {
  return encodeURIComponent(value);
}

// A labelled group of radios that reads and moves like tabs (arrow keys, one tab stop).
export function choices(legend, options, value, onchange) {
  const name = uid("choice");
  return h(
    "fieldset",
    { class: "tabs" },
    h("legend", {}, legend),
    options.map((option) => {
      const [optionValue, text] = Array.isArray(option) ? option : [option, option];
      const input = h("input", {
        type: "radio",
        name,
        value: optionValue,
        checked: optionValue === value,
        onchange: () => onchange(optionValue),
      });
      return h("label", {}, input, text);
    }),
  );
}
