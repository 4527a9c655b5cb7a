"""The condition language of tag rules: what it reads, how it decides, what it refuses."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.profiles.conditions import ConditionError, parse

MEMBER: dict[str, Any] = {
    "recency_days": 12.5,
    "frequency": 4,
    "monetary": 1250.0,
    "r_score": 4,
    "f_score": 3,
    "m_score": 5,
    "lifecycle": "active",
    "price_band": "low",
    "price_sensitivity": 0.25,
    "preferred_channel": "email",
    "tags": frozenset({"vip", "press"}),
    "affinity.kitchen": 0.6,
    "affinity.home-decor": 0.3,
    "days_since_purchase.kitchen": 8.0,
}
NEVER_ORDERED: dict[str, Any] = {
    "recency_days": None,
    "frequency": 0,
    "monetary": 0.0,
    "r_score": None,
    "lifecycle": "prospect",
    "tags": frozenset(),
}


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        ("monetary >= 1000", True),
        ("monetary > 1250", False),
        ("frequency == 4 and m_score == 5", True),
        ("frequency == 4 and m_score < 5", False),
        ("frequency == 1 or m_score == 5", True),
        ("not (r_score <= 2)", True),
        ("not not frequency == 4", True),
        ("lifecycle == 'active'", True),
        ('lifecycle != "active"', False),
        ("lifecycle in ('active', 'loyal')", True),
        ("lifecycle in ('at-risk', 'churned')", False),
        ("price_band == 'low' and price_sensitivity >= 0.2", True),
        ("'vip' in tags", True),
        ("'gold' in tags", False),
        ("not 'gold' in tags", True),
        ("affinity.kitchen >= 0.5", True),
        ("affinity['home-decor'] > 0.2 and affinity.home-decor < 0.4", True),
        ("days_since_purchase.kitchen <= 30", True),
        # and binds tighter than or: true or (false and false)
        ("frequency == 4 or frequency == 1 and m_score == 1", True),
        ("(frequency == 4 or frequency == 1) and m_score == 1", False),
        ("recency_days < 1e2", True),
        ("monetary>=-1", True),
    ],
)
def test_conditions_decide_on_a_members_values(condition: str, holds: bool) -> None:
    assert parse(condition)(MEMBER) is holds


def test_a_missing_value_fails_every_comparison_and_not_negates_that() -> None:
    assert parse("r_score >= 1")(NEVER_ORDERED) is False
    assert parse("r_score < 1")(NEVER_ORDERED) is False
    assert parse("not (r_score >= 4)")(NEVER_ORDERED) is True
    assert parse("recency_days > 90 or frequency == 0")(NEVER_ORDERED) is True


def test_an_untouched_category_has_no_affinity_and_no_purchase() -> None:
    assert parse("affinity.garden == 0")(MEMBER) is True
    assert parse("days_since_purchase.garden <= 10000")(MEMBER) is False


def test_a_condition_knows_the_fields_it_reads() -> None:
    condition = parse("m_score == 5 and affinity['home-decor'] > 0.2 or 'vip' in tags")

    assert condition.fields == {"m_score", "affinity.home-decor", "tags"}


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("monetary", "expected a comparison"),
        ("monetary 3", "expected a comparison"),
        ("monetary >=", "expected a number"),
        ("spend > 3", "unknown field 'spend'"),
        ("__import__('os').system('true')", "unknown field '__import__'"),
        ("monetary > 1; frequency > 1", "unexpected character ';'"),
        ("monetary > 1 frequency > 1", "expected the end"),
        ("lifecycle > 'active'", "compare it with == or !="),
        ("lifecycle == active", "expected a quoted string"),
        ("lifecycle == 'actve'", "not 'actve'"),
        ("price_band == 'cheap'", "not 'cheap'"),
        ("monetary == '1000'", "expected a number"),
        ("tags == 'vip'", "is a set"),
        ("'vip' in lifecycle", "is not a set"),
        ("'vip' == tags", "expected 'in'"),
        ("affinity > 0.5", "needs a category"),
        ("affinity. > 0.5", "expected a category"),
        ("(monetary > 1", "expected ')'"),
        ("monetary > 1)", "expected the end"),
        ("monetary > 1e999", "not a finite number"),
        ("monetary > 1 and", "expected a field"),
        ("monetary >= frequency", "expected a number"),
        ("monetary + 1 > 2", "unexpected character '+'"),
        ("lifecycle == 'new\n'", "unexpected character"),
        ("(" * 40 + "monetary > 1" + ")" * 40, "deeper than"),
        ("monetary > 1 or " * 200 + "monetary > 1", "at most 2000 characters"),
    ],
)
def test_anything_outside_the_grammar_is_refused_with_a_reason(condition: str, reason: str) -> None:
    with pytest.raises(ConditionError, match=re.escape(reason)):
        parse(condition)
