"""Signals, decisions and PII redaction of textmill.filters on small texts with hand-computed values."""

from __future__ import annotations

import re

import polars as pl
import pytest
from pydantic import ValidationError

from textmill.filters import (FILTERS, FilterConfig, compute_signals, filter_frame, is_recyclable, redact_pii,
                              rule_set_reasons, word_tokens)
from textmill.filters.config import DEFAULT_ORDER, GopherQualityRules, RuleSetName

ALL_OFF_BUT = {name: {"enabled": False} for name in DEFAULT_ORDER}


def docs(*texts: str, url: str = "https://example.com/page", lang: str = "en", score: float = 0.95) -> pl.DataFrame:
    return pl.DataFrame({
        "id": [f"d{i}" for i in range(len(texts))], "url": [url] * len(texts), "text": list(texts),
        "lang": [lang] * len(texts), "lang_score": [score] * len(texts)},
        schema={"id": pl.String, "url": pl.String, "text": pl.String, "lang": pl.String, "lang_score": pl.Float32})


def only(*names: str, **overrides: object) -> FilterConfig:
    """A config with just these rule sets, in this order."""
    return FilterConfig(order=names, **overrides)


def signals(text: str, *names: str, **overrides: object) -> dict:
    return compute_signals(docs(text), config=only(*names, **overrides)).row(0, named=True)


def tokens(text: str) -> list[str]:
    return word_tokens(pl.DataFrame({"row": [0], "text": [text]}))["token"].to_list()


# --- tokenizer ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Hello, world! Don't stop.", ["Hello", ",", "world", "!", "Do", "n't", "stop", "."]),
    ("U.S. e.g. 10km (see http://a.com/b-c).", ["U.S.", "e.g.", "10", "km", "(", "see", "http://a.com/b-c", ")", "."]),
    ("well-known and/or 2010-2011 $5", ["well", "-", "known", "and/or", "2010", "-", "2011", "$", "5"]),
    ("Mr. Smith's dog...wait", ["Mr.", "Smith", "'s", "dog", "...", "wait"]),
    ("end.Next 3.5 J. Doe USA.", ["end", ".", "Next", "3.5", "J.", "Doe", "USA", "."]),
    ("«Bonjour» — café!", ["«", "Bonjour", "»", "—", "café", "!"]),
])
def test_tokens_follow_spacy_english_rules(text: str, expected: list[str]) -> None:
    assert tokens(text) == expected


def test_tokens_keep_document_order_and_key() -> None:
    frame = pl.DataFrame({"row": [7, 3, 5], "text": ["b a", "", "c, d"]})
    out = word_tokens(frame)
    assert out.rows() == [(7, "b"), (7, "a"), (5, "c"), (5, ","), (5, "d")]


# --- Gopher quality -----------------------------------------------------------------------

GOPHER_TEXT = "The cat sat on the mat.\n- a list item\n# heading...\nTo be or not to be, that is the question."


def test_gopher_quality_signals_by_hand() -> None:
    s = signals(GOPHER_TEXT, "gopher_quality")
    # 26 tokens; 6 are punctuation only (". - # ... , ."), 20 words with 63 letters
    assert s["gq_words"] == 20
    assert s["gq_mean_word_length"] == pytest.approx(63 / 20)
    assert s["gq_hash_ratio"] == pytest.approx(1 / 26)
    assert s["gq_ellipsis_ratio"] == pytest.approx(1 / 26)
    assert s["gq_bullet_lines_ratio"] == pytest.approx(1 / 4)
    assert s["gq_ellipsis_lines_ratio"] == pytest.approx(1 / 4)
    assert s["gq_alpha_words_ratio"] == pytest.approx(20 / 26)
    assert s["gq_stop_words"] == 4  # the, be, to, that (case-sensitive: "The", "To" do not count)


def test_gopher_quality_unicode_ellipsis_and_bullets() -> None:
    s = signals("• one…\n• two…\n  - three", "gopher_quality")
    assert s["gq_bullet_lines_ratio"] == 1.0
    assert s["gq_ellipsis_lines_ratio"] == pytest.approx(2 / 3)
    assert s["gq_ellipsis_ratio"] == pytest.approx(2 / 8)  # tokens: • one … • two … - three


