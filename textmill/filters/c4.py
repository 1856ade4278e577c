"""C4 quality signals (Raffel et al. 2020, section 2.2) as a document filter, and its rules.

Each `str.splitlines()` line is stripped; a line counts ("is kept", in C4's words) when it
has no word over `max_word_length` characters, ends in terminal punctuation (. ? ! " ')
but not "...", after Wikipedia-style citations are removed, has at least
`min_words_per_line` words, and mentions neither javascript nor a cookie/terms policy.
"lorem ipsum" and "{" reject the document when they appear in a line that passed the
earlier line tests, as in datatrove's C4QualityFilter. Sentences of kept lines are counted
with the rule of spaCy's sentencizer (a new sentence starts at the first non-punctuation
token after a sentence-final mark).
"""

from __future__ import annotations

import polars as pl

from textmill.filters.batch import ROW, TERMINAL_PUNCT, Batch, splitlines
from textmill.filters.config import C4Rules
from textmill.filters.tokenize import word_tokens

Rules = list[tuple[str, pl.Expr]]

CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
LINE = "_line"


def _sentences(kept: pl.DataFrame) -> pl.DataFrame:
    """Sentences per kept line (LINE, ROW, `sentences`), spaCy-sentencizer style."""
    token = pl.col("token")
    tokens = word_tokens(kept, text="clean", key=LINE, features={
        "pc": token.str.contains(f"^{TERMINAL_PUNCT}$"),
        "punct": token.str.contains(r"^\p{P}+$"),
    })
    # a token that is neither sentence-final nor punctuation starts a sentence when a
    # sentence-final mark appeared since the previous such token (or since the line start)
    tokens = tokens.with_columns(_cum=pl.col("pc").cast(pl.Int32).cum_sum(), _word=~pl.col("pc") & ~pl.col("punct"))
    same_line = pl.col(LINE).shift(1) == pl.col(LINE)
    line_base = pl.when(same_line.fill_null(False)).then(None).otherwise(
        pl.col("_cum") - pl.col("pc").cast(pl.Int32)).forward_fill()
    tokens = tokens.with_columns(_base=line_base)
    words = tokens.filter(pl.col("_word"))
    previous = pl.when((pl.col(LINE).shift(1) == pl.col(LINE)).fill_null(False)).then(
        pl.col("_cum").shift(1)).otherwise(pl.col("_base"))
    starts = words.select(LINE, _new=pl.col("_cum") > previous).group_by(LINE).agg(new=pl.col("_new").sum())
    return kept.select(LINE, ROW).join(starts, on=LINE, how="left").select(
        LINE, ROW, sentences=pl.col("new").fill_null(0) + 1)


def c4_signals(batch: Batch, rules: C4Rules) -> pl.DataFrame:
    """c4_lines, c4_terminal_punct_lines, c4_javascript_lines, c4_policy_lines, c4_kept_lines,
    c4_sentences, c4_lorem_ipsum, c4_curly_bracket."""
    lines = (batch.docs.select(ROW, line=splitlines(pl.col("text"))).explode("line").drop_nulls("line")
             .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias(LINE)))
    stripped = pl.col("line").str.strip_chars()
    lines = lines.with_columns(
        clean=stripped.str.replace_all(CITATION, "") if rules.remove_citations else stripped,
        _words=stripped.str.count_matches(r"\S+"),
        _long=(stripped.str.contains(f"\\S{{{rules.max_word_length + 1}}}")
               if rules.max_word_length is not None else pl.lit(False)),
    )
    clean = pl.col("clean")
    lower = clean.str.to_lowercase()
    terminal = clean.str.contains(r"[.?!\"']$") & ~clean.str.ends_with("...")
    enough_words = (pl.col("_words") >= rules.min_words_per_line) if rules.min_words_per_line is not None else True
    passes = ~pl.col("_long") & (terminal if rules.filter_no_terminal_punct else True) & enough_words
    javascript = lower.str.contains("javascript", literal=True) if rules.filter_javascript else pl.lit(False)
    policy = lower.str.contains_any(list(POLICY_PHRASES)) if rules.filter_policy else pl.lit(False)
    lines = lines.with_columns(
        _terminal=terminal,
        _js=passes & javascript,
        _policy=passes & ~javascript & policy,
        _lorem=passes & lower.str.contains("lorem ipsum", literal=True) if rules.filter_lorem_ipsum else pl.lit(False),
        _curly=(passes & ~javascript & clean.str.contains("{", literal=True)) if rules.filter_curly_bracket
        else pl.lit(False),
        _kept=passes & ~javascript & ~policy,
    )
    per_doc = lines.group_by(ROW).agg(
        c4_lines=pl.len(), c4_terminal_punct_lines=pl.col("_terminal").sum(), c4_javascript_lines=pl.col("_js").sum(),
        c4_policy_lines=pl.col("_policy").sum(), c4_kept_lines=pl.col("_kept").sum(),
        c4_lorem_ipsum=pl.col("_lorem").any(), c4_curly_bracket=pl.col("_curly").any(),
    )
    kept = lines.filter(pl.col("_kept")).select(LINE, ROW, "clean")
    sentences = _sentences(kept).group_by(ROW).agg(c4_sentences=pl.col("sentences").sum())
    per_doc = per_doc.join(sentences, on=ROW, how="left")
    fill = {"c4_lines": 0, "c4_terminal_punct_lines": 0, "c4_javascript_lines": 0, "c4_policy_lines": 0,
            "c4_kept_lines": 0, "c4_sentences": 0, "c4_lorem_ipsum": False, "c4_curly_bracket": False}
    aligned = batch.align(per_doc, fill)
    return aligned.with_columns(pl.col(name).cast(pl.Int64) for name, v in fill.items() if not isinstance(v, bool))


def c4_rules(rules: C4Rules) -> Rules:
    """lorem ipsum, curly bracket, too few sentences."""
    out: Rules = [("lorem_ipsum", pl.col("c4_lorem_ipsum")), ("curly_bracket", pl.col("c4_curly_bracket"))]
    if rules.min_num_sentences is not None:
        out.append(("too_few_sentences", pl.col("c4_sentences") < rules.min_num_sentences))
    return out
