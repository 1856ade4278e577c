"""Which documents the rewrite stage sends to the LLM.

Rejected documents qualify when their reject reason is recyclable (quality rules, the
classifier score), checked twice: the `recyclable` column the filtered stage wrote, and the
reason itself against today's registry, so a safety, blocklist, language or PII reject is
never rewritten whatever a column says. Kept documents can be sampled for WRAP-style
rephrasing. Candidates are ordered by a seeded hash of their id (a reproducible shuffle that
does not depend on file order or on how many candidates there are) and taken in that order
until a budget, in documents or estimated tokens, is spent.

Only the columns needed to choose are collected first; full rows are read for the chosen
ids alone, so the rejected set can be far larger than memory allows for its texts.
"""

from __future__ import annotations

import logging

import polars as pl
import xxhash

from textmill.filters.decide import recyclable_expr
from textmill.rewrite.config import RewriteConfig
from textmill.schema import DOCUMENT_SCHEMA

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # budget estimate without a tokenizer; usage reports the real counts
ORIGIN_REJECTED, ORIGIN_KEPT = "rejected", "kept"
_U64 = float(2**64)


def estimated_tokens(chars: pl.Expr, *, max_input_chars: int) -> pl.Expr:
    """Tokens a document will cost as prompt input: its (cut) length in chars / 4, rounded up."""
    return (pl.min_horizontal(chars, pl.lit(max_input_chars)) + (CHARS_PER_TOKEN - 1)) // CHARS_PER_TOKEN


def order_keys(ids: list[str], *, seed: int) -> list[int]:
    """A seeded 64-bit hash of each id: the selection order (stable across Polars versions)."""
    return [xxhash.xxh3_64_intdigest(i.encode(), seed=seed & 0xFFFFFFFFFFFFFFFF) for i in ids]


def _candidates(frame: pl.LazyFrame, *, origin: str, config: RewriteConfig) -> pl.DataFrame:
    schema = frame.collect_schema()
    columns = ["id", "n_chars"]
    lf = frame
    if origin == ORIGIN_REJECTED:
        reason = pl.col("reject_reason")
        ok = reason.is_not_null() & recyclable_expr(reason)
        if "recyclable" in schema:
            ok = ok & pl.col("recyclable").fill_null(False)
        if "decision" in schema:
            ok = ok & (pl.col("decision") == "rejected")
        if config.reasons is not None:
            wanted = list(config.reasons)
            ok = ok & (reason.is_in(wanted) | reason.str.split_exact(":", 1).struct.field("field_0").is_in(wanted))
        lf = lf.filter(ok)
        columns.append("reject_reason")
    elif "decision" in schema:
        lf = lf.filter(pl.col("decision") == "kept")
    lf = lf.filter(pl.col("n_chars") >= config.min_input_chars)
    if config.quality_band is not None and "quality_score" in schema:
        low, high = config.quality_band
        scored = frame.select(pl.col("quality_score").is_not_null().any()).collect().item()
        if scored:
            lf = lf.filter(pl.col("quality_score").is_between(low, high, closed="both"))
        else:
            log.warning("quality_band set but the %s documents have no quality_score: band not applied", origin)
    elif config.quality_band is not None:
        log.warning("quality_band set but the %s documents have no quality_score column: band not applied", origin)
    out = lf.select([c for c in columns if c in schema]).collect()
    if "reject_reason" not in out.columns:
        out = out.with_columns(reject_reason=pl.lit(None, dtype=pl.String))
    out = out.with_columns(origin=pl.lit(origin),
                           order=pl.Series(order_keys(out["id"].to_list(), seed=config.seed), dtype=pl.UInt64))
    if origin == ORIGIN_KEPT:  # a Bernoulli sample by hash: the same documents whatever the crawl's size
        out = out.filter((pl.col("order").cast(pl.Float64) / _U64) < config.kept_sample_share)
    return out


def select_inputs(rejected: pl.LazyFrame | None, kept: pl.LazyFrame | None, *, config: RewriteConfig) -> pl.DataFrame:
    """Documents to rewrite, in a seeded order, within the budget.

    Returns the DOCUMENT_SCHEMA columns plus `origin` ("rejected"/"kept"), `reject_reason`,
    `quality_score` (null when absent), `prompt_ids` (the prompts this document gets) and
    `est_tokens` (input-token estimate for all its prompts). Never a non-recyclable reject.
    """
    parts = []
    if rejected is not None:
        parts.append((rejected, _candidates(rejected, origin=ORIGIN_REJECTED, config=config)))
    if kept is not None and config.kept_sample_share > 0:
        parts.append((kept, _candidates(kept, origin=ORIGIN_KEPT, config=config)))
    chosen_frames = [c for _, c in parts]
    if not chosen_frames or all(c.height == 0 for c in chosen_frames):
        return _empty()
    candidates = pl.concat(chosen_frames, how="vertical_relaxed").unique("id", keep="first", maintain_order=True)
    n_prompts = {ORIGIN_REJECTED: len(config.prompts), ORIGIN_KEPT: len(config.kept_prompts)}
    candidates = candidates.sort("order", "id").with_columns(
        est_tokens=estimated_tokens(pl.col("n_chars"), max_input_chars=config.max_input_chars)
        * pl.col("origin").replace_strict(n_prompts, return_dtype=pl.Int64))
    if config.max_input_tokens is not None:
        candidates = candidates.filter(pl.col("est_tokens").cum_sum() <= config.max_input_tokens)
    if config.max_documents is not None:
        candidates = candidates.head(config.max_documents)
    rows = []
    for source, _ in parts:
        schema = source.collect_schema()
        wanted = candidates.select("id", "origin", "order", "est_tokens")
        extra = [c for c in ("quality_score", "reject_reason") if c in schema]
        cols = [c for c in DOCUMENT_SCHEMA if c in schema] + extra
        rows.append(source.select(cols).join(wanted.lazy(), on="id", how="semi").collect()
                    .join(wanted, on="id", how="inner"))
    out = pl.concat(rows, how="diagonal_relaxed").unique("id", keep="first").sort("order", "id")
    prompt_ids = {ORIGIN_REJECTED: list(config.prompts), ORIGIN_KEPT: list(config.kept_prompts)}
    out = out.with_columns(
        prompt_ids=pl.col("origin").replace_strict(prompt_ids, return_dtype=pl.List(pl.String)),
        quality_score=(pl.col("quality_score") if "quality_score" in out.columns else pl.lit(None)).cast(pl.Float64),
        reject_reason=(pl.col("reject_reason") if "reject_reason" in out.columns else pl.lit(None)).cast(pl.String),
    )
    missing = [c for c in DOCUMENT_SCHEMA if c not in out.columns]
    if missing:
        raise ValueError(f"input documents lack columns {missing}")
    out = out.select([pl.col(c).cast(t) for c, t in DOCUMENT_SCHEMA.items()]
                     + ["origin", "reject_reason", "quality_score", "prompt_ids", "est_tokens"])
    log.info("selected %d documents to rewrite (%d rejected, %d kept; ~%d input tokens)", out.height,
             out.filter(pl.col("origin") == ORIGIN_REJECTED).height, out.filter(pl.col("origin") == ORIGIN_KEPT).height,
             int(out["est_tokens"].sum() or 0))
    return out


def _empty() -> pl.DataFrame:
    schema = dict(DOCUMENT_SCHEMA) | {"origin": pl.String(), "reject_reason": pl.String(),
                                      "quality_score": pl.Float64(), "prompt_ids": pl.List(pl.String),
                                      "est_tokens": pl.Int64()}
    return pl.DataFrame(schema=schema)
