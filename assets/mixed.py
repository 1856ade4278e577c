"""The `mixed` asset: one training mix of the recipe, over every crawl's kept and rewritten documents."""

from dagster import (AllPartitionMapping, AssetDep, AssetExecutionContext, AssetKey,
                     AssetRecordsFilter, DataVersion, MaterializeResult, MetadataValue, asset)

from assets.filtered import filtered
from assets.metadata import blocking_checks, check_result, version_metadata
from assets.partitions import crawls_partitions, mixes_partitions
from assets.resources import TextmillResource
from assets.rewritten import rewritten
from checks.mixed import CHECK_NAMES, run_mixed_checks
from textmill import stages


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
)
def mixed(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    config = recipe.mix(context.partition_key)
    filtered_versions, rewritten_versions = _latest_versions(context, "filtered"), _latest_versions(context, "rewritten")
    versions = {crawl: {"filtered": version} | ({"rewritten": rewritten_versions[crawl]}
                                                 if crawl in rewritten_versions else {})
                for crawl, version in filtered_versions.items()}
    if not versions:
        raise RuntimeError("mixed: no crawl has a filtered materialization yet; materialize the crawls first")
    result = stages.mixed(store=store, config=config, versions=versions)
    statistics = result.manifest.statistics
    main = statistics["mix"]["phases"]["main"]
    outcomes = run_mixed_checks(store.scan(result.manifest), result.manifest, config)
    card = store.read_bytes(f"{store.version_dir('mixed', config.name, result.version)}/README.md").decode()
    return MaterializeResult(
        metadata=version_metadata(store, result) | {
            "tokens": statistics["tokens"],
            "budget_tokens": main["budget_tokens"],
            "within_tolerance": main["within_tolerance"],
            "synthetic_share": main["synthetic_share"],
            "components": MetadataValue.json(main["components"]),
            "decontamination": MetadataValue.json(statistics["mix"]["decontamination"]),
            "packed": MetadataValue.json(statistics["mix"].get("packed")),
            "crawls": MetadataValue.json(versions),
            "data_card": MetadataValue.md(card),
            "data_card_path": MetadataValue.path(statistics["card"]),
        },
        data_version=DataVersion(result.version),
        check_results=[check_result(outcome) for outcome in outcomes],
    )
