"""CSV lines for exports, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any


def csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([_cell(v) for v in values])
    return out.getvalue()


def _cell(value: Any) -> Any:
    # A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR) is quoted
    # with a leading apostrophe: a member id is whatever the shop's frontend sent.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