def test_gopher_quality_rules_and_thresholds() -> None:
    texts = {
        " ".join(["the cat and the dog"] * 12): None,  # 60 words of mean length 3.0: not < 3 (strict, as datatrove)
        " ".join(["the cat and the dog"] * 12) + " #" * 7: "hash_ratio",  # 7 hashes / 67 tokens > 0.1
        "word " * 49: "min_doc_words",  # 49 < 50
        "a an of is " * 15: "min_avg_word_length",  # mean 1.75
        "extraordinarily " * 60: "max_avg_word_length",  # mean 15
        "cats dogs birds and " * 15: "stop_words",  # only "and"
        "1234 5678 the and " * 15: "alpha_words",  # half the words have a letter
        "the dog and the cat ran to the big red barn...\n" * 15: "ellipsis_lines",  # 15/180 ellipses pass
    }
    config = only("gopher_quality")
    reasons = rule_set_reasons(compute_signals(docs(*texts), config=config), config=config)["gopher_quality"]
    assert reasons.to_list() == [None if r is None else f"gopher_quality:{r}" for r in texts.values()]


def test_gopher_quality_disabled_thresholds() -> None:
    config = only("gopher_quality", gopher_quality={"min_doc_words": None, "min_stop_words": None})
    reasons = rule_set_reasons(compute_signals(docs("word " * 49, ""), config=config), config=config)
    assert reasons["gopher_quality"].to_list() == [None, "gopher_quality:alpha_words"]  # empty: 0 of 0 words
    config = only("gopher_quality", gopher_quality={"min_doc_words": None, "min_stop_words": None,
                                                     "min_alpha_words_ratio": None})
    reasons = rule_set_reasons(compute_signals(docs(""), config=config), config=config)
    assert reasons["gopher_quality"].to_list() == [None]  # no words: no mean word length to judge


# --- Gopher repetition --------------------------------------------------------------------

def test_gopher_repetition_lines_paragraphs_top_ngrams() -> None:
    text = "a b c\n\na b c\n\nx y z"  # 19 characters
    s = signals(text, "gopher_repetition")
    assert s["gr_dup_para_frac"] == pytest.approx(1 / 3)
    assert s["gr_dup_para_char_frac"] == pytest.approx(5 / 19)
    assert s["gr_dup_line_frac"] == pytest.approx(1 / 3)
    assert s["gr_dup_line_char_frac"] == pytest.approx(5 / 19)
    assert s["gr_top_2_gram_char_frac"] == pytest.approx(3 * 2 / 19)  # "a b" twice (first of the tied ones)
    assert s["gr_top_3_gram_char_frac"] == pytest.approx(5 * 2 / 19)  # "a b c" twice
    assert s["gr_top_4_gram_char_frac"] == pytest.approx(7 / 19)  # all distinct: the first, "a b c a", once
    assert s["gr_dup_5_gram_char_frac"] == 0.0


def test_gopher_repetition_duplicated_ngrams_scan() -> None:
    text = "one two three four five six seven one two three four five six seven end"
    s = signals(text, "gopher_repetition")
    n = len(text)
    # the scan meets "one two three four five" again at word 7, counts its 19 letters, jumps 5 words
    assert s["gr_dup_5_gram_char_frac"] == pytest.approx(19 / n)
    assert s["gr_dup_6_gram_char_frac"] == pytest.approx(22 / n)
    assert s["gr_dup_7_gram_char_frac"] == pytest.approx(27 / n)
    assert s["gr_dup_8_gram_char_frac"] == 0.0
    assert s["gr_top_2_gram_char_frac"] == pytest.approx(len("one two") * 2 / n)


def test_gopher_repetition_counts_every_nth_position_of_a_long_run() -> None:
    text = " ".join(["alpha beta gamma delta epsilon"] * 4)  # 20 words, 15 repeated 5-gram positions
    s = signals(text, "gopher_repetition")
    # positions 5, 10, 15 are counted (a jump of 5 after each), each "alphabetagammadeltaepsilon" (26)
    assert s["gr_dup_5_gram_char_frac"] == pytest.approx(3 * 26 / len(text))


def test_gopher_repetition_scan_skips_ngrams_inside_a_jump() -> None:
    # the scan counts "A B C D E" at word 5 and jumps to word 10, so the first "B C D E F"
    # (word 6) is never recorded and its second occurrence (word 11) is not a repeat
    text = "A B C D E A B C D E F B C D E F"
    assert signals(text, "gopher_repetition")["gr_dup_5_gram_char_frac"] == pytest.approx(5 / len(text))


# --- C4 -----------------------------------------------------------------------------------

