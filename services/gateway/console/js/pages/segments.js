// Segments: sizes, a condition builder with a live size, members, CSV export, discovery.

import { api, download, has } from "../api.js";
import { sparkline } from "../charts.js";
import {
  action, badge, debounce, enc, errorBox, field, fmtInt, fmtNum, fmtPct, fmtTime, h,
  link, notify, notifyError, replace, select, table, unavailable,
} from "../dom.js";

export const title = "Segments";
export const scope = "profiles:read";

const NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

const FIELDS = [
  ["lifecycle", "Lifecycle", "choice", ["new", "active", "high-value", "loyal", "at-risk", "churned", "prospect"]],
  ["r_score", "R score (1–5)", "number"],
  ["f_score", "F score (1–5)", "number"],
  ["m_score", "M score (1–5)", "number"],
  ["recency_days", "Days since last order", "number"],
  ["frequency", "Orders", "number"],
  ["monetary", "Spend", "number"],
  ["events", "Events", "number"],
  ["affinity", "Affinity share of a category (0–1)", "family"],
  ["days_since_purchase", "Days since a purchase in a category", "family"],
  ["price_band", "Price band", "choice", ["low", "mid", "high"]],
  ["price_percentile", "Price percentile (0–1)", "number"],
  ["price_sensitivity", "Discount sensitivity (0–1)", "number"],
  ["tags", "Has tag", "set"],
  ["consent", "Consents to", "set", ["personalization", "email", "sms", "push", "onsite"]],
  ["preferred_channel", "Preferred channel", "choice", ["onsite", "email", "sms", "push", "web", "app"]],
  ["days_since_first_seen", "Days since first seen", "number"],
  ["days_since_last_seen", "Days since last seen", "number"],
];
const NUMBER_OPS = [">=", "<=", ">", "<", "==", "!="];
const CHOICE_OPS = ["==", "!="];
const SET_OPS = [["in", "has"], ["not in", "has not"]];

function quote(text) {
  return `'${String(text).replace(/'/g, "")}'`;
}

// One row of the builder as condition text; "" while it is incomplete.
export function clause({ field: name, category, op, value }) {
  const spec = FIELDS.find((f) => f[0] === name);
  if (!spec) return "";
  const kind = spec[2];
  const text = String(value ?? "").trim();
  if (!text) return "";
  if (kind === "set") return op === "not in" ? `not (${quote(text)} in ${name})` : `${quote(text)} in ${name}`;
  if (kind === "choice") return `${name} ${op} ${quote(text)}`;
  if (!Number.isFinite(Number(text))) return "";
  if (kind === "family") {
    const cat = String(category ?? "").trim();
    return cat ? `${name}[${quote(cat)}] ${op} ${Number(text)}` : "";
  }
  return `${name} ${op} ${Number(text)}`;
}

export function conditionOf(rows, join) {
  const parts = rows.map(clause).filter(Boolean);
  if (parts.length < 2) return parts.join("");
  return parts.map((p) => (p.includes(" or ") ? `(${p})` : p)).join(` ${join} `);
}

export async function render(container) {
  container.append(
    h("h1", {}, "Segments"),
    h("p", { class: "lead" }, "Segments are conditions over member portraits, counted live by the profiles service."),
  );
  if (!has(scope)) {
    container.append(unavailable(scope, "Segments"));
    return null;
  }
  const listBox = h("section", { class: "card", "aria-labelledby": "seg-list-title" });
  const preview = h("section", { class: "card", "aria-labelledby": "seg-preview-title", hidden: true });
  const builderBox = h("section", { class: "card", "aria-labelledby": "builder-title" });
  const discoverBox = h("section", { class: "card", "aria-labelledby": "discover-title" });
  container.append(listBox, preview, h("div", { class: "grid two" }, builderBox, discoverBox));

  const reload = () => list(listBox, preview);
  const builder = buildBuilder(builderBox, reload);
  discovery(discoverBox, builder, reload);
  await reload();
  return () => builder.cancel();
}

