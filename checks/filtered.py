"""Blocking checks of a filtered version: rates within the recipe's bounds, languages, no PII left."""

from __future__ import annotations

import polars as pl

from checks.base import CheckOutcome
from checks.deduped import DEDUPED_SCHEMA
from textmill.config import FilteredConfig
from textmill.filters.pii import pii_counts
from textmill.schema import check_schema
from textmill.storage import Manifest

FILTERED_SCHEMA = DEDUPED_SCHEMA | {"quality_score": pl.Float64(), "decision": pl.String(),
                                    "reject_reason": pl.String(), "recyclable": pl.Boolean()}

CHECK_NAMES = {
    "filtered_schema": "deduped schema plus quality_score, decision, reject_reason, recyclable and the signals",
    "filtered_unique_ids": "no two documents (kept or rejected) share an id",
    "filtered_keep_rate_within_bounds": "the share of kept documents is within the recipe's bounds",
    "filtered_rule_removal_within_bounds": "no rule set removes more than its bound",
    "filtered_language_share": "the share of kept documents in the recipe's languages reaches its minimum",
    "filtered_no_pii_left": "no e-mail, IPv4 address or phone number pattern is left in kept text",
}


def run_filtered_checks(kept: pl.LazyFrame, rejected: pl.LazyFrame | None, manifest: Manifest,
                        config: FilteredConfig) -> list[CheckOutcome]:
    """All checks in one streaming pass over the kept parts (and the ids of the rejected ones)."""
    problems = check_schema(kept.collect_schema(), FILTERED_SCHEMA)
    signals = manifest.statistics.get("signal_columns", [])
    problems += [f"missing signal column {name}" for name in signals if name not in kept.collect_schema()]
    outcomes = [CheckOutcome("filtered_schema", not problems, CHECK_NAMES["filtered_schema"],
                             metadata={"problems": problems})]
    if problems:
        return outcomes
    languages = config.language.languages if config.language.enabled else None
    in_languages = pl.col("lang").is_in(list(languages)) if languages else pl.lit(True)
    pii = pii_counts(pl.col("text").fill_null(""))
    stats = kept.select(
        rows=pl.len(),
        in_languages=in_languages.sum(),
        pii_left=pl.sum_horizontal(*pii.values()).sum(),
        not_kept=(pl.col("decision") != "kept").sum(),
    ).collect(engine="streaming").row(0, named=True)
    ids = kept.select("id")
    if rejected is not None:
        ids = pl.concat([ids, rejected.select("id")])
    id_stats = ids.select(rows=pl.len(), distinct=pl.col("id").n_unique()).collect(engine="streaming").row(0, named=True)
    statistics, bounds = manifest.statistics, config.checks
    keep_rate = float(statistics.get("keep_rate", 0.0))
    rates = statistics.get("removal_rate_by_rule_set", {})
    over = {name: rate for name, rate in rates.items()
            if rate > bounds.max_removal_rate_by_rule_set.get(name, bounds.max_removal_rate)}
    rows = int(stats["rows"])
    share = int(stats["in_languages"]) / rows if rows else 1.0
    pii_left = int(stats["pii_left"] or 0) if config.redact_pii else 0
    outcomes += [
        CheckOutcome("filtered_unique_ids", id_stats["rows"] == id_stats["distinct"] and stats["not_kept"] == 0,
                     CHECK_NAMES["filtered_unique_ids"],
                     metadata={"duplicate_ids": int(id_stats["rows"] - id_stats["distinct"]),
                               "non_kept_rows_in_kept_parts": int(stats["not_kept"])}),
        CheckOutcome("filtered_keep_rate_within_bounds", bounds.min_keep_rate <= keep_rate <= bounds.max_keep_rate,
                     CHECK_NAMES["filtered_keep_rate_within_bounds"],
                     metadata={"keep_rate": keep_rate, "min": bounds.min_keep_rate, "max": bounds.max_keep_rate}),
        CheckOutcome("filtered_rule_removal_within_bounds", not over, CHECK_NAMES["filtered_rule_removal_within_bounds"],
                     metadata={"over_bound": over, "removal_rate_by_rule_set": rates}),
        CheckOutcome("filtered_language_share", share >= bounds.min_language_share,
                     CHECK_NAMES["filtered_language_share"],
                     metadata={"share": round(share, 6), "min": bounds.min_language_share,
                               "languages": list(languages) if languages else None}),
        CheckOutcome("filtered_no_pii_left", pii_left == 0, CHECK_NAMES["filtered_no_pii_left"],
                     metadata={"pii_matches_left": pii_left, "redaction": config.redact_pii}),
    ]
    return outcomes
