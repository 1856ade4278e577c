"""One Prefect flow per stage: raw, deduped, filtered, rewritten, mixed.

Each flow calls the core stage function (`textmill.stages`) in a task, runs the stage's
blocking checks (`checks/`), publishes the version's statistics as artifacts and returns a
small summary. Tasks retry transient errors only (a dropped connection, a timeout); Prefect's
result caching is off because the core is content-addressed already: a rerun with the same
inputs and config finds its version and does nothing.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from checks.base import CheckOutcome
from flows._logs import carry_textmill_logs
from flows.artifacts import publish_version
from textmill import stages
from textmill.config import Recipe, resolve_recipe
from textmill.executor import make_executor
from textmill.report.stats import version_stats
from textmill.rewrite.backends import BackendTimeout
from textmill.stages import StageResult
from textmill.storage import Store

carry_textmill_logs()
log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, BackendTimeout)
RETRIES = 2
RETRY_DELAYS = [5, 30]


class BlockingCheckFailed(RuntimeError):
    """A check with severity ERROR failed: nothing downstream may read this version."""


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only errors that another attempt can fix (never bad input, config or a failed check)."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except BaseException:  # noqa: BLE001 - any other failure is permanent
        return False
    return False


def settings(recipe: str | None, root: str | None) -> tuple[Recipe, Store]:
    """The recipe (path, else $TEXTMILL_RECIPE, else recipes/default.yaml) and its store; root: else $TEXTMILL_ROOT."""
    resolved = resolve_recipe(recipe or None)
    root = root or os.environ.get("TEXTMILL_ROOT")
    if root:
        resolved = resolved.with_root(root)
    return resolved, Store(resolved.storage.root, storage_options=resolved.storage.storage_options)


def _stage_task(name: str):
    return task(name=f"textmill-{name}", task_run_name=f"{name}-{{partition}}", retries=RETRIES,
                retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=is_transient, cache_policy=NO_CACHE,
                persist_result=False)


@_stage_task("raw")
def raw_task(*, partition: str, recipe: str | None, root: str | None) -> StageResult:
    config, store = settings(recipe, root)
    with closing(make_executor(config.execution)) as executor:
        return stages.raw(store=store, crawl=partition, config=config.raw, executor=executor)


@_stage_task("deduped")
def deduped_task(*, partition: str, raw_version: str, recipe: str | None, root: str | None) -> StageResult:
    config, store = settings(recipe, root)
    with closing(make_executor(config.execution)) as executor:
        return stages.deduped(store=store, crawl=partition, raw_version=raw_version, config=config.deduped,
                              executor=executor)


@_stage_task("filtered")
def filtered_task(*, partition: str, deduped_version: str, recipe: str | None, root: str | None) -> StageResult:
    config, store = settings(recipe, root)
    with closing(make_executor(config.execution)) as executor:
        return stages.filtered(store=store, crawl=partition, deduped_version=deduped_version, config=config.filtered,
                               executor=executor)


@_stage_task("rewritten")
def rewritten_task(*, partition: str, filtered_version: str, recipe: str | None, root: str | None) -> StageResult:
    config, store = settings(recipe, root)
    return stages.rewritten(store=store, crawl=partition, filtered_version=filtered_version,
                            config=config.rewritten, filter_config=config.filtered)


@_stage_task("mixed")
def mixed_task(*, partition: str, versions: dict[str, dict[str, str]], recipe: str | None,
               root: str | None) -> StageResult:
    config, store = settings(recipe, root)
    return stages.mixed(store=store, config=config.mix(partition), versions=versions)


@task(name="textmill-checks", task_run_name="checks-{stage}-{partition}", cache_policy=NO_CACHE, persist_result=False)
def checks_task(*, stage: str, partition: str, result: StageResult, recipe: str | None,
                root: str | None) -> list[CheckOutcome]:
    """The stage's check suite over the version (the same suites Dagster runs as blocking asset checks)."""
    config, store = settings(recipe, root)
    manifest = result.manifest
    if stage == "raw":
        from checks.raw import run_raw_checks
        return run_raw_checks(store.scan(manifest), manifest, config.raw.checks)
    if stage == "deduped":
        from checks.deduped import run_deduped_checks
        return run_deduped_checks(store.scan(manifest), manifest, config.deduped)
    if stage == "filtered":
        from checks.filtered import run_filtered_checks
        return run_filtered_checks(store.scan(manifest), store.scan_extra(manifest, "rejected"), manifest,
                                   config.filtered)
    if stage == "rewritten":
        from checks.rewritten import run_rewritten_checks
        parent = store.manifest("filtered", partition, manifest.inputs[0]["version"])
        parents = [store.scan(parent).select("id")]
        rejected = store.scan_extra(parent, "rejected")
        if rejected is not None:
            parents.append(rejected.select("id"))
        return run_rewritten_checks(store.scan(manifest), pl.concat(parents), manifest, config.rewritten)
    from checks.mixed import run_mixed_checks
    return run_mixed_checks(store.scan(manifest), manifest, config.mix(partition))


