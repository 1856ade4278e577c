"""Dagster adapters: the definitions load, the sensor adds crawls, `raw` materializes with checks."""

import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, SensorResult, SkipReason, build_sensor_context, materialize

from assets.definitions import ALL_ASSETS, defs
from assets.raw import raw
from assets.resources import TextmillResource
from assets.sensors import landing_sensor
from checks.filtered import CHECK_NAMES as FILTERED_CHECKS
from checks.raw import CHECK_NAMES as RAW_CHECK_NAMES
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"


def _land(root: Path, crawl: str, *names: str) -> None:
    target = root / "landing" / crawl / "warc"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SAMPLE / "warc" / name, target / name)


def test_definitions_load():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "raw", "deduped", "filtered", "rewritten", "mixed"}
    assert graph.get(AssetKey("mixed")).parent_keys == {AssetKey("filtered"), AssetKey("rewritten")}
    assert graph.get(AssetKey("rewritten")).parent_keys == {AssetKey("filtered")}
    assert graph.get(AssetKey("deduped")).parent_keys == {AssetKey("raw")}
    assert graph.get(AssetKey("filtered")).parent_keys == {AssetKey("deduped")}
    assert defs.resolve_sensor_def("landing_sensor") is not None
    job = defs.resolve_implicit_global_asset_job_def()
    assert job is not None
    checks = {key.name for key in graph.asset_check_keys}
    assert {"raw_schema", "raw_unique_ids", "raw_quarantine_rate", "deduped_no_exact_duplicates",
            "deduped_rate_within_bounds", "filtered_keep_rate_within_bounds", "filtered_no_pii_left"} <= checks
    assert len(ALL_ASSETS) == 4


def test_sensor_adds_new_crawls_and_requests_runs(tmp_path):
    _land(tmp_path, "CC-A", "cc-main-2019-commoncrawl-org.warc.gz")
    _land(tmp_path, "CC-B", "warcio-example.warc.gz")
    instance = DagsterInstance.ephemeral()
    resources = {"textmill": TextmillResource(root=str(tmp_path))}
    result = landing_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == ["CC-A", "CC-B"]
    added = [p for request in result.dynamic_partitions_requests for p in request.partition_keys]
    assert sorted(added) == ["CC-A", "CC-B"]

    instance.add_dynamic_partitions("crawls", added)
    again = landing_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(again, SkipReason)

    _land(tmp_path, "CC-C", "warcio-example.warc.gz")
    third = landing_sensor(build_sensor_context(instance=instance, resources=resources))
    assert [r.partition_key for r in third.run_requests] == ["CC-C"]


def test_raw_materializes_in_process_with_metadata_and_checks(tmp_path):
    _land(tmp_path, "CC-A", "cc-main-2020-34-sample.warc.gz", "clueweb09-ja-quirk.warc.gz")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    resources = {"textmill": TextmillResource(root=str(tmp_path))}
    result = materialize([raw], partition_key="CC-A", instance=instance, resources=resources)
    assert result.success
    materialization = result.asset_materializations_for_node("raw")[0]
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["dagster/row_count"] == 16 + 29
    assert meta["reused"] is False
    assert set(meta["languages"]) >= {"zh", "ja"}
    assert meta["extractor"] == "trafilatura"
    assert "| id | url |" in meta["preview"]
    version = meta["version"]
    assert Path(meta["path"]).name == version
    store = Store(str(tmp_path))
    assert store.latest("raw", "CC-A").version == version

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(RAW_CHECK_NAMES) and all(e.passed for e in checks.values())

    record = instance.get_latest_materialization_event(materialization.asset_key)
    assert record.asset_materialization.tags["dagster/data_version"] == version

    # same inputs and config: the second materialization reuses the version
    again = materialize([raw], partition_key="CC-A", instance=instance, resources=resources)
    meta2 = {k: v.value for k, v in again.asset_materializations_for_node("raw")[0].metadata.items()}
    assert meta2["version"] == version and meta2["reused"] is True


def test_failed_blocking_check_fails_the_run(tmp_path):
    _land(tmp_path, "CC-A", "warcio-example.warc.gz")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("raw:\n  checks:\n    min_documents: 1000\n")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    resources = {"textmill": TextmillResource(root=str(tmp_path), recipe_path=str(recipe))}
    result = materialize([raw], partition_key="CC-A", instance=instance, resources=resources, raise_on_error=False)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["raw_min_documents"]
    assert failed[0].severity.value == "ERROR"
    assert not result.success, "an ERROR from a blocking check must fail the step"


