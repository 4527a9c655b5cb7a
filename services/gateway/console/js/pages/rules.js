// Merchandising rules: the list, a new rule (pin, boost, bury, filter), and a placement
// before and after the rule (POST /v1/rules/preview).

import { api, has } from "../api.js";
import {
  action, badge, enc, errorBox, field, fmtNum, fmtTime, h, notify,
  notifyError, replace, select, table, unavailable,
} from "../dom.js";

export const title = "Rules";
export const scope = "admin";

const PLACEMENTS = ["home", "product", "cart", "email", "search", "category"];
const ACTIONS = ["pin", "boost", "bury", "filter"];

export function summary(definition) {
  const d = definition || {};
  const parts = [];
  if (d.item_id) parts.push(`item ${d.item_id}`);
  if (d.position) parts.push(`at ${d.position}`);
  for (const key of ["category", "tag", "brand"]) if (d[key]) parts.push(`${key} ${[].concat(d[key]).join("|")}`);
  if (d.min_price !== null && d.min_price !== undefined) parts.push(`≥ ${d.min_price}`);
  if (d.max_price !== null && d.max_price !== undefined) parts.push(`≤ ${d.max_price}`);
  if (d.strength) parts.push(`strength ${d.strength}`);
  if (d.in_stock) parts.push("in stock");
  if (d.item_ids) parts.push(`${d.item_ids.length} items`);
  if (d.share) parts.push(`share ${d.share}`);
  if (d.days) parts.push(`${d.days} days`);
  return parts.join(", ") || "–";
}

export async function render(container) {
  container.append(
    h("h1", {}, "Merchandising rules"),
    h("p", { class: "lead" }, "Rules shape a placement without touching a model; they apply within a second and are named in the reasons of the items they move."),
  );
  if (!has(scope)) {
    container.append(unavailable(scope, "Merchandising rules"));
    return null;
  }
  const listBox = h("section", { class: "card", "aria-labelledby": "rules-list-title" });
  const createBox = h("section", { class: "card", "aria-labelledby": "rules-new-title" });
  container.append(listBox, createBox);
  const reload = () => list(listBox);
  create(createBox, reload);
  await reload();
  return null;
}

async function list(box) {
  replace(box, h("h2", { id: "rules-list-title" }, "Rules"));
  try {
    const listed = await api("/v1/rules");
    box.append(
      table(
        ["Name", "Placement", "Action", "What", { text: "Priority", num: true }, "Window", "Live", "Actions"],
        listed.rules.map((r) => [
          r.name,
          r.placement,
          r.action,
          summary(r.definition),
          String(r.priority),
          `${r.starts_at ? fmtTime(r.starts_at) : "now"} → ${r.ends_at ? fmtTime(r.ends_at) : "until deleted"}`,
          r.live ? badge("live", "good") : badge("not live"),
          action("Delete", scope, async () => {
            if (!window.confirm(`Delete rule ${r.name}?`)) return;
            try {
              await api(`/v1/rules/${enc(r.rule_id)}`, { method: "DELETE" });
              notify(`Rule ${r.name} deleted.`);
              list(box);
            } catch (error) {
              notifyError(error, "Not deleted");
            }
          }, { "aria-label": `Delete rule ${r.name}` }),
        ]),
        { empty: "No rule: every placement is answered as ranked." },
      ),
    );
  } catch (error) {
    box.append(errorBox(error, "Rules could not be read"));
  }
}

