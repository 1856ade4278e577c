"""Blocking checks of a rewritten version: provenance, no prompt leakage, pass rate and synthetic share."""

from __future__ import annotations

import polars as pl

from checks.base import CheckOutcome
from textmill.rewrite.config import RewriteConfig
from textmill.rewrite.engine import REWRITE_SCHEMA
from textmill.rewrite.postprocess import leaked_rows, strip_preamble
from textmill.schema import check_schema
from textmill.storage import Manifest

CHECK_NAMES = {
    "rewritten_schema": "document schema plus parent_id, rewrite_model, rewrite_prompt, rewrite_params, is_synthetic",
    "rewritten_provenance": "every row is synthetic, names its model and prompt, and its parent is in the filtered version",
    "rewritten_no_leakage": "no rewrite starts with a preamble or repeats its prompt or an injected instruction",
    "rewritten_pass_rate": "the share of replies kept as rewrites reaches the recipe's minimum",
    "rewritten_synthetic_share": "synthetic documents stay within the recipe's share of the mix",
    "rewritten_failed_requests": "requests that failed after retries stay within the recipe's bound",
}


def run_rewritten_checks(rows: pl.LazyFrame, parent_ids: pl.LazyFrame, manifest: Manifest,
                         config: RewriteConfig) -> list[CheckOutcome]:
    """`parent_ids`: the `id` column of the filtered version (kept and rejected)."""
    problems = check_schema(rows.collect_schema(), REWRITE_SCHEMA)
    outcomes = [CheckOutcome("rewritten_schema", not problems, CHECK_NAMES["rewritten_schema"],
                             metadata={"problems": problems})]
    if problems:
        return outcomes
    frame = rows.select("id", "parent_id", "rewrite_model", "rewrite_prompt", "is_synthetic", "text").collect()
    orphans = frame.join(parent_ids.select(pl.col("id").alias("parent_id")).collect(), on="parent_id", how="anti")
    incomplete = frame.filter(pl.col("parent_id").is_null() | pl.col("rewrite_model").is_null()
                              | pl.col("rewrite_prompt").is_null() | ~pl.col("is_synthetic").fill_null(False))
    leaks = int(leaked_rows(frame).sum()) if frame.height else 0
    preambles = sum(1 for text in frame["text"].to_list() if strip_preamble(text or "") != (text or "").strip())
    statistics, bounds = manifest.statistics, config.checks
    pass_rate = float(statistics.get("pass_rate", 0.0))
    answered = statistics.get("rewrites", {}).get("tasks", 0)
    share = float(statistics.get("synthetic_share", 0.0))
    failed = float(statistics.get("failed_request_share", 0.0))
    outcomes += [
        CheckOutcome("rewritten_provenance", incomplete.height == 0 and orphans.height == 0,
                     CHECK_NAMES["rewritten_provenance"],
                     metadata={"incomplete_rows": incomplete.height, "parents_not_found": orphans.height,
                               "duplicate_ids": frame.height - frame["id"].n_unique()}),
        CheckOutcome("rewritten_no_leakage", leaks <= bounds.max_prompt_leaks and preambles == 0,
                     CHECK_NAMES["rewritten_no_leakage"],
                     metadata={"prompt_leaks": leaks, "preambles": preambles, "max": bounds.max_prompt_leaks}),
        CheckOutcome("rewritten_pass_rate", answered == 0 or pass_rate >= bounds.min_pass_rate,
                     CHECK_NAMES["rewritten_pass_rate"], metadata={"pass_rate": pass_rate, "min": bounds.min_pass_rate}),
        CheckOutcome("rewritten_synthetic_share", share <= bounds.max_synthetic_share,
                     CHECK_NAMES["rewritten_synthetic_share"],
                     metadata={"synthetic_share": share, "max": bounds.max_synthetic_share}),
        CheckOutcome("rewritten_failed_requests", failed <= bounds.max_failed_request_share,
                     CHECK_NAMES["rewritten_failed_requests"],
                     metadata={"failed_request_share": failed, "max": bounds.max_failed_request_share}),
    ]
    return outcomes
