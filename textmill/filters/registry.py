"""The filters: a registry of rule sets, each one signal function and one rule function.

Adding a filter is one function computing its signal columns from a `Batch`, one function
turning its config into (rule name, failing-condition expression) pairs, one config model
in `textmill.filters.config`, and one line in `FILTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from textmill.filters.batch import Batch
from textmill.filters.c4 import c4_rules, c4_signals
from textmill.filters.fineweb import fineweb_rules, fineweb_signals
from textmill.filters.gopher import (gopher_quality_rules, gopher_quality_signals, gopher_repetition_rules,
                                     gopher_repetition_signals)
from textmill.filters.safety import (badwords_rules, badwords_signals, language_rules, language_signals,
                                     pii_rules, pii_signals, quality_classifier_rules, quality_classifier_signals,
                                     url_rules, url_signals)


@dataclass(frozen=True)
class FilterSpec:
    """One rule set: its signals, its rules, whether its rejects can be recycled, the input columns it needs."""

    signals: Callable[[Batch, Any], pl.DataFrame]
    rules: Callable[[Any], list[tuple[str, pl.Expr]]]
    recyclable: bool
    requires: tuple[str, ...] = ("text",)


FILTERS: dict[str, FilterSpec] = {
    "url_blocklist": FilterSpec(url_signals, url_rules, recyclable=False, requires=("url",)),
    "language": FilterSpec(language_signals, language_rules, recyclable=False, requires=("lang", "lang_score")),
    "badwords": FilterSpec(badwords_signals, badwords_rules, recyclable=False),
    "pii": FilterSpec(pii_signals, pii_rules, recyclable=False),
    "gopher_repetition": FilterSpec(gopher_repetition_signals, gopher_repetition_rules, recyclable=True),
    "gopher_quality": FilterSpec(gopher_quality_signals, gopher_quality_rules, recyclable=True),
    "c4": FilterSpec(c4_signals, c4_rules, recyclable=True),
    "fineweb": FilterSpec(fineweb_signals, fineweb_rules, recyclable=True),
    "quality_classifier": FilterSpec(quality_classifier_signals, quality_classifier_rules, recyclable=True,
                                     requires=("quality_score",)),
}
