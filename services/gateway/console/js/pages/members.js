// Member lookup: the portrait, recent events, segments, offers and recommendations per
// placement; consent, tags and erasure.

import { api, ApiError, has } from "../api.js";
import { barChart } from "../charts.js";
import {
  action, append, badge, chips, enc, errorBox, facts, field, fmtInt, fmtNum, fmtPct, fmtTime, h,
  link, notify, notifyError, replace, table, unavailable, choices, uid,
} from "../dom.js";

export const title = "Members";
export const scope = "profiles:read";

const PLACEMENTS = ["home", "product", "cart", "email", "search", "category"];
const CHANNELS = ["personalization", "email", "sms", "push", "onsite"];
// Reasons a merchandising rule wrote (services/ranking/arrangement.py), drawn apart.
const RULE_REASON = /^(pinned|boosted|buried) by rule (.+)$|^in campaign (.+)$/;

export async function render(container, args, { go }) {
  const memberId = args[0] || "";
  const input = h("input", { type: "search", name: "member", value: memberId, autocomplete: "off", required: true });
  const form = h(
    "form",
    { class: "row", role: "search" },
    field("Member id", input, { hint: "A shop's member id, or an email the shop sent (tokenised as events are)." }),
    h("button", { type: "submit", class: "primary" }, "Look up"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) go(`/members/${enc(input.value.trim())}`);
  });
  container.append(h("h1", {}, memberId ? `Member ${memberId}` : "Members"), form);
  if (!memberId) {
    container.append(
      h("p", { class: "lead" }, "Look a member up by id, or open one from a segment's members (Segments page)."),
    );
    if (!has(scope)) container.append(unavailable(scope, "Profiles"));
    return null;
  }
  const view = h("div", { class: "stack" });
  container.append(
    h(
      "nav",
      { "aria-label": "On this page" },
      h("ul", { class: "contents" }, [
        ["#portrait-title", "Portrait"],
        ["#msegs-title", "Segments"],
        ["#offers-title", "Offers"],
        ["#recs-title", "Recommendations"],
        ["#erase-title", "Erasure"],
      ].map(([target, text]) => h("li", {}, h("a", { href: target, "data-scroll": target }, text)))),
    ),
    view,
  );
  // In-page links, without touching the hash the router reads.
  container.addEventListener("click", (event) => {
    const target = event.target.closest("a[data-scroll]");
    if (!target) return;
    event.preventDefault();
    const heading = document.querySelector(target.dataset.scroll);
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.scrollIntoView({ block: "start" });
      heading.focus({ preventScroll: true });
    }
  });
  await member(view, memberId, go);
  return null;
}

async function member(view, memberId, go) {
  const left = h("div", { class: "stack" });
  const right = h("div", { class: "stack" });
  const recs = h("section", { class: "card", "aria-labelledby": "recs-title" });
  view.append(h("div", { class: "grid two" }, left, right), recs);

  let profile = null;
  if (!has("profiles:read")) {
    left.append(unavailable("profiles:read", "The portrait"));
  } else {
    try {
      profile = await api(`/v1/members/${enc(memberId)}/profile`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        left.append(h("p", { class: "warning" }, `No events of member ${memberId}: ${error.detail}`));
      } else {
        left.append(errorBox(error, "The profile could not be read"));
      }
    }
  }
  if (profile) left.append(portrait(profile));
  append(right, [
    consentCard(memberId, profile),
    tagsCard(memberId, profile, () => go(`/members/${enc(memberId)}`)),
    await segmentsCard(memberId),
    await offersCard(memberId),
    profile ? recent(profile) : null,
    eraseCard(memberId, go),
  ]);
  recommendations(recs, memberId, profile);
}

