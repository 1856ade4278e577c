"""Crawl and mix names become folder names in the store: one rule for every place they enter.

A crawl name comes from a landing folder, a CLI argument or a Dagster partition; a mix name
from the recipe. Both end up as a path component (`datasets/{stage}/{name}/...`), so a name
such as `../../etc`, `/tmp/x`, `a\\b` or one with a newline could write outside the storage
root, hide a folder (`.x`), or read as a command-line option (`-x`). Names are therefore
limited to a safe set: ASCII letters, digits, `_`, `.` and `-`; starting with a letter or
digit; no `..`; at most `MAX_NAME_LENGTH` characters. Common Crawl's names
(`CC-MAIN-2024-22`) fit.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 128
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RULE = ("letters, digits, '_', '.' and '-' only, starting with a letter or digit, no '..', "
         f"at most {MAX_NAME_LENGTH} characters")


class InvalidNameError(ValueError):
    """A name that must not become a path component; the message names the field and the name."""


def name_problem(name: object) -> str | None:
    """Why `name` is not a safe crawl/mix/stage/version name, or None when it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if _CONTROL.search(name):
        return "contains a control character"
    if ".." in name:
        return "contains '..'"
    if name[0] in ".-":
        return f"starts with {name[0]!r}"
    if not _SAFE.fullmatch(name):
        bad = sorted({c for c in name if not _SAFE.fullmatch(c)})
        return f"contains characters outside the safe set: {''.join(bad)!r}"
    return None


def is_valid_name(name: object) -> bool:
    return name_problem(name) is None


def check_name(name: object, *, field: str) -> str:
    """`name` itself when safe; else `InvalidNameError` saying which field, which name and why."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidNameError(f"{field} {name!r} {problem}; allowed: {_RULE}")
    return name  # type: ignore[return-value]
