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
from textmill.stages import StageResult
from textmill.storage import Store

PREVIEW_ROWS = 5
PREVIEW_CHARS = 240


def markdown_preview(store: Store, result: StageResult, *, rows: int = PREVIEW_ROWS) -> str:
    """A markdown table of the first documents of a version (the columns it has of id, url, lang, chars, text)."""
    names = store.scan(result.manifest).collect_schema().names()
    columns = [c for c in ("id", "component", "url", "lang", "n_chars", "tokens", "text") if c in names]
    frame = store.scan(result.manifest).select(columns).head(rows).collect()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.iter_rows(named=True):
        cells = []
        for column in columns:
            value = row[column]
            if column == "text":
                cells.append(" ".join((value or "")[:PREVIEW_CHARS].split()).replace("|", "\\|") + "…")
            elif column == "id":
                cells.append(str(value)[:12])
            else:
                cells.append(str(value if value is not None else "").replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def version_metadata(store: Store, result: StageResult) -> dict:
    """Metadata every textmill asset reports for the version it produced."""
    manifest = result.manifest
    schema = store.scan(manifest).collect_schema()
    return {
        "dagster/row_count": manifest.rows,
        "dagster/column_schema": TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in schema.items()]),
        "version": manifest.version,
        "reused": result.reused,
        "path": MetadataValue.path(result.uri),
        "bytes": manifest.bytes,
        "files": len(manifest.files),
        "quarantined": manifest.quarantine.get("records", 0),
        "quarantined_by_reason": MetadataValue.json(manifest.quarantine.get("by_reason", {})),
        "quarantine_path": MetadataValue.path(manifest.quarantine.get("path", "")),
        "timings": MetadataValue.json(manifest.timings),
        "textmill_version": manifest.textmill_version,
        "preview": MetadataValue.md(markdown_preview(store, result)),
    }


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


def upstream_version(context: AssetExecutionContext, asset: str) -> str:
    """The dataset version the upstream asset last materialized for this partition (lineage from Dagster)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records:
        raise RuntimeError(f"{asset} has no materialization for partition {context.partition_key}; materialize it first")
    return str(records[0].asset_materialization.metadata["version"].value)
