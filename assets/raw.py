"""The `raw` asset: one crawl's landing files become its raw dataset version."""

from contextlib import closing

from dagster import AssetExecutionContext, MaterializeResult, asset

from assets.metadata import blocking_checks, version_metadata
from assets.partitions import crawls_partitions
from assets.ranges import ONE_RUN_IN_ORDER, PartitionResult, materialize_partitions
from assets.resources import TextmillResource
from checks.raw import CHECK_NAMES, run_raw_checks
from textmill import stages
from textmill.config import Recipe
from textmill.executor import Executor
from textmill.storage import Store


@asset(
    partitions_def=crawls_partitions,
    code_version=stages.CODE_VERSIONS["raw"],
    group_name="textmill",
    kinds={"parquet", "polars"},
    check_specs=blocking_checks("raw", CHECK_NAMES),
    description="Extracted text and language of every document of a crawl (WARC/WET/JSONL/Parquet landing files).",
    # One run over every crawl of a backfill, though crawls are independent here: deduped must
    # get all of them at once, in crawl order, and Dagster's asset backfill requests a child's
    # partitions as soon as their own parents finish; raw runs per crawl end at different times
    # and would split deduped into runs in the order they happened to end. One run per crawl
    # would not be faster either: each run already uses every core (the executor's pool).
    backfill_policy=ONE_RUN_IN_ORDER,
)
def raw(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    with closing(textmill.executor()) as executor:
        return materialize_partitions(context, lambda crawl: _raw_partition(context, store, recipe, executor, crawl))


def _raw_partition(context: AssetExecutionContext, store: Store, recipe: Recipe, executor: Executor,
                   crawl: str) -> PartitionResult:
    result = stages.raw(
        store=store,
        crawl=crawl,
        config=recipe.raw,
        executor=executor,
        progress=lambda done, total: context.log.info(f"raw {crawl}: {done}/{total} files ingested"),
    )
    if result.reused:
        context.log.info(f"raw {crawl}: version {result.version} already exists; reused")
    outcomes = run_raw_checks(store.scan(result.manifest), result.manifest, recipe.raw.checks)
    return PartitionResult(version=result.version, outcomes=outcomes,
                           metadata=version_metadata(store, result))
