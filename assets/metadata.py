"""Turn core results into Dagster metadata and check results (no logic of their own)."""

from __future__ import annotations

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    MetadataValue,
    TableColumn,
    TableSchema,
)

from checks.base import CheckOutcome
from textmill.report.stats import version_stats
from textmill.stages import StageResult
from textmill.storage import Store

def version_metadata(store: Store, result: StageResult) -> dict:
    """Metadata of the version an asset produced: the common numbers and its stage's own (textmill.report.stats)."""
    stats = version_stats(store, result)
    return {
        "dagster/row_count": stats.rows,
        "dagster/column_schema": TableSchema(columns=[TableColumn(name, dtype) for name, dtype in stats.columns.items()]),
    } | stats.values | {key: MetadataValue.json(value) for key, value in stats.json.items()} | {
        key: MetadataValue.md(value) for key, value in stats.markdown.items()} | {
        key: MetadataValue.path(value) for key, value in stats.paths.items()} | {
        # this run's wall time of the stage (a reused version: the lookup only), the build's, and the code version
        "stage_seconds": result.seconds, "build_seconds": float(result.manifest.timings.get("wall_seconds", 0.0)),
        "code_version": result.manifest.code_version}


def blocking_checks(asset: str, names: dict[str, str]) -> list[AssetCheckSpec]:
    """One blocking check spec per check of a suite (name → description): an ERROR stops downstream."""
    return [AssetCheckSpec(name, asset=asset, description=text, blocking=True) for name, text in names.items()]


def check_result(outcome: CheckOutcome) -> AssetCheckResult:
    severity = AssetCheckSeverity.ERROR if outcome.severity == "ERROR" else AssetCheckSeverity.WARN
    metadata = {"description": outcome.description} | {
        key: value if isinstance(value, (int, float, str, bool)) else MetadataValue.json(value)
        for key, value in outcome.metadata.items()
    }
    return AssetCheckResult(check_name=outcome.name, passed=outcome.passed, severity=severity, metadata=metadata)


def upstream_version(context: AssetExecutionContext, asset: str, *, partition: str | None = None) -> str:
    """The dataset version the upstream asset last materialized for a partition (lineage from Dagster).

    `partition` defaults to the run's one partition key; a run over a range names each key.
    """
    partition = partition or context.partition_key
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records:
        raise RuntimeError(f"{asset} has no materialization for partition {partition}; materialize it first")
    return str(records[0].asset_materialization.metadata["version"].value)
