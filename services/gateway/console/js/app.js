// The console's entry point: sign-in, the header, and a small hash router.
// Routes: #/overview, #/members[/id], #/segments, #/campaigns[/id], #/models,
// #/experiments[/id], #/rules, #/signin.

import { ApiError, onSessionChange, session, signIn, signOut, takeSignOutReason } from "./api.js";
import { clearOldNotices, errorBox, field, h, replace } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as members from "./pages/members.js";
import * as segments from "./pages/segments.js";
import * as campaigns from "./pages/campaigns.js";
import * as models from "./pages/models.js";
import * as experiments from "./pages/experiments.js";
import * as rules from "./pages/rules.js";

const PAGES = { overview, members, segments, campaigns, models, experiments, rules };
const main = document.getElementById("main");
let leaving = null;

function parse(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return { page: parts[0] || "overview", args: parts.slice(1).filter(Boolean) };
}

export function go(path) {
  if (window.location.hash === `#${path}`) route();
  else window.location.hash = path;
}

async function route() {
  if (leaving) {
    try {
      leaving();
    } catch {
      // a page's clean-up never stops the next page
    }
    leaving = null;
  }
  const { page, args } = parse(window.location.hash);
  clearOldNotices();
  header(page);
  if (!session() || page === "signin") {
    document.title = "Sign in · recofleet console";
    renderSignIn();
    return;
  }
  const module = PAGES[page];
  if (!module) {
    replace(main, h("h1", {}, "No such page"), h("p", {}, h("a", { href: "#/overview" }, "Go to the overview")));
    return;
  }
  document.title = `${module.title} · recofleet console`;
  const container = h("div", { class: "page" });
  replace(main, container);
  try {
    leaving = (await module.render(container, args, { go })) || null;
  } catch (error) {
    container.append(errorBox(error, `The ${module.title.toLowerCase()} page failed`));
  }
  if (document.activeElement === document.body || !main.contains(document.activeElement)) {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    }
  }
}

function header(page) {
  const current = session();
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.hidden = !current;
  who.hidden = !current;
  if (!current) return;
  for (const anchor of nav.querySelectorAll("a")) {
    const name = anchor.dataset.page;
    const needed = PAGES[name]?.scope;
    const allowed = !needed || current.scopes.includes("admin") || current.scopes.includes(needed);
    anchor.classList.toggle("locked", !allowed);
    anchor.title = allowed ? "" : `needs scope ${needed}`;
    if (name === page) anchor.setAttribute("aria-current", "page");
    else anchor.removeAttribute("aria-current");
  }
  const label = current.name ? `${current.name} (${current.keyId})` : `key ${current.keyId}`;
  replace(document.getElementById("who-text"), `${label} · ${current.scopes.join(", ") || "no scopes"}`);
}

function renderSignIn() {
  const input = h("input", {
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "rf_…",
  });
  const message = h("div", { "aria-live": "polite" });
  const reason = takeSignOutReason();
  if (reason) message.append(h("p", { class: "warning" }, reason));
  const form = h(
    "form",
    { class: "card stack", novalidate: true },
    field("Access key", input, {
      hint: "Kept in this tab only (sessionStorage) and sent as Authorization: Bearer to the API.",
    }),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(message);
    if (!input.value.trim()) {
      message.append(h("p", { class: "alert", role: "alert" }, "Enter an access key."));
      input.focus();
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await signIn(input.value);
      const target = parse(window.location.hash);
      go(target.page === "signin" ? "/overview" : window.location.hash.slice(1) || "/overview");
    } catch (error) {
      const text = error instanceof ApiError && error.status === 401 ? "Sign-in refused" : "Sign-in failed";
      message.append(errorBox(error, text));
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(
    main,
    h(
      "section",
      { class: "signin", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title" }, "Sign in"),
      h(
        "p",
        { class: "lead" },
        "The console is a client of the gateway's API: it shows what your access key's scopes allow. ",
        "Make a key with ",
        h("code", {}, "recofleet keys create --scope …"),
        ".",
      ),
      form,
      message,
    ),
  );
  input.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  go("/signin");
});
onSessionChange((value) => {
  if (!value) route();
});
window.addEventListener("hashchange", route);
route();
