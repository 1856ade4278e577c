"""Runs over a partition-key range (what BackfillPolicy.single_run launches): per-partition versions and
metadata, crawl order, and one result per check that names the partitions that failed it."""

import shutil
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from assets.raw import raw
from checks.raw import CHECK_NAMES as RAW_CHECK_NAMES
from assets.resources import TextmillResource
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "warc"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def test_raw_over_a_range_records_each_partition_and_merges_its_checks(tmp_path):
    # CC-B lands one document, CC-A sixteen; a bound of two documents fails CC-B only
    for crawl, name in (("CC-B", "warcio-example.warc.gz"), ("CC-A", "cc-main-2020-34-sample.warc.gz")):
        (tmp_path / "landing" / crawl / "warc").mkdir(parents=True)
        shutil.copy(SAMPLE / name, tmp_path / "landing" / crawl / "warc" / name)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("execution:\n  backend: serial\nraw:\n  checks:\n    min_documents: 2\n")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", ["CC-B", "CC-A"])  # Dagster's order is not the crawl order
    resources = {"textmill": TextmillResource(root=str(tmp_path), recipe_path=str(recipe))}
    result = materialize([raw], instance=instance, resources=resources, raise_on_error=False,
                         tags={RANGE_START: "CC-B", RANGE_END: "CC-A"})

    assert not result.success, "a blocking check that fails for one partition of the range fails the step"
    store = Store(str(tmp_path))
    events = {e.partition: e for e in result.asset_materializations_for_node("raw")}
    assert set(events) == {"CC-A", "CC-B"}
    for crawl, event in events.items():
        meta = {key: value.value for key, value in event.metadata.items()}
        assert meta["version"] == store.latest("raw", crawl).version  # each partition its own version
        assert meta["dagster/row_count"] == {"CC-A": 16, "CC-B": 1}[crawl]
        assert meta["partitions_in_run"] == ["CC-A", "CC-B"]  # processed in crawl (name) order
    recorded = instance.fetch_materializations(AssetKey("raw"), limit=10).records
    assert {r.asset_materialization.partition for r in recorded} == {"CC-A", "CC-B"}

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(RAW_CHECK_NAMES), "one result per check for the whole range"
    failed = checks["raw_min_documents"]
    assert not failed.passed and failed.severity.value == "ERROR"
    assert failed.metadata["failed_partitions"].value == ["CC-B"]
    per_partition = failed.metadata["partitions"].value
    assert per_partition["CC-A"]["passed"] is True and per_partition["CC-B"]["passed"] is False
    assert all(e.passed for name, e in checks.items() if name != "raw_min_documents")
