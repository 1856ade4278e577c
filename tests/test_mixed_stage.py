"""The mixed stage on extra files: budget and shares, contamination removed and listed, packed
tokens, the exact order, the card; reruns reuse the version."""

import gzip
import json
from posixpath import join as posixpath_join
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from textmill import stages
from textmill.config import RecipeError, parse_recipe
from textmill.mix.config import ExportConfig, MixComponent, MixConfig
from textmill.mix.decontam import bundled_questions
from textmill.storage import Store

QUALITY_SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "quality" / "labelled.jsonl.gz"


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def sources(tmp_path):
    rows = [json.loads(line) for line in gzip.open(QUALITY_SAMPLE, "rt", encoding="utf-8")]
    articles = [{"id": r["id"], "text": r["text"], "lang": "en"} for r in rows if r["label"] == "hq"][:120]
    boiler = [{"id": r["id"], "text": r["text"], "lang": "en"} for r in rows if r["label"] == "lq"][:120]
    question = bundled_questions().filter(pl.col("benchmark") == "gsm8k")["text"][0]
    articles[5]["text"] = articles[5]["text"] + "\n\nA reader asked: " + question
    _write(tmp_path / "articles.jsonl", articles)
    _write(tmp_path / "boiler.jsonl", boiler)
    return tmp_path, articles[5]["id"]


def _mix(folder: Path, **kw) -> MixConfig:
    base = dict(name="test", components=[
        MixComponent(name="articles", kind="files", paths=[str(folder / "articles.jsonl")], token_share=0.75),
        MixComponent(name="boiler", kind="files", paths=[str(folder / "boiler.jsonl")], token_share=0.25)],
        total_tokens=40_000, seed=3, export=ExportConfig(sequence_length=256, packer="best_fit"))
    return MixConfig(**(base | kw))


def test_mix_of_files_meets_budget_and_shares_and_removes_contamination(sources):
    folder, planted = sources
    store = Store(str(folder / "store"))
    result = stages.mixed(store=store, config=_mix(folder), versions={})
    stats = result.manifest.statistics
    main = stats["mix"]["phases"]["main"]
    assert main["within_tolerance"]
    assert abs(stats["tokens"] - 40_000) <= 0.02 * 40_000
    assert abs(main["components"]["articles"]["share"] - 0.75) <= 0.02
    # the planted GSM8K question is removed and listed with its benchmark and span
    version_dir = Path(store.version_dir("mixed", "test", result.version))
    report = pl.read_parquet(version_dir / "contamination.parquet")
    assert planted in report["id"].to_list() and "gsm8k" in report["benchmark"].to_list()
    assert "ducks" in report.filter(pl.col("id") == planted)["span"][0]
    mix = store.scan(result.manifest).collect()
    assert planted not in mix["id"].to_list()
    # the order file is the exact training order; the packed tokens hold every mixed token once
    order = pl.read_parquet(version_dir / "order.parquet")
    assert order["id"].to_list() == mix["id"].to_list() and order["position"].to_list() == list(range(mix.height))
    tokens = np.load(version_dir / "tokens-00000.npy")
    assert tokens.shape[1] == 256 and tokens.dtype == np.uint32
    index = pl.read_parquet(version_dir / "tokens-index-*.parquet")
    assert int(index["length"].sum()) >= int(order["tokens"].sum())  # documents plus end-of-text tokens
    card = (version_dir / "README.md").read_text()
    assert "gsm8k" in card and f"{stats['tokens']:,} tokens" in card
    # same inputs and config: the version is reused; another seed gives another order
    assert stages.mixed(store=store, config=_mix(folder), versions={}).reused
    other = stages.mixed(store=store, config=_mix(folder, seed=4), versions={})
    assert other.version != result.version
    assert store.scan(other.manifest).select("id").collect()["id"].to_list() != mix["id"].to_list()


def test_a_small_component_repeats_up_to_its_cap_and_reports_the_shortfall(sources):
    folder, _ = sources
    config = _mix(folder, components=[
        MixComponent(name="articles", kind="files", paths=[str(folder / "articles.jsonl")], token_share=0.5),
        MixComponent(name="boiler", kind="files", paths=[str(folder / "boiler.jsonl")], token_share=0.5,
                     max_epochs=1.0)], total_tokens=200_000)
    result = stages.mixed(store=Store(str(folder / "store")), config=config, versions={})
    boiler = result.manifest.statistics["mix"]["phases"]["main"]["components"]["boiler"]
    assert boiler["epoch_capped"] and boiler["epochs"] <= 1.0 + 1e-9 and boiler["shortfall_tokens"] > 0
    assert result.manifest.statistics["within_tolerance"] is False  # said, not hidden


