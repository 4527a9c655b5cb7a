"""Progress bars of the long evaluation steps: tqdm on stderr, off with `enabled=False`.

tqdm ships no type information; it is imported here only, so one `type: ignore` covers every
module of the package.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm  # type: ignore[import-untyped]

T = TypeVar("T")


def bar(
    iterable: Iterable[T], desc: str, enabled: bool, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """`iterable`, drawing a bar on stderr while it is consumed (stdout stays the result)."""
    shown = tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        unit_scale=unit == "rows",
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )
    return iter(shown)


def counter(desc: str, enabled: bool, total: int, unit: str = "it") -> Any:
    """A bar to `update()` by hand, as a context manager: for work that is not a loop."""
    return tqdm(
        desc=desc, total=total, unit=unit, disable=not enabled, file=sys.stderr, leave=False
    )
