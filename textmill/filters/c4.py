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

from textmill.filters.batch import LINE, ROW, TERMINAL_PUNCT, Batch
from textmill.filters.config import C4Rules
from textmill.filters.tokenize import word_tokens

Rules = list[tuple[str, pl.Expr]]

CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def _sentence_starts(tokens: pl.DataFrame) -> pl.DataFrame:
    """Sentences per line (LINE, `sentences`) from its tokens (contiguous per line, in order).

    spaCy's sentencizer rule: a token that is neither a sentence-final mark nor punctuation
    starts a new sentence when a sentence-final mark appeared since the previous such token.
    """
    tokens = tokens.select(LINE, "pc", _cum=pl.col("pc").cast(pl.Int32).cum_sum(), _word=~pl.col("pc") & ~pl.col("punct"))
    first_of_line = (pl.col(LINE).shift(1) != pl.col(LINE)).fill_null(True)
    tokens = tokens.with_columns(
        _base=pl.when(first_of_line).then(pl.col("_cum") - pl.col("pc").cast(pl.Int32)).otherwise(None).forward_fill())
    words = tokens.filter(pl.col("_word"))
    previous = pl.when((pl.col(LINE).shift(1) == pl.col(LINE)).fill_null(False)).then(
        pl.col("_cum").shift(1)).otherwise(pl.col("_base"))
    return words.select(LINE, _new=pl.col("_cum") > previous).group_by(LINE).agg(new=pl.col("_new").sum())


def _sentences(batch: Batch, kept: pl.DataFrame) -> pl.DataFrame:
    """Sentences of each kept line (ROW, `sentences`): the document's tokens of that line, or the
    line re-tokenized when citation removal changed it."""
    same = pl.col("clean") == pl.col("line").str.strip_chars()
    changed = kept.filter(~same)
    # lines are numbered 0..n-1 (Batch.lines), so a per-line flag is gathered by line number
    reuse = pl.repeat(False, batch.lines.height, eager=True).scatter(kept.filter(same)[LINE], True)
    unchanged = batch.tokens.filter(reuse.gather(batch.tokens[LINE]))
    token = pl.col("token")
    retokenized = word_tokens(changed, text="clean", key=LINE, features={
        "pc": token.str.contains(f"^{TERMINAL_PUNCT}$"), "punct": token.str.contains(r"^\p{P}+$")})
    tokens = pl.concat([unchanged.select(LINE, "pc", "punct"), retokenized.select(LINE, "pc", "punct")])
    starts = _sentence_starts(tokens)
    return kept.select(LINE, ROW).join(starts, on=LINE, how="left").select(
        ROW, sentences=pl.col("new").fill_null(0) + 1)


def c4_signals(batch: Batch, rules: C4Rules) -> pl.DataFrame:
    """c4_lines, c4_terminal_punct_lines, c4_javascript_lines, c4_policy_lines, c4_kept_lines,
    c4_sentences, c4_lorem_ipsum, c4_curly_bracket."""
    lines = batch.lines
    stripped = pl.col("line").str.strip_chars()
    lines = lines.with_columns(
        clean=stripped.str.replace_all(CITATION, "") if rules.remove_citations else stripped,
        _words=stripped.str.count_matches(r"\S+"),
        _long=(stripped.str.contains(f"\\S{{{rules.max_word_length + 1}}}")
               if rules.max_word_length is not None else pl.lit(False)),
    )
    clean = pl.col("clean")
    terminal = clean.str.contains(r"[.?!\"']$") & ~clean.str.ends_with("...")
    enough_words = (pl.col("_words") >= rules.min_words_per_line) if rules.min_words_per_line is not None else True
    passes = ~pl.col("_long") & (terminal if rules.filter_no_terminal_punct else True) & enough_words
    # the phrases are ASCII: ASCII case folding matches what lower-casing the line would
    javascript = (clean.str.contains_any(["javascript"], ascii_case_insensitive=True) if rules.filter_javascript
                  else pl.lit(False))
    policy = (clean.str.contains_any(list(POLICY_PHRASES), ascii_case_insensitive=True) if rules.filter_policy
              else pl.lit(False))
    lorem = clean.str.contains_any(["lorem ipsum"], ascii_case_insensitive=True)
    lines = lines.with_columns(
        _terminal=terminal,
        _js=passes & javascript,
        _policy=passes & ~javascript & policy,
        _lorem=(passes & lorem) if rules.filter_lorem_ipsum else pl.lit(False),
        _curly=(passes & ~javascript & clean.str.contains("{", literal=True)) if rules.filter_curly_bracket
        else pl.lit(False),
        _kept=passes & ~javascript & ~policy,
    )
    per_doc = lines.group_by(ROW).agg(
        c4_lines=pl.len(), c4_terminal_punct_lines=pl.col("_terminal").sum(), c4_javascript_lines=pl.col("_js").sum(),
        c4_policy_lines=pl.col("_policy").sum(), c4_kept_lines=pl.col("_kept").sum(),
        c4_lorem_ipsum=pl.col("_lorem").any(), c4_curly_bracket=pl.col("_curly").any(),
    )
    kept = lines.filter(pl.col("_kept")).select(LINE, ROW, "line", "clean")
    sentences = _sentences(batch, kept).group_by(ROW).agg(c4_sentences=pl.col("sentences").sum())
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
