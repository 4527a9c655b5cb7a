"""The one way a request body becomes Python values: strict JSON, bounded, UTF-8.

Every body a shop sends (native events, the shops' formats, catalog items, Segment calls)
is decoded here, so that the gateway, ingestion and the loaders refuse the same bodies for
the same reasons, and so that what the PII scrubber and the event model see is exactly
what was decoded (no second parser with other rules in between).

The parser is pydantic-core's (the same one `Model.model_validate_json` uses):
- it refuses nesting deeper than `MAX_DEPTH` levels (its own recursion limit) instead of
  overflowing the stack;
- `NaN`, `Infinity` and numbers too large for a float are refused: they are not JSON, and an
  amount of infinity would be stored as nonsense;
- the body must be UTF-8 (RFC 8259); a leading byte order mark is tolerated;
- lone surrogates (`"\\ud800"`) are refused, so every decoded string can be re-encoded.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pydantic_core

# pydantic-core's parser stops at this depth; bodies deeper than that are refused.
MAX_DEPTH = 200
_BOM = b"\xef\xbb\xbf"


class BodyError(ValueError):
    """The body is not JSON recofleet can read; the message says why, for the client."""


def decode(payload: bytes) -> Any:
    """The JSON value of `payload`; `BodyError` with a readable reason when it is none."""
    if payload.startswith(_BOM):
        payload = payload[len(_BOM) :]
    if not payload.strip():
        raise BodyError("body is empty")
    try:
        value = pydantic_core.from_json(payload, allow_inf_nan=False)
    except ValueError as exc:
        raise BodyError(_reason(str(exc), payload)) from None
    if not all_finite(value):
        raise BodyError("body is not valid JSON: a number is too large to represent")
    return value


def all_finite(value: Any) -> bool:
    """False when a float in `value` is infinite (the parser turns 1e400 into infinity)."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, float):
            if not math.isfinite(current):
                return False
        elif isinstance(current, dict):
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return True


def depth(value: Any) -> int:
    """How deeply `value` nests lists and objects: 0 for a scalar, 1 for `[]` or `{}`."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        current, level = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _reason(message: str, payload: bytes) -> str:
    if "recursion limit" in message:
        return f"body nests lists or objects deeper than {MAX_DEPTH} levels"
    if "number out of range" in message:
        return f"body is not valid JSON: a number is too large ({message})"
    if _at(message, payload).lstrip(b"-").startswith((b"NaN", b"Infinity")):
        return f"body is not valid JSON: NaN and Infinity are not JSON numbers ({message})"
    return f"body is not valid JSON: {message}"


def _at(message: str, payload: bytes) -> bytes:
    """The bytes of `payload` where the parser's message ("... at line L column C") points."""
    found = _POSITION.search(message)
    if found is None:
        return b""
    line, column = int(found.group(1)), int(found.group(2))
    lines = payload.split(b"\n")
    return lines[line - 1][column - 1 :] if line <= len(lines) else b""


_POSITION = re.compile(r"line (\d+) column (\d+)")
