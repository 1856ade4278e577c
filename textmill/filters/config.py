"""Rule sets of the filtered stage: thresholds as frozen pydantic models.

Defaults of the Gopher, C4 and FineWeb rule sets are datatrove's defaults (its
`GopherQualityFilter`, `GopherRepetitionFilter`, `C4QualityFilter`, `FineWebQualityFilter`),
so a recipe that says nothing gets the FineWeb behaviour; docs/filter-parity.md lists
where textmill's signals differ. A threshold set to `None` disables that rule.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RuleSetName = Literal[
    "url_blocklist", "language", "badwords", "pii", "gopher_repetition", "gopher_quality", "c4", "fineweb",
    "quality_classifier",
]

# Safety and scope rules first: a document failing one of them is never recycled, even when it
# also fails a quality rule (the first failing rule is the reason). FineWeb's own order after that.
DEFAULT_ORDER: tuple[RuleSetName, ...] = (
    "url_blocklist", "language", "badwords", "pii", "gopher_repetition", "gopher_quality", "c4", "fineweb",
    "quality_classifier",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LanguageRules(_Strict):
    """Keep only the listed languages with a language-id score of at least `min_score` (FineWeb: en, 0.65)."""

    enabled: bool = True
    languages: tuple[str, ...] | None = Field(default=("en",), description="None keeps every language")
    min_score: float | None = Field(default=0.65, ge=0.0, le=1.0)


class UrlBlocklistRules(_Strict):
    """Blocked domains and words in the URL (datatrove's URLFilter rules, with bundled lists).

    `domain_files`/`word_files` add lists (one entry a line, `#` comments) such as the UT1
    blacklists; the bundled lists are small (see textmill/filters/data/SOURCE.txt).
    """

    enabled: bool = True
    use_bundled_lists: bool = True
    extra_domains: tuple[str, ...] = ()
    domain_files: tuple[str, ...] = ()
    extra_banned_words: tuple[str, ...] = ()
    extra_soft_banned_words: tuple[str, ...] = ()
    extra_banned_subwords: tuple[str, ...] = ()
    soft_word_threshold: int = Field(default=2, ge=1, description="soft words in the URL that block it")


class BadWordsRules(_Strict):
    """Share of words on the bundled bad-word list above which a document is rejected."""

    enabled: bool = True
    max_ratio: float | None = Field(default=0.01, ge=0.0, le=1.0)
    extra_words: tuple[str, ...] = ()


class PiiRules(_Strict):
    """PII-heavy documents (contact lists, leaked tables) and the placeholders used when redacting."""

    enabled: bool = True
    min_count: int = Field(default=5, ge=1, description="e-mails + IPv4 + phone numbers needed to count as heavy")
    max_ratio: float = Field(default=0.02, ge=0.0, description="PII matches per word above which a doc is heavy")
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE_NUMBER>"


class GopherQualityRules(_Strict):
    """Gopher quality heuristics (Rae et al. 2021, table A1) as datatrove applies them."""

    enabled: bool = True
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = Field(
        default=0.8, description="datatrove calls it max_non_alpha_words_ratio; it is a minimum share")
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherRepetitionRules(_Strict):
    """Gopher repetition heuristics: duplicated lines, paragraphs and n-grams."""

    enabled: bool = True
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    @field_validator("top_n_grams", "dup_n_grams")
    @classmethod
    def _sizes(cls, value: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        sizes = [n for n, _ in value]
        if any(n < 1 or n > 16 for n in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError("n-gram sizes must be distinct and between 1 and 16")
        return value


class C4Rules(_Strict):
    """C4's heuristics as a document filter (datatrove's C4QualityFilter defaults).

    Lines without terminal punctuation, with fewer than `min_words_per_line` words, with a
    word over `max_word_length` characters, mentioning javascript or a cookie/terms policy
    do not count; a document is rejected when the remaining lines hold fewer than
    `min_num_sentences` sentences, or when a remaining line has "lorem ipsum" or a curly
    bracket. textmill does not rewrite the text (datatrove drops those lines): the decision
    is the same, the document stays whole for the recycling stage. `None` disables a limit.
    """

    enabled: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebRules(_Strict):
    """FineWeb's own quality rules (Penedo et al. 2024)."""

    enabled: bool = True
    line_punct_thr: float | None = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float | None = 0.67
    short_line_length: int = Field(default=30, ge=0)
    char_duplicates_ratio: float | None = 0.01
    new_line_ratio: float | None = 0.3


class QualityClassifierRules(_Strict):
    """Reject documents whose `quality_score` column (when the frame has one) is below `min_score`."""

    enabled: bool = True
    min_score: float | None = None


class FilterConfig(_Strict):
    """Every rule set of the filtered stage and the order they are tried in (first failure is the reason)."""

    order: tuple[RuleSetName, ...] = DEFAULT_ORDER
    url_blocklist: UrlBlocklistRules = Field(default_factory=UrlBlocklistRules)
    language: LanguageRules = Field(default_factory=LanguageRules)
    badwords: BadWordsRules = Field(default_factory=BadWordsRules)
    pii: PiiRules = Field(default_factory=PiiRules)
    gopher_repetition: GopherRepetitionRules = Field(default_factory=GopherRepetitionRules)
    gopher_quality: GopherQualityRules = Field(default_factory=GopherQualityRules)
    c4: C4Rules = Field(default_factory=C4Rules)
    fineweb: FineWebRules = Field(default_factory=FineWebRules)
    quality_classifier: QualityClassifierRules = Field(default_factory=QualityClassifierRules)

    @model_validator(mode="after")
    def _order_has_each_once(self) -> "FilterConfig":
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"order names a rule set twice: {list(self.order)}")
        return self

    def rule_set(self, name: str) -> _Strict:
        """The rules of one rule set by name."""
        return getattr(self, name)
