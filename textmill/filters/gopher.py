"""Gopher quality and repetition signals (Rae et al. 2021, appendix A) and their rules.

Signals are computed the way datatrove computes them, so that its thresholds keep their
meaning: words are spaCy-English-like tokens (textmill.filters.tokenize), a "word" for the
length rules is a token with a character outside the punctuation set, lines are
`str.splitlines()` lines, paragraphs are split at two or more newlines.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from textmill.filters.batch import ROW, Batch, first_occurrence, ratio, repeated
from textmill.filters.config import GopherQualityRules, GopherRepetitionRules

Rules = list[tuple[str, pl.Expr]]
log = logging.getLogger(__name__)


# --- quality ------------------------------------------------------------------------------

def gopher_quality_signals(batch: Batch, rules: GopherQualityRules) -> pl.DataFrame:
    """gq_words, gq_mean_word_length, gq_hash_ratio, gq_ellipsis_ratio, gq_bullet_lines_ratio,
    gq_ellipsis_lines_ratio, gq_alpha_words_ratio, gq_stop_words."""
    counts = batch.token_stats.rename({"n_words": "n_tokens", "stop_words": "stop"})
    text, line = pl.col("text"), pl.col("line")
    per_line = batch.lines.group_by(ROW).agg(
        lines=pl.len(), bullets=line.str.contains(r"^\s*[•\-]").sum(),
        end_ellipsis=line.str.contains(r"(?:\.\.\.|…)\s*$").sum())
    symbols = batch.docs.select(
        hashes=text.str.count_matches("#", literal=True),
        ellipses=text.str.count_matches("...", literal=True) + text.str.count_matches("…", literal=True))
    both = pl.concat([counts, symbols, batch.align(per_line, {"lines": 0, "bullets": 0, "end_ellipsis": 0})],
                     how="horizontal")
    n = pl.col("n_tokens")
    return both.select(
        gq_words=pl.col("words").cast(pl.Int64),
        gq_mean_word_length=ratio(pl.col("word_chars"), pl.col("words")),
        gq_hash_ratio=ratio(pl.col("hashes"), n),
        gq_ellipsis_ratio=ratio(pl.col("ellipses"), n),
        gq_bullet_lines_ratio=ratio(pl.col("bullets"), pl.col("lines")),
        gq_ellipsis_lines_ratio=ratio(pl.col("end_ellipsis"), pl.col("lines")),
        gq_alpha_words_ratio=ratio(pl.col("alpha"), n),
        gq_stop_words=pl.col("stop").cast(pl.Int64),
    )


def gopher_quality_rules(rules: GopherQualityRules) -> Rules:
    """In datatrove's order; a rule whose threshold is None is skipped."""
    out: Rules = []
    # a document without words has no mean word length (0.0 here): datatrove's NaN fails no rule
    mean, has_words = pl.col("gq_mean_word_length"), pl.col("gq_words") > 0
    for name, threshold, fails in (
        ("min_doc_words", rules.min_doc_words, lambda t: pl.col("gq_words") < t),
        ("max_doc_words", rules.max_doc_words, lambda t: pl.col("gq_words") > t),
        ("min_avg_word_length", rules.min_avg_word_length, lambda t: has_words & (mean < t)),
        ("max_avg_word_length", rules.max_avg_word_length, lambda t: has_words & (mean > t)),
        ("hash_ratio", rules.max_symbol_word_ratio, lambda t: pl.col("gq_hash_ratio") > t),
        ("ellipsis_ratio", rules.max_symbol_word_ratio, lambda t: pl.col("gq_ellipsis_ratio") > t),
        ("bullet_lines", rules.max_bullet_lines_ratio, lambda t: pl.col("gq_bullet_lines_ratio") > t),
        ("ellipsis_lines", rules.max_ellipsis_lines_ratio, lambda t: pl.col("gq_ellipsis_lines_ratio") > t),
        ("alpha_words", rules.min_alpha_words_ratio, lambda t: pl.col("gq_alpha_words_ratio") < t),
        ("stop_words", rules.min_stop_words, lambda t: pl.col("gq_stop_words") < t),
    ):
        if threshold is not None:
            out.append((name, fails(threshold)))
    return out


# --- repetition ---------------------------------------------------------------------------

def _duplicates(parts: pl.DataFrame, batch: Batch, prefix: str) -> pl.DataFrame:
    """Per document: number of parts, parts seen before in the same document, and their characters."""
    parts = parts.with_columns(
        _len=pl.col("part").str.len_chars(), _dup=~first_occurrence(pl.col("part").hash()))
    per_doc = parts.group_by(ROW).agg(
        **{f"{prefix}_n": pl.len(), f"{prefix}_dups": pl.col("_dup").sum(),
           f"{prefix}_dup_chars": pl.col("_len").filter(pl.col("_dup")).sum()})
    return batch.align(per_doc, {f"{prefix}_n": 0, f"{prefix}_dups": 0, f"{prefix}_dup_chars": 0})


