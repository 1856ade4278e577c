"""Signals and decisions of a batch of documents: `filter_frame` is what the filtered stage calls.

Every active rule set adds its signal columns to every row (nothing is skipped for
documents an earlier rule already rejected); the decision is the first failing rule in
the configured order, as a `pl.when` chain over the signal columns.
"""

from __future__ import annotations

import logging

import polars as pl

from textmill.filters.batch import Batch
from textmill.filters.config import FilterConfig
from textmill.filters.registry import FILTERS

log = logging.getLogger(__name__)

KEPT, REJECTED = "kept", "rejected"
RECYCLABLE: dict[str, bool] = {name: spec.recyclable for name, spec in FILTERS.items()}


def active_rule_sets(columns: list[str], *, config: FilterConfig) -> list[str]:
    """Rule sets in decision order that are enabled and whose input columns exist."""
    active = []
    for name in config.order:
        if not config.rule_set(name).enabled:
            continue
        missing = [c for c in FILTERS[name].requires if c not in columns]
        if missing:
            if FILTERS[name].rules(config.rule_set(name)):  # silent when it would decide nothing anyway
                log.warning("rule set %s skipped: the frame has no %s column", name, ", ".join(missing))
            continue
        active.append(name)
    return active


def compute_signals(frame: pl.DataFrame, *, config: FilterConfig) -> pl.DataFrame:
    """`frame` with the signal columns of every active rule set appended (same rows, same order)."""
    batch = Batch(frame, config=config)
    parts = [FILTERS[name].signals(batch, config.rule_set(name))
             for name in active_rule_sets(frame.columns, config=config)]
    signals = pl.concat(parts, how="horizontal") if parts else pl.DataFrame()
    clash = [c for c in signals.columns if c in frame.columns]
    return pl.concat([frame.drop(clash), signals], how="horizontal")


def rules(columns: list[str], *, config: FilterConfig) -> list[tuple[str, pl.Expr]]:
    """(reason, failing-condition) pairs in decision order; a reason is "rule_set:rule"."""
    out = []
    for name in active_rule_sets(columns, config=config):
        out += [(f"{name}:{rule}", fails) for rule, fails in FILTERS[name].rules(config.rule_set(name))]
    return out


def is_recyclable(reason: str | None) -> bool:
    """Whether a rejected document may go to the rewrite stage: quality reasons yes; safety,
    blocklist, language, PII and unknown reasons no."""
    return reason is not None and RECYCLABLE.get(reason.split(":", 1)[0], False)


def recyclable_expr(reason: pl.Expr) -> pl.Expr:
    """`is_recyclable` as an expression over a reason column (False for kept documents)."""
    group = reason.str.split_exact(":", 1).struct.field("field_0")
    return group.replace_strict(RECYCLABLE, default=False, return_dtype=pl.Boolean).fill_null(False)


def first_failing(pairs: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """The reason of the first failing condition, null when none fails: a `pl.when` chain."""
    if not pairs:
        return pl.lit(None, dtype=pl.String)
    (first_reason, first_fails), *rest = pairs
    chain = pl.when(first_fails).then(pl.lit(first_reason))
    for reason, fails in rest:
        chain = chain.when(fails).then(pl.lit(reason))
    return chain.otherwise(pl.lit(None, dtype=pl.String))


def rule_set_reasons(frame: pl.DataFrame, *, config: FilterConfig) -> pl.DataFrame:
    """One column per active rule set: the first rule of that set the document fails, or null.

    Each rule set judged alone, whatever the others say: the per-rule keep rates of the
    quality checks, and the parity test against datatrove's filters, read these.
    """
    columns = {}
    for name in active_rule_sets(frame.columns, config=config):
        pairs = [(f"{name}:{rule}", fails) for rule, fails in FILTERS[name].rules(config.rule_set(name))]
        columns[name] = first_failing(pairs)
    return frame.select(**columns)


def decide(frame: pl.DataFrame, *, config: FilterConfig) -> pl.DataFrame:
    """Add `decision`, `reject_reason` (first failing rule, null when kept) and `recyclable`."""
    out = frame.with_columns(reject_reason=first_failing(rules(frame.columns, config=config)))
    return out.with_columns(
        decision=pl.when(pl.col("reject_reason").is_null()).then(pl.lit(KEPT)).otherwise(pl.lit(REJECTED)),
        recyclable=recyclable_expr(pl.col("reject_reason")),
    ).select(*frame.columns, "decision", "reject_reason", "recyclable")


def filter_frame(frame: pl.DataFrame, *, config: FilterConfig) -> pl.DataFrame:
    """Signals, decision, reject_reason and recyclable for a batch of documents (`text`, `url`,
    `lang`, `lang_score`, optionally `quality_score`)."""
    return decide(compute_signals(frame, config=config), config=config)
