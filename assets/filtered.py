"""The `filtered` asset: quality, safety and PII signals of a crawl's deduped version; kept and rejected."""

from contextlib import closing
from dagster import AssetExecutionContext, MaterializeResult, asset

from assets.deduped import deduped
from assets.metadata import blocking_checks, upstream_version, version_metadata
from assets.partitions import crawls_partitions
from assets.ranges import ONE_RUN_IN_ORDER, PartitionResult, materialize_partitions
from assets.resources import TextmillResource
from checks.filtered import CHECK_NAMES, run_filtered_checks
from textmill import stages
from textmill.config import Recipe
from textmill.executor import Executor
from textmill.storage import Store


@asset(
    partitions_def=crawls_partitions,
    deps=[deduped],
    code_version=stages.CODE_VERSIONS["filtered"],
    group_name="textmill",
    kinds={"parquet", "polars"},
    check_specs=blocking_checks("filtered", CHECK_NAMES),
    description="Every document of a deduped crawl with its quality, safety and PII signals, kept or rejected "
                "with the first failing rule; kept text has PII redacted, rejected documents stay for recycling.",
    # One run over every crawl, though the rules and the quality cutoff read one crawl only:
    # between deduped and rewritten it then joins their run (no run and daemon tick per crawl),
    # and the crawl_pipeline job keeps one policy. Dagster gives a job the smallest
    # max_partitions_per_run of its assets, so one per-crawl asset would make every job
    # backfill one run per crawl, with the deduped steps of several crawls side by side.
    backfill_policy=ONE_RUN_IN_ORDER,
)
def filtered(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    with closing(textmill.executor()) as executor:
        return materialize_partitions(
            context, lambda crawl: _filtered_partition(context, store, recipe, executor, crawl))


def _filtered_partition(context: AssetExecutionContext, store: Store, recipe: Recipe, executor: Executor,
                        crawl: str) -> PartitionResult:
    result = stages.filtered(
        store=store,
        crawl=crawl,
        deduped_version=upstream_version(context, "deduped", partition=crawl),
        config=recipe.filtered,
        executor=executor,
    )
    outcomes = run_filtered_checks(store.scan(result.manifest), store.scan_extra(result.manifest, "rejected"),
                                   result.manifest, recipe.filtered)
    return PartitionResult(
        version=result.version,
        outcomes=outcomes,
        metadata=version_metadata(store, result),  # statistics: textmill.report.stats
    )
