"""Scope and safety signals and rules: language, URL blocklist, bad words, PII-heavy, classifier score.

A document failing one of these is not recycled by the rewrite stage (see
`textmill.filters.decide.RECYCLABLE`), except for a low quality-classifier score.
"""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from textmill.filters.batch import ROW, Batch, ratio
from textmill.filters.config import (BadWordsRules, LanguageRules, PiiRules, QualityClassifierRules,
                                     UrlBlocklistRules)
from textmill.filters.lists import bundled, domain_set, read_list, word_set
from textmill.filters.pii import pii_counts

Rules = list[tuple[str, pl.Expr]]
MAX_PARENT_DOMAINS = 6


# --- language -----------------------------------------------------------------------------

def language_signals(batch: Batch, rules: LanguageRules) -> pl.DataFrame:
    """No new column: the raw stage's `lang` and `lang_score` are the signals."""
    return pl.DataFrame()


def language_rules(rules: LanguageRules) -> Rules:
    out: Rules = []
    if rules.languages is not None:
        out.append(("lang", ~pl.col("lang").is_in(list(rules.languages)).fill_null(False)))
    if rules.min_score is not None:
        out.append(("score", (pl.col("lang_score") < rules.min_score).fill_null(True)))
    return out


# --- URL blocklist ------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _url_lists(rules: UrlBlocklistRules) -> tuple[list[str], list[str], list[str], list[str]]:
    bundled_on = rules.use_bundled_lists
    domains = domain_set(bundled("blocked_domains.txt") if bundled_on else (), rules.extra_domains,
                         *(read_list(path) for path in rules.domain_files))
    banned = word_set(bundled("banned_words.txt") if bundled_on else (), rules.extra_banned_words)
    soft = word_set(bundled("soft_banned_words.txt") if bundled_on else (), rules.extra_soft_banned_words)
    sub = word_set(bundled("banned_subwords.txt") if bundled_on else (), rules.extra_banned_subwords)
    return sorted(domains), sorted(banned), sorted(soft), sorted(sub)


def host(url: pl.Expr) -> pl.Expr:
    """Lower-case host of a URL without `www.`, port, user or trailing dot."""
    raw = url.fill_null("").str.extract(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://)?(?:[^@/?#]*@)?([^/?#:]*)", 1)
    return raw.str.to_lowercase().str.strip_suffix(".").str.strip_prefix("www.")


def url_signals(batch: Batch, rules: UrlBlocklistRules) -> pl.DataFrame:
    """url_domain_blocked, url_banned_words, url_soft_words, url_banned_subword."""
    domains, banned, soft, sub = _url_lists(rules)
    url = pl.col("url").fill_null("")
    # the host and each parent domain (a.b.example.com -> b.example.com -> example.com -> com)
    level = host(url)
    blocked = level.is_in(domains)
    for _ in range(MAX_PARENT_DOMAINS):
        level = level.str.replace(r"^[^.]*\.", "")
        blocked = blocked | level.is_in(domains)
    words = batch.docs.select(ROW, word=url.str.to_lowercase().str.extract_all(r"[a-z0-9]+")).explode("word")
    words = words.filter(pl.col("word").is_in(banned) | pl.col("word").is_in(soft)).unique()
    per_doc = words.group_by(ROW).agg(
        url_banned_words=pl.col("word").is_in(banned).sum().cast(pl.Int64),
        url_soft_words=pl.col("word").is_in(soft).sum().cast(pl.Int64))
    letters = url.str.to_lowercase().str.replace_all(r"[^a-z0-9]+", "")
    flags = batch.docs.select(
        url_domain_blocked=blocked.fill_null(False),
        url_banned_subword=letters.str.contains_any(sub) if sub else pl.lit(False))
    counts = batch.align(per_doc, {"url_banned_words": 0, "url_soft_words": 0})
    return pl.concat([flags.select("url_domain_blocked"), counts, flags.select("url_banned_subword")],
                     how="horizontal")


def url_rules(rules: UrlBlocklistRules) -> Rules:
    return [
        ("domain", pl.col("url_domain_blocked")),
        ("banned_word", pl.col("url_banned_words") > 0),
        ("soft_words", pl.col("url_soft_words") >= rules.soft_word_threshold),
        ("banned_subword", pl.col("url_banned_subword")),
    ]


# --- bad words ----------------------------------------------------------------------------

def badwords_signals(batch: Batch, rules: BadWordsRules) -> pl.DataFrame:
    """bad_words, bad_words_ratio (share of tokens on the bad-word list)."""
    return batch.token_stats.select("bad_words", bad_words_ratio=ratio(pl.col("bad_words"), pl.col("n_words")))


def badwords_rules(rules: BadWordsRules) -> Rules:
    return [] if rules.max_ratio is None else [("ratio", pl.col("bad_words_ratio") > rules.max_ratio)]


# --- PII ----------------------------------------------------------------------------------

def pii_signals(batch: Batch, rules: PiiRules) -> pl.DataFrame:
    """pii_emails, pii_ipv4, pii_phones, pii_ratio (matches per word)."""
    counts = pl.concat([batch.docs.select(**pii_counts(pl.col("text"))), batch.token_counts], how="horizontal")
    total = pl.col("pii_emails") + pl.col("pii_ipv4") + pl.col("pii_phones")
    return counts.select("pii_emails", "pii_ipv4", "pii_phones", pii_ratio=ratio(total, pl.col("n_words")))


def pii_rules(rules: PiiRules) -> Rules:
    total = pl.col("pii_emails") + pl.col("pii_ipv4") + pl.col("pii_phones")
    return [("heavy", (total >= rules.min_count) & (pl.col("pii_ratio") > rules.max_ratio))]


# --- quality classifier -------------------------------------------------------------------

def quality_classifier_signals(batch: Batch, rules: QualityClassifierRules) -> pl.DataFrame:
    """No new column: `quality_score` comes from the classifier stage when present."""
    return pl.DataFrame()


def quality_classifier_rules(rules: QualityClassifierRules) -> Rules:
    if rules.min_score is None:
        return []
    return [("low_score", (pl.col("quality_score") < rules.min_score).fill_null(False))]