function portrait(p) {
  const rfm = p.rfm || {};
  const price = p.price || {};
  const affinities = p.affinities || [];
  return h(
    "section",
    { class: "card", "aria-labelledby": "portrait-title" },
    h("h2", { id: "portrait-title" }, "Portrait"),
    facts([
      ["Lifecycle", p.lifecycle ? badge(p.lifecycle, p.lifecycle === "churned" || p.lifecycle === "at-risk" ? "warn" : "good") : "–"],
      ["First seen", fmtTime(p.first_seen)],
      ["Last seen", fmtTime(p.last_seen)],
      ["Last order", fmtTime(p.last_order_at)],
      ["Events", fmtInt(p.events)],
      ["Preferred channel", p.preferred_channel || "none yet"],
    ]),
    h("h3", {}, "Scores"),
    table(
      [{ text: "R score", num: true }, { text: "F score", num: true }, { text: "M score", num: true }, { text: "Recency (days)", num: true }, { text: "Orders", num: true }, { text: "Spend", num: true }],
      [[rfm.r_score ?? "–", rfm.f_score ?? "–", rfm.m_score ?? "–", fmtNum(rfm.recency_days, 1), fmtInt(rfm.frequency), fmtNum(rfm.monetary)]],
      { caption: "RFM: scores 1–5 are quintiles among members who ordered" },
    ),
    h("h3", {}, "Price"),
    facts([
      ["Band", price.band || "–"],
      ["Percentile", fmtPct(price.percentile)],
      ["Typical price", fmtNum(price.typical_price)],
      ["Discount sensitivity", fmtPct(price.sensitivity)],
    ]),
    barChart({
      caption: "Category affinities (share of decayed affinity)",
      bars: affinities.slice(0, 8).map((a) => ({ label: a.category, value: a.share })),
      yLabel: "share",
      format: (v) => fmtPct(v, 0),
      height: 170,
    }),
    h("h3", {}, "Tags"),
    chips((p.tags || []).map((t) => `${t.tag} (${t.source})`)),
  );
}

function recent(p) {
  return h(
    "section",
    { class: "card", "aria-labelledby": "recent-title" },
    h("h2", { id: "recent-title" }, "Recent events"),
    table(
      ["Item", "Event", "At"],
      (p.recent_items || []).slice(0, 12).map((r) => [r.item_id, r.event_type, fmtTime(r.at)]),
      { empty: "No recent items." },
    ),
  );
}

function consentCard(memberId, profile) {
  const consent = profile?.consent || {};
  const boxes = CHANNELS.map((channel) => h("input", { type: "checkbox", name: channel, checked: Boolean(consent[channel]) }));
  const status = h("p", { class: "hint" }, consent.updated_at ? `Last changed ${fmtTime(consent.updated_at)}.` : "Defaults until the member chooses.");
  const form = h(
    "form",
    {},
    h(
      "fieldset",
      {},
      h("legend", {}, "Consent"),
      h("div", { class: "row" }, boxes.map((box, i) => field(CHANNELS[i], box, { inline: true }))),
    ),
    h("div", { class: "actions" }, action("Save consent", "events:write", null, { type: "submit", class: "primary" })),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    boxes.forEach((box, i) => {
      if (!profile || Boolean(consent[CHANNELS[i]]) !== box.checked) body[CHANNELS[i]] = box.checked;
    });
    if (!Object.keys(body).length) {
      notify("Nothing changed.");
      return;
    }
    try {
      const saved = await api(`/v1/members/${enc(memberId)}/consent`, { method: "PUT", body });
      Object.assign(consent, saved.consent);
      replace(status, `Saved ${fmtTime(saved.consent.updated_at)}.`);
      notify(`Consent of ${memberId} saved.`);
    } catch (error) {
      notifyError(error, "Consent not saved");
    }
  });
  if (!has("events:write")) boxes.forEach((box) => { box.disabled = true; });
  return h("section", { class: "card", "aria-label": "Consent" }, form);
}

