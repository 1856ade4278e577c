"""The filtered stage end to end: every document kept or rejected with its reason, PII redacted,
rejects stored apart, the classifier's threshold and top-percent cutoffs, reruns."""

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from textmill import stages
from textmill.config import DedupConfig, FilteredConfig, RawConfig, RecipeError, parse_recipe
from textmill.executor import LocalProcessExecutor, SerialExecutor
from textmill.filters.pii import pii_counts
from textmill.filters.quality_model import QualityModelConfig, train_quality_classifier
from textmill.storage import Store

QUALITY_SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "quality" / "labelled.jsonl.gz"


def _article_texts() -> list[str]:
    rows = [json.loads(line) for line in gzip.open(QUALITY_SAMPLE, "rt", encoding="utf-8")]
    return [r["text"] for r in rows if r["label"] == "hq" and len(r["text"].split()) > 120][:40]


def _crawl(tmp_path: Path) -> tuple[Store, list[dict]]:
    articles = _article_texts()
    contact = ("You can reach the editor at jane.doe@example.org or call +44 20 7946 0958. Our server at "
               "192.168.10.42 hosts the archive.\n")
    docs = [{"id": f"a{i}", "url": f"https://news{i}.example/story", "text": text} for i, text in enumerate(articles)]
    docs[0]["text"] = contact + docs[0]["text"]  # a good article with contact details: kept, redacted
    docs += [
        {"id": "short", "url": "https://tiny.example/", "text": "A short note on gardens, rivers and quiet mornings in the hills."},
        {"id": "menu", "url": "https://menu.example/", "text": "\n".join(["Subscribe to our newsletter for the latest deals and offers on garden furniture.",
                                                             "Free delivery on every order over fifty pounds this week."] * 12)},
        {"id": "lorem", "url": "https://lorem.example/", "text": articles[1].replace(".", ". Lorem ipsum dolor sit amet.", 3)},
    ]
    target = tmp_path / "landing" / "c1"
    target.mkdir(parents=True)
    with open(target / "docs.jsonl", "w") as handle:
        for doc in docs:
            handle.write(json.dumps(doc) + "\n")
    return Store(str(tmp_path)), docs


def _run(store: Store, config: FilteredConfig, executor=None):
    executor = executor or SerialExecutor()
    raw = stages.raw(store=store, crawl="c1", config=RawConfig(rows_per_part=15), executor=executor)
    deduped = stages.deduped(store=store, crawl="c1", raw_version=raw.version, config=DedupConfig(near=False),
                             executor=executor)
    return deduped, stages.filtered(store=store, crawl="c1", deduped_version=deduped.version, config=config,
                                    executor=executor)


def _rejected(store: Store, result) -> pl.DataFrame:
    return store.scan_extra(result.manifest, "rejected").collect()


def test_every_document_is_kept_or_rejected_with_its_reason(tmp_path):
    store, docs = _crawl(tmp_path)
    deduped, result = _run(store, FilteredConfig())
    kept = store.scan(result.manifest).collect()
    rejected = _rejected(store, result)
    assert kept.height + rejected.height == deduped.manifest.rows == len(docs)
    assert set(kept["decision"]) == {"kept"} and set(rejected["decision"]) == {"rejected"}
    assert kept["reject_reason"].null_count() == kept.height
    reasons = dict(zip(rejected["url"].to_list(), rejected["reject_reason"].to_list()))
    # short text also fails Gopher repetition (one 2/3/4-gram is a large share of few characters), which comes first
    assert reasons["https://tiny.example/"].startswith("gopher_repetition:top_")
    assert reasons["https://menu.example/"].startswith("gopher_repetition:")  # the first failing rule set wins
    assert reasons["https://lorem.example/"] == "c4:lorem_ipsum"
    # quality reasons may be rewritten; language (the sample has Korean and Portuguese pages) may not
    by_language = rejected["reject_reason"].str.starts_with("language:")
    assert by_language.any() and not rejected.filter(by_language)["recyclable"].any()
    assert rejected.filter(~by_language)["recyclable"].all()
    # every signal is on every row, kept or rejected
    signals = result.manifest.statistics["signal_columns"]
    assert {"gq_words", "gr_dup_line_frac", "c4_sentences", "fw_line_punct_ratio", "pii_emails"} <= set(signals)
    assert all(kept[c].null_count() == 0 and rejected[c].null_count() == 0 for c in ["gq_words", "fw_lines"])
    stats = result.manifest.statistics
    assert stats["waterfall"][-1]["left"] == kept.height
    assert sum(stats["rejected_by_reason"].values()) == rejected.height
    assert set(stats["examples_by_reason"]) == set(stats["rejected_by_reason"])

    # without the repetition rules the next failing rule set gives the reason
    _, without = _run(store, FilteredConfig(gopher_repetition={"enabled": False}))
    reasons = dict(_rejected(store, without).select("url", "reject_reason").iter_rows())
    assert reasons["https://tiny.example/"] == "gopher_quality:min_doc_words"
    assert "gr_dup_line_frac" not in without.manifest.statistics["signal_columns"]


