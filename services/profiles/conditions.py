"""Conditions over a member's portrait: the small language of tag rules (and of segments).

    monetary >= 1000 and lifecycle in ('active', 'loyal')
    not (r_score <= 2) or 'vip' in tags
    days_since_purchase.garden <= 90 and m_score >= 4 and 'email' in consent
    affinity.kitchen >= 0.3 and days_since_purchase['home-decor'] <= 30

Grammar (keywords in lower case; strings in single or double quotes, without escapes):

    condition  := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" condition ")" | comparison
    comparison := field op literal
                | field "in" "(" literal ("," literal)* ")"
                | string "in" field             (a set field: `tags`, `consent`)
    op         := "==" | "!=" | "<" | "<=" | ">" | ">="
    field      := name | family "." category | family "[" string "]"
    literal    := number | string

`and` binds tighter than `or`. Fields are typed (number, text, set of text: see FIELDS and
FAMILIES) and the parser refuses what does not fit: an unknown field, a text compared with
`<`, a number compared with a string, a lifecycle or price band that does not exist, a
string `in` a number. Nothing is ever evaluated as Python: a condition is parsed into a
tree of the comparisons above and nothing else.

A comparison on a missing value (no order yet: no recency, no scores) is false, and `not`
negates it: `not (r_score >= 4)` holds for a member without scores. A category the member
never touched has affinity 0 and no `days_since_purchase`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

MAX_LENGTH = 2000
MAX_DEPTH = 32

Kind = Literal["number", "text", "set"]
# The values one condition sees: `Portrait.values()`, keyed by field ("affinity.kitchen"
# for a family's member).
Values = Mapping[str, Any]

LIFECYCLES = ("new", "active", "high-value", "loyal", "at-risk", "churned", "prospect")
PRICE_BANDS = ("low", "mid", "high")


@dataclass(frozen=True)
class FieldSpec:
    kind: Kind
    description: str
    choices: tuple[str, ...] = ()


FIELDS: dict[str, FieldSpec] = {
    "recency_days": FieldSpec("number", "days since the last order"),
    "frequency": FieldSpec("number", "orders placed"),
    "monetary": FieldSpec("number", "spend: order values minus refunds"),
    "r_score": FieldSpec("number", "recency score, 1-5 (5: most recent)"),
    "f_score": FieldSpec("number", "frequency score, 1-5"),
    "m_score": FieldSpec("number", "monetary score, 1-5"),
    "events": FieldSpec("number", "events applied"),
    "lifecycle": FieldSpec("text", "lifecycle segment", LIFECYCLES),
    "price_band": FieldSpec("text", "price band", PRICE_BANDS),
    "price_percentile": FieldSpec("number", "typical paid price within its categories, 0-1"),
    "typical_price": FieldSpec("number", "quantity-weighted mean paid unit price"),
    "price_sensitivity": FieldSpec("number", "share of orders with a discount or coupon"),
    "discounted_orders": FieldSpec("number", "orders with a discount or coupon"),
    "preferred_channel": FieldSpec("text", "the channel of most of the member's events"),
    "days_since_first_seen": FieldSpec("number", "days since the first event"),
    "days_since_last_seen": FieldSpec("number", "days since the latest event"),
    "days_since_first_order": FieldSpec("number", "days since the first order"),
    "tags": FieldSpec("set", "tags: manual ones (in segments, rule tags too)"),
    "consent": FieldSpec(
        "set", "what the member consents to: personalization, email, sms, push, onsite"
    ),
}
# Fields per category: `affinity.kitchen`, `days_since_purchase['home-decor']`.
FAMILIES: dict[str, tuple[FieldSpec, float | None]] = {
    "affinity": (FieldSpec("number", "share of the member's decayed affinity, 0-1"), 0.0),
    "affinity_weight": (FieldSpec("number", "decayed weighted interactions"), 0.0),
    "days_since_purchase": (FieldSpec("number", "days since the last purchase in it"), None),
}


class ConditionError(ValueError):
    """The text is not a condition of the grammar; the message says where and why."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    | (?P<string>'[^'\x00-\x1f]*'|"[^"\x00-\x1f]*")
    | (?P<op>==|!=|<=|>=|<|>)
    | (?P<punct>[()\[\],.])
    | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in"})