C4_TEXT = "\n".join([
    "This is the first sentence. And the second one!",
    "Short line",
    "The site uses cookies to work.",
    "We love JavaScript here.",
    "Here are three words. Four five six seven.",
    "A citation goes here.[1]",
])


def test_c4_signals_by_hand() -> None:
    s = signals(C4_TEXT, "c4")
    assert s["c4_lines"] == 6
    assert s["c4_terminal_punct_lines"] == 5  # all but "Short line" (the citation is removed first)
    assert s["c4_javascript_lines"] == 1
    assert s["c4_policy_lines"] == 1
    assert s["c4_kept_lines"] == 3
    assert s["c4_sentences"] == 5  # 2 + 2 + 1
    assert not s["c4_lorem_ipsum"] and not s["c4_curly_bracket"]


def test_c4_rules() -> None:
    config = only("c4")
    texts = [
        C4_TEXT,  # 5 sentences: kept
        C4_TEXT.rsplit("\n", 1)[0],  # 4 sentences
        C4_TEXT + "\nLorem ipsum dolor sit amet.",
        C4_TEXT + "\nlorem ipsum dolor sit amet",  # no terminal punctuation: the line is dropped first
        C4_TEXT + "\nThe value is {x} here.",
        C4_TEXT + "\nJavaScript code is { here }.",  # javascript lines are dropped before the bracket test
    ]
    reasons = rule_set_reasons(compute_signals(docs(*texts), config=config), config=config)["c4"].to_list()
    assert reasons == [None, "c4:too_few_sentences", "c4:lorem_ipsum", None, "c4:curly_bracket", None]


def test_c4_sentence_boundaries_follow_spacy() -> None:
    # abbreviations and decimals do not end a sentence; "?!" and a closing quote do
    text = 'Mr. Smith paid 3.5 dollars. Why?! "Because." Then he left.'
    assert signals(text, "c4")["c4_sentences"] == 4


# --- FineWeb ------------------------------------------------------------------------------

def test_fineweb_signals_by_hand() -> None:
    text = "First line ends here.\nsecond line no punct\n\nshort\nFirst line ends here.\n"
    s = signals(text, "fineweb")
    assert s["fw_lines"] == 4
    assert s["fw_line_punct_ratio"] == pytest.approx(2 / 4)
    assert s["fw_short_line_ratio"] == 1.0
    assert s["fw_char_dup_ratio"] == pytest.approx(21 / (len(text) - 5))
    assert s["fw_list_ratio"] == pytest.approx(5 / 15)


def test_fineweb_rules() -> None:
    config = only("fineweb")
    good = "\n".join(f"This is a reasonably long sentence number {i} that ends well." for i in range(10))
    texts = [good, "   \n\n", good.replace(".", ""), good + "\n" + good.splitlines()[0], "\n".join(["x"] * 3)]
    reasons = rule_set_reasons(compute_signals(docs(*texts), config=config), config=config)["fineweb"].to_list()
    assert reasons == [None, "fineweb:empty", "fineweb:line_punct_ratio", "fineweb:char_dup_ratio",
                       "fineweb:line_punct_ratio"]


# --- language, URL, bad words, PII --------------------------------------------------------

def test_language_rules() -> None:
    frame = pl.concat([docs("Hallo Welt.", lang="de"), docs("Hello.", score=0.4), docs("Hello.")])
    config = only("language")
    assert rule_set_reasons(frame, config=config)["language"].to_list() == ["language:lang", "language:score", None]
    anything = only("language", language={"languages": None, "min_score": 0.5})
    assert rule_set_reasons(frame, config=anything)["language"].to_list() == [None, "language:score", None]


def test_url_blocklist() -> None:
    urls = ["https://www.pornhub.com/view", "http://fr.xvideos.com:8080/x", "https://example.com/free-porn-clips",
            "https://example.com/sexy-babes", "https://example.com/bigtits/1", "https://example.com/Essex-news",
            "https://news.example.org/a?id=3"]
    frame = pl.concat([docs("Some text.", url=u) for u in urls])
    config = only("url_blocklist")
    out = compute_signals(frame, config=config)
    assert rule_set_reasons(out, config=config)["url_blocklist"].to_list() == [
        "url_blocklist:domain", "url_blocklist:domain", "url_blocklist:banned_word", "url_blocklist:soft_words",
        "url_blocklist:banned_subword", None, None]
    assert out["url_soft_words"].to_list()[3] == 2