function create(box, reload) {
  box.append(h("h2", { id: "rules-new-title" }, "New rule"));
  const inputs = {
    name: h("input", { type: "text", name: "name", autocomplete: "off" }),
    placement: select(PLACEMENTS, "home", { name: "placement" }),
    action: select(ACTIONS, "pin", { name: "action" }),
    priority: h("input", { type: "number", name: "priority", value: "0", min: -1000, max: 1000 }),
    starts_at: h("input", { type: "datetime-local", name: "starts_at" }),
    ends_at: h("input", { type: "datetime-local", name: "ends_at" }),
    item_id: h("input", { type: "text", name: "item_id", autocomplete: "off" }),
    position: h("input", { type: "number", name: "position", value: "1", min: 1, max: 100 }),
    category: h("input", { type: "text", name: "category", autocomplete: "off", placeholder: "garden, kitchen" }),
    min_price: h("input", { type: "number", name: "min_price", step: "any", min: 0 }),
    max_price: h("input", { type: "number", name: "max_price", step: "any", min: 0 }),
    strength: h("input", { type: "number", name: "strength", step: 0.1, min: 0, max: 10, value: "0.5" }),
    in_stock: h("input", { type: "checkbox", name: "in_stock" }),
  };
  const fields = {
    item_id: field("Item id (pinned)", inputs.item_id),
    position: field("Position (1–100)", inputs.position),
    category: field("Categories (comma-separated)", inputs.category),
    min_price: field("Minimum price", inputs.min_price),
    max_price: field("Maximum price", inputs.max_price),
    strength: field("Strength (rank space, 0–10)", inputs.strength, { hint: "1 lifts a match past every item no rule moves" }),
    in_stock: field("Only items in stock", inputs.in_stock, { inline: true }),
  };
  const shown = { pin: ["item_id", "position"], boost: ["category", "min_price", "max_price", "strength"], bury: ["category", "min_price", "max_price", "strength"], filter: ["category", "min_price", "max_price", "in_stock"] };
  const showFields = () => {
    for (const [key, element] of Object.entries(fields)) element.hidden = !shown[inputs.action.value].includes(key);
  };
  inputs.action.addEventListener("change", showFields);
  showFields();

  const rule = () => {
    const body = { placement: inputs.placement.value, action: inputs.action.value, priority: Number(inputs.priority.value || 0) };
    if (inputs.name.value.trim()) body.name = inputs.name.value.trim();
    for (const key of ["starts_at", "ends_at"]) if (inputs[key].value) body[key] = new Date(inputs[key].value).toISOString();
    for (const key of shown[body.action]) {
      const input = inputs[key];
      if (key === "in_stock") {
        if (input.checked) body.in_stock = true;
      } else if (key === "category") {
        const categories = input.value.split(",").map((c) => c.trim()).filter(Boolean);
        if (categories.length) body.category = categories.length === 1 ? categories[0] : categories;
      } else if (input.value !== "") {
        body[key] = input.type === "number" ? Number(input.value) : input.value.trim();
      }
    }
    return body;
  };

  const problem = h("div");
  const form = h(
    "form",
    { class: "stack", novalidate: true },
    h("div", { class: "row" }, field("Name (shown in reasons)", inputs.name), field("Placement", inputs.placement), field("Action", inputs.action), field("Priority", inputs.priority)),
    h("div", { class: "row" }, field("Starts (local time; empty: now)", inputs.starts_at), field("Ends (empty: until deleted)", inputs.ends_at)),
    h("div", { class: "row" }, Object.values(fields)),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create rule")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(problem);
    try {
      const made = await api("/v1/rules", { method: "POST", body: rule() });
      notify(`Rule ${made.name} created${made.live ? " and live" : ""}.`);
      reload();
    } catch (error) {
      replace(problem, errorBox(error, "Not created"));
    }
  });
  box.append(form, preview(rule));
}

function preview(rule) {
  const member = h("input", { type: "text", name: "preview_member", autocomplete: "off" });
  const item = h("input", { type: "text", name: "preview_item", autocomplete: "off" });
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "stack" },
    h("h3", {}, "Preview the placement before and after this rule"),
    h("div", { class: "row" }, field("Member id", member), field("Item in view (product, cart)", item), h("button", { type: "submit" }, "Preview")),
    out,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = rule();
    replace(out, h("p", { class: "muted" }, "Previewing…"));
    try {
      const answer = await api("/v1/rules/preview", {
        method: "POST",
        body: { placement: body.placement, member_id: member.value.trim() || null, item_id: item.value.trim() || null, rule: body },
      });
      replace(out, comparison(answer.before || [], answer.after || []));
    } catch (error) {
      replace(out, errorBox(error, "No preview"));
    }
  });
  return form;
}

function itemsTable(items, caption, other = null) {
  const position = new Map((other || []).map((item, i) => [item.item_id ?? item, i]));
  return table(
    [{ text: "#", num: true }, "Item", "Category", { text: "Score", num: true }, "Reasons", "Moved"],
    items.map((item, i) => {
      const id = item.item_id ?? item;
      let moved = "–";
      if (other) {
        const hidden = (text) => h("span", { class: "visually-hidden" }, text);
        if (!position.has(id)) moved = h("span", { class: "diff-up" }, "new");
        else if (position.get(id) > i) moved = h("span", { class: "diff-up" }, h("span", { "aria-hidden": "true" }, "▲ "), hidden("up "), String(position.get(id) - i));
        else if (position.get(id) < i) moved = h("span", { class: "diff-down" }, h("span", { "aria-hidden": "true" }, "▼ "), hidden("down "), String(i - position.get(id)));
      }
      return [String(i + 1), h("code", {}, id), item.category || "–", fmtNum(item.score, 3), (item.reasons || []).join("; ") || "–", moved];
    }),
    { caption, empty: "No items." },
  );
}

function comparison(beforeItems, afterItems) {
  const removed = beforeItems.filter((b) => !afterItems.some((a) => (a.item_id ?? a) === (b.item_id ?? b)));
  return h(
    "div",
    {},
    h("div", { class: "grid two" }, itemsTable(beforeItems, "Before the rule"), itemsTable(afterItems, "After the rule", beforeItems)),
    removed.length ? h("p", { class: "hint" }, `Left out by the rule: ${removed.map((r) => r.item_id ?? r).join(", ")}`) : null,
  );
}
