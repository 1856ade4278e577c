"""The `rewritten` asset: LLM rewrites of a crawl's recyclable rejects, with provenance."""

from contextlib import closing

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, asset

from assets.filtered import filtered
from assets.metadata import blocking_checks, upstream_version, version_metadata
from assets.partitions import crawls_partitions
from assets.ranges import ONE_RUN_IN_ORDER, PartitionResult, materialize_partitions
from assets.resources import TextmillResource
from checks.rewritten import CHECK_NAMES, run_rewritten_checks
from textmill import stages
from textmill.config import Recipe
from textmill.rewrite.backends import LLMBackend
from textmill.rewrite.engine import make_rewrite_backend
from textmill.storage import Store


@asset(
    partitions_def=crawls_partitions,
    deps=[filtered],
    code_version=stages.CODE_VERSIONS["rewritten"],
    group_name="textmill",
    kinds={"parquet", "polars", "llm"},
    check_specs=blocking_checks("rewritten", CHECK_NAMES),
    description="Synthetic documents: recyclable rejects of the filtered version rewritten by an LLM "
                "(REWIRE-style), each with its parent, prompt version and model; failed rewrites are kept "
                "apart with their reason.",
    # One run over every crawl of a backfill: the model is loaded once (in process) and used by
    # one crawl after the other; runs per crawl would each load it and compete for the same
    # cores, or together exceed the concurrency an LLM server is configured for. The reply
    # cache makes a retry after a failed crawl redo only the requests that never finished.
    # (It also keeps the crawl_pipeline job on one policy; see filtered.)
    backfill_policy=ONE_RUN_IN_ORDER,
)
def rewritten(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    with closing(make_rewrite_backend(recipe.rewritten)) as backend:
        return materialize_partitions(
            context, lambda crawl: _rewritten_partition(context, store, recipe, backend, crawl))


def _rewritten_partition(context: AssetExecutionContext, store: Store, recipe: Recipe, backend: LLMBackend,
                         crawl: str) -> PartitionResult:
    filtered_version = upstream_version(context, "filtered", partition=crawl)
    result = stages.rewritten(store=store, crawl=crawl, filtered_version=filtered_version,
                              config=recipe.rewritten, filter_config=recipe.filtered, backend=backend)
    filtered_manifest = store.manifest("filtered", crawl, filtered_version)
    parents = [store.scan(filtered_manifest).select("id")]
    rejected = store.scan_extra(filtered_manifest, "rejected")
    if rejected is not None:
        parents.append(rejected.select("id"))
    outcomes = run_rewritten_checks(store.scan(result.manifest), pl.concat(parents), result.manifest,
                                    recipe.rewritten)
    return PartitionResult(
        version=result.version,
        outcomes=outcomes,
        metadata=version_metadata(store, result),  # statistics: textmill.report.stats
    )