def test_url_blocklist_extra_lists(tmp_path) -> None:
    listing = tmp_path / "domains.txt"
    listing.write_text("# comment\nspam.example\n")
    config = only("url_blocklist", url_blocklist={"domain_files": (str(listing),), "extra_domains": ("bad.test",)})
    frame = pl.concat([docs("x", url=u) for u in ("https://a.spam.example/", "https://bad.test", "https://ok.test")])
    assert compute_signals(frame, config=config)["url_domain_blocked"].to_list() == [True, True, False]


def test_badwords_ratio() -> None:
    text = "This page has porn in it and nothing else of note."  # 12 tokens, 1 listed word
    s = signals(text, "badwords")
    assert s["bad_words"] == 1
    assert s["bad_words_ratio"] == pytest.approx(1 / 12)
    config = only("badwords")
    assert rule_set_reasons(compute_signals(docs(text), config=config), config=config)["badwords"].item() == \
        "badwords:ratio"


PII_TEXT = ("Write to jane.doe@example.com or ops+team@mail.example.co.uk. Server 192.168.1.20 and 10.0.0.1 "
            "are down. Call +1 415 555 0132, (212) 555-0199 or 650.555.0100. Version 2.10.3 ships in 2024; "
            "it costs 1,299 and 1,000,000 people use it.")


def test_pii_counts() -> None:
    s = signals(PII_TEXT, "pii")
    assert (s["pii_emails"], s["pii_ipv4"], s["pii_phones"]) == (2, 2, 3)


def test_pii_heavy_rule() -> None:
    contacts = "\n".join(f"Contact {i}: person{i}@example.com" for i in range(10))  # 10 e-mails, 40 tokens
    article = "Write to info@example.com with questions. " + "The council met again on Monday evening. " * 40
    long_list = "\n".join(f"Mail team{i}@example.com for help. " + "Nothing else to say here today. " * 10
                          for i in range(6))  # 6 e-mails in ~400 tokens: ratio < 0.02
    config = only("pii")
    reasons = rule_set_reasons(compute_signals(docs(contacts, PII_TEXT, article, long_list), config=config),
                               config=config)["pii"]
    assert reasons.to_list() == ["pii:heavy", "pii:heavy", None, None]


