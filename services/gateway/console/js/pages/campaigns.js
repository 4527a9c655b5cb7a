// Campaigns: the list, a new campaign from a template (saved as a draft, so that its
// audience per channel shows before it is launched), start/pause/end, and its report.

import { api, has } from "../api.js";
import { barChart, intervalChart } from "../charts.js";
import {
  action, badge, enc, errorBox, facts, field, fmtInt, fmtInterval, fmtNum, fmtPct, fmtSigned,
  fmtTime, h, link, notify, notifyError, replace, select, table, unavailable,
} from "../dom.js";

export const title = "Campaigns";
export const scope = "campaigns:write";

const STATUS_KIND = { active: "good", paused: "warn", ended: "bad", draft: "" };

export async function render(container, args, { go }) {
  if (!has(scope)) {
    container.append(h("h1", {}, "Campaigns"), unavailable(scope, "Campaigns"));
    return null;
  }
  if (args[0]) return detail(container, args[0], go);
  container.append(h("h1", {}, "Campaigns"));
  const listBox = h("section", { class: "card", "aria-labelledby": "camp-list-title" });
  const createBox = h("section", { class: "card", "aria-labelledby": "camp-new-title" });
  container.append(h("div", { class: "grid two" }, listBox, createBox));
  await Promise.all([list(listBox), create(createBox, go)]);
  return null;
}

async function list(box) {
  replace(box, h("h2", { id: "camp-list-title" }, "All campaigns"));
  try {
    const listed = await api("/v1/campaigns");
    box.append(
      table(
        ["Campaign", "Status", "Live", { text: "Redemptions", num: true }, { text: "Cost", num: true }],
        listed.campaigns.map((c) => [
          link(`#/campaigns/${enc(c.campaign_id)}`, c.name),
          badge(c.status, STATUS_KIND[c.status]),
          c.live ? badge("live", "good") : h("span", { class: "hint" }, c.not_live_reason || "not live"),
          fmtInt(c.redemptions),
          fmtNum(c.cost),
        ]),
        { empty: "No campaign yet." },
      ),
    );
  } catch (error) {
    box.append(errorBox(error, "Campaigns could not be read"));
  }
}

async function create(box, go) {
  box.append(h("h2", { id: "camp-new-title" }, "New campaign from a template"));
  let templates;
  try {
    templates = (await api("/v1/campaigns/templates")).templates;
  } catch (error) {
    box.append(errorBox(error, "Templates could not be read"));
    return;
  }
  const template = select(templates.map((t) => [t.name, t.name]), templates[0]?.name, { name: "template" });
  const about = h("p", { class: "hint", "aria-live": "polite" });
  const name = h("input", { type: "text", name: "name", required: true, autocomplete: "off", maxlength: 100 });
  const category = h("input", { type: "text", name: "category", autocomplete: "off", placeholder: "garden" });
  const control = h("input", { type: "number", name: "control_share", min: 0, max: 0.5, step: 0.05, value: "0.1" });
  const allYear = h("input", { type: "checkbox", name: "all_year" });
  const categoryField = field("Category (required by this template)", category);
  const problem = h("div");
  const showTemplate = () => {
    const chosen = templates.find((t) => t.name === template.value);
    const required = chosen?.required || [];
    replace(about, chosen?.description || "");
    categoryField.hidden = !required.includes("category");
    category.required = required.includes("category");
  };
  template.addEventListener("change", showTemplate);
  showTemplate();
  const form = h(
    "form",
    { class: "stack", novalidate: true },
    field("Template", template),
    about,
    field("Name", name),
    categoryField,
    field("Control share (0–0.5)", control, { hint: "Members held out to measure the uplift." }),
    field("Run all year (empty the template's seasons)", allYear, { inline: true }),
    h("p", { class: "hint" }, "The campaign is saved as a draft: check its audience, then launch it."),
    problem,
    h("button", { type: "submit", class: "primary" }, "Create draft"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(problem);
    const body = { name: name.value.trim(), status: "draft", control_share: Number(control.value) };
    if (!categoryField.hidden) body.category = category.value.trim();
    if (allYear.checked) body.schedule = { seasons: [] };
    try {
      const made = await api("/v1/campaigns", { method: "POST", query: { template: template.value }, body });
      notify(`Draft ${made.name} created.`);
      go(`/campaigns/${enc(made.campaign_id)}`);
    } catch (error) {
      replace(problem, errorBox(error, "Not created"));
    }
  });
  box.append(form);
}

