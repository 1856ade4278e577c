"""Prefect artifacts of a dataset version: the same statistics Dagster shows as asset metadata.

A stage flow publishes one markdown artifact (`textmill-{stage}-{partition}`) and table
artifacts (`textmill-{stage}-{partition}-summary`, `-checks` and one per tabular view of the
stage, e.g. `-waterfall`). Keys are stable, so the Artifacts page keeps one history per
version's stage and partition.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from checks.base import CheckOutcome
from textmill.report.stats import VersionStats


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from a stage, a partition and a suffix."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(("textmill",) + parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)


def summary_rows(stats: VersionStats) -> list[dict[str, Any]]:
    """The version's scalar numbers as `measure`/`value` rows (rows first)."""
    return [{"measure": "rows", "value": stats.rows}] + [
        {"measure": name, "value": value} for name, value in stats.values.items()]


def _json_block(value: Any) -> str:
    if isinstance(value, dict) and value and all(not isinstance(v, (dict, list)) for v in value.values()):
        lines = ["| key | value |", "|---|---:|"]
        lines += [f"| {key} | {item} |" for key, item in value.items()]
        return "\n".join(lines)
    return "```json\n" + json.dumps(value, indent=2, sort_keys=True, default=str) + "\n```"


def markdown_report(stats: VersionStats, outcomes: list[CheckOutcome]) -> str:
    """One page: the numbers, the checks, the stage's views, the JSON statistics, the preview."""
    lines = [f"# {stats.stage} `{stats.partition}` version `{stats.version}`", "",
             f"{stats.rows:,} rows; " + ("reused: this version already existed" if stats.reused else "written by this run"),
             "", "| measure | value |", "|---|---:|"]
    lines += [f"| {row['measure']} | {row['value']} |" for row in summary_rows(stats)]
    lines += [f"| {name} | `{path}` |" for name, path in stats.paths.items()]
    if outcomes:
        lines += ["", "## checks", "", "| check | passed | severity |", "|---|---|---|"]
        lines += [f"| {o.name} | {'yes' if o.passed else '**no**'} | {o.severity} |" for o in outcomes]
    for name, text in stats.markdown.items():
        if name != "preview":
            lines += ["", f"## {name.replace('_', ' ')}", "", text]
    for name, value in stats.json.items():
        lines += ["", f"## {name.replace('_', ' ')}", "", _json_block(value)]
    if "preview" in stats.markdown:
        lines += ["", "## preview", "", stats.markdown["preview"]]
    return "\n".join(lines)


def publish_version(stats: VersionStats, outcomes: list[CheckOutcome]) -> dict[str, str]:
    """Create the version's artifacts in the current flow run; returns their keys by name."""
    base = (stats.stage, stats.partition)
    keys = {"report": artifact_key(*base), "summary": artifact_key(*base, "summary")}
    create_markdown_artifact(markdown_report(stats, outcomes), key=keys["report"],
                             description=f"textmill {stats.stage} {stats.partition}: version {stats.version}")
    create_table_artifact(summary_rows(stats), key=keys["summary"],
                          description=f"{stats.stage} {stats.partition} {stats.version}: numbers")
    if outcomes:
        keys["checks"] = artifact_key(*base, "checks")
        create_table_artifact([{"check": o.name, "passed": o.passed, "severity": o.severity,
                                "description": o.description} for o in outcomes],
                              key=keys["checks"], description=f"{stats.stage} {stats.partition}: checks")
    for name, rows in stats.tables.items():
        keys[name] = artifact_key(*base, name)
        create_table_artifact(rows, key=keys[name], description=f"{stats.stage} {stats.partition}: {name}")
    return keys


def publish_versions(name: str, versions: dict[str, dict[str, str]]) -> str:
    """A table of the versions a pipeline run produced (one row per partition and stage)."""
    key = artifact_key(name, "versions")
    rows = [{"partition": partition, "stage": stage, "version": version}
            for partition, stages in versions.items() for stage, version in stages.items()]
    create_table_artifact(rows, key=key, description=f"dataset versions of this {name} run")
    return key