def test_redaction_leaves_no_pii_and_counts() -> None:
    frame = docs(PII_TEXT, PII_TEXT).with_columns(decision=pl.Series(["kept", "rejected"]))
    out = redact_pii(frame, config=FilterConfig())
    kept, rejected = out.row(0, named=True), out.row(1, named=True)
    assert (kept["pii_emails_redacted"], kept["pii_ipv4_redacted"], kept["pii_phones_redacted"]) == (2, 2, 3)
    text = kept["text"]
    assert "@" not in text
    assert not re.search(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", text)
    assert not re.search(r"\d{3}[ .-]\d{4}", text)
    assert text.count("<EMAIL>") == 2 and text.count("<IP_ADDRESS>") == 2 and text.count("<PHONE_NUMBER>") == 3
    assert "2.10.3" in text and "1,000,000" in text and "2024" in text  # not PII
    assert rejected["text"] == PII_TEXT and rejected["pii_emails_redacted"] == 0


def test_redaction_placeholders_are_configurable() -> None:
    config = FilterConfig(pii={"email_placeholder": "[mail $1]", "phone_placeholder": ""})
    out = redact_pii(docs("a@b.org and 650-555-0100"), config=config)
    assert out["text"].item() == "[mail $1] and "


# --- decisions ----------------------------------------------------------------------------

def test_first_failing_rule_wins_in_configured_order() -> None:
    frame = docs("Hello.", lang="de")
    default = filter_frame(frame, config=FilterConfig())
    assert default["reject_reason"].item() == "language:lang"
    assert default["decision"].item() == "rejected" and default["recyclable"].item() is False
    quality_first = FilterConfig(order=("gopher_quality", "gopher_repetition", "language"))
    assert filter_frame(frame, config=quality_first)["reject_reason"].item() == "gopher_quality:min_doc_words"
    repetition_first = FilterConfig(order=("gopher_repetition", "gopher_quality"))
    # "Hello ." is one 2-gram of 7 characters in 6: the top-2-gram rule fires before Gopher quality's
    assert filter_frame(frame, config=repetition_first)["reject_reason"].item() == "gopher_repetition:top_2_gram"
    out = filter_frame(frame, config=repetition_first)
    assert out["recyclable"].item() is True


HISTORY = """The river town grew slowly during the nineteenth century, and most of its houses were built with \
stone from the nearby hills.
Farmers brought their grain to the mill on market days, while the children watched the boats that carried timber \
downstream.
In 1874 a railway station opened at the edge of the town. It changed the rhythm of daily life, because travellers \
could now reach the city in less than three hours.
Local newspapers described the first train with great excitement. One reporter wrote that the whole population had \
gathered on the platform to see it arrive.
Today the old mill is a museum, and visitors can walk along the towpath to learn how the valley looked before the \
factories came."""


def test_ordinary_prose_is_kept_without_reason() -> None:
    out = filter_frame(docs(HISTORY, url="https://example.com/history"), config=FilterConfig())
    row = out.row(0, named=True)
    assert (row["decision"], row["reject_reason"], row["recyclable"]) == ("kept", None, False)
    assert row["c4_sentences"] == 7 and row["gq_stop_words"] == 6 and row["fw_line_punct_ratio"] == 1.0


def test_every_row_keeps_every_signal() -> None:
    texts = [GOPHER_TEXT, "", "   ", C4_TEXT, PII_TEXT, "Hello.", HISTORY]
    out = filter_frame(docs(*texts), config=FilterConfig())
    assert out.height == len(texts)
    assert out["id"].to_list() == [f"d{i}" for i in range(len(texts))]
    signal_columns = [c for c in out.columns if c.startswith(("gq_", "gr_", "c4_", "fw_", "url_", "bad_", "pii_"))]
    assert len(signal_columns) >= 40
    nulls = {c: n for c, n in out.select(signal_columns).null_count().row(0, named=True).items() if n}
    assert nulls == {}
    # rejected documents keep their signals: the first row is rejected yet has its C4 counts
    assert out["decision"][0] == "rejected" and out["c4_lines"][0] == 4
    assert out["decision"].to_list()[-1] == "kept"


@pytest.mark.parametrize("text", [
    "", "\n\n\n", "今天天气很好。我们去公园散步吧！这是一个测试句子。", "مرحبا بالعالم. هذه جملة اختبار عربية!",
    "यह एक परीक्षण वाक्य है। दूसरा वाक्य।", "日本語のテキストです。カタカナとひらがな。", "🙂🙂🙂 🎉\n🎉", "\x00\x01 control",
    "a" * 5000, "Ελληνικά κείμενα. Русский текст!",
])
def test_empty_and_non_latin_texts_do_not_crash(text: str) -> None:
    out = filter_frame(docs(text), config=FilterConfig(language={"languages": None}))
    assert out.height == 1
    numbers = out.select(pl.col(pl.Float64)).row(0)
    assert all(v is not None and v == v and abs(v) != float("inf") for v in numbers)  # no null, NaN or inf
    assert out["decision"].item() in ("kept", "rejected")
    if text == "":
        assert out["reject_reason"].item() == "gopher_repetition:empty"
    elif not text.strip():
        assert out["decision"].item() == "rejected"


def test_recyclable_classes() -> None:
    assert is_recyclable("gopher_quality:stop_words") and is_recyclable("fineweb:list_ratio")
    assert is_recyclable("c4:too_few_sentences") and is_recyclable("quality_classifier:low_score")
    for reason in ("url_blocklist:domain", "language:lang", "badwords:ratio", "pii:heavy", "unknown:rule", None):
        assert not is_recyclable(reason)


def test_quality_classifier_rule_uses_score_column() -> None:
    frame = docs("a", "b").with_columns(quality_score=pl.Series([0.2, 0.9]))
    config = only("quality_classifier", quality_classifier={"min_score": 0.5})
    assert rule_set_reasons(frame, config=config)["quality_classifier"].to_list() == [
        "quality_classifier:low_score", None]


def test_registry_and_config_agree() -> None:
    assert set(FILTERS) == set(RuleSetName.__args__) == set(DEFAULT_ORDER)
    with pytest.raises(ValidationError):
        FilterConfig(unknown=1)
    with pytest.raises(ValidationError):
        FilterConfig(order=("c4", "c4"))
    with pytest.raises(ValidationError):
        GopherQualityRules(min_doc_words=50, typo=1)
    config = FilterConfig()
    with pytest.raises(ValidationError):
        config.gopher_quality.min_doc_words = 10  # frozen
