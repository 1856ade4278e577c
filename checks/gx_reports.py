"""Non-blocking Dagster asset checks that describe each materialized version with Great Expectations.

One check per asset (`raw_gx_report`, ..., `mixed_gx_report`). It runs after the asset's step
in the same run, reads the version the asset just recorded for each partition of the run,
validates a seeded sample against the version's suite (`textmill.report.expectations`) and
links the Data Docs site in its metadata. It never blocks downstream assets and never fails
the run: a failed expectation is a WARN result, and an error while reporting is a WARN result
that carries the error.
"""

import os
import traceback

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    MetadataValue,
    asset_check,
)

from assets.resources import TextmillResource
from textmill.storage import Store

ASSETS = ("raw", "deduped", "filtered", "rewritten", "mixed")
FAILED_SHOWN = 20


def reports_dir_for(store: Store) -> str | None:
    """Where Data Docs go: `$TEXTMILL_REPORTS_DIR`, else beside a local store's data, else under DAGSTER_HOME."""
    if os.environ.get("TEXTMILL_REPORTS_DIR"):
        return os.environ["TEXTMILL_REPORTS_DIR"]
    if store.is_local:
        return None  # {root}/reports/gx
    home = os.environ.get("DAGSTER_HOME")
    return os.path.join(home, "reports", "gx") if home else None


def max_rows() -> int:
    from textmill.report.expectations import DEFAULT_MAX_ROWS

    return int(os.environ.get("TEXTMILL_GX_MAX_ROWS") or DEFAULT_MAX_ROWS)


def _recorded_version(context: AssetCheckExecutionContext, asset: str, partition: str) -> str | None:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("version")
    return str(value.value) if value is not None else None


def _report_partition(context: AssetCheckExecutionContext, textmill: TextmillResource, asset: str,
                      partition: str) -> dict:
    from textmill.report.expectations import run_expectation_report

    version = _recorded_version(context, asset, partition)
    if version is None:
        return {"partition": partition, "error": f"{asset} has no materialization with a version for {partition}"}
    store = textmill.store()
    manifest = store.manifest(asset, partition, version)
    if manifest is None:
        return {"partition": partition, "version": version, "error": f"{asset}/{partition}/{version} has no manifest"}
    report = run_expectation_report(store, manifest, reports_dir=reports_dir_for(store), max_rows=max_rows())
    context.log.info(f"{asset} {partition}: GX report {report.evaluated} expectations, {len(report.failed)} failed; "
                     f"Data Docs {report.docs_url}")
    return {"partition": partition, "version": version, "success": report.success, "evaluated": report.evaluated,
            "failed": report.failed, "docs_url": report.docs_url, "index_path": report.index_path,
            "seconds": report.seconds, "reused": report.reused,
            "rows_sampled": {t.suite: f"{t.rows_sampled} of {t.rows_total}" for t in report.tables}}


def _gx_report_check(asset: str) -> AssetChecksDefinition:
    @asset_check(
        asset=asset,
        name=f"{asset}_gx_report",
        blocking=False,
        description=f"Great Expectations suite describing the {asset} version (columns and types, ids, text, "
                    "ranges) on a seeded sample, with a Data Docs site; informative, never blocks downstream",
    )
    def _check(context: AssetCheckExecutionContext, textmill: TextmillResource) -> AssetCheckResult:
        keys = list(context.op_execution_context.partition_keys) if (
            context.op_execution_context.has_partition_key or context.op_execution_context.has_partition_key_range
        ) else []
        reports = []
        for partition in sorted(keys):
            try:
                reports.append(_report_partition(context, textmill, asset, partition))
            except Exception as exc:  # noqa: BLE001 - a report must never fail the run
                context.log.warning(f"{asset} {partition}: GX report failed: {exc!r}")
                reports.append({"partition": partition, "error": repr(exc),
                                "traceback": traceback.format_exc(limit=5)})
        failed = [f for r in reports for f in r.get("failed", [])]
        errors = [r for r in reports if "error" in r]
        passed = bool(reports) and not failed and not errors
        metadata: dict = {
            "expectations_evaluated": sum(r.get("evaluated", 0) for r in reports),
            "expectations_failed": len(failed),
            "failed_expectations": MetadataValue.json(failed[:FAILED_SHOWN]),
            "partitions": MetadataValue.json([r["partition"] for r in reports]),
        }
        if not reports:
            metadata["error"] = "the run has no partition: nothing to report"
        if errors:
            metadata["errors"] = MetadataValue.json([{k: r[k] for k in ("partition", "error") if k in r} for r in errors])
        documented = [r for r in reports if "docs_url" in r]
        if documented:
            first = documented[0]
            metadata |= {"data_docs": MetadataValue.url(first["docs_url"]),
                         "data_docs_path": MetadataValue.path(first["index_path"]),
                         "version": first["version"], "rows_sampled": MetadataValue.json(first["rows_sampled"]),
                         "report_reused": all(r["reused"] for r in documented),
                         "seconds": round(sum(r["seconds"] for r in documented), 3)}
        if len(documented) > 1:
            metadata["data_docs_by_partition"] = MetadataValue.json({r["partition"]: r["docs_url"] for r in documented})
        return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.WARN, metadata=metadata)

    return _check


GX_REPORT_CHECKS: list[AssetChecksDefinition] = [_gx_report_check(asset) for asset in ASSETS]
CRAWL_GX_REPORT_CHECKS = GX_REPORT_CHECKS[:4]  # raw → rewritten, partitioned by crawl
MIX_GX_REPORT_CHECKS = GX_REPORT_CHECKS[4:]
