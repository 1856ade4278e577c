"""The `raw` asset: one crawl's landing files become its raw dataset version."""

from contextlib import closing

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import blocking_checks, check_result, version_metadata
from assets.partitions import crawls_partitions
from assets.resources import TextmillResource
from checks.raw import CHECK_NAMES, run_raw_checks
from textmill import stages


@asset(
    partitions_def=crawls_partitions,
    code_version=stages.CODE_VERSIONS["raw"],
    group_name="textmill",
    kinds={"parquet", "polars"},
    check_specs=blocking_checks("raw", CHECK_NAMES),
    description="Extracted text and language of every document of a crawl (WARC/WET/JSONL/Parquet landing files).",
)
def raw(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    crawl = context.partition_key
    with closing(textmill.executor()) as executor:
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
    return MaterializeResult(
        metadata=version_metadata(store, result) | _raw_metadata(result.manifest.statistics),
        data_version=DataVersion(result.version),
        check_results=[check_result(outcome) for outcome in outcomes],
    )


def _raw_metadata(statistics: dict) -> dict:
    return {
        "languages": MetadataValue.json(statistics.get("languages", {})),
        "skipped_records": MetadataValue.json(statistics.get("skipped", {})),
        "extractor": statistics.get("extractor", ""),
        "input_files": statistics.get("input_files", 0),
        "input_bytes": statistics.get("input_bytes", 0),
    }