async function list(box, preview) {
  replace(box, h("h2", { id: "seg-list-title" }, "All segments"));
  let listed;
  try {
    listed = await api("/v1/segments");
  } catch (error) {
    box.append(errorBox(error, "Segments could not be read"));
    return;
  }
  const shown = listed.segments;
  const hasTrend = shown.some((s) => (s.trend || []).length > 0);
  const columns = ["Name", "Kind", { text: "Size", num: true }, { text: "Share", num: true }];
  if (hasTrend) columns.push("Trend");
  columns.push("Condition", "Actions");
  box.append(
    h("p", { class: "hint" }, `${fmtInt(listed.members)} members; sizes as of ${fmtTime(listed.as_of)}.`),
    table(
      columns,
      shown.map((s) => {
        const row = [s.name, s.kind === "lifecycle" ? badge("lifecycle") : badge("custom", "good"), fmtInt(s.size), fmtPct(listed.members ? s.size / listed.members : null)];
        if (hasTrend) {
          const trend = s.trend || [];
          const said = trend.map((p) => `${p.day}: ${p.size}`).join(", ");
          row.push(trend.length > 1 ? sparkline(trend.map((p) => p.size), `size of ${s.name} by day: ${said}`) : h("span", { class: "muted", title: said }, trend.length ? `since ${trend[0].day}` : "–"));
        }
        row.push(
          h("code", {}, s.condition),
          h(
            "div",
            { class: "actions" },
            h("button", { type: "button", onclick: () => members(preview, s.name), "aria-label": `Preview members of ${s.name}` }, "Members"),
            h("button", {
              type: "button",
              "aria-label": `Export ${s.name} as CSV`,
              onclick: async () => {
                try {
                  const size = await download(`/v1/segments/${enc(s.name)}/export`, { format: "csv" }, `${s.name}.csv`);
                  notify(`Exported ${s.name}.csv (${fmtInt(size)} bytes).`);
                } catch (error) {
                  notifyError(error, "Export failed");
                }
              },
            }, "Export CSV"),
            s.kind === "custom"
              ? action("Delete", "segments:write", async () => {
                  if (!window.confirm(`Delete segment ${s.name}?`)) return;
                  try {
                    await api(`/v1/segments/${enc(s.name)}`, { method: "DELETE" });
                    notify(`Segment ${s.name} deleted.`);
                    list(box, preview);
                  } catch (error) {
                    notifyError(error, "Not deleted");
                  }
                }, { "aria-label": `Delete ${s.name}` })
              : null,
          ),
        );
        return row;
      }),
    ),
  );
}

async function members(box, name, after = null) {
  box.hidden = false;
  replace(box, h("h2", { id: "seg-preview-title" }, `Members of ${name}`));
  try {
    const page = await api(`/v1/segments/${enc(name)}/members`, { query: { limit: 20, after } });
    box.append(
      table(
        ["Member", "Lifecycle", { text: "Recency (days)", num: true }, { text: "Orders", num: true }, { text: "Spend", num: true }, "R F M", "Top category", "Tags"],
        page.members.map((m) => [
          link(`#/members/${enc(m.member_id)}`, m.member_id),
          m.lifecycle,
          fmtNum(m.recency_days, 1),
          fmtInt(m.frequency),
          fmtNum(m.monetary),
          `${m.r_score ?? "–"} ${m.f_score ?? "–"} ${m.m_score ?? "–"}`,
          m.top_category || "–",
          (m.tags || []).join(", ") || "–",
        ]),
        { empty: "No member in this segment.", caption: after ? `After ${after}` : "First page" },
      ),
      page.next_after
        ? h("button", { type: "button", onclick: () => members(box, name, page.next_after) }, "Next page")
        : h("p", { class: "hint" }, "Last page."),
    );
    box.scrollIntoView({ block: "nearest" });
  } catch (error) {
    box.append(errorBox(error, "Members could not be read"));
  }
}

