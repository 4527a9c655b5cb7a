// Experiments: rankers against each other on shares of a placement; start, pause, stop,
// and the report with its intervals and the sample-ratio check.

import { api, has } from "../api.js";
import { intervalChart } from "../charts.js";
import {
  action, badge, enc, errorBox, facts, field, fmtInt, fmtInterval, fmtNum, fmtPct, fmtSigned,
  fmtTime, h, link, notify, notifyError, replace, select, table, unavailable,
} from "../dom.js";

export const title = "Experiments";
export const scope = "admin";

const STATUS_KIND = { running: "good", paused: "warn", stopped: "bad", draft: "" };
const METRICS = ["ctr", "add_to_cart_rate", "conversion_rate", "revenue_per_member"];

export async function render(container, args, { go }) {
  if (!has(scope)) {
    container.append(h("h1", {}, "Experiments"), unavailable(scope, "Experiments"));
    return null;
  }
  if (args[0]) return detail(container, args[0], go);
  container.append(h("h1", {}, "Experiments"));
  const listBox = h("section", { class: "card", "aria-labelledby": "exp-list-title" });
  const createBox = h("section", { class: "card", "aria-labelledby": "exp-new-title" });
  container.append(h("div", { class: "grid two" }, listBox, createBox));
  await Promise.all([list(listBox, go), create(createBox, go)]);
  return null;
}

function transitions(experiment, go, back) {
  const id = experiment.experiment_id;
  const run = (verb, label, body, kind = "") =>
    action(label, scope, async () => {
      try {
        const changed = await api(`/v1/experiments/${enc(id)}/${verb}`, { method: "POST", body });
        notify(`${changed.name} is ${changed.status}.`);
        go(back);
      } catch (error) {
        notifyError(error, `Could not ${verb} ${experiment.name}`);
      }
    }, { class: kind, "aria-label": `${label} ${experiment.name}` });
  const out = [];
  if (experiment.status === "draft" || experiment.status === "paused") out.push(run("start", experiment.status === "draft" ? "Start" : "Resume", undefined, "primary"));
  if (experiment.status === "running") out.push(run("pause", "Pause"));
  if (experiment.status !== "stopped") out.push(run("stop", "Stop", {}, "danger"));
  return h("div", { class: "actions" }, out);
}

async function list(box, go) {
  replace(box, h("h2", { id: "exp-list-title" }, "All experiments"));
  try {
    const listed = await api("/v1/experiments");
    box.append(
      table(
        ["Experiment", "Placement", "Variants", "Status", "Actions"],
        listed.experiments.map((e) => [
          link(`#/experiments/${enc(e.experiment_id)}`, e.name),
          e.placement,
          e.variants.map((v) => `${v.name}: ${v.ranker}${v.ranker_version ? `@${v.ranker_version}` : ""} ${fmtPct(v.share, 0)}`).join("; "),
          badge(e.status, STATUS_KIND[e.status]),
          transitions(e, go, "/experiments"),
        ]),
        { empty: "No experiment yet." },
      ),
    );
  } catch (error) {
    box.append(errorBox(error, "Experiments could not be read"));
  }
}

