"""Blocking checks of a raw version, evaluated in one streaming pass over its parts."""

from __future__ import annotations

import polars as pl

from checks.base import CheckOutcome
from textmill.config import RawChecks
from textmill.schema import DOCUMENT_SCHEMA, check_schema
from textmill.storage import Manifest

CHECK_NAMES = {
    "raw_schema": "every document-schema column is present with its type",
    "raw_unique_ids": "no two documents share an id",
    "raw_text_present": "every document has non-empty text and a correct n_chars",
    "raw_min_documents": "the crawl produced at least the recipe's minimum of documents",
    "raw_quarantine_rate": "the share of quarantined records is within the recipe's bound",
    "raw_language_identified": "the share of documents without a language is within the recipe's bound",
    "raw_records_accounted": "every input record is a document, a skip or a quarantine row (nothing lost)",
}


def run_raw_checks(frame: pl.LazyFrame, manifest: Manifest, thresholds: RawChecks) -> list[CheckOutcome]:
    """All raw checks; the aggregates are computed in one pass with the streaming engine."""
    problems = check_schema(frame.collect_schema(), DOCUMENT_SCHEMA)
    outcomes = [
        CheckOutcome("raw_schema", not problems, CHECK_NAMES["raw_schema"], metadata={"problems": problems})
    ]
    if problems:  # the other checks read schema columns; they cannot run meaningfully
        return outcomes
    stats = frame.select(
        rows=pl.len(),
        distinct_ids=pl.col("id").n_unique(),
        null_ids=pl.col("id").null_count(),
        empty_texts=(pl.col("text").fill_null("").str.len_chars() == 0).sum(),
        wrong_n_chars=(pl.col("n_chars") != pl.col("text").str.len_chars()).sum(),
        no_language=(pl.col("lang").fill_null("") == "").sum(),
    ).collect(engine="streaming").row(0, named=True)
    rows = int(stats["rows"])
    duplicates = rows - int(stats["distinct_ids"]) + int(stats["null_ids"])
    quarantined = int(manifest.quarantine.get("records", 0))
    quarantine_rate = quarantined / (rows + quarantined) if rows + quarantined else 0.0
    no_language_rate = int(stats["no_language"]) / rows if rows else 0.0
    unaccounted = int(manifest.statistics.get("unaccounted_records", 0))
    outcomes += [
        CheckOutcome("raw_unique_ids", duplicates == 0, CHECK_NAMES["raw_unique_ids"],
                     metadata={"duplicate_or_null_ids": duplicates}),
        CheckOutcome("raw_text_present", stats["empty_texts"] == 0 and stats["wrong_n_chars"] == 0,
                     CHECK_NAMES["raw_text_present"],
                     metadata={"empty_texts": int(stats["empty_texts"]), "wrong_n_chars": int(stats["wrong_n_chars"])}),
        CheckOutcome("raw_min_documents", rows >= thresholds.min_documents, CHECK_NAMES["raw_min_documents"],
                     metadata={"documents": rows, "minimum": thresholds.min_documents}),
        CheckOutcome("raw_quarantine_rate", quarantine_rate <= thresholds.max_quarantine_rate,
                     CHECK_NAMES["raw_quarantine_rate"],
                     metadata={"quarantine_rate": round(quarantine_rate, 4), "bound": thresholds.max_quarantine_rate}),
        CheckOutcome("raw_language_identified", no_language_rate <= thresholds.max_empty_lang_rate,
                     CHECK_NAMES["raw_language_identified"],
                     metadata={"no_language_rate": round(no_language_rate, 4), "bound": thresholds.max_empty_lang_rate}),
        CheckOutcome("raw_records_accounted", unaccounted == 0, CHECK_NAMES["raw_records_accounted"],
                     metadata={"records_read": int(manifest.statistics.get("records_read", 0)),
                               "unaccounted_records": unaccounted}),
    ]
    return outcomes