def finish(stage: str, partition: str, result: StageResult, *, recipe: str | None, root: str | None) -> dict[str, Any]:
    """Checks, artifacts and the flow's summary; raises BlockingCheckFailed after publishing them."""
    _, store = settings(recipe, root)
    outcomes = checks_task(stage=stage, partition=partition, result=result, recipe=recipe, root=root)
    keys = publish_version(version_stats(store, result), outcomes)
    logger = get_run_logger()
    logger.info("%s %s: version %s (%d rows, %s)", stage, partition, result.version, result.manifest.rows,
                "reused" if result.reused else "written")
    failed = [o.name for o in outcomes if not o.passed and o.severity == "ERROR"]
    if failed:
        raise BlockingCheckFailed(f"{stage} {partition} version {result.version}: blocking checks failed: "
                                  f"{', '.join(failed)}")
    for outcome in outcomes:
        if not outcome.passed:
            logger.warning("%s %s: check %s failed (WARN)", stage, partition, outcome.name)
    return {"stage": stage, "partition": partition, "version": result.version, "reused": result.reused,
            "rows": result.manifest.rows, "uri": result.uri, "artifacts": keys}


def _latest(store: Store, stage: str, crawl: str) -> str:
    manifest = store.latest(stage, crawl)
    if manifest is None:
        raise FileNotFoundError(f"{stage} has no finished version of crawl {crawl}; run its flow first")
    return manifest.version


@flow(name="textmill-raw", flow_run_name="raw-{crawl}", persist_result=False)
def raw_flow(crawl: str, recipe: str | None = None, root: str | None = None) -> dict[str, Any]:
    """Ingest `landing/{crawl}/` into its raw version."""
    result = raw_task(partition=crawl, recipe=recipe, root=root)
    return finish("raw", crawl, result, recipe=recipe, root=root)


@flow(name="textmill-deduped", flow_run_name="deduped-{crawl}", persist_result=False)
def deduped_flow(crawl: str, raw_version: str | None = None, recipe: str | None = None,
                 root: str | None = None) -> dict[str, Any]:
    """Deduplicate a raw version (default: the crawl's latest)."""
    raw_version = raw_version or _latest(settings(recipe, root)[1], "raw", crawl)
    result = deduped_task(partition=crawl, raw_version=raw_version, recipe=recipe, root=root)
    return finish("deduped", crawl, result, recipe=recipe, root=root)


@flow(name="textmill-filtered", flow_run_name="filtered-{crawl}", persist_result=False)
def filtered_flow(crawl: str, deduped_version: str | None = None, recipe: str | None = None,
                  root: str | None = None) -> dict[str, Any]:
    """Filter a deduped version (default: the crawl's latest)."""
    deduped_version = deduped_version or _latest(settings(recipe, root)[1], "deduped", crawl)
    result = filtered_task(partition=crawl, deduped_version=deduped_version, recipe=recipe, root=root)
    return finish("filtered", crawl, result, recipe=recipe, root=root)


@flow(name="textmill-rewritten", flow_run_name="rewritten-{crawl}", persist_result=False)
def rewritten_flow(crawl: str, filtered_version: str | None = None, recipe: str | None = None,
                   root: str | None = None) -> dict[str, Any]:
    """Rewrite a filtered version's recyclable rejects (default: the crawl's latest filtered version)."""
    filtered_version = filtered_version or _latest(settings(recipe, root)[1], "filtered", crawl)
    result = rewritten_task(partition=crawl, filtered_version=filtered_version, recipe=recipe, root=root)
    return finish("rewritten", crawl, result, recipe=recipe, root=root)


def latest_chains(store: Store) -> dict[str, dict[str, str]]:
    """Per crawl, its latest filtered version and the latest rewritten version made from that one."""
    chains: dict[str, dict[str, str]] = {}
    for crawl in store.partitions("filtered"):
        filtered = store.latest("filtered", crawl)
        if filtered is None:
            continue
        chains[crawl] = {"filtered": filtered.version}
        made_from = [m for m in store.versions("rewritten", crawl) if m.inputs[0].get("version") == filtered.version]
        if made_from:
            chains[crawl]["rewritten"] = made_from[-1].version
    return chains


@flow(name="textmill-mixed", flow_run_name="mixed-{mix}", persist_result=False)
def mixed_flow(mix: str, versions: dict[str, dict[str, str]] | None = None, recipe: str | None = None,
               root: str | None = None) -> dict[str, Any]:
    """One training mix of the recipe over `versions` (crawl → filtered/rewritten; default: each crawl's latest)."""
    versions = versions or latest_chains(settings(recipe, root)[1])
    if not versions:
        raise FileNotFoundError("mixed: no crawl has a filtered version yet; run the crawl flows first")
    result = mixed_task(partition=mix, versions=versions, recipe=recipe, root=root)
    return finish("mixed", mix, result, recipe=recipe, root=root) | {"crawls": versions}
