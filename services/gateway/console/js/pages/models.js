// Models: retrieval versions and rankers with their offline metrics side by side; activate
// a ranker or a version, make a retrieval version current, roll back.

import { api, has } from "../api.js";
import { barChart } from "../charts.js";
import { action, badge, enc, errorBox, fmtInt, fmtNum, fmtTime, h, notify, notifyError, replace, table, unavailable } from "../dom.js";

export const title = "Models";
export const scope = "recommendations:read";

// Every number of a version's `meta.metrics`, flattened: {"validation_ndcg@10.ltr": 0.80, ...}.
export function flatMetrics(meta) {
  const out = {};
  const walk = (value, path) => {
    if (typeof value === "number") out[path] = value;
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) walk(inner, path ? `${path}.${key}` : key);
    }
  };
  walk(meta?.metrics || {}, "");
  return out;
}

export async function render(container, args, { go }) {
  container.append(
    h("h1", {}, "Models"),
    h("p", { class: "lead" }, "Retrieval model versions and rankers. Activating changes what answers use within a second; a ranker that fails its probe is refused and the active one stays."),
  );
  if (!has(scope)) {
    container.append(unavailable(scope, "Models"));
    return null;
  }
  const body = h("div", { class: "stack" });
  container.append(body);
  let listed;
  try {
    listed = await api("/v1/models");
  } catch (error) {
    body.append(errorBox(error, "Models could not be read"));
    return null;
  }
  const reload = () => go("/models");
  body.append(retrieval(listed.models || [], reload), ...(listed.rankers || []).map((r) => ranker(r, listed.active_ranker, reload)));
  return null;
}

function retrieval(models, reload) {
  const current = models.find((m) => m.current);
  return h(
    "section",
    { class: "card", "aria-labelledby": "retrieval-title" },
    h("h2", { id: "retrieval-title" }, "Retrieval (ALS + FAISS)"),
    h(
      "div",
      { class: "actions" },
      action("Roll back to the previous version", "admin", async () => {
        try {
          const now = await api("/v1/models/retrieval/rollback", { method: "POST", body: {} });
          notify(`Retrieval now serves ${now.version}.`);
          reload();
        } catch (error) {
          notifyError(error, "Not rolled back");
        }
      }),
    ),
    table(
      ["Version", "Trained", { text: "Members", num: true }, { text: "Items", num: true }, { text: "Interactions", num: true }, { text: "Factors", num: true }, "State", "Action"],
      models.map((m) => [
        h("code", {}, m.version),
        fmtTime(m.trained_at),
        fmtInt(m.members),
        fmtInt(m.items),
        fmtInt(m.interactions),
        fmtInt(m.factors),
        m.refused ? badge(`refused: ${m.refused}`, "bad") : m.current ? badge(m.served ? "current, served" : "current", "good") : badge("kept"),
        m.current || m.refused
          ? "–"
          : action("Make current", "admin", async () => {
              try {
                await api("/v1/models/retrieval/activate", { method: "POST", body: { version: m.version } });
                notify(`Retrieval version ${m.version} made current.`);
                reload();
              } catch (error) {
                notifyError(error, "Not made current");
              }
            }, { "aria-label": `Make retrieval version ${m.version} current` }),
      ]),
      { caption: current ? `Current: ${current.version}` : "No current version", empty: "No version trained yet: recofleet train." },
    ),
  );
}

function ranker(r, activeName, reload) {
  const versions = r.versions || [];
  const metricNames = [...new Set(versions.flatMap((v) => Object.keys(flatMetrics(v.meta))))];
  const activate = (version) =>
    action(version ? "Activate" : `Activate ${r.name}`, "admin", async () => {
      try {
        const done = await api(`/v1/models/${enc(r.name)}/activate`, { method: "POST", body: version ? { version } : {} });
        notify(`${done.name}${done.version ? `@${done.version}` : ""} is active (probe median ${fmtNum(done.probe_median_ms, 2)} ms).`);
        reload();
      } catch (error) {
        notifyError(error, `${r.name} not activated`);
      }
    }, { "aria-label": version ? `Activate ${r.name} version ${version}` : `Activate ranker ${r.name}`, class: version ? "" : "primary" });
  const headline = metricNames.find((n) => n.endsWith(`.${r.name}`)) || metricNames[0];
  return h(
    "section",
    { class: "card", "aria-labelledby": `ranker-${r.name}` },
    h("h2", { id: `ranker-${r.name}` }, `Ranker ${r.name} `, r.active || r.name === activeName ? badge("active", "good") : null),
    h("p", { class: "hint" }, `${r.origin}; ${r.trained ? "trained" : "not trained"}.`),
    r.broken ? h("p", { class: "alert" }, `Cannot be built: ${r.broken}`) : null,
    h("div", { class: "actions" }, r.active || r.broken || (r.trained && !versions.length) ? null : activate(null)),
    r.trained
      ? table(
          ["Version", "Trained", "From", ...metricNames.map((n) => ({ text: n, num: true })), "State", "Action"],
          versions.map((v) => [
            h("code", {}, v.version),
            fmtTime(v.trained_at),
            v.meta?.trained_from || "–",
            ...metricNames.map((n) => fmtNum(flatMetrics(v.meta)[n], 4)),
            v.refused ? badge(`refused: ${v.refused}`, "bad") : v.current ? badge(r.active ? "active" : "current") : badge("kept"),
            v.refused ? "–" : activate(v.version),
          ]),
          { caption: "Versions and their offline metrics (validation on the newest fifth of the groups)", empty: "No version yet: recofleet train-ranker." },
        )
      : null,
    headline && versions.length > 1
      ? barChart({ caption: `${headline} by version`, bars: versions.map((v) => ({ label: v.version.slice(0, 15), value: flatMetrics(v.meta)[headline] ?? 0 })), yLabel: headline, height: 160 })
      : null,
  );
}