def _repeated_ngrams(tokens: pl.DataFrame, sizes: list[int]) -> dict[int, pl.DataFrame]:
    """For each n in `sizes`: the n-grams occurring at least twice in their document.

    Columns: `_pos` (index of the first token in `tokens`), ROW, `key` (hash of the n token
    hashes), `len` (characters of the n tokens, no separators). An n-gram can repeat only
    where both of its (n-1)-grams repeat, so each size is computed from the previous one's
    survivors: the work after unigrams shrinks with the repetition in the batch.
    """
    hashes, lengths = tokens["h"], tokens["len"].cast(pl.Int64)
    current = tokens.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos"), ROW, key="h",
                            len=pl.col("len").cast(pl.Int64))
    current = current.filter(repeated("key"))
    out: dict[int, pl.DataFrame] = {1: current} if 1 in sizes else {}
    for n in range(2, max(sizes, default=1) + 1):
        # n-gram at p = (n-1)-gram at p + token p+n-1; both (n-1)-grams at p and p+1 must repeat
        nxt = (pl.col("_pos").shift(-1) == pl.col("_pos") + 1) & (pl.col(ROW).shift(-1) == pl.col(ROW))
        grown = current.filter(nxt.fill_null(False))
        last = grown["_pos"] + (n - 1)
        grown = grown.with_columns(_h=hashes.gather(last), _l=lengths.gather(last))
        grown = grown.select("_pos", ROW, key=pl.struct("key", "_h").hash(), len=pl.col("len") + pl.col("_l"))
        current = grown.filter(repeated("key"))
        if n in sizes:
            out[n] = current
    return out


def _document_starts(tokens: pl.DataFrame) -> pl.DataFrame:
    """ROW, index of its first token, and its number of tokens."""
    return (tokens.select(ROW).with_row_index("_start").group_by(ROW, maintain_order=True)
            .agg(pl.col("_start").first().cast(pl.Int64), _count=pl.len()))


def _top_ngram_chars(lengths: pl.Series, starts: pl.DataFrame, grams: pl.DataFrame, n: int) -> pl.DataFrame:
    """Characters of the most frequent n-gram (first seen wins ties) times its count, per document.

    The n-gram is joined with single spaces, as datatrove joins it. A document whose
    n-grams are all distinct scores its first n-gram once.
    """
    counted = grams.group_by(ROW, "key").agg(count=pl.len(), first=pl.col("_pos").min(), chars=pl.col("len").first())
    best = counted.group_by(ROW).agg(
        top=((pl.col("chars") + (n - 1)) * pl.col("count")).sort_by(["count", "first"], descending=[True, False])
        .first())
    single = starts.filter(pl.col("_count") >= n).join(best, on=ROW, how="anti")
    first_chars = sum((lengths.gather(single["_start"] + k) for k in range(1, n)), lengths.gather(single["_start"]))
    single = single.select(ROW).with_columns(top=first_chars + (n - 1))
    return pl.concat([best, single], how="vertical")


def _jump_chain(pos: np.ndarray, row: np.ndarray, n: int) -> np.ndarray:
    """Which of the sorted positions a scan that jumps n ahead from each hit lands on.

    Per document the first position is hit; from a hit p the next hit is the first position
    >= p + n of the same document. Reachability along these links is marked by pointer
    doubling (log of the chain length vectorized passes), not by walking the chains.
    """
    m = len(pos)
    nxt = np.searchsorted(pos, pos + n, side="left")
    ok = nxt < m
    ok[ok] &= row[nxt[ok]] == row[ok]
    jump = np.where(ok, nxt, -1)
    hit = np.ones(m, dtype=bool)
    hit[1:] = row[1:] != row[:-1]
    while True:
        frm = hit & (jump >= 0)
        if not frm.any():
            return hit
        hit[jump[frm]] = True
        linked = jump >= 0
        doubled = np.full(m, -1, dtype=jump.dtype)
        doubled[linked] = jump[jump[linked]]
        jump = doubled


def _scan_step(pos: np.ndarray, row: np.ndarray, kid: np.ndarray, visited: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray]:
    """Given which repeated n-grams the scan visits: the ones it counts, and the visits that implies."""
    m = len(pos)
    seen = np.flatnonzero(visited)
    first = np.zeros(m, dtype=bool)
    first[seen[np.unique(kid[seen], return_index=True)[1]]] = True
    eligible = np.flatnonzero(visited & ~first)  # visited, and recorded at an earlier visit
    counted = np.zeros(m, dtype=bool)
    counted[eligible[_jump_chain(pos[eligible], row[eligible], n)]] = True
    hits, hit_rows = pos[counted], row[counted]
    if not len(hits):
        return counted, np.ones(m, dtype=bool)
    last = np.searchsorted(hits, pos, side="right") - 1
    at = np.maximum(last, 0)
    inside = (last >= 0) & (hit_rows[at] == row) & (pos > hits[at]) & (pos < hits[at] + n)
    return counted, ~inside


