"""FineWeb's own quality signals (Penedo et al. 2024, section 3.3) and rules.

Lines are split at "\\n" and blank lines ignored; a line "ends with punctuation" when its
last character (not stripped) is sentence-final punctuation.
"""

from __future__ import annotations

import polars as pl

from textmill.filters.batch import ROW, TERMINAL_PUNCT, Batch, first_occurrence, ratio
from textmill.filters.config import FineWebRules

Rules = list[tuple[str, pl.Expr]]


def fineweb_signals(batch: Batch, rules: FineWebRules) -> pl.DataFrame:
    """fw_lines, fw_line_punct_ratio, fw_short_line_ratio, fw_char_dup_ratio, fw_list_ratio."""
    lines = (batch.docs.select(ROW, line=pl.col("text").str.split("\n")).explode("line")
             .filter(pl.col("line").str.strip_chars() != ""))
    line = pl.col("line")
    lines = lines.with_columns(_len=line.str.len_chars(), _dup=~first_occurrence(line.hash()))
    per_doc = lines.group_by(ROW).agg(
        n=pl.len(),
        punct=line.str.contains(f"{TERMINAL_PUNCT}$").sum(),
        short=(pl.col("_len") <= rules.short_line_length).sum(),
        dup_chars=pl.col("_len").filter(pl.col("_dup")).sum(),
    )
    counts = pl.concat([batch.align(per_doc, {"n": 0, "punct": 0, "short": 0, "dup_chars": 0}),
                        batch.token_counts, batch.docs.select("_chars", _newlines=pl.col("text").str.count_matches(
                            "\n", literal=True))], how="horizontal")
    return counts.select(
        fw_lines=pl.col("n").cast(pl.Int64),
        fw_line_punct_ratio=ratio(pl.col("punct"), pl.col("n")),
        fw_short_line_ratio=ratio(pl.col("short"), pl.col("n")),
        fw_char_dup_ratio=ratio(pl.col("dup_chars"), pl.col("_chars") - pl.col("_newlines")),
        fw_list_ratio=ratio(pl.col("_newlines"), pl.col("n_words")),
    )


def fineweb_rules(rules: FineWebRules) -> Rules:
    """In datatrove's order: no non-blank line, line punctuation, short lines, duplicated characters, list-like."""
    out: Rules = [("empty", pl.col("fw_lines") == 0)]
    if rules.line_punct_thr is not None:
        low = pl.col("fw_line_punct_ratio") < rules.line_punct_thr
        if rules.line_punct_exclude_zero:
            low = low & (pl.col("fw_line_punct_ratio") != 0)
        out.append(("line_punct_ratio", low))
    if rules.short_line_thr is not None:
        out.append(("short_line_ratio", pl.col("fw_short_line_ratio") > rules.short_line_thr))
    if rules.char_duplicates_ratio is not None:
        out.append(("char_dup_ratio", pl.col("fw_char_dup_ratio") > rules.char_duplicates_ratio))
    if rules.new_line_ratio is not None:
        out.append(("list_ratio", pl.col("fw_list_ratio") > rules.new_line_ratio))
    return out
