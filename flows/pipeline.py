"""The crawl flow (raw → deduped → filtered → rewritten) and the whole-pipeline flow.

`crawl_pipeline` runs one crawl's four stage flows as subflows, each reading the version its
upstream flow returned (lineage by value, as Dagster's by materialization). `textmill_pipeline`
runs every landed crawl in name order (Common Crawl names sort by time, and the deduped stage
removes what earlier crawls kept), then every mix of the recipe over those crawls' versions.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import publish_versions
from flows.stages import deduped_flow, filtered_flow, mixed_flow, raw_flow, rewritten_flow, settings
from textmill import stages


@flow(name="textmill-crawl", flow_run_name="crawl-{crawl}", persist_result=False)
def crawl_pipeline(crawl: str, recipe: str | None = None, root: str | None = None) -> dict[str, str]:
    """One crawl through raw, deduped, filtered and rewritten; returns stage → version."""
    raw = raw_flow(crawl, recipe=recipe, root=root)
    deduped = deduped_flow(crawl, raw_version=raw["version"], recipe=recipe, root=root)
    filtered = filtered_flow(crawl, deduped_version=deduped["version"], recipe=recipe, root=root)
    rewritten = rewritten_flow(crawl, filtered_version=filtered["version"], recipe=recipe, root=root)
    versions = {summary["stage"]: summary["version"] for summary in (raw, deduped, filtered, rewritten)}
    publish_versions(f"crawl-{crawl}", {crawl: versions})
    return versions


@flow(name="textmill-pipeline", flow_run_name="pipeline", persist_result=False)
def textmill_pipeline(recipe: str | None = None, root: str | None = None) -> dict[str, Any]:
    """Every crawl under landing/ in name order, then every mix of the recipe; returns all versions."""
    config, store = settings(recipe, root)
    crawls = sorted(stages.crawls(store))
    logger = get_run_logger()
    logger.info("%d crawl(s) under %s: %s", len(crawls), store.uri(store.landing_dir()), ", ".join(crawls) or "none")
    versions = {crawl: crawl_pipeline(crawl, recipe=recipe, root=root) for crawl in crawls}
    lineage = {crawl: {"filtered": chain["filtered"], "rewritten": chain["rewritten"]} for crawl, chain in versions.items()}
    mixes = {}
    if lineage:
        mixes = {mix.name: mixed_flow(mix.name, versions=lineage, recipe=recipe, root=root)["version"]
                 for mix in config.mixed}
    publish_versions("pipeline", versions | {mix: {"mixed": version} for mix, version in mixes.items()})
    return {"crawls": versions, "mixes": mixes}