_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_EQUALITY = {"==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, op, punct, name, end
    text: str
    at: int


def _tokens(source: str) -> list[_Token]:
    found, at = [], 0
    while at < len(source):
        if source[at:].isspace():
            break
        match = _TOKEN.match(source, at)
        if match is None or match.lastgroup is None:
            start = len(source) - len(source[at:].lstrip())
            raise ConditionError(f"unexpected character {source[start]!r} at {start + 1}")
        kind = match.lastgroup
        found.append(_Token(kind, match.group(kind), match.start(kind)))
        at = match.end()
    found.append(_Token("end", "", len(source)))
    return found


Test = Callable[[Values], bool]


@dataclass(frozen=True)
class Condition:
    """A parsed condition: call it with a portrait's values."""

    source: str
    fields: frozenset[str]
    _test: Test

    def __call__(self, values: Values) -> bool:
        return self._test(values)


def parse(source: str) -> Condition:
    """The condition `source` says; ConditionError when it is not one of the grammar."""
    if not isinstance(source, str) or not source.strip():
        raise ConditionError("a condition cannot be empty")
    if len(source) > MAX_LENGTH:
        raise ConditionError(f"a condition is at most {MAX_LENGTH} characters")
    parser = _Parser(_tokens(source))
    test = parser.condition(0)
    parser.expect("end")
    return Condition(source, frozenset(parser.fields), test)


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._at = 0
        self.fields: set[str] = set()

    def peek(self) -> _Token:
        return self._tokens[self._at]

    def take(self) -> _Token:
        token = self._tokens[self._at]
        self._at += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "name" and token.text == word:
            self._at += 1
            return True
        return False

    def expect(self, kind: str, text: str | None = None) -> _Token:
        token = self.take()
        if token.kind != kind or (text is not None and token.text != text):
            wanted = repr(text) if text else {"end": "the end"}.get(kind, f"a {kind}")
            raise ConditionError(f"expected {wanted} at {token.at + 1}, found {_shown(token)}")
        return token

    def condition(self, depth: int) -> Test:
        if depth > MAX_DEPTH:
            raise ConditionError(f"nests deeper than {MAX_DEPTH} levels")
        parts = [self.conjunction(depth)]
        while self.keyword("or"):
            parts.append(self.conjunction(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda values: any(part(values) for part in parts)

    def conjunction(self, depth: int) -> Test:
        parts = [self.unary(depth)]
        while self.keyword("and"):
            parts.append(self.unary(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda values: all(part(values) for part in parts)

    def unary(self, depth: int) -> Test:
        if depth > MAX_DEPTH:
            raise ConditionError(f"nests deeper than {MAX_DEPTH} levels")
        if self.keyword("not"):
            inner = self.unary(depth + 1)
            return lambda values: not inner(values)
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.take()
            inner = self.condition(depth + 1)
            self.expect("punct", ")")
            return inner
        return self.comparison()

    def comparison(self) -> Test:
        token = self.peek()
        if token.kind == "string":
            # 'vip' in tags
            needle = _string(self.take())
            if not self.keyword("in"):
                raise ConditionError(
                    f"expected 'in' after the string at {token.at + 1}, found {_shown(self.peek())}"
                )
            key, spec, _ = self.field()
            if spec.kind != "set":
                raise ConditionError(
                    f"'{key}' is not a set: `'x' in {key}` needs one (tags, consent)"
                )
            return lambda values: needle in (values.get(key) or ())
        key, spec, default = self.field()
        if spec.kind == "set":
            raise ConditionError(f"'{key}' is a set: test it with 'x' in {key}")
        if self.keyword("in"):
            self.expect("punct", "(")
            choices = [self.literal(key, spec)]
            while self.peek().text == ",":
                self.take()
                choices.append(self.literal(key, spec))
            self.expect("punct", ")")
            allowed = frozenset(choices)
            return lambda values: _get(values, key, default) in allowed
        op = self.take()
        if op.kind != "op":
            raise ConditionError(
                f"expected a comparison (==, !=, <, <=, >, >=) or 'in' after '{key}' at "
                f"{op.at + 1}, found {_shown(op)}"
            )
        if spec.kind == "text" and op.text in _ORDERING:
            raise ConditionError(f"'{key}' is text: compare it with == or != (or in)")
        literal = self.literal(key, spec)
        compare = _ORDERING.get(op.text) or _EQUALITY[op.text]

        def test(values: Values) -> bool:
            value = _get(values, key, default)
            return value is not None and bool(compare(value, literal))

        return test

    def field(self) -> tuple[str, FieldSpec, float | None]:
        token = self.peek()
        if token.kind != "name" or token.text in _KEYWORDS:
            raise ConditionError(f"expected a field at {token.at + 1}, found {_shown(token)}")
        self.take()
        name = token.text
        if name in FAMILIES:
            spec, default = FAMILIES[name]
            following = self.take()
            if following.text == ".":
                member = self.take()
                if member.kind not in ("name", "number"):
                    raise ConditionError(
                        f"expected a category after '{name}.' at {member.at + 1}, "
                        f"found {_shown(member)}"
                    )
                category = member.text
            elif following.text == "[":
                category = _string(self.expect("string"))
                self.expect("punct", "]")
            else:
                raise ConditionError(
                    f"'{name}' needs a category: {name}.kitchen or {name}['home-decor']"
                )
            if not category:
                raise ConditionError(f"'{name}' needs a category name")
            key = f"{name}.{category}"
            self.fields.add(key)
            return key, spec, default
        if name not in FIELDS:
            known = ", ".join([*FIELDS, *(f"{f}.<category>" for f in FAMILIES)])
            raise ConditionError(f"unknown field '{name}' at {token.at + 1}; fields: {known}")
        self.fields.add(name)
        return name, FIELDS[name], None

    def literal(self, key: str, spec: FieldSpec) -> Any:
        token = self.take()
        if spec.kind == "number":
            if token.kind != "number":
                raise ConditionError(
                    f"'{key}' is a number: expected a number at {token.at + 1}, "
                    f"found {_shown(token)}"
                )
            value = float(token.text)
            if not math.isfinite(value):
                raise ConditionError(f"{token.text} is not a finite number")
            return value
        if token.kind != "string":
            raise ConditionError(
                f"'{key}' is text: expected a quoted string at {token.at + 1}, "
                f"found {_shown(token)}"
            )
        text = _string(token)
        if spec.choices and text not in spec.choices:
            raise ConditionError(f"'{key}' is one of {', '.join(spec.choices)}; not '{text}'")
        return text


def _get(values: Values, key: str, default: float | None) -> Any:
    value = values.get(key)
    return default if value is None else value


def _string(token: _Token) -> str:
    return token.text[1:-1]


def _shown(token: _Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)