def _duplicated_ngram_chars(grams: pl.DataFrame, n: int, *, max_rounds: int = 100_000) -> pl.DataFrame:
    """Characters of repeated n-grams as datatrove's left-to-right scan counts them, per document.

    The scan records each n-gram it visits; an n-gram recorded before is counted and the
    scan jumps n words ahead, so n-grams inside a jump are neither counted nor recorded.
    Only n-grams occurring twice in a document can matter, so the scan is solved on those:
    assume every one is visited, derive what is counted (first recorded occurrence per
    document by `np.unique`, the jump chains by pointer doubling), derive the visits that
    implies, and repeat until nothing changes. Every round fixes at least the earliest wrong
    visit of each document, so the result is the scan's exactly; converged documents leave
    the working set, so the rounds of a few very repetitive documents stay cheap.
    """
    if grams.is_empty():
        return pl.DataFrame(schema={ROW: pl.UInt32, "dup": pl.Int64})
    grams = grams.with_columns(_kid=pl.struct(ROW, "key").hash())
    pos, row, kid = grams["_pos"].to_numpy(), grams[ROW].to_numpy(), grams["_kid"].to_numpy()
    counted_all = np.zeros(len(pos), dtype=bool)
    active, visited = np.arange(len(pos)), np.ones(len(pos), dtype=bool)
    for _ in range(max_rounds):
        counted, implied = _scan_step(pos[active], row[active], kid[active], visited, n)
        changed = implied != visited
        done = ~np.isin(row[active], np.unique(row[active][changed]))
        counted_all[active[done]] = counted[done]
        active, visited = active[~done], implied[~done]
        if not active.size:
            break
    else:
        log.warning("duplicated %d-gram scan: %d documents not settled after %d rounds", n,
                    len(np.unique(row[active])), max_rounds)
        counted_all[active] = counted[~done]
    return grams.filter(pl.Series(counted_all)).group_by(ROW).agg(dup=pl.col("len").sum())


def gopher_repetition_signals(batch: Batch, rules: GopherRepetitionRules) -> pl.DataFrame:
    """gr_dup_para_frac, gr_dup_para_char_frac, gr_dup_line_frac, gr_dup_line_char_frac,
    gr_top_{n}_gram_char_frac, gr_dup_{n}_gram_char_frac."""
    text = pl.col("text")
    paragraphs = batch.docs.select(
        ROW, part=text.str.strip_chars().str.replace_all(r"\n{2,}", "\n\n").str.split("\n\n")).explode("part")
    lines = batch.docs.select(ROW, part=text.str.replace_all(r"\n+", "\n").str.split("\n")).explode("part")
    chars = batch.docs.select("_chars")
    out = pl.concat([chars, _duplicates(paragraphs, batch, "para"), _duplicates(lines, batch, "line")],
                    how="horizontal")
    columns = {
        "gr_dup_para_frac": ratio(pl.col("para_dups"), pl.col("para_n")),
        "gr_dup_para_char_frac": ratio(pl.col("para_dup_chars"), pl.col("_chars")),
        "gr_dup_line_frac": ratio(pl.col("line_dups"), pl.col("line_n")),
        "gr_dup_line_char_frac": ratio(pl.col("line_dup_chars"), pl.col("_chars")),
    }
    tokens = batch.tokens.select(ROW, "h", "len")
    grams = _repeated_ngrams(tokens, [n for n, _ in (*rules.top_n_grams, *rules.dup_n_grams)])
    starts, lengths = _document_starts(tokens), tokens["len"].cast(pl.Int64)
    extra = []
    for n, _ in rules.top_n_grams:
        top = _top_ngram_chars(lengths, starts, grams[n], n)
        extra.append(batch.align(top.rename({"top": f"_top{n}"}), {f"_top{n}": 0}))
        columns[f"gr_top_{n}_gram_char_frac"] = ratio(pl.col(f"_top{n}"), pl.col("_chars"))
    for n, _ in rules.dup_n_grams:
        dup = _duplicated_ngram_chars(grams[n], n)
        extra.append(batch.align(dup.rename({"dup": f"_dup{n}"}), {f"_dup{n}": 0}))
        columns[f"gr_dup_{n}_gram_char_frac"] = ratio(pl.col(f"_dup{n}"), pl.col("_chars"))
    return pl.concat([out, *extra], how="horizontal").select(**columns)


def gopher_repetition_rules(rules: GopherRepetitionRules) -> Rules:
    """In datatrove's order: empty text, paragraphs, lines, top n-grams, duplicated n-grams."""
    out: Rules = [("empty", pl.col("text") == "")]
    for name, threshold in (("dup_para_frac", rules.dup_para_frac), ("dup_para_char_frac", rules.dup_para_char_frac),
                            ("dup_line_frac", rules.dup_line_frac), ("dup_line_char_frac", rules.dup_line_char_frac)):
        if threshold is not None:
            out.append((name, pl.col(f"gr_{name}") > threshold))
    out += [(f"top_{n}_gram", pl.col(f"gr_top_{n}_gram_char_frac") > t) for n, t in rules.top_n_grams]
    out += [(f"dup_{n}_gram", pl.col(f"gr_dup_{n}_gram_char_frac") > t) for n, t in rules.dup_n_grams]
    return out