function tagsCard(memberId, profile, reload) {
  const input = h("input", { type: "text", name: "tag", pattern: "[a-z0-9][a-z0-9_-]{0,63}", autocomplete: "off" });
  const manual = (profile?.tags || []).filter((t) => t.source === "manual");
  const form = h(
    "form",
    { class: "row" },
    field("New tag", input, { hint: "lower-case letters, digits, - and _" }),
    action("Add tag", "segments:write", null, { type: "submit" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const tag = input.value.trim();
    if (!tag) return;
    try {
      await api(`/v1/members/${enc(memberId)}/tags/${enc(tag)}`, { method: "PUT" });
      notify(`Tag ${tag} added to ${memberId}.`);
      reload();
    } catch (error) {
      notifyError(error, "Tag not added");
    }
  });
  if (!has("segments:write")) input.disabled = true;
  return h(
    "section",
    { class: "card", "aria-labelledby": "tags-title" },
    h("h2", { id: "tags-title" }, "Manual tags"),
    manual.length
      ? h("ul", { class: "chips" }, manual.map((t) => h("li", { class: "chip" }, t.tag, " ",
          action("Remove", "segments:write", async () => {
            try {
              await api(`/v1/members/${enc(memberId)}/tags/${enc(t.tag)}`, { method: "DELETE" });
              reload();
            } catch (error) {
              notifyError(error, "Tag not removed");
            }
          }, { class: "quiet", "aria-label": `Remove tag ${t.tag}` }))))
      : h("p", { class: "muted" }, "No manual tag."),
    form,
  );
}

async function segmentsCard(memberId) {
  const card = h("section", { class: "card", "aria-labelledby": "msegs-title" }, h("h2", { id: "msegs-title" }, "Segments"));
  if (!has("profiles:read")) {
    card.append(unavailable("profiles:read", "Segments"));
    return card;
  }
  try {
    const found = await api(`/v1/members/${enc(memberId)}/segments`);
    card.append(chips(found.segments.map((s) => (typeof s === "string" ? s : s.name))));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      card.append(h("p", { class: "muted" }, error.detail));
    } else {
      card.append(errorBox(error, "Segments could not be read"));
    }
  }
  return card;
}

async function offersCard(memberId) {
  const card = h("section", { class: "card", "aria-labelledby": "offers-title" }, h("h2", { id: "offers-title" }, "Eligible offers"));
  if (!has("recommendations:read")) {
    card.append(unavailable("recommendations:read", "Offers"));
    return card;
  }
  try {
    const found = await api(`/v1/members/${enc(memberId)}/offers`, { query: { preview: "true" } });
    card.append(
      table(
        ["Offer", "Campaign", "Channel", "Code", "Expires"],
        found.offers.map((o) => [o.title, o.campaign_name || o.campaign_id, o.channel, h("code", {}, o.coupon_code || "–"), fmtTime(o.expires_at)]),
        { empty: "No offer now (campaigns, consent, caps and control groups decide)." },
      ),
      h("p", { class: "hint" }, "A preview: nothing is recorded as shown."),
    );
    if (found.degraded) card.append(h("p", { class: "warning" }, "Degraded answer: campaigns did not answer in time."));
  } catch (error) {
    card.append(errorBox(error, "Offers could not be read"));
  }
  return card;
}

function eraseCard(memberId, go) {
  const dialogId = uid("erase");
  const confirmInput = h("input", { type: "text", name: "confirm", autocomplete: "off" });
  const problem = h("div", { "aria-live": "assertive" });
  const dialog = h(
    "dialog",
    { id: dialogId, "aria-labelledby": `${dialogId}-title` },
    h(
      "form",
      { method: "dialog", class: "stack" },
      h("h2", { id: `${dialogId}-title` }, `Erase member ${memberId}?`),
      h("p", {}, "Every service removes the member's portrait, events, interactions, identity links, tags and consent. This cannot be undone."),
      field(`Type ${memberId} to confirm`, confirmInput),
      problem,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", value: "erase", class: "danger" }, "Erase for good"),
        h("button", { type: "submit", value: "cancel", formnovalidate: true }, "Cancel"),
      ),
    ),
  );
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "erase") return;
    if (confirmInput.value.trim() !== memberId) {
      replace(problem, h("p", { class: "alert", role: "alert" }, "The id typed does not match: nothing was erased."));
      dialog.showModal();
      return;
    }
    try {
      const done = await api(`/v1/members/${enc(memberId)}`, { method: "DELETE" });
      notify(`Erasure of ${memberId} ${done.status} (id ${done.erasure_id}).`);
      go("/members");
    } catch (error) {
      notifyError(error, "Not erased");
    }
  });
  return h(
    "section",
    { class: "card", "aria-labelledby": "erase-title" },
    h("h2", { id: "erase-title" }, "Erasure"),
    h("p", { class: "hint" }, "Removes the member from every store (DELETE /v1/members/{id})."),
    action("Erase member…", "admin", () => {
      confirmInput.value = "";
      replace(problem);
      dialog.showModal();
    }, { class: "danger" }),
    dialog,
  );
}