async function detail(container, campaignId, go) {
  let campaign;
  try {
    campaign = await api(`/v1/campaigns/${enc(campaignId)}`);
  } catch (error) {
    container.append(h("h1", {}, `Campaign ${campaignId}`), errorBox(error, "The campaign could not be read"));
    return null;
  }
  const d = campaign.definition || {};
  const offer = d.offer || {};
  const heading = h("h1", {}, campaign.name, " ", badge(campaign.status, STATUS_KIND[campaign.status]));
  const transitions = h("div", { class: "actions" });
  const change = (verb, label) =>
    action(label, scope, async () => {
      try {
        const changed = await api(`/v1/campaigns/${enc(campaignId)}/${verb}`, { method: "POST" });
        notify(`${changed.name} is ${changed.status}.`);
        go(`/campaigns/${enc(campaignId)}`);
      } catch (error) {
        notifyError(error, `Could not ${verb}`);
      }
    }, { class: verb === "activate" ? "primary" : verb === "end" ? "danger" : "" });
  if (campaign.status === "draft") transitions.append(change("activate", "Launch"));
  if (campaign.status === "paused") transitions.append(change("activate", "Resume"));
  if (campaign.status === "active") transitions.append(change("pause", "Pause"));
  if (campaign.status !== "ended") transitions.append(change("end", "End"));
  const audienceBox = h("section", { class: "card", "aria-labelledby": "aud-title" }, h("h2", { id: "aud-title" }, "Eligible audience"));
  const reportBox = h("section", { class: "card", "aria-labelledby": "report-title" }, h("h2", { id: "report-title" }, "Report"));
  container.append(
    h("p", {}, link("#/campaigns", "All campaigns")),
    heading,
    h("p", { class: "lead" }, campaign.live ? "Live now." : `Not live: ${campaign.not_live_reason || campaign.status}.`),
    transitions,
    h(
      "div",
      { class: "grid two" },
      h(
        "section",
        { class: "card", "aria-labelledby": "def-title" },
        h("h2", { id: "def-title" }, "Definition"),
        facts([
          ["Id", h("code", {}, campaign.campaign_id)],
          ["Audience", [d.audience?.segments?.length ? `segments ${d.audience.segments.join(", ")}; ` : "", h("code", {}, d.audience?.condition || "every member")]],
          ["Offer", offer.title || describeOffer(offer)],
          ["Coupon", offer.coupon === "unique" ? `a code per member (${offer.code_prefix}-…)` : offer.coupon_code || "–"],
          ["Channels", `${(d.channels || []).join(", ")} (${d.channel_choice || "all"})`],
          ["Control share", fmtPct(d.control_share, 0)],
          ["Seasons", (d.schedule?.seasons || []).map((s) => `${s.start} to ${s.end}`).join(", ") || "all year"],
          ["Created", fmtTime(campaign.created_at)],
        ]),
      ),
      audienceBox,
    ),
    reportBox,
  );
  await Promise.all([audience(audienceBox, campaignId), report(reportBox, campaignId)]);
  return null;
}

function describeOffer(offer) {
  if (offer.tiers?.length) return offer.tiers.map((t) => `${t.name} ${t.discount_percent ?? t.discount_amount}`).join(", ");
  if (offer.discount_percent) return `${offer.discount_percent}% off`;
  if (offer.discount_amount) return `${offer.discount_amount} off`;
  return "–";
}

