"""The `deduped` asset: URL, exact and near duplicates removed from a crawl's raw version."""

from contextlib import closing
from dagster import AssetExecutionContext, MaterializeResult, asset

from assets.metadata import blocking_checks, upstream_version, version_metadata
from assets.partitions import crawls_partitions
from assets.ranges import ONE_RUN_IN_ORDER, PartitionResult, materialize_partitions
from assets.raw import raw
from assets.resources import TextmillResource
from checks.deduped import CHECK_NAMES, run_deduped_checks
from textmill import stages
from textmill.config import Recipe
from textmill.executor import Executor
from textmill.storage import Store


@asset(
    partitions_def=crawls_partitions,
    deps=[raw],
    code_version=stages.CODE_VERSIONS["deduped"],
    group_name="textmill",
    kinds={"parquet", "polars"},
    check_specs=blocking_checks("deduped", CHECK_NAMES),
    description="Documents of a crawl without URL, exact and MinHash-LSH near duplicates, also against earlier crawls.",
    # One run over every crawl of a backfill, in crawl (name) order: a crawl's duplicates are
    # judged against the index of the crawls before it, so crawl B must not run before or
    # beside crawl A. Runs per crawl are launched side by side, in no guaranteed order. With
    # raw on the same policy, raw and deduped share that run (raw for every crawl, then deduped).
    backfill_policy=ONE_RUN_IN_ORDER,
)
def deduped(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    with closing(textmill.executor()) as executor:
        return materialize_partitions(
            context, lambda crawl: _deduped_partition(context, store, recipe, executor, crawl))


def _deduped_partition(context: AssetExecutionContext, store: Store, recipe: Recipe, executor: Executor,
                       crawl: str) -> PartitionResult:
    result = stages.deduped(
        store=store,
        crawl=crawl,
        raw_version=upstream_version(context, "raw", partition=crawl),
        config=recipe.deduped,
        executor=executor,
    )
    outcomes = run_deduped_checks(store.scan(result.manifest), result.manifest, recipe.deduped)
    return PartitionResult(
        version=result.version,
        outcomes=outcomes,
        metadata=version_metadata(store, result),  # statistics: textmill.report.stats
    )