// Sizing a condition reads (POST /v1/segments/count, profiles:read); saving it writes.
function buildBuilder(box, reload) {
  box.append(h("h2", { id: "builder-title" }, "Build a segment"));
  const canWrite = has("segments:write");
  if (!canWrite) box.append(unavailable("segments:write", "Saving a segment"));
  const name = h("input", { type: "text", name: "name", required: true, pattern: NAME.source, autocomplete: "off", disabled: !canWrite });
  const description = h("input", { type: "text", name: "description", autocomplete: "off", disabled: !canWrite });
  const join = select([["and", "all of them (and)"], ["or", "any of them (or)"]], "and", { name: "join" });
  const rowsBox = h("div", { class: "stack" });
  const asText = h("input", { type: "checkbox", name: "as-text" });
  const text = h("textarea", { name: "condition", rows: 3, hidden: true, spellcheck: "false" });
  const generated = h("output", { class: "mono", "aria-live": "off" });
  const size = h("p", { class: "tile", "aria-live": "polite", "data-testid": "builder-size" }, "Size: add a condition");
  const problem = h("div");
  const rows = [];

  const condition = () => (asText.checked ? text.value.trim() : conditionOf(rows.map((r) => r.read()), join.value));

  let asked = 0;
  const count = debounce(async () => {
    const wanted = condition();
    replace(problem);
    if (!wanted) {
      replace(size, "Size: add a condition");
      return;
    }
    const mine = ++asked;
    replace(size, "Size: counting…");
    try {
      const answer = await api("/v1/segments/count", { method: "POST", body: { condition: wanted } });
      if (mine !== asked) return;
      replace(size, h("span", { class: "hint" }, "Size now"), " ", h("strong", { "data-testid": "builder-size-value" }, fmtInt(answer.members)), " members");
    } catch (error) {
      if (mine !== asked) return;
      replace(size, "Size: –");
      replace(problem, errorBox(error, "The condition is not valid"));
    }
  }, 400);

  const changed = () => {
    const wanted = condition();
    replace(generated, wanted || "–");
    count();
  };

  const addRow = (initial = {}) => {
    const fieldSelect = select(FIELDS.map(([value, label]) => [value, label]), initial.field || "m_score", { "aria-label": "Field" });
    const category = h("input", { type: "text", value: initial.category || "", "aria-label": "Category", placeholder: "category, e.g. garden", size: 14 });
    const op = h("select", { "aria-label": "Comparison" });
    const valueBox = h("span");
    let value = null;
    const row = h("div", { class: "row" });
    const refreshKind = () => {
      const spec = FIELDS.find((f) => f[0] === fieldSelect.value);
      const kind = spec[2];
      category.hidden = kind !== "family";
      const ops = kind === "set" ? SET_OPS : kind === "choice" ? CHOICE_OPS : NUMBER_OPS;
      replace(op, ...ops.map((o) => {
        const [v, t] = Array.isArray(o) ? o : [o, o];
        return h("option", { value: v }, t);
      }));
      value = spec[3]
        ? select(spec[3], spec[3][0], { "aria-label": "Value" })
        : h("input", { type: kind === "set" ? "text" : "number", step: "any", "aria-label": "Value", size: 8, placeholder: kind === "set" ? "tag" : "number" });
      value.addEventListener("input", changed);
      value.addEventListener("change", changed);
      replace(valueBox, value);
    };
    fieldSelect.addEventListener("change", () => {
      refreshKind();
      changed();
    });
    op.addEventListener("change", changed);
    category.addEventListener("input", changed);
    refreshKind();
    if (initial.op) op.value = initial.op;
    if (initial.value !== undefined) value.value = initial.value;
    const entry = {
      read: () => ({ field: fieldSelect.value, category: category.value, op: op.value, value: value.value }),
    };
    const remove = h("button", { type: "button", "aria-label": "Remove this condition", onclick: () => {
      rows.splice(rows.indexOf(entry), 1);
      row.remove();
      changed();
    } }, "Remove");
    append(row, fieldSelect, category, op, valueBox, remove);
    rows.push(entry);
    rowsBox.append(row);
    return entry;
  };

  const rowsPart = h("div", { class: "stack" });
  asText.addEventListener("change", () => {
    if (asText.checked) text.value = conditionOf(rows.map((r) => r.read()), join.value);
    text.hidden = !asText.checked;
    rowsPart.hidden = asText.checked;
    changed();
  });
  text.addEventListener("input", changed);
  join.addEventListener("change", changed);

  const form = h(
    "form",
    { class: "stack", novalidate: true },
    h("div", { class: "row" }, field("Name", name, { hint: "lower-case letters, digits, - and _" }), field("Description", description)),
    h(
      "fieldset",
      {},
      h("legend", {}, "Conditions"),
      append(rowsPart, field("Members match", join), rowsBox, h("div", { class: "actions" }, h("button", { type: "button", onclick: () => { addRow({ value: "" }); changed(); } }, "Add a condition"))),
      field("Write the condition as text", asText, { inline: true }),
      text,
      h("p", { class: "hint" }, "Condition: ", generated),
    ),
    size,
    problem,
    h("div", { class: "actions" }, action("Save segment", "segments:write", null, { type: "submit", class: "primary" })),
  );
  text.setAttribute("aria-label", "Condition");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const wanted = condition();
    if (!NAME.test(name.value.trim())) {
      replace(problem, h("p", { class: "alert", role: "alert" }, "Name: 1 to 64 lower-case letters, digits, - or _, starting with a letter or digit."));
      name.focus();
      return;
    }
    if (!wanted) {
      replace(problem, h("p", { class: "alert", role: "alert" }, "Add at least one complete condition."));
      return;
    }
    try {
      const answer = await api("/v1/segments", { method: "POST", body: { name: name.value.trim(), condition: wanted, description: description.value } });
      notify(`Segment ${answer.name} saved: ${fmtInt(answer.size)} members.`);
      reload();
    } catch (error) {
      replace(problem, errorBox(error, "Not saved"));
    }
  });
  box.append(form);
  addRow({ field: "m_score", op: ">=", value: "4" });
  changed();
  return {
    cancel: () => count.cancel(),
    load: (definition) => {
      name.value = definition.name || "";
      description.value = definition.description || "";
      asText.checked = true;
      text.value = definition.condition;
      text.hidden = false;
      rowsPart.hidden = true;
      changed();
      name.focus();
    },
  };
}

