"""The `mixed` asset: one training mix of the recipe, over every crawl's kept and rewritten documents."""

from dagster import (AllPartitionMapping, AssetDep, AssetExecutionContext, AssetKey,
                     AssetRecordsFilter, MaterializeResult, MetadataValue, asset)

from assets.filtered import filtered
from assets.metadata import blocking_checks, version_metadata
from assets.partitions import crawls_partitions, mixes_partitions
from assets.ranges import PER_PARTITION, PartitionResult, materialize_partitions
from assets.resources import TextmillResource
from assets.rewritten import rewritten
from checks.mixed import CHECK_NAMES, run_mixed_checks
from textmill import stages
from textmill.config import Recipe
from textmill.storage import Store


def _latest_versions(context: AssetExecutionContext, asset_name: str) -> dict[str, str]:
    """The dataset version each crawl partition of an upstream asset last materialized (lineage from Dagster)."""
    found = {}
    for crawl in context.instance.get_dynamic_partitions(crawls_partitions.name):
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset_name), asset_partitions=[crawl]), limit=1).records
        if records:
            found[crawl] = str(records[0].asset_materialization.metadata["version"].value)
    return found


@asset(
    partitions_def=mixes_partitions,
    deps=[AssetDep(filtered, partition_mapping=AllPartitionMapping()),
          AssetDep(rewritten, partition_mapping=AllPartitionMapping())],
    code_version=stages.CODE_VERSIONS["mixed"],
    group_name="textmill",
    kinds={"parquet", "numpy"},
    check_specs=blocking_checks("mixed", CHECK_NAMES),
    description="A weighted, decontaminated, tokenized training mix (Parquet in mix order, packed token "
                "sequences, the exact document order) with an HF-style data card.",
    # One run per mix: each mix is its own training set over every crawl, built from no other
    # mix, so a mix whose budget or checks fail fails alone and the others are still delivered.
    backfill_policy=PER_PARTITION,
)
def mixed(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    return materialize_partitions(context, lambda name: _mixed_partition(context, store, recipe, name))


def _mixed_partition(context: AssetExecutionContext, store: Store, recipe: Recipe, name: str) -> PartitionResult:
    config = recipe.mix(name)
    filtered_versions, rewritten_versions = _latest_versions(context, "filtered"), _latest_versions(context, "rewritten")
    versions = {crawl: {"filtered": version} | ({"rewritten": rewritten_versions[crawl]}
                                                 if crawl in rewritten_versions else {})
                for crawl, version in filtered_versions.items()}
    if not versions:
        raise RuntimeError("mixed: no crawl has a filtered materialization yet; materialize the crawls first")
    result = stages.mixed(store=store, config=config, versions=versions)
    outcomes = run_mixed_checks(store.scan(result.manifest), result.manifest, config)
    return PartitionResult(
        version=result.version,
        outcomes=outcomes,
        metadata=version_metadata(store, result) | {"crawls": MetadataValue.json(versions)},
    )
