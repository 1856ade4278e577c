"""Runs over several partitions: backfill policies and the one result a step returns for them.

A backfill with `BackfillPolicy.single_run()` (or a run the UI launches over a range)
hands an asset a partition-key *range*. Dagster records one materialization per partition
of the range from the single `MaterializeResult` the step returns, so each partition's own
metadata goes through `context.add_asset_metadata(..., partition_key=...)`, and each check
gets one result for the whole step that says which partitions failed.

Crawl order is name order (Common Crawl names sort by time; the deduped stage's "earlier
crawls" are those whose name sorts first), not the order in which the dynamic partitions
were added, so ranges are processed sorted by name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, BackfillPolicy, BetaWarning,
                     DataVersion, MaterializeResult, MetadataValue)

from assets.metadata import check_result
from checks.base import CheckOutcome

# `@asset(backfill_policy=...)` is marked beta in Dagster 1.13; the policy is chosen on purpose,
# so its warning would only clutter every process that imports the definitions.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)

# One run per partition: for partitions whose work never reads another partition's (mixes).
PER_PARTITION = BackfillPolicy.multi_run(max_partitions_per_run=1)
# One run for every partition requested together, processed in crawl order by the asset itself.
# Dagster requests a child's partitions once their parents are done, so only assets that share
# this policy with their parents (raw → deduped → filtered → rewritten) get one run for a whole
# backfill; the crawl assets all use it (assets/deduped.py says why the order matters).
ONE_RUN_IN_ORDER = BackfillPolicy.single_run()


@dataclass(frozen=True)
class PartitionResult:
    """What an asset computed for one partition: its dataset version, metadata and check outcomes."""

    version: str
    metadata: dict
    outcomes: list[CheckOutcome] = field(default_factory=list)


def ordered_partition_keys(context: AssetExecutionContext) -> list[str]:
    """The run's partition keys in crawl (name) order; a one-partition run gives one key."""
    return sorted(context.partition_keys)


def materialize_partitions(context: AssetExecutionContext,
                           build: Callable[[str], PartitionResult]) -> MaterializeResult:
    """Call `build` for each partition of the run in name order and return the step's result.

    One partition: its metadata, `DataVersion(version)` and check results, as before ranges.
    A range: each partition's metadata (with its `version`) is attached to that partition's
    materialization; Dagster's data version cannot differ per partition within one output, so
    the dataset version is in the metadata only; each check passes only if it passed for
    every partition, its metadata lists the partitions that failed and each one's numbers.
    """
    keys = ordered_partition_keys(context)
    if len(keys) == 1:
        result = build(keys[0])
        return MaterializeResult(metadata=result.metadata, data_version=DataVersion(result.version),
                                 check_results=[check_result(outcome) for outcome in result.outcomes])
    results: dict[str, PartitionResult] = {}
    for position, key in enumerate(keys, start=1):
        context.log.info(f"{context.asset_key.to_user_string()}: partition {key} ({position}/{len(keys)})")
        results[key] = build(key)
        context.add_asset_metadata(results[key].metadata, partition_key=key)
    return MaterializeResult(
        metadata={"partitions_in_run": MetadataValue.json(keys)},
        check_results=merged_check_results(results),
    )


def merged_check_results(results: dict[str, PartitionResult]) -> list[AssetCheckResult]:
    """One result per check over the partitions of a range (a check spec belongs to the asset, not a partition)."""
    by_name: dict[str, dict[str, CheckOutcome]] = {}
    for key, result in results.items():
        for outcome in result.outcomes:
            by_name.setdefault(outcome.name, {})[key] = outcome
    merged = []
    for name, outcomes in by_name.items():
        failed = [key for key, outcome in outcomes.items() if not outcome.passed]
        errors = [key for key in failed if outcomes[key].severity == "ERROR"]
        first = next(iter(outcomes.values()))
        worst = "ERROR" if errors else "WARN" if failed else first.severity
        severity = AssetCheckSeverity.ERROR if worst == "ERROR" else AssetCheckSeverity.WARN
        merged.append(AssetCheckResult(
            check_name=name, passed=not failed, severity=severity,
            metadata={
                "description": first.description,
                "failed_partitions": MetadataValue.json(failed),
                "partitions": MetadataValue.json({key: {"passed": outcome.passed, **_plain(outcome.metadata)}
                                                  for key, outcome in outcomes.items()}),
            }))
    return merged


def _plain(metadata: dict) -> dict:
    """Check metadata as JSON values (numbers, strings, lists and dicts pass through)."""
    return {key: value if isinstance(value, (int, float, str, bool, list, dict, type(None))) else str(value)
            for key, value in metadata.items()}
