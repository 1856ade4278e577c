"""The `deduped` asset: URL, exact and near duplicates removed from a crawl's raw version."""

from contextlib import closing
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

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
    statistics = result.manifest.statistics
    outcomes = run_deduped_checks(store.scan(result.manifest), result.manifest, recipe.deduped)
    return PartitionResult(
        version=result.version,
        outcomes=outcomes,
        metadata=version_metadata(store, result) | {
            "documents_in": statistics["documents_in"],
            "dedup_rate": statistics["dedup_rate"],
            "removed_by_kind": MetadataValue.json(statistics["removed_by_kind"]),
            "cluster_size_histogram": MetadataValue.json(statistics["cluster_size_histogram"]),
            "largest_clusters": MetadataValue.md(_largest_clusters(store, result)),
            "earlier_crawls": MetadataValue.json(statistics["earlier_crawls"]),
        },
    )


def _largest_clusters(store, result) -> str:
    import polars as pl

    largest = result.manifest.statistics["largest_clusters"]
    if not largest:
        return "no duplicate clusters"
    ids = [row["id"] for row in largest]
    rows = store.scan(result.manifest).filter(pl.col("id").is_in(ids)).select(
        "id", "url", "dup_cluster_size", pl.col("text").str.slice(0, 160)).collect()
    lines = ["| kept id | url | size | text |", "|---|---|---|---|"]
    for row in rows.sort("dup_cluster_size", descending=True).iter_rows(named=True):
        text = " ".join(row["text"].split()).replace("|", "\\|")
        lines.append(f"| {row['id'][:12]} | {row['url']} | {row['dup_cluster_size']} | {text}… |")
    return "\n".join(lines)
