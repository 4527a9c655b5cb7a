"""A simulation with a known lift, through the fleet: impressions logged by the gateway,
clicks and purchases attributed by analytics, the report's interval holding the truth."""

from __future__ import annotations

import re

from tests.integration.conftest import RunningFleet, cli


def test_a_known_lift_is_recovered_inside_the_reported_interval(fleet: RunningFleet) -> None:
    with fleet.client(key=fleet.new_key("admin", name="simulation test")) as http:
        created = http.post(
            "/v1/experiments",
            json={
                "name": "simulated lift",
                # A placement of its own: the other tests' answers stay outside it.
                "placement": "category",
                "variants": [
                    {"name": "control", "ranker": "blend", "share": 0.5},
                    {"name": "treatment", "ranker": "blend", "share": 0.5},
                ],
            },
        )
        assert created.status_code == 201, created.text
        experiment_id = created.json()["experiment_id"]
        assert http.post(f"/v1/experiments/{experiment_id}/start").status_code == 200
        try:
            said = cli(
                fleet.env,
                "simulate",
                "--experiment",
                experiment_id,
                "--members",
                "300",
                "--visits",
                "4",
                "--ctr",
                "0.15",
                "--lift",
                "1.0",
                "--report",
                # 99.9%: a 95% interval would miss the truth in one run of twenty.
                "--confidence",
                "0.999",
                "--key",
                fleet.admin_key,
            )
            report = http.get(f"/v1/experiments/{experiment_id}/report").json()
        finally:
            http.post(f"/v1/experiments/{experiment_id}/stop")

    assert re.search(r"treatment vs control: .* is inside the interval", said), said
    variants = {v["name"]: v for v in report["variants"]}
    assert set(variants) == {"control", "treatment"}
    assert not report["sample_ratio"]["flagged"], report["warnings"]
    assert sum(v["members"] for v in variants.values()) >= 250
    ctr = next(d for d in variants["treatment"]["differences"] if d["metric"] == "ctr")
    assert ctr["significant"] and ctr["absolute"] > 0
    assert "delta method" in ctr["method"]
    assert variants["treatment"]["purchases"] > 0 and variants["treatment"]["revenue"] > 0
    cuped = [d["metric"] for d in variants["treatment"]["differences"]]
    assert "revenue_per_member_cuped" in cuped