def test_deduped_materializes_from_the_recorded_raw_version(tmp_path):
    _land(tmp_path, "CC-A", "clueweb09-ja-quirk.warc.gz", "dolma-wget-2024-sample-0000.warc.gz")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    resources = {"textmill": TextmillResource(root=str(tmp_path))}
    result = materialize(ALL_ASSETS[:3], partition_key="CC-A", instance=instance, resources=resources)
    assert result.success
    raw_meta = {k: v.value for k, v in result.asset_materializations_for_node("raw")[0].metadata.items()}
    meta = {k: v.value for k, v in result.asset_materializations_for_node("deduped")[0].metadata.items()}
    assert meta["documents_in"] == raw_meta["dagster/row_count"]
    kinds = meta["removed_by_kind"]
    assert kinds["exact"] + kinds["near"] >= 10  # the ClueWeb shop's template pages
    assert "| kept id | url | size | text |" in meta["largest_clusters"]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert {name for name in checks if name.startswith("deduped_")} == {
        "deduped_schema", "deduped_unique_ids", "deduped_no_exact_duplicates", "deduped_rate_within_bounds"}
    assert all(checks.values())
    store = Store(str(tmp_path))
    assert store.latest("deduped", "CC-A").inputs[0]["version"] == raw_meta["version"]

    # filtered: every deduped document is kept or rejected, with the waterfall and examples as metadata
    filtered = {k: v.value for k, v in result.asset_materializations_for_node("filtered")[0].metadata.items()}
    assert filtered["documents_in"] == meta["dagster/row_count"]
    assert filtered["dagster/row_count"] + filtered["rejected"] == filtered["documents_in"]
    assert "| language |" in filtered["removal_waterfall"]
    assert "| gq_words |" in filtered["signal_histograms"]
    assert "| reason | documents |" in filtered["rejected_examples"]
    assert store.latest("filtered", "CC-A").inputs[0]["version"] == meta["version"]
    assert {name for name in checks if name.startswith("filtered_")} == set(FILTERED_CHECKS)


def test_filtered_check_bounds_block_the_run(tmp_path):
    _land(tmp_path, "CC-A", "cc-main-2020-34-sample.warc.gz")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("filtered:\n  checks:\n    min_keep_rate: 0.99\n    max_removal_rate_by_rule_set: {language: 0.0}\n")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    resources = {"textmill": TextmillResource(root=str(tmp_path), recipe_path=str(recipe))}
    result = materialize(ALL_ASSETS[:3], partition_key="CC-A", instance=instance, resources=resources,
                         raise_on_error=False)
    failed = sorted(e.check_name for e in result.get_asset_check_evaluations() if not e.passed)
    assert failed == ["filtered_keep_rate_within_bounds", "filtered_rule_removal_within_bounds"]
    assert not result.success


def test_deduped_without_raw_materialization_fails_clearly(tmp_path):
    _land(tmp_path, "CC-A", "warcio-example.warc.gz")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    from assets.deduped import deduped

    result = materialize([deduped], partition_key="CC-A", instance=instance,
                         resources={"textmill": TextmillResource(root=str(tmp_path))}, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "raw has no materialization for partition CC-A" in str(failure)


@pytest.mark.slow
def test_rewritten_materializes_with_the_local_model_and_provenance(tmp_path):
    _land(tmp_path, "CC-A", "cc-main-2020-34-sample.warc.gz", "dolma-wget-2024-sample-0000.warc.gz")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rewritten:\n  max_documents: 2\n  max_input_chars: 800\n")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    resources = {"textmill": TextmillResource(root=str(tmp_path), recipe_path=str(recipe))}
    result = materialize(ALL_ASSETS, partition_key="CC-A", instance=instance, resources=resources)
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("rewritten")[0].metadata.items()}
    assert meta["selected"] == 2
    assert meta["requests"] + meta["cache_hits"] == 2 and meta["tokens_out"] > 0
    assert "SmolLM2" in meta["model"] or "smollm2" in meta["model"].lower()
    assert meta["dagster/row_count"] + meta["dropped"] == 2
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations() if e.check_name.startswith("rewritten_")}
    assert len(checks) == 6 and all(checks.values())
    store = Store(str(tmp_path))
    version = store.latest("rewritten", "CC-A")
    assert version.inputs[0]["stage"] == "filtered"
    # the same recipe again: the version exists, no request is made
    again = materialize(ALL_ASSETS, partition_key="CC-A", instance=instance, resources=resources)
    meta2 = {k: v.value for k, v in again.asset_materializations_for_node("rewritten")[0].metadata.items()}
    assert meta2["reused"] is True and meta2["version"] == meta["version"]


def test_nightly_schedule_adds_new_crawls_and_requests_unfinished_ones(tmp_path):
    from datetime import datetime, timezone

    from dagster import build_schedule_context

    from assets.schedules import nightly_crawls

    assert defs.resolve_schedule_def("nightly_crawls").cron_schedule == "0 2 * * *"
    assert defs.resolve_job_def("crawl_pipeline") is not None
    _land(tmp_path, "CC-A", "warcio-example.warc.gz")
    _land(tmp_path, "CC-B", "warcio-example.warc.gz")
    (tmp_path / "dagster").mkdir()
    instance = DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))  # schedules need an instance ref
    instance.add_dynamic_partitions("crawls", ["CC-A"])
    resources = {"textmill": TextmillResource(root=str(tmp_path))}
    when = datetime(2026, 11, 23, 2, tzinfo=timezone.utc)
    request = nightly_crawls(build_schedule_context(instance=instance, resources=resources,
                                                    scheduled_execution_time=when))
    # one run over the range of every crawl (deduped sees them in crawl order), not one run per crawl
    assert request.partition_key is None and request.run_key == "nightly:2026-11-23:CC-A..CC-B"
    assert request.tags["dagster/asset_partition_range_start"] == "CC-A"
    assert request.tags["dagster/asset_partition_range_end"] == "CC-B"
    assert request.tags["textmill/unfinished_crawls"] == "CC-A,CC-B"
    # the request's tags drive a ranged run: raw of both crawls in one run
    from assets.raw import raw
    result = materialize([raw], instance=instance, resources=resources, tags=request.tags)
    assert sorted(m.partition for m in result.asset_materializations_for_node("raw")) == ["CC-A", "CC-B"]
    assert sorted(instance.get_dynamic_partitions("crawls")) == ["CC-A", "CC-B"]
