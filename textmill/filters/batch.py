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
    """True for the first occurrence of `key` within its document (rows must carry ROW)."""
    key = pl.col(key) if isinstance(key, str) else key
    return pl.struct(pl.col(ROW), key).is_first_distinct()


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
    def tokens(self) -> pl.DataFrame:
        """One row per word token (ROW, len, h, word, alpha, stop, bad) in text order.

        `word` is datatrove's non-symbol test, `alpha` any letter, `stop` the index of a
        Gopher stop word (null otherwise), `bad` a bad-word-list hit, `h` a 64-bit hash of
        the token for n-gram identity.
        """
        stop_words = list(self.config.gopher_quality.stop_words)
        bad = sorted(word_set(bundled("banned_words.txt"), self.config.badwords.extra_words))
        token = pl.col("token")
        features = {
            "len": token.str.len_chars().cast(pl.UInt32),
            "h": token.hash(),
            "word": token.str.contains(NON_SYMBOL_CHAR),
            "alpha": token.str.contains(r"\p{L}"),
            "stop": token.replace_strict(stop_words, list(range(len(stop_words))), default=None,
                                         return_dtype=pl.Int8),
            "bad": token.str.to_lowercase().is_in(bad),
        }
        return word_tokens(self.docs, text="text", key=ROW, features=features)

    @cached_property
    def token_counts(self) -> pl.DataFrame:
        """Per document: `n_words` (all tokens, as datatrove's word lists) aligned to the batch."""
        counts = self.tokens.group_by(ROW).agg(n_words=pl.len().cast(pl.Int64))
        return self.align(counts, {"n_words": 0})
