"""Blocking checks of a deduped version, evaluated in one streaming pass over its parts."""

from __future__ import annotations

import polars as pl

from checks.base import CheckOutcome
from textmill.config import DedupConfig
from textmill.dedup.normalize import normalized_text
from textmill.schema import DOCUMENT_SCHEMA, check_schema
from textmill.storage import Manifest

DEDUPED_SCHEMA = DOCUMENT_SCHEMA | {"dup_cluster": pl.String(), "dup_cluster_size": pl.Int64()}

CHECK_NAMES = {
    "deduped_schema": "document schema plus dup_cluster and dup_cluster_size",
    "deduped_unique_ids": "no two documents share an id",
    "deduped_no_exact_duplicates": "no two kept documents have the same normalized text (within the dedup scope)",
    "deduped_rate_within_bounds": "the share of removed documents is within the recipe's bounds",
}


def run_deduped_checks(frame: pl.LazyFrame, manifest: Manifest, config: DedupConfig) -> list[CheckOutcome]:
    problems = check_schema(frame.collect_schema(), DEDUPED_SCHEMA)
    outcomes = [CheckOutcome("deduped_schema", not problems, CHECK_NAMES["deduped_schema"],
                             metadata={"problems": problems})]
    if problems:
        return outcomes
    text_key = normalized_text(case_fold=config.case_fold)
    if config.scope == "source":
        text_key = pl.col("source").fill_null("") + "\x1f" + text_key
    stats = frame.select(
        rows=pl.len(),
        distinct_ids=pl.col("id").n_unique(),
        distinct_texts=text_key.hash(seed=0).n_unique(),  # a within-run hash is enough for a count
    ).collect(engine="streaming").row(0, named=True)
    rows = int(stats["rows"])
    rate = float(manifest.statistics.get("dedup_rate", 0.0))
    bounds = config.checks
    exact_left = rows - int(stats["distinct_texts"]) if config.exact else 0
    outcomes += [
        CheckOutcome("deduped_unique_ids", rows == stats["distinct_ids"], CHECK_NAMES["deduped_unique_ids"],
                     metadata={"duplicate_ids": rows - int(stats["distinct_ids"])}),
        CheckOutcome("deduped_no_exact_duplicates", exact_left == 0, CHECK_NAMES["deduped_no_exact_duplicates"],
                     metadata={"exact_duplicates_left": exact_left}),
        CheckOutcome("deduped_rate_within_bounds", bounds.min_dedup_rate <= rate <= bounds.max_dedup_rate,
                     CHECK_NAMES["deduped_rate_within_bounds"],
                     metadata={"dedup_rate": rate, "min": bounds.min_dedup_rate, "max": bounds.max_dedup_rate}),
    ]
    return outcomes