async function audience(box, campaignId) {
  try {
    const found = await api(`/v1/campaigns/${enc(campaignId)}/audience`);
    const channels = Object.entries(found.by_channel || {});
    box.append(
      h("p", {}, h("strong", { "data-testid": "audience-members" }, fmtInt(found.members)), ` members in the audience; ${fmtPct(found.control_share, 0)} of them held out as control. As of ${fmtTime(found.as_of)}.`),
      barChart({ caption: "Eligible members per channel (consent included)", bars: channels.map(([channel, n]) => ({ label: channel, value: n })), yLabel: "members", format: (v) => fmtInt(v), height: 170 }),
      table(["Channel", { text: "Members", num: true }], channels.map(([channel, n]) => [channel, fmtInt(n)])),
    );
  } catch (error) {
    box.append(errorBox(error, "The audience could not be counted"));
  }
}

async function report(box, campaignId) {
  let r;
  try {
    r = await api(`/v1/campaigns/${enc(campaignId)}/report`);
  } catch (error) {
    box.append(errorBox(error, "The report could not be read"));
    return;
  }
  const exposures = Object.entries(r.exposures || {});
  const totalExposures = exposures.reduce((sum, [, n]) => sum + n, 0);
  box.append(
    ...(r.warnings || []).map((w) => h("p", { class: "warning" }, w)),
    h(
      "dl",
      { class: "tiles" },
      tile("Exposures", fmtInt(totalExposures), exposures.map(([c, n]) => `${c} ${fmtInt(n)}`).join(", ")),
      tile("Members exposed / held out", `${fmtInt(r.members_exposed)} / ${fmtInt(r.members_held_out)}`),
      tile("Redemptions", fmtInt(r.redemptions), `rate ${fmtInterval(r.redemption_rate)}`),
      tile("Redeemed revenue", fmtNum(r.redeemed_revenue)),
      tile("Cost", fmtNum(r.cost)),
      tile("Incremental revenue", fmtNum(r.incremental_revenue), r.roi === null || r.roi === undefined ? "ROI –" : `ROI ${fmtNum(r.roi, 2)}`),
    ),
    h(
      "div",
      { class: "grid two" },
      intervalChart({
        caption: `Uplift against the control group (${fmtPct(r.confidence, 0)} interval)`,
        rows: [
          { label: "conversion rate", value: r.conversion_uplift?.value, low: r.conversion_uplift?.low, high: r.conversion_uplift?.high },
        ],
        xLabel: "treatment − control, conversion rate",
        format: (v) => fmtSigned(v, 3),
      }),
      intervalChart({
        caption: "Revenue per member uplift",
        rows: [{ label: "revenue per member", value: r.revenue_per_member_uplift?.value, low: r.revenue_per_member_uplift?.low, high: r.revenue_per_member_uplift?.high }],
        xLabel: "treatment − control, revenue per member",
        format: (v) => fmtSigned(v, 2),
      }),
    ),
    intervalChart({
      caption: "Conversion rate per group",
      rows: (r.groups || []).map((g) => ({ label: `${g.group} (${fmtInt(g.members)})`, value: g.conversion_rate?.value, low: g.conversion_rate?.low, high: g.conversion_rate?.high })),
      xLabel: "conversion rate",
      format: (v) => fmtNum(v, 3),
    }),
    table(
      ["Group", { text: "Members", num: true }, { text: "Converters", num: true }, "Conversion rate [interval]", "Revenue per member [interval]", { text: "Revenue", num: true }],
      (r.groups || []).map((g) => [g.group, fmtInt(g.members), fmtInt(g.converters), fmtInterval(g.conversion_rate), fmtInterval(g.revenue_per_member, 2), fmtNum(g.revenue)]),
      { empty: "No exposed or held-out member yet." },
    ),
    facts([
      ["Conversion uplift", `${fmtInterval(r.conversion_uplift)} (p ${fmtNum(r.conversion_p_value, 4)})`],
      ["Revenue per member uplift", `${fmtInterval(r.revenue_per_member_uplift, 2)} (p ${fmtNum(r.revenue_p_value, 4)})`],
      ["Method", r.method],
      ["As of", fmtTime(r.as_of)],
    ]),
  );
}

function tile(term, value, extra) {
  return h("div", { class: "tile" }, h("dt", {}, term), h("dd", {}, value), extra ? h("dd", { class: "hint" }, extra) : null);
}
