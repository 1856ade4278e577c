"""Input selection of the rewrite stage: only recyclable rejects, within the budget, reproducible."""

from datetime import datetime, timezone

import polars as pl
import pytest
from pydantic import ValidationError

from textmill.rewrite.config import RewriteConfig
from textmill.rewrite.select import select_inputs
from textmill.schema import DOCUMENT_SCHEMA

REASONS = [
    ("gopher_quality:min_doc_words", True), ("gopher_repetition:dup_line_frac", True), ("c4:lorem_ipsum", True),
    ("fineweb:line_punct_ratio", True), ("quality_classifier:min_score", True),
    ("url_blocklist:domain", False), ("language:language", False), ("badwords:ratio", False), ("pii:heavy", False),
]


def _docs(n: int, *, decision: str, start: int = 0) -> pl.DataFrame:
    rows = []
    for i in range(start, start + n):
        reason, recyclable = REASONS[i % len(REASONS)] if decision == "rejected" else (None, False)
        text = f"Document {i} about rivers and bridges. " * (3 + i % 7)
        rows.append({
            "id": f"{decision[0]}{i:04d}", "url": f"https://site{i % 5}.example/{i}", "domain": f"site{i % 5}.example",
            "crawl": "c1", "source": "jsonl", "fetched_at": datetime(2024, 1, 1, tzinfo=timezone.utc), "text": text,
            "lang": "en", "lang_score": 0.9, "n_chars": len(text), "decision": decision, "reject_reason": reason,
            # a safety reject marked recyclable by mistake must still never be chosen
            "recyclable": recyclable or (reason == "pii:heavy"), "quality_score": (i % 10) / 10,
        })
    return pl.DataFrame(rows, schema_overrides=DOCUMENT_SCHEMA | {"quality_score": pl.Float64})


def test_only_recyclable_rejects_are_selected():
    rejected = _docs(90, decision="rejected")
    out = select_inputs(rejected.lazy(), None, config=RewriteConfig(max_documents=None, min_input_chars=0))
    ok = {r for r, recyclable in REASONS if recyclable}
    assert out.height == 50 and set(out["reject_reason"]) == ok
    assert set(out["origin"]) == {"rejected"}
    assert out.columns[:len(DOCUMENT_SCHEMA)] == list(DOCUMENT_SCHEMA)
    assert out["prompt_ids"].to_list() == [["rewire"]] * out.height
    # the texts come with the rows, unchanged
    by_id = dict(zip(rejected["id"], rejected["text"]))
    assert all(by_id[i] == t for i, t in zip(out["id"], out["text"]))


def test_budget_in_documents_and_tokens_and_determinism():
    rejected = _docs(90, decision="rejected")
    cfg = RewriteConfig(max_documents=7, min_input_chars=0)
    a = select_inputs(rejected.lazy(), None, config=cfg)
    b = select_inputs(rejected.sample(fraction=1.0, shuffle=True, seed=3).lazy(), None, config=cfg)
    assert a.height == 7 and a["id"].to_list() == b["id"].to_list()  # input order does not matter
    other = select_inputs(rejected.lazy(), None, config=RewriteConfig(max_documents=7, min_input_chars=0, seed=1))
    assert set(other["id"]) != set(a["id"])  # the seed changes the sample
    # a larger budget extends the same order (prefix property)
    more = select_inputs(rejected.lazy(), None, config=RewriteConfig(max_documents=12, min_input_chars=0))
    assert more["id"].to_list()[:7] == a["id"].to_list()

    tokens = select_inputs(rejected.lazy(), None,
                           config=RewriteConfig(max_documents=None, max_input_tokens=300, min_input_chars=0))
    assert 0 < tokens.height < 50 and tokens["est_tokens"].sum() <= 300
    assert tokens["est_tokens"].to_list() == [(n + 3) // 4 for n in tokens["n_chars"].to_list()]
    # two prompts per document: each document costs twice
    two = select_inputs(rejected.lazy(), None, config=RewriteConfig(
        max_documents=None, max_input_tokens=300, min_input_chars=0, prompts=("rewire", "wrap_qa")))
    assert two["est_tokens"].sum() <= 300 and two.height < tokens.height
    assert two["prompt_ids"][0].to_list() == ["rewire", "wrap_qa"]


def test_quality_band_reasons_min_chars_and_kept_sample():
    rejected = _docs(90, decision="rejected")
    kept = _docs(200, decision="kept", start=1000)
    band = select_inputs(rejected.lazy(), None,
                         config=RewriteConfig(max_documents=None, min_input_chars=0, quality_band=(0.3, 0.5)))
    assert band.height > 0 and band["quality_score"].is_between(0.3, 0.5).all()
    only = select_inputs(rejected.lazy(), None,
                         config=RewriteConfig(max_documents=None, min_input_chars=0, reasons=("gopher_quality",)))
    assert set(only["reject_reason"]) == {"gopher_quality:min_doc_words"}
    longer = select_inputs(rejected.lazy(), None, config=RewriteConfig(max_documents=None, min_input_chars=200))
    assert longer.height > 0 and (longer["n_chars"] >= 200).all()

    mixed = select_inputs(rejected.lazy(), kept.lazy(), config=RewriteConfig(
        max_documents=None, min_input_chars=0, kept_sample_share=0.25, kept_prompts=("wrap_wikipedia", "wrap_qa")))
    from_kept = mixed.filter(pl.col("origin") == "kept")
    assert 25 <= from_kept.height <= 75  # a ~25% hash sample of 200
    assert from_kept["prompt_ids"][0].to_list() == ["wrap_wikipedia", "wrap_qa"]
    assert from_kept["reject_reason"].null_count() == from_kept.height
    assert mixed.filter(pl.col("origin") == "rejected").height == 50
    assert mixed["id"].is_unique().all()
    # no band column at all: the band is ignored, nothing breaks
    plain = select_inputs(rejected.drop("quality_score").lazy(), None,
                          config=RewriteConfig(max_documents=None, min_input_chars=0, quality_band=(0.3, 0.5)))
    assert plain.height == 50 and plain["quality_score"].null_count() == 50


def test_empty_inputs_and_config_errors():
    assert select_inputs(_docs(9, decision="rejected").head(0).lazy(), None, config=RewriteConfig()).height == 0
    assert select_inputs(None, None, config=RewriteConfig()).height == 0
    with pytest.raises(ValidationError, match="unknown prompt"):
        RewriteConfig(prompts=("nope",))
    with pytest.raises(ValidationError, match="quality_band"):
        RewriteConfig(quality_band=(0.8, 0.2))
    with pytest.raises(ValidationError):
        RewriteConfig(max_documnets=3)  # extra="forbid": typos are errors