def test_a_mix_written_in_small_shards_and_windows_holds_every_sampled_text(sources):
    """Texts are gathered through a spill by output shard: every row of every shard (repeats of a
    capped component included) carries its source text, and the spill is gone after the commit."""
    folder, _ = sources
    split = folder / "parts"
    split.mkdir()
    articles = pl.read_ndjson(folder / "articles.jsonl")
    for i in range(3):  # one component over three source files: texts come from several parts
        articles.slice(40 * i, 40).write_ndjson(split / f"articles-{i}.jsonl")
    config = _mix(folder, components=[
        MixComponent(name="articles", kind="files", paths=[str(split / f"articles-{i}.jsonl") for i in range(3)],
                     token_share=0.5),
        MixComponent(name="boiler", kind="files", paths=[str(folder / "boiler.jsonl")], token_share=0.5)],
        total_tokens=120_000, export=ExportConfig(shard_rows=7, sequence_length=64, pack_window_tokens=4096))
    store = Store(str(folder / "store"))
    result = stages.mixed(store=store, config=config, versions={})
    mix = store.scan(result.manifest).collect()
    truth = pl.concat([articles, pl.read_ndjson(folder / "boiler.jsonl")]).select("id", source_text="text")
    assert mix.height == result.manifest.statistics["documents"] and len(result.manifest.files) == -(-mix.height // 7)
    assert mix["epoch"].max() > 0  # a repeated document is in the mix more than once
    checked = mix.join(truth, on="id", how="left")
    assert checked["text"].null_count() == 0 and (checked["text"] == checked["source_text"]).all()
    packed = result.manifest.extra_files["packed"]
    tokens_files = [f["path"] for f in packed if f["path"].endswith(".npy")]
    assert len(tokens_files) > 3 and len(tokens_files) == result.manifest.statistics["mix"]["packed"]["windows"]
    index = pl.concat([store.scan_files([posixpath_join(store.version_dir("mixed", "test", result.version), f["path"])])
                       .collect() for f in packed if f["path"].startswith("tokens-index-")])
    assert sorted(index["doc"].unique().to_list()) == list(range(mix.height))
    assert store.listdir(store.path("tmp", "mixed", "test", result.version)) == []


def test_mix_recipe_errors_name_the_field():
    with pytest.raises(RecipeError, match="mixed.0.components.0"):
        parse_recipe({"mixed": [{"name": "m", "total_tokens": 10,
                                 "components": [{"name": "a", "kind": "files", "weight": 1}]}]})
    with pytest.raises(RecipeError, match="mix names must be unique"):
        mix = {"name": "m", "total_tokens": 10, "components": [{"name": "a", "kind": "kept", "weight": 1}]}
        parse_recipe({"mixed": [mix, mix]})


def test_files_components_on_s3_are_read_with_the_stores_settings(sources, s3_store):
    """A `files` component in the bucket is read through the store's endpoint and credentials:
    the same mix as from a local folder."""
    folder, _ = sources
    for name in ("articles.jsonl", "boiler.jsonl"):
        s3_store.fs.put(str(folder / name), s3_store.path(f"extra/{name}"))
    remote = dict(name="test", components=[
        MixComponent(name="articles", kind="files", paths=[s3_store.path("extra/articles*.jsonl")], token_share=0.75),
        MixComponent(name="boiler", kind="files", paths=[s3_store.path("extra/boiler*.jsonl")], token_share=0.25)])
    from_s3 = stages.mixed(store=s3_store, config=_mix(folder, **remote), versions={})
    local = stages.mixed(store=Store(str(folder / "store")), config=_mix(folder), versions={})
    assert from_s3.manifest.statistics["tokens"] == local.manifest.statistics["tokens"]
    ids = s3_store.scan(from_s3.manifest).select("id").collect()["id"].to_list()
    assert ids == Store(str(folder / "store")).scan(local.manifest).select("id").collect()["id"].to_list()