async function create(box, go) {
  box.append(h("h2", { id: "exp-new-title" }, "New experiment"));
  let rankers = ["blend", "ltr"];
  try {
    rankers = (await api("/v1/models")).rankers.filter((r) => !r.broken).map((r) => r.name);
  } catch {
    // the two built-in rankers then
  }
  const name = h("input", { type: "text", name: "name", required: true, autocomplete: "off" });
  const placement = select(["home", "product", "cart", "email", "search", "category"], "home", { name: "placement" });
  const metric = select(METRICS, "ctr", { name: "primary_metric" });
  const variant = (label, ranker, share) => {
    const variantName = h("input", { type: "text", value: label, "aria-label": `${label} variant name`, size: 10 });
    const rankerSelect = select(rankers, ranker, { "aria-label": `${label} ranker` });
    const shareInput = h("input", { type: "number", min: 0, max: 1, step: 0.05, value: String(share), "aria-label": `${label} share of traffic`, size: 5 });
    return {
      row: h("div", { class: "row" }, variantName, rankerSelect, shareInput),
      read: () => ({ name: variantName.value.trim(), ranker: rankerSelect.value, share: Number(shareInput.value) }),
    };
  };
  const variants = [variant("control", "blend", 0.5), variant("treatment", rankers.includes("ltr") ? "ltr" : rankers[0], 0.5)];
  const problem = h("div");
  const form = h(
    "form",
    { class: "stack", novalidate: true },
    h("div", { class: "row" }, field("Name", name), field("Placement", placement), field("Primary metric", metric)),
    h("fieldset", {}, h("legend", {}, "Variants: name, ranker, share (the first is the control)"), variants.map((v) => v.row)),
    problem,
    action("Create draft", scope, null, { type: "submit", class: "primary" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(problem);
    try {
      const made = await api("/v1/experiments", {
        method: "POST",
        body: { name: name.value.trim(), placement: placement.value, primary_metric: metric.value, variants: variants.map((v) => v.read()) },
      });
      notify(`Experiment ${made.name} created as a draft.`);
      go(`/experiments/${enc(made.experiment_id)}`);
    } catch (error) {
      replace(problem, errorBox(error, "Not created"));
    }
  });
  box.append(form);
}

async function detail(container, id, go) {
  let report;
  try {
    report = await api(`/v1/experiments/${enc(id)}/report`);
  } catch (error) {
    container.append(h("p", {}, link("#/experiments", "All experiments")), h("h1", {}, `Experiment ${id}`), errorBox(error, "The report could not be read"));
    return null;
  }
  const e = report.experiment;
  const ratio = report.sample_ratio || {};
  const variants = report.variants || [];
  container.append(
    h("p", {}, link("#/experiments", "All experiments")),
    h("h1", {}, e.name, " ", badge(e.status, STATUS_KIND[e.status])),
    transitions(e, go, `/experiments/${enc(id)}`),
    ratio.flagged
      ? h(
          "div",
          { class: "alert", role: "alert", "data-testid": "srm-warning" },
          h("strong", {}, "Sample ratio mismatch: "),
          `the members per variant do not match the configured shares (chi² ${fmtNum(ratio.chi2, 2)}, p ${fmtNum(ratio.p_value, 6)}). The split is broken: no difference below can be trusted.`,
        )
      : h("p", { class: "notice", "data-testid": "srm-ok" }, `Sample ratio check passed (chi² ${fmtNum(ratio.chi2, 2)}, p ${fmtNum(ratio.p_value, 4)}).`),
    ...(report.warnings || []).map((w) => h("p", { class: "warning" }, w)),
    facts([
      ["Placement", e.placement],
      ["Primary metric", e.primary_metric],
      ["Started", fmtTime(e.started_at)],
      ["Stopped", fmtTime(e.stopped_at)],
      ["Winner", e.winner || "–"],
      ["Confidence", fmtPct(report.confidence, 0)],
      ["Attribution", report.attribution],
    ]),
    h("h2", {}, "Variants"),
    table(
      ["Variant", { text: "Members", num: true }, { text: "Expected", num: true }, { text: "Impressions", num: true }, { text: "Clicks", num: true }, { text: "Purchases", num: true }, "CTR [interval]", "Conversion [interval]", "Revenue/member [interval]", { text: "p99 ms", num: true }],
      variants.map((v) => [
        `${v.name}${v.name === e.control ? " (control)" : ""}`,
        fmtInt(v.members),
        ratio.expected && ratio.expected[v.name] !== undefined ? fmtNum(ratio.expected[v.name], 1) : "–",
        fmtInt(v.impressions),
        fmtInt(v.clicks),
        fmtInt(v.purchases),
        fmtInterval(v.ctr, 4),
        fmtInterval(v.conversion_rate, 4),
        fmtInterval(v.revenue_per_member, 2),
        fmtNum(v.latency_p99_ms, 1),
      ]),
    ),
  );
  for (const v of variants.filter((x) => (x.differences || []).length)) {
    container.append(
      intervalChart({
        caption: `${v.name} against ${e.control}: differences with their ${fmtPct(report.confidence, 0)} intervals`,
        rows: v.differences.map((d) => ({ label: d.metric, value: d.absolute, low: d.low, high: d.high, significant: d.significant })),
        xLabel: `${v.name} − ${e.control} (grey: not significant)`,
        format: (x) => fmtSigned(x, 4),
      }),
      table(
        ["Metric", "Difference [interval]", { text: "Relative", num: true }, { text: "p", num: true }, "Significant", "Method"],
        v.differences.map((d) => [d.metric, `${fmtSigned(d.absolute, 4)} [${fmtNum(d.low, 4)}, ${fmtNum(d.high, 4)}]`, d.relative === null ? "–" : fmtPct(d.relative), fmtNum(d.p_value, 4), d.significant ? badge("yes", "good") : "no", d.method]),
      ),
    );
  }
  if ((report.guardrails || []).length) {
    container.append(
      h("h2", {}, "Guardrails"),
      table(
        ["Metric", "Variant", { text: "Control", num: true }, { text: "Treatment", num: true }, "Breached", "Rule"],
        report.guardrails.map((g) => [g.metric, g.variant, fmtNum(g.control, 3), fmtNum(g.treatment, 3), g.breached ? badge("breached", "bad") : badge("ok", "good"), g.rule]),
      ),
    );
  }
  return null;
}
