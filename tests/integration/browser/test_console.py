"""The console (/console) in chromium against a running fleet: what issue 14 asks a user to
be able to do, through the public API only. Screenshots of each page go to
artifacts/console/; the member view also to docs/console-member.png (the README's)."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest

from tests.integration.browser.conftest import ROOT, Console
from tests.integration.conftest import RunningFleet, cli

pytestmark = pytest.mark.integration


def example_member(fleet: RunningFleet) -> str:
    return str(json.loads((fleet.data_dir / "loaded.json").read_text())["example_member"])


def test_the_console_is_public_locked_down_and_adds_no_way_in(fleet: RunningFleet) -> None:
    with httpx.Client(base_url=fleet.url, timeout=10) as http:
        for path in ("/console", "/console/"):
            page = http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert '<script type="module" src="/console/js/app.js">' in page.text
            policy = page.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "http" not in policy and "*" not in policy and "unsafe" not in policy
        module = http.get("/console/js/api.js")
        assert module.status_code == 200 and "javascript" in module.headers["content-type"]
        assert "default-src 'none'" in module.headers["content-security-policy"]
        assert http.get("/console/js/missing.js").status_code == 404
        # The pages are public; the data behind them is not.
        assert http.get("/v1/segments").status_code == 401
        assert "/console" not in http.get("/openapi.json").json()["paths"]


def test_signing_in_with_the_admin_key_shows_the_overview(console: Console) -> None:
    page = console.page
    console.open()
    assert page.get_by_role("heading", name="Sign in").is_visible()
    console.expect_status(401, "GET", r"/v1/access-key$")
    page.get_by_label("Access key").fill("rf_000000000000_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").filter(has_text="not valid").wait_for()

    console.sign_in(console.fleet.admin_key)
    page.get_by_role("heading", name="Overview", exact=True).wait_for()
    assert "admin" in page.locator("#who-text").inner_text()
    # The figures: from GET /v1/overview, or, on a gateway without it, the members count.
    page.locator(".tiles .tile").first.wait_for()
    assert page.locator(".tiles").filter(has_text="Members").count() == 1
    console.shot("overview")


def test_a_member_lookup_shows_the_portrait_and_recommendations_with_reasons(
    console: Console,
) -> None:
    page = console.page
    member = example_member(console.fleet)
    console.sign_in(console.fleet.admin_key)
    console.nav("Members")
    page.get_by_label("Member id").fill(member)
    page.get_by_role("button", name="Look up").click()
    page.get_by_role("heading", name=f"Member {member}").wait_for()
    page.get_by_role("heading", name="Portrait").wait_for()
    assert page.locator("dl.facts").first.get_by_text("Lifecycle").is_visible()
    rows = page.locator("table.recs tbody tr")
    rows.first.wait_for()
    assert rows.count() == 10
    first = rows.first
    assert first.locator(".chip").count() >= 1  # its reasons
    assert page.get_by_role("columnheader", name="Candidate sources").is_visible()
    assert page.locator("table.recs .chip.source").count() >= 1
    assert page.get_by_text("Experiment variant").is_visible()
    for heading in ("Segments", "Eligible offers", "Recent events", "Manual tags"):
        page.get_by_role("heading", name=heading, exact=True).wait_for()
    assert page.get_by_role("group", name="Consent").is_visible()
    console.shot("member", also=ROOT / "docs" / "console-member.png")

    # Another placement, with the item in view.
    page.get_by_role("radio", name="product").check()
    page.get_by_text("items for placement product").wait_for()
    # Erasure asks first, and a cancel erases nothing.
    page.get_by_role("button", name="Erase member…").click()
    dialog = page.get_by_role("dialog")
    assert dialog.get_by_label(f"Type {member} to confirm").is_visible()
    dialog.get_by_role("button", name="Cancel").click()
    assert not dialog.is_visible()
    assert page.get_by_role("heading", name=f"Member {member}").is_visible()


def test_a_segment_built_with_conditions_shows_its_size_as_they_change(
    console: Console,
) -> None:
    page = console.page
    name = f"browser-{uuid.uuid4().hex[:8]}"
    with console.fleet.client() as http:
        before = {s["name"] for s in http.get("/v1/segments").json()["segments"]}
    console.sign_in(console.fleet.admin_key)
    console.nav("Segments")
    page.get_by_role("heading", name="All segments").wait_for()
    page.get_by_role("rowheader", name="active", exact=True).wait_for()
    # Each segment's trend: a point per day counted, from the first listing on.
    assert page.get_by_role("columnheader", name="Trend").is_visible()
    size = page.get_by_test_id("builder-size-value")
    size.wait_for()
    first = int(size.inner_text().replace(",", ""))
    assert 0 < first <= 600
    page.get_by_label("Value", exact=True).fill("5")
    page.wait_for_function(
        "before => { const el = document.querySelector('[data-testid=builder-size-value]');"
        " return el && Number(el.textContent.replace(/,/g, '')) !== before; }",
        arg=first,
    )
    narrower = int(size.inner_text().replace(",", ""))
    assert narrower < first
    # A second condition, and a bad one's detail from the API.
    page.get_by_role("button", name="Add a condition").click()
    last = page.get_by_label("Field", exact=True).last
    last.select_option("lifecycle")
    with page.expect_response(lambda r: r.url.endswith("/v1/segments/count")):
        page.get_by_label("Value", exact=True).last.select_option("high-value")
    assert "lifecycle == 'high-value'" in page.locator("output.mono").inner_text()
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=builder-size]')"
        ".textContent.includes('counting')"
    )
    both = int(size.inner_text().replace(",", ""))
    assert both <= narrower
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Save segment").click()
    page.get_by_text(f"Segment {name} saved").wait_for()
    page.get_by_role("rowheader", name=name, exact=True).wait_for()
    # Its members, a page of them.
    page.get_by_role("button", name=f"Preview members of {name}").click()
    page.get_by_role("heading", name=f"Members of {name}").wait_for()
    page.locator("section[aria-labelledby=seg-preview-title] tbody tr").first.wait_for()
    # Discovery: the clusters, one of them saved as it comes.
    page.get_by_role("button", name="Discover").click()
    suggested = page.locator("#discover-title ~ div article")
    suggested.first.wait_for()
    console.shot("segments")
    saved_cluster = suggested.last.locator("h3").inner_text().split(" ")[0]
    suggested.last.get_by_role("button", name=f"Save {saved_cluster} as a segment").click()
    page.get_by_text(f"Segment {saved_cluster} saved").wait_for()
    page.get_by_role("rowheader", name=saved_cluster, exact=True).wait_for()
    console.nav("Overview")
    console.settle()
    # Sizing conditions saved nothing: only the two segments saved on purpose are new.
    with console.fleet.client() as http:
        after = {s["name"] for s in http.get("/v1/segments").json()["segments"]}
        assert after - before == {name, saved_cluster}
        assert http.delete(f"/v1/segments/{name}").status_code == 204
        assert http.delete(f"/v1/segments/{saved_cluster}").status_code == 204


def test_a_campaign_from_a_template_shows_its_audience_then_its_report(
    console: Console,
) -> None:
    page = console.page
    name = f"Browser garden {uuid.uuid4().hex[:6]}"
    console.sign_in(console.fleet.admin_key)
    console.nav("Campaigns")
    page.get_by_role("heading", name="All campaigns").wait_for()
    page.get_by_label("Template", exact=True).select_option("seasonal")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Category (required by this template)").fill("garden")
    page.get_by_label("Run all year").check()
    console.shot("campaigns")
    page.get_by_role("button", name="Create draft").click()
    page.get_by_role("heading", name=re.compile(rf"^{name} draft")).wait_for()
    audience = page.get_by_test_id("audience-members")
    audience.wait_for()
    assert int(audience.inner_text().replace(",", "")) > 0
    assert page.get_by_text("Eligible members per channel").is_visible()
    page.get_by_role("button", name="Launch").click()
    page.get_by_role("heading", name=re.compile(rf"^{name} active")).wait_for()
    page.get_by_role("heading", name="Report").wait_for()
    page.get_by_text("Uplift against the control group").wait_for()
    assert page.locator("figure.chart svg[role=img]").count() >= 3
    console.shot("campaign")
    # Ended again: the shared fleet's other tests see no new live campaign.
    page.get_by_role("button", name="End", exact=True).click()
    page.get_by_role("heading", name=re.compile(rf"^{name} ended")).wait_for()


def test_a_ranker_is_activated_from_the_models_page(console: Console) -> None:
    fleet = console.fleet
    with fleet.client() as http:
        ltr = next(r for r in http.get("/v1/models").json()["rankers"] if r["name"] == "ltr")
    if not ltr["versions"]:
        cli(fleet.env, "train-ranker")
    page = console.page
    console.sign_in(fleet.admin_key)
    try:
        console.nav("Models")
        card = page.locator("section").filter(has=page.get_by_role("heading", name="Ranker ltr"))
        card.wait_for()
        assert card.get_by_role("columnheader", name=re.compile("ndcg")).count() >= 1
        card.get_by_role("button", name="Activate ranker ltr").click()
        page.get_by_text(re.compile(r"^ltr@\S+ is active")).wait_for()
        page.get_by_role("heading", name="Ranker ltr active").wait_for()
        console.shot("models")
        with fleet.client() as http:
            assert http.get("/v1/models").json()["active_ranker"].startswith("ltr")
    finally:
        with fleet.client() as http:
            assert http.post("/v1/models/blend/activate").status_code == 200


def test_experiments_and_rules_pages_create_preview_and_clean_up(console: Console) -> None:
    page = console.page
    console.sign_in(console.fleet.admin_key)
    console.nav("Experiments")
    page.get_by_role("heading", name="New experiment").wait_for()
    name = f"browser {uuid.uuid4().hex[:6]}"
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("control ranker").select_option("blend")
    page.get_by_label("treatment ranker").select_option("blend")
    page.get_by_role("button", name="Create draft").click()
    page.get_by_role("heading", name=re.compile(rf"^{name} draft")).wait_for()
    # The sample-ratio check is always said, passed or flagged.
    page.locator("[data-testid=srm-ok], [data-testid=srm-warning]").wait_for()
    console.shot("experiment")
    page.get_by_role("button", name=f"Stop {name}").click()
    page.get_by_role("heading", name=re.compile(rf"^{name} stopped")).wait_for()
    console.nav("Experiments")
    page.get_by_role("heading", name="All experiments").wait_for()
    console.shot("experiments")

    console.nav("Rules")
    page.get_by_role("heading", name="New rule").wait_for()
    rule = f"browser-pin-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name (shown in reasons)").fill(rule)
    page.get_by_label("Item id (pinned)").fill("85123A")
    assert not page.get_by_label("Strength (rank space").is_visible()
    # Preview first: before and after (or before only, without the preview route).
    page.get_by_label("Member id").fill(example_member(console.fleet))
    page.get_by_role("button", name="Preview").click()
    page.locator("table caption").filter(has_text=re.compile("^Before")).first.wait_for()
    # Created to start next year: live for no answer of the shared fleet.
    page.get_by_label("Starts (local time; empty: now)").fill("2099-01-01T00:00")
    page.get_by_role("button", name="Create rule").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=rule, exact=True))
    row.wait_for()
    assert "home" in row.inner_text() and "pin" in row.inner_text()
    assert "not live" in row.inner_text()
    console.shot("rules")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Delete rule {rule}").click()
    page.get_by_text(f"Rule {rule} deleted").wait_for()
    assert page.get_by_role("rowheader", name=rule, exact=True).count() == 0


def test_a_narrow_key_sees_what_it_may_and_why_the_rest_is_unavailable(
    console: Console,
) -> None:
    fleet = console.fleet
    key = fleet.new_key("profiles:read", "recommendations:read", name="browser narrow")
    page = console.page
    console.sign_in(key)
    page.get_by_role("heading", name="Overview", exact=True).wait_for()
    assert page.get_by_text("needs scope admin").first.is_visible()
    assert "profiles:read" in page.locator("#who-text").inner_text()
    member = example_member(fleet)
    console.nav("Members")
    page.get_by_label("Member id").fill(member)
    page.get_by_role("button", name="Look up").click()
    page.locator("table.recs tbody tr").first.wait_for()
    erase = page.get_by_role("button", name="Erase member…")
    assert erase.is_disabled()
    assert page.get_by_text("needs scope admin").is_visible()
    assert page.get_by_role("button", name="Add tag").is_disabled()
    assert page.get_by_text("needs scope segments:write").is_visible()
    assert page.get_by_role("button", name="Save consent").is_disabled()
    assert page.get_by_text("needs scope events:write").is_visible()
    console.shot("member-narrow-key")
    console.nav("Rules")
    page.get_by_text("Merchandising rules need scope admin").wait_for()
    console.nav("Campaigns")
    page.get_by_text("need scope campaigns:write").wait_for()
    # Sizing a condition only reads: the builder counts; saving needs segments:write.
    console.nav("Segments")
    page.get_by_test_id("builder-size-value").wait_for()
    assert page.get_by_role("button", name="Save segment").is_disabled()
    assert page.get_by_text("Saving a segment needs scope segments:write").is_visible()
