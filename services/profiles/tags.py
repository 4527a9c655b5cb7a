"""Tag names: what a rule or a manual tag may be called."""

from __future__ import annotations

import re

TAG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TAG = re.compile(TAG_PATTERN)


def check_tag(tag: str) -> str | None:
    """Why `tag` cannot be a tag name, or None when it can."""
    if not _TAG.fullmatch(tag):
        return (
            "a tag is 1 to 64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return None