function append(parent, ...children) {
  for (const child of children) parent.append(child);
  return parent;
}

// A discovered cluster as the body of PUT /v1/segments/{name}: its `conditions` are that
// body ({condition, description}); a list or a text of conditions is taken too.
export function clusterDefinition(cluster) {
  const conditions = cluster.conditions ?? cluster.condition ?? "";
  const description = (cluster.description || "").slice(0, 500);
  if (conditions && typeof conditions === "object" && !Array.isArray(conditions)) {
    return { condition: String(conditions.condition || ""), description: (conditions.description ?? description).slice(0, 500) };
  }
  if (Array.isArray(conditions)) {
    return { condition: conditions.map((c) => (/ or /.test(c) ? `(${c})` : c)).join(" and "), description };
  }
  return { condition: String(conditions), description };
}

function discovery(box, builder, reload) {
  box.append(h("h2", { id: "discover-title" }, "Discover segments"), h("p", { class: "hint" }, "k-means over members' RFM scores and category shares; each cluster comes as a ready condition."));
  const canWrite = has("segments:write");
  const clusters = h("input", { type: "number", name: "clusters", min: 2, max: 12, value: "5", disabled: !canWrite });
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "row" }, field("Clusters", clusters), action("Discover", "segments:write", null, { type: "submit" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(out, h("p", { class: "muted" }, "Clustering…"));
    try {
      const found = await api("/v1/segments/discover", { method: "POST", body: { clusters: Number(clusters.value) } });
      replace(out, ...found.clusters.map((cluster) => clusterCard(cluster, builder, reload)));
    } catch (error) {
      replace(out, errorBox(error, "Discovery failed"));
    }
  });
  box.append(form, out);
}

function clusterCard(cluster, builder, reload) {
  const definition = clusterDefinition(cluster);
  const fit = Number.isFinite(cluster.precision)
    ? h("p", { class: "hint" }, `The condition's precision ${fmtNum(cluster.precision)}, recall ${fmtNum(cluster.recall)}.`)
    : null;
  return h(
    "article",
    { class: "card" },
    h("h3", {}, `${cluster.name} `, h("span", { class: "hint" }, `${fmtInt(cluster.size)} members${Number.isFinite(cluster.share) ? `, ${fmtPct(cluster.share)}` : ""}`)),
    h("p", {}, cluster.description),
    h("p", {}, h("code", {}, definition.condition)),
    fit,
    h(
      "div",
      { class: "actions" },
      action("Save as segment", "segments:write", async () => {
        try {
          const saved = await api(`/v1/segments/${enc(cluster.name)}`, { method: "PUT", body: definition });
          notify(`Segment ${saved.name} saved: ${fmtInt(saved.size)} members.`);
          reload();
        } catch (error) {
          notifyError(error, "Not saved");
        }
      }, { "aria-label": `Save ${cluster.name} as a segment` }),
      h("button", { type: "button", onclick: () => builder.load({ name: cluster.name, ...definition }) }, "Edit in the builder"),
    ),
  );
}
