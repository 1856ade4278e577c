"""The filtered stage's per-part work: score, signals, decision, redaction, kept/rejected parts.

    score   (per part, only with `quality_model.top_percent`) classifier scores → work/scores/,
            and a mergeable score histogram, from which the crawl-wide cutoff comes
    filter  (per part) signals in batches of `batch_rows`, decision and reason, PII redaction
            of kept text; `part-N.parquet` (kept) and `rejected-N.parquet`; small statistics

Workers return only counts, a deterministic sample of signal values and a few examples per
reason, so the parent's memory does not grow with the crawl.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from textmill.config import FilteredConfig
from textmill.filters.config import QualityClassifierRules
from textmill.filters.decide import KEPT, REJECTED, filter_frame
from textmill.filters.redact import redact_pii
from textmill.storage import PartInfo, Store

DECISION_COLUMNS = ("quality_score", "decision", "reject_reason", "recyclable")
REDACTION_COLUMNS = ("pii_emails_redacted", "pii_ipv4_redacted", "pii_phones_redacted")
SAMPLE_KEY_RANGE = 1 << 32


@dataclass(frozen=True)
class FilterTask:
    """One deduped part and everything a worker needs to filter it."""

    store: Store
    config: FilteredConfig
    part: int
    uri: str
    version_dir: str
    work_dir: str
    cutoff: float | None = None
    sample_rate: float = 1.0

    @property
    def scores_path(self) -> str:
        return posixpath.join(self.work_dir, "scores", f"part-{self.part:05d}.parquet")


@dataclass
class PartResult:
    """What a worker reports about one part."""

    kept: PartInfo | None
    rejected: PartInfo | None
    documents: int
    kept_rows: int
    by_reason: dict[str, int]
    recyclable: int
    redacted: dict[str, int]
    signal_sample: pl.DataFrame
    examples: pl.DataFrame
    signal_columns: list[str] = field(default_factory=list)


def in_sample(rate: float) -> pl.Expr:
    """A deterministic sample of documents by id (the same documents on every run)."""
    key = pl.col("id").str.slice(0, 8).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return key.fill_null(0) < int(rate * SAMPLE_KEY_RANGE)


def score_part(task: FilterTask) -> dict[str, Any]:
    """Classifier scores of one part → work/scores/; returns the part's score histogram."""
    from textmill.filters.quality_model import ScoreHistogram, score_quality

    model = task.config.quality_model
    frame = task.store.scan_files([task.uri]).select("id", "text").collect()
    scores = score_quality(frame["text"], model_path=model.model_path, positive_label=model.positive_label,
                           batch_size=model.batch_size, threads=model.threads)
    task.store.write_parquet(frame.select("id").with_columns(scores), task.scores_path)
    return ScoreHistogram().update(scores).to_dict()


def rules_with_cutoff(config: FilteredConfig, cutoff: float | None) -> FilteredConfig:
    """The rule sets with the classifier's cutoff as the quality_classifier rule's min_score."""
    if config.quality_model is None:
        return config
    return config.model_copy(update={"quality_classifier": QualityClassifierRules(
        enabled=config.quality_classifier.enabled, min_score=cutoff)})


def _with_scores(task: FilterTask, frame: pl.DataFrame) -> pl.DataFrame:
    model = task.config.quality_model
    if model is None:
        return frame.with_columns(quality_score=pl.lit(None, dtype=pl.Float64))
    if task.store.exists(task.scores_path):
        scores = task.store.scan_files([task.scores_path]).collect()
        return frame.join(scores, on="id", how="left", maintain_order="left")
    from textmill.filters.quality_model import score_quality

    return frame.with_columns(score_quality(frame["text"], model_path=model.model_path,
                                            positive_label=model.positive_label, batch_size=model.batch_size,
                                            threads=model.threads))


def filter_part(task: FilterTask) -> PartResult:
    """Signals and decisions of one deduped part, written as its kept and rejected parts."""
    config, store = task.config, task.store
    rules = rules_with_cutoff(config, task.cutoff)
    frame = _with_scores(task, store.scan_files([task.uri]).collect())
    batches = []
    for start in range(0, max(frame.height, 1), config.batch_rows):  # bounded working set per batch
        batch = filter_frame(frame.slice(start, config.batch_rows), config=rules)
        if config.redact_pii:
            batch = redact_pii(batch, config=rules)
        batches.append(batch)
    result = pl.concat(batches, how="vertical")
    signal_columns = [c for c in result.columns
                      if c not in frame.columns and c not in DECISION_COLUMNS and c not in REDACTION_COLUMNS]
    kept = result.filter(pl.col("decision") == KEPT)
    rejected = result.filter(pl.col("decision") == REJECTED)
    kept_part = store.write_parquet(kept, posixpath.join(task.version_dir, f"part-{task.part:05d}.parquet")) \
        if kept.height else None
    rejected_part = store.write_parquet(
        rejected, posixpath.join(task.version_dir, f"rejected-{task.part:05d}.parquet")) if rejected.height else None
    by_reason = dict(rejected.group_by("reject_reason").len().iter_rows())
    redacted = {name: int(kept[name].sum()) for name in REDACTION_COLUMNS if name in kept.columns}
    examples = (rejected.group_by("reject_reason", maintain_order=True).head(config.examples_per_reason)
                .select("reject_reason", "id", "url", pl.col("text").str.slice(0, 300)))
    numeric = [c for c in signal_columns if result.schema[c].is_numeric() or result.schema[c] == pl.Boolean]
    sample = result.filter(in_sample(task.sample_rate)).select("decision", *numeric)
    return PartResult(kept=kept_part, rejected=rejected_part, documents=frame.height, kept_rows=kept.height,
                      by_reason=by_reason, recyclable=int(rejected["recyclable"].sum()), redacted=redacted,
                      signal_sample=sample, examples=examples, signal_columns=signal_columns)


def empty_version_part(store: Store, frame: pl.DataFrame, config: FilteredConfig, path: str) -> PartInfo:
    """A zero-row part with the full output schema, so a version without kept rows stays readable."""
    empty = filter_frame(frame.head(0).with_columns(quality_score=pl.lit(None, dtype=pl.Float64)), config=config)
    if config.redact_pii:
        empty = redact_pii(empty, config=config)
    return store.write_parquet(empty, path)


def signal_summary(sample: pl.DataFrame, *, bins: int = 10) -> dict[str, dict[str, Any]]:
    """Per signal: quantiles and a histogram of the sampled documents (kept and rejected)."""
    summary: dict[str, dict[str, Any]] = {}
    for name in sample.columns:
        if name == "decision":
            continue
        values = sample[name].cast(pl.Float64).drop_nulls().drop_nans()
        if values.len() == 0:
            continue
        low, high = float(values.min()), float(values.max())
        quantiles = {f"p{int(q * 100):02d}": round(float(values.quantile(q, "nearest")), 6)
                     for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
        if high > low:
            width = (high - low) / bins
            index = ((values - low) / width).floor().clip(0, bins - 1).cast(pl.Int64)
            counts = index.value_counts().sort(index.name)
            histogram = [0] * bins
            for bucket, count in counts.iter_rows():
                histogram[int(bucket)] = int(count)
            edges = [round(low + i * width, 6) for i in range(bins + 1)]
        else:
            histogram, edges = [values.len()], [low, high]
        summary[name] = {"sampled": values.len(), **quantiles, "histogram": histogram, "edges": edges}
    return summary
