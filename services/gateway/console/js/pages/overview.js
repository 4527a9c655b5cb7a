// Overview: the fleet at a glance (GET /v1/overview), refreshed every 10 s.

import { api, has } from "../api.js";
import { barChart, lineChart } from "../charts.js";
import { badge, errorBox, fmtInt, fmtNum, fmtTime, h, replace, table, unavailable } from "../dom.js";

export const title = "Overview";
export const scope = "admin";
const REFRESH_MS = 10_000;

export async function render(container) {
  const body = h("div", {});
  const stamp = h("p", { class: "lead" });
  container.append(h("h1", {}, "Overview"), stamp, body);
  if (!has(scope)) {
    body.append(unavailable(scope, "The overview (GET /v1/overview)"));
    await fallback(body);
    return null;
  }
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const data = await api("/v1/overview");
      replace(stamp, `As of ${fmtTime(data.as_of)}; refreshed every ${REFRESH_MS / 1000} s.`);
      replace(body, ...draw(data));
    } catch (error) {
      replace(body, errorBox(error, "The overview could not be read"));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function tile(term, value, extra) {
  return h("div", { class: "tile" }, h("dt", {}, term), h("dd", {}, value), extra ? h("dd", { class: "hint" }, extra) : null);
}

function draw(data) {
  const lag = (data.consumers || []).reduce((sum, consumer) => sum + (consumer.lag || 0), 0);
  const active = (data.models || []).filter((model) => model.active);
  const unavailableServices = data.unavailable || [];
  const series = data.series || {};
  const out = [];
  if (unavailableServices.length) {
    out.push(h("p", { class: "alert", role: "alert" }, h("strong", {}, "Unavailable: "), unavailableServices.join(", ")));
  }
  out.push(
    h(
      "dl",
      { class: "tiles" },
      tile("Events per second", fmtNum(data.events_per_second, 1)),
      tile("Recommendations per second", fmtNum(data.recommendations_per_second, 1)),
      tile("Members", fmtInt(data.members)),
      tile("Active models", fmtInt(active.length), active.map((m) => (m.version ? `${m.name}@${m.version}` : m.name)).join(", ")),
      tile("Degraded answers, last hour", fmtInt(data.degraded_last_hour)),
      tile("Consumer lag", data.consumers_unknown && !(data.consumers || []).length ? "–" : fmtInt(lag), data.consumers_unknown || `${(data.consumers || []).length} consumer groups`),
      tile("Dead letters waiting", fmtInt(data.dead_letters)),
    ),
    h(
      "div",
      { class: "grid" },
      h("div", { class: "card" }, lineChart({ caption: "Events per minute", series: [{ name: "events", points: series.events || [] }], xLabel: "minute (UTC)", yLabel: "events" })),
      h("div", { class: "card" }, lineChart({ caption: "Recommendations per minute", series: [{ name: "recommendations", points: series.recommendations || [] }], xLabel: "minute (UTC)", yLabel: "answers" })),
      h("div", { class: "card" }, barChart({ caption: "Degraded answers per minute", bars: (series.degraded || []).map(([t, v]) => ({ label: String(t).slice(11, 16), value: v })), yLabel: "degraded" })),
    ),
    h(
      "div",
      { class: "grid two" },
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Models"),
        table(
          ["Kind", "Name", "Version", "State"],
          (data.models || []).map((m) => [m.kind, m.name, h("code", {}, m.version || "–"), m.active ? badge("active", "good") : badge("kept")]),
        ),
      ),
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Consumers"),
        table(
          ["Group", "Topic", { text: "Lag", num: true }],
          (data.consumers || []).map((c) => [c.group, c.topic, fmtInt(c.lag)]),
        ),
      ),
    ),
  );
  return out;
}

// Without the overview route (or the admin scope): the members count and the models, from
// the routes the key may call.
async function fallback(body) {
  const tiles = h("dl", { class: "tiles" });
  body.append(tiles);
  if (has("profiles:read")) {
    try {
      const listed = await api("/v1/segments");
      tiles.append(tile("Members", fmtInt(listed.members), `segment sizes as of ${fmtTime(listed.as_of)}`));
    } catch (error) {
      body.append(errorBox(error, "Segments could not be read"));
    }
  }
  if (has("recommendations:read")) {
    try {
      const listed = await api("/v1/models");
      const current = listed.models.find((m) => m.current);
      tiles.append(
        tile("Retrieval model", current ? current.version : "none"),
        tile("Active ranker", listed.active_ranker),
      );
    } catch (error) {
      body.append(errorBox(error, "Models could not be read"));
    }
  }
  body.append(h("p", { class: "hint" }, "Events per second, lag, dead letters and the time series come with GET /v1/overview."));
}
