"""The `textmill` command as a user runs it: demo through Dagster, inspect, and the web UI."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from textmill.storage import Store

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _textmill(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"DAGSTER_HOME": str(cwd / "dagster"), "COLUMNS": "200"}
    env.pop("TEXTMILL_RECIPE", None)
    env.pop("TEXTMILL_ROOT", None)
    return subprocess.run([str(BIN / "textmill"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    result = _textmill("demo", "--recipe", str(REPO / "recipes" / "default.yaml"), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


@pytest.mark.slow
def test_demo_materializes_raw_through_dagster(demo_dir):
    store = Store(str(demo_dir / ".textmill" / "data"))
    manifest = store.latest("raw", "CC-MAIN-SAMPLE")
    assert manifest is not None
    assert manifest.rows > 100
    assert {"en", "ja", "zh"} <= set(manifest.statistics["languages"])
    # the run went through Dagster and is recorded in the instance that `textmill ui` reads
    runs = list((demo_dir / "dagster").glob("storage/*"))
    assert runs, "no Dagster run storage under DAGSTER_HOME"
    from dagster import AssetKey, DagsterInstance

    os.environ["DAGSTER_HOME"] = str(demo_dir / "dagster")
    try:
        with DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(AssetKey("raw"))
            assert event is not None
            assert event.asset_materialization.partition == "CC-MAIN-SAMPLE"
            assert event.asset_materialization.tags["dagster/data_version"] == manifest.version
    finally:
        del os.environ["DAGSTER_HOME"]


@pytest.mark.slow
def test_demo_materializes_deduped_from_the_raw_version(demo_dir):
    store = Store(str(demo_dir / ".textmill" / "data"))
    raw = store.latest("raw", "CC-MAIN-SAMPLE")
    deduped = store.latest("deduped", "CC-MAIN-SAMPLE")
    assert deduped.inputs[0] == {"kind": "version", "stage": "raw", "partition": "CC-MAIN-SAMPLE",
                                 "version": raw.version}
    stats = deduped.statistics
    assert stats["documents_in"] == raw.rows
    assert stats["documents"] + stats["removed"] == raw.rows
    kinds = stats["removed_by_kind"]
    assert kinds["exact"] + kinds["near"] > 0 and kinds["url"] > 0  # ClueWeb's shop templates, repeated URLs


@pytest.mark.slow
def test_demo_twice_is_a_no_op(demo_dir):
    store = Store(str(demo_dir / ".textmill" / "data"))
    stages = ("raw", "deduped", "filtered", "rewritten")
    before = {stage: [m.version for m in store.versions(stage, "CC-MAIN-SAMPLE")] for stage in stages}
    result = _textmill("demo", "--recipe", str(REPO / "recipes" / "default.yaml"), cwd=demo_dir)
    assert result.returncode == 0, result.stderr
    after = {stage: [m.version for m in store.versions(stage, "CC-MAIN-SAMPLE")] for stage in stages}
    assert after == before and all(len(v) == 1 for v in after.values())
    assert before["raw"][0] in result.stdout and before["deduped"][0] in result.stdout


@pytest.mark.slow
def test_inspect_filters_by_language_and_text(demo_dir):
    result = _textmill("inspect", "--crawl", "CC-MAIN-SAMPLE", "--lang", "ja", "--limit", "2", cwd=demo_dir)
    assert result.returncode == 0, result.stderr
    assert "29 documents match; showing 2" in result.stdout
    assert "uraharajuku" in result.stdout or ".jp" in result.stdout or "ja (" in result.stdout
    found = _textmill("inspect", "--search", "Escopete", cwd=demo_dir)
    assert "an.wikipedia.org/wiki/Escopete" in found.stdout
    none = _textmill("inspect", "--search", "zz-no-such-text-zz", cwd=demo_dir)
    assert "0 documents match" in none.stdout


@pytest.mark.slow
def test_demo_filters_and_inspect_shows_why_a_document_was_rejected(demo_dir):
    store = Store(str(demo_dir / ".textmill" / "data"))
    deduped = store.latest("deduped", "CC-MAIN-SAMPLE")
    filtered = store.latest("filtered", "CC-MAIN-SAMPLE")
    stats = filtered.statistics
    assert stats["documents_in"] == deduped.rows == stats["documents"] + stats["rejected"]
    assert stats["removed_by_rule_set"]["language"] > 0  # the sample holds Japanese and Chinese pages
    reason, count = next(iter(stats["rejected_by_reason"].items()))
    result = _textmill("inspect", "--crawl", "CC-MAIN-SAMPLE", "--stage", "filtered", "--rejected",
                       "--reason", reason, "--signals", "--limit", "1", cwd=demo_dir)
    assert result.returncode == 0, result.stderr
    assert f"{count} documents match; showing 1" in result.stdout
    assert f"rejected by {reason}" in result.stdout
    assert "gq_mean_word_length" in result.stdout  # the signals that led there
    kept = _textmill("inspect", "--crawl", "CC-MAIN-SAMPLE", "--stage", "filtered", "--limit", "1", cwd=demo_dir)
    assert f"{stats['documents']} documents match" in kept.stdout and "rejected by" not in kept.stdout


@pytest.mark.slow
def test_demo_runs_the_whole_chain_to_a_mix_with_a_data_card(demo_dir):
    store = Store(str(demo_dir / ".textmill" / "data"))
    chain = {stage: store.latest(stage, "CC-MAIN-SAMPLE") for stage in ("raw", "deduped", "filtered", "rewritten")}
    assert all(chain.values())
    # each version names the one before it
    assert chain["deduped"].inputs[0]["version"] == chain["raw"].version
    assert chain["filtered"].inputs[0]["version"] == chain["deduped"].version
    assert chain["rewritten"].inputs[0]["version"] == chain["filtered"].version
    mix = store.latest("mixed", "default")
    assert mix is not None
    read = {(i["stage"], i["version"]) for i in mix.inputs}
    assert ("filtered", chain["filtered"].version) in read and ("rewritten", chain["rewritten"].version) in read
    main = mix.statistics["mix"]["phases"]["main"]
    assert main["within_tolerance"] and abs(mix.statistics["tokens"] - main["budget_tokens"]) <= 0.02 * main["budget_tokens"]
    folder = Path(store.version_dir("mixed", "default", mix.version))
    order = pl.read_parquet(folder / "order.parquet")
    assert order["position"].to_list() == list(range(order.height)) and order.height == mix.rows
    assert (folder / "tokens-00000.npy").exists() and (folder / "tokens-index-00000.parquet").exists()
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "pretty_name: textmill-default" in card
    assert f"{mix.statistics['tokens']:,} tokens" in card
    assert "<svg" in (folder / "report.html").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_asset_graph(demo_dir):
    port = _free_port()
    env = os.environ | {"DAGSTER_HOME": str(demo_dir / "dagster")}
    env.pop("TEXTMILL_RECIPE", None)
    process = subprocess.Popen([str(BIN / "textmill"), "ui", "--port", str(port)], cwd=demo_dir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    output = process.stdout.read().decode() if process.poll() is not None else ""
                    pytest.fail(f"webserver did not start: {output[-2000:]}")
                time.sleep(1)
        query = {"query": "{ assetNodes { assetKey { path } partitionKeysByDimension { partitionKeys } } }"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps(query).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.loads(response.read())
        nodes = data["data"]["assetNodes"]
        assert sorted(node["assetKey"]["path"] for node in nodes) == [["deduped"], ["filtered"], ["mixed"], ["raw"], ["rewritten"]]
        keys = {node["assetKey"]["path"][0]: node["partitionKeysByDimension"][0]["partitionKeys"] for node in nodes}
        assert all("CC-MAIN-SAMPLE" in keys[name] for name in ("raw", "deduped", "filtered", "rewritten"))
        assert keys["mixed"] == ["default"]  # mixes are partitioned by name
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_status_marks_versions_built_from_an_old_upstream_as_stale(tmp_path):
    from textmill import stages
    from textmill.cli import version_status
    from textmill.config import DedupConfig, RawConfig
    from textmill.executor import SerialExecutor

    landing = tmp_path / "data" / "landing" / "c1"
    landing.mkdir(parents=True)
    (landing / "docs.jsonl").write_text("".join(
        json.dumps({"id": str(i), "url": f"https://s{i}.example/", "text": f"Document number {i} about rivers."}) + "\n"
        for i in range(6)))
    store = Store(str(tmp_path / "data"))
    raw = stages.raw(store=store, crawl="c1", config=RawConfig(), executor=SerialExecutor())
    stages.deduped(store=store, crawl="c1", raw_version=raw.version, config=DedupConfig(), executor=SerialExecutor())
    rows = {row["stage"]: row for row in version_status(store)}
    assert not rows["raw"]["stale"] and not rows["deduped"]["stale"] and rows["filtered"]["version"] is None
    # a new raw version (another recipe) leaves the deduped version behind
    newer = stages.raw(store=store, crawl="c1", config=RawConfig(rows_per_part=2), executor=SerialExecutor())
    rows = {row["stage"]: row for row in version_status(store)}
    assert rows["raw"]["version"] == newer.version and rows["raw"]["versions"] == 2
    assert rows["deduped"]["stale"] and newer.version in rows["deduped"]["why"]
    shown = _textmill("status", "--root", str(tmp_path / "data"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "stale" in shown.stdout and "current" in shown.stdout and "not built" in shown.stdout