def test_kept_text_has_pii_redacted_and_rejected_text_is_untouched(tmp_path):
    store, docs = _crawl(tmp_path)
    _, result = _run(store, FilteredConfig())
    kept = store.scan(result.manifest).collect()
    first = kept.filter(pl.col("url") == "https://news0.example/story").row(0, named=True)
    assert "<EMAIL>" in first["text"] and "<PHONE_NUMBER>" in first["text"] and "<IP_ADDRESS>" in first["text"]
    assert "jane.doe@example.org" not in first["text"]
    assert (first["pii_emails_redacted"], first["pii_ipv4_redacted"], first["pii_phones_redacted"]) == (1, 1, 1)
    assert first["n_chars"] == len(first["text"])  # the stored length follows the redacted text
    left = kept.select(**pii_counts(pl.col("text"))).sum().row(0)
    assert left == (0, 0, 0)
    assert result.manifest.statistics["pii_redacted"]["pii_emails_redacted"] == 1
    # without redaction the address stays (the check would then catch it)
    _, plain = _run(store, FilteredConfig(redact_pii=False))
    assert plain.version != result.version
    text = store.scan(plain.manifest).filter(pl.col("url") == "https://news0.example/story").collect()["text"][0]
    assert "jane.doe@example.org" in text


def test_rerun_reuses_the_version_and_process_pool_gives_the_same_bytes(tmp_path):
    store, _ = _crawl(tmp_path)
    _, first = _run(store, FilteredConfig())
    _, again = _run(store, FilteredConfig())
    assert again.reused and again.version == first.version
    other = Store(str(tmp_path / "pooled"))
    (tmp_path / "pooled" / "landing").mkdir(parents=True)
    (tmp_path / "landing" / "c1").rename(tmp_path / "pooled" / "landing" / "c1")
    with LocalProcessExecutor(workers=2) as executor:
        _, pooled = _run(other, FilteredConfig(), executor)
    assert pooled.version == first.version
    assert [f["sha256"] for f in pooled.manifest.files] == [f["sha256"] for f in first.manifest.files]


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "quality.bin"
    train_quality_classifier(train_jsonl=[QUALITY_SAMPLE], output=out, group_field="page", seed=1, bucket=50_000,
                             dim=32, epochs=15)
    return out


def test_quality_classifier_threshold_and_top_percent(tmp_path, quality_model):
    store, docs = _crawl(tmp_path)
    threshold = FilteredConfig(quality_model=QualityModelConfig(model_path=str(quality_model), threshold=0.5))
    _, by_threshold = _run(store, threshold)
    kept = store.scan(by_threshold.manifest).collect()
    rejected = _rejected(store, by_threshold)
    assert kept["quality_score"].min() >= 0.5
    assert kept.height > 0
    low = rejected.filter(pl.col("reject_reason") == "quality_classifier:min_score")
    assert (low["quality_score"] < 0.5).all()

    top = FilteredConfig(quality_model=QualityModelConfig(model_path=str(quality_model), top_percent=25))
    _, by_top = _run(store, top)
    scores = pl.concat([store.scan(by_top.manifest).collect(), _rejected(store, by_top)], how="diagonal")["quality_score"]
    cutoff = by_top.manifest.statistics["quality_cutoff"]
    assert (scores >= cutoff).sum() >= 0.25 * scores.len()  # at least the top quarter passes the classifier
    assert (scores >= cutoff).sum() <= 0.25 * scores.len() + 2
    assert by_top.version != by_threshold.version


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match="filtered.checks.max_removal_rate_by_rule_set"):
        parse_recipe({"filtered": {"checks": {"max_removal_rate_by_rule_set": {"gopher": 0.5}}}})
    with pytest.raises(RecipeError, match="filtered.gopher_quality.min_doc_wordz"):
        parse_recipe({"filtered": {"gopher_quality": {"min_doc_wordz": 10}}})
    with pytest.raises(RecipeError, match="filtered.quality_model"):
        parse_recipe({"filtered": {"quality_model": {"model_path": "m.bin", "threshold": 0.5, "top_percent": 10}}})
    store, _ = _crawl(tmp_path)
    missing = FilteredConfig(quality_model=QualityModelConfig(model_path=str(tmp_path / "nope.bin"), threshold=0.5))
    with pytest.raises(FileNotFoundError, match="filtered.quality_model.model_path"):
        _run(store, missing)