function recommendations(card, memberId, profile) {
  card.append(h("h2", { id: "recs-title" }, "Recommendations"));
  if (!has("recommendations:read")) {
    card.append(unavailable("recommendations:read", "Recommendations"));
    return;
  }
  const latest = (profile?.recent_items || [])[0]?.item_id || "";
  const context = h("input", { type: "text", name: "context_item", value: latest, autocomplete: "off" });
  const out = h("div", { "aria-live": "polite" });
  let placement = "home";
  const load = async () => {
    replace(out, h("p", { class: "muted" }, "Loading…"));
    const query = { placement, limit: 10 };
    if (placement === "product" || placement === "cart") query.context_item = context.value.trim();
    try {
      const answer = await api(`/v1/members/${enc(memberId)}/recommendations`, { query });
      replace(out, ...answerView(answer));
    } catch (error) {
      replace(out, errorBox(error, "Recommendations could not be read"));
    }
  };
  const contextForm = h(
    "form",
    { class: "row" },
    field("Item in view", context, { hint: "The product page's item, or the cart's: the sources start from it." }),
    h("button", { type: "submit" }, "Show"),
  );
  contextForm.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  const showContext = () => {
    contextForm.hidden = placement !== "product" && placement !== "cart";
  };
  showContext();
  card.append(
    choices("Placement", PLACEMENTS, placement, (value) => {
      placement = value;
      showContext();
      load();
    }),
    contextForm,
    out,
  );
  load();
}

function answerView(answer) {
  const rows = answer.items.map((item, index) => {
    const sources = item.sources || [];
    const touched = item.rules || [];
    return [
      String(index + 1),
      h("code", {}, item.item_id),
      item.category || "–",
      fmtNum(item.score, 3),
      h("ul", { class: "chips" }, (item.reasons || []).map((r) => h("li", { class: RULE_REASON.test(r) ? "chip rule" : "chip" }, r))),
      sources.length ? chips(sources, "source") : "–",
      touched.length ? chips(touched, "rule") : h("span", { class: "muted" }, "none"),
    ];
  });
  const status = [
    answer.degraded ? badge(`degraded: ${(answer.degraded_services || []).join(", ") || "yes"}`, "bad") : badge("not degraded", "good"),
    " ",
    answer.personalized === false ? badge("not personalized (no consent)", "warn") : badge("personalized"),
  ];
  return [
    facts([
      ["Model", h("code", {}, answer.model)],
      ["Experiment variant", answer.experiment_id ? [answer.variant, " in ", link(`#/experiments/${enc(answer.experiment_id)}`, answer.experiment_id)] : answer.variant],
      ["Answer", status],
      ["Recommendation id", h("code", {}, answer.recommendation_id)],
    ]),
    table(
      [{ text: "#", num: true }, "Item", "Category", { text: "Score", num: true }, "Reasons", "Candidate sources", "Rules"],
      rows,
      { caption: `${answer.items.length} items for placement ${answer.placement}`, empty: "No items.", className: "recs" },
    ),
    h("p", { class: "hint" }, "Candidate sources: every source that proposed the item, most confident first."),
  ];
}
