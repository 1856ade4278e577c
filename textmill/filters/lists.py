"""Word and domain lists of the filters: the bundled ones (textmill/filters/data) plus recipe extras."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize_word(word: str) -> str:
    """Lower-case letters and digits only: how URL words and list entries are compared."""
    return _NOT_ALNUM.sub("", word.lower())


def _entries(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@lru_cache(maxsize=None)
def bundled(name: str) -> tuple[str, ...]:
    """Entries of a bundled list (comments and blank lines skipped)."""
    return tuple(_entries(resources.files("textmill.filters").joinpath("data", name).read_text(encoding="utf-8")))


def read_list(path: str) -> tuple[str, ...]:
    """Entries of a list file given in the recipe."""
    return tuple(_entries(Path(path).read_text(encoding="utf-8")))


def word_set(*groups: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Normalized, non-empty words of the given lists."""
    return frozenset(w for group in groups for w in map(normalize_word, group) if w)


def domain_set(*groups: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Lower-case hosts without a leading `www.` or trailing dot."""
    out = set()
    for group in groups:
        for entry in group:
            host = entry.strip().lower().rstrip(".")
            out.add(host[4:] if host.startswith("www.") else host)
    return frozenset(h for h in out if h)
