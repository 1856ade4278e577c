"""The batch a signal group works on: documents plus the token and line tables several groups share.

Signal groups never loop over documents: they explode texts into tokens or lines keyed by
the document's row number (`ROW`), aggregate with `group_by`, and align the result back to
the batch with `Batch.align`.
"""

from __future__ import annotations

import string
from functools import cached_property
from typing import Any

import polars as pl

from textmill.filters.config import FilterConfig
from textmill.filters.lists import bundled, word_set
from textmill.filters.tokenize import char_class, word_tokens

ROW = "_row"
LINE = "_line"

# Sentence-final punctuation: Unicode's Sentence_Terminal property (FineWeb's stop characters and
# spaCy's sentencizer use the same set, from older Unicode tables) plus three Khmer signs datatrove lists.
TERMINAL_PUNCT = r"[\p{Sentence_Terminal}\x{17d6}\x{17d9}\x{17da}]"
# Characters that do not make a token a word in the Gopher rules: ASCII punctuation, control
# characters except tab and newline, typographic quotes and dashes, sentence terminals
# (the set datatrove uses; "１", FULLWIDTH DIGIT ONE, is in it too).
SYMBOL_CHARS = (
    string.punctuation
    + "".join(chr(c) for c in (*range(0, 9), *range(11, 32), *range(127, 160)))
    + "«´»–—’“”„…∶━►、〈〉《》「」【】％（），１：；～"
)
NON_SYMBOL_CHAR = char_class(SYMBOL_CHARS, negate=True, extra=r"\p{Sentence_Terminal}\x{17d6}\x{17d9}\x{17da}")
# Python's str.splitlines() boundaries, folded to "\n"
LINE_BREAKS = r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}]"


def ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator as Float64, 0.0 when the denominator is 0."""
    return pl.when(denominator > 0).then(numerator.cast(pl.Float64) / denominator.cast(pl.Float64)).otherwise(0.0)


def splitlines(text: pl.Expr) -> pl.Expr:
    """The lines of `str.splitlines()` as a list (no trailing empty line; none for empty text)."""
    folded = text.str.replace_all(LINE_BREAKS, "\n")
    body = pl.when(folded.str.ends_with("\n")).then(folded.str.slice(0, folded.str.len_chars() - 1)).otherwise(folded)
    return pl.when(folded == "").then(pl.lit([], dtype=pl.List(pl.String))).otherwise(body.str.split("\n"))


def first_occurrence(key: str | pl.Expr) -> pl.Expr:
    """True for the first occurrence of `key` within its document (rows must carry ROW).

    A window over ROW keeps each hash table document-sized (cache-resident): several times
    faster than one batch-wide table keyed by (ROW, key).
    """
    key = pl.col(key) if isinstance(key, str) else key
    return key.is_first_distinct().over(ROW)


def repeated(key: str | pl.Expr) -> pl.Expr:
    """True for every occurrence of a `key` that occurs more than once in its document."""
    key = pl.col(key) if isinstance(key, str) else key
    return key.is_duplicated().over(ROW)


class Batch:
    """Documents of one batch (row order kept) and lazily built tables shared by signal groups."""

    def __init__(self, frame: pl.DataFrame, *, config: FilterConfig) -> None:
        self.config = config
        self.height = frame.height
        columns = [pl.int_range(pl.len(), dtype=pl.UInt32).alias(ROW), pl.col("text").fill_null("")]
        for name in ("url", "lang", "lang_score", "quality_score"):
            if name in frame.columns:
                columns.append(pl.col(name))
        self.docs = frame.select(columns).with_columns(_chars=pl.col("text").str.len_chars())

    def align(self, per_row: pl.DataFrame, fill: dict[str, Any]) -> pl.DataFrame:
        """Columns of `fill` for every document in batch order; documents absent from `per_row` get the fill value."""
        joined = self.docs.select(ROW).join(per_row, on=ROW, how="left", maintain_order="left")
        return joined.select(pl.col(name).fill_null(value) for name, value in fill.items())

    @cached_property
    def lines(self) -> pl.DataFrame:
        """One row per `str.splitlines()` line: LINE (its index here), ROW, `line`."""
        return (self.docs.select(ROW, line=splitlines(pl.col("text"))).explode("line").drop_nulls("line")
                .with_row_index(LINE))

    def token_features(self) -> dict[str, pl.Expr]:
        """Per-token features, computed once per distinct token (see `word_tokens`)."""
        stop_words = list(self.config.gopher_quality.stop_words)
        bad = sorted(word_set(bundled("banned_words.txt"), self.config.badwords.extra_words))
        token = pl.col("token")
        return {
            "len": token.str.len_chars().cast(pl.UInt32),
            "h": token.hash(),
            "word": token.str.contains(NON_SYMBOL_CHAR),
            "alpha": token.str.contains(r"\p{L}"),
            "stop": token.replace_strict(stop_words, list(range(len(stop_words))), default=None,
                                         return_dtype=pl.Int8),
            "bad": token.str.to_lowercase().is_in(bad),
            "pc": token.str.contains(f"^{TERMINAL_PUNCT}$"),
            "punct": token.str.contains(r"^\p{P}+$"),
        }

    @cached_property
    def tokens(self) -> pl.DataFrame:
        """One row per word token in text order: ROW, LINE and the `token_features`.

        `word` is datatrove's non-symbol test, `alpha` any letter, `stop` the index of a
        Gopher stop word (null otherwise), `bad` a bad-word-list hit, `h` a 64-bit hash of
        the token for n-gram identity, `pc` a sentence-final mark, `punct` punctuation only.
        Texts are tokenized line by line (no token spans a line break), so line-level
        signals (C4's sentences) reuse the same tokens.
        """
        tokens = word_tokens(self.lines, text="line", key=LINE, features=self.token_features())
        rows = self.lines[ROW].gather(tokens[LINE]).set_sorted()  # documents stay in order
        return tokens.select(rows.alias(ROW), pl.all())

    @cached_property
    def token_stats(self) -> pl.DataFrame:
        """Per document, aligned to the batch: `n_words` (all tokens: datatrove's word list),
        `words` (non-symbol tokens), `word_chars`, `alpha`, `stop_words` (distinct), `bad_words`."""
        stats = self.tokens.group_by(ROW).agg(
            n_words=pl.len().cast(pl.Int64),
            words=pl.col("word").sum().cast(pl.Int64),
            word_chars=pl.col("len").filter(pl.col("word")).sum().cast(pl.Int64),
            alpha=pl.col("alpha").sum().cast(pl.Int64),
            stop_words=pl.col("stop").drop_nulls().n_unique().cast(pl.Int64),
            bad_words=pl.col("bad").sum().cast(pl.Int64),
        )
        return self.align(stats, dict.fromkeys(("n_words", "words", "word_chars", "alpha", "stop_words", "bad_words"),
                                               0))

    @property
    def token_counts(self) -> pl.DataFrame:
        """Per document: `n_words` aligned to the batch."""
        return self.token_stats.select("n_words")
