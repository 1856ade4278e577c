"""The `rewritten` asset: LLM rewrites of a crawl's recyclable rejects, with provenance."""

import polars as pl
from dagster import AssetCheckSpec, AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.filtered import filtered
from assets.metadata import check_result, upstream_version, version_metadata
from assets.partitions import crawls_partitions
from assets.resources import TextmillResource
from checks.rewritten import CHECK_NAMES, run_rewritten_checks
from textmill import stages
from textmill.report import markdown


@asset(
    partitions_def=crawls_partitions,
    deps=[filtered],
    code_version=stages.CODE_VERSIONS["rewritten"],
    group_name="textmill",
    kinds={"parquet", "polars", "llm"},
    check_specs=[AssetCheckSpec(name, asset="rewritten", description=text, blocking=True)
                 for name, text in CHECK_NAMES.items()],
    description="Synthetic documents: recyclable rejects of the filtered version rewritten by an LLM "
                "(REWIRE-style), each with its parent, prompt version and model; failed rewrites are kept "
                "apart with their reason.",
)
def rewritten(context: AssetExecutionContext, textmill: TextmillResource) -> MaterializeResult:
    recipe = textmill.recipe()
    store = textmill.store()
    filtered_version = upstream_version(context, "filtered")
    result = stages.rewritten(store=store, crawl=context.partition_key, filtered_version=filtered_version,
                              config=recipe.rewritten, filter_config=recipe.filtered)
    filtered_manifest = store.manifest("filtered", context.partition_key, filtered_version)
    parents = [store.scan(filtered_manifest).select("id", "text", "reject_reason")]
    rejected = store.scan_extra(filtered_manifest, "rejected")
    if rejected is not None:
        parents.append(rejected.select("id", "text", "reject_reason"))
    parent_frame = pl.concat(parents)
    outcomes = run_rewritten_checks(store.scan(result.manifest), parent_frame.select("id"), result.manifest,
                                    recipe.rewritten)
    statistics = result.manifest.statistics
    rewrites = statistics["rewrites"]
    return MaterializeResult(
        metadata=version_metadata(store, result) | {
            "selected": statistics["selected"],
            "dropped": rewrites["dropped"],
            "pass_rate": statistics["pass_rate"],
            "synthetic_share": statistics["synthetic_share"],
            "dropped_by_reason": MetadataValue.json(statistics["dropped_by_reason"]),
            "model": rewrites["model"],
            "requests": rewrites["requests"],
            "cache_hits": rewrites["cache_hits"],
            "tokens_in": rewrites["tokens_in"],
            "tokens_out": rewrites["tokens_out"],
            "documents_per_second": rewrites["docs_per_second"],
            "output_tokens_per_second": rewrites["output_tokens_per_second"],
            "before_after": MetadataValue.md(markdown.before_after(_pairs(store, result, parent_frame))),
        },
        data_version=DataVersion(result.version),
        check_results=[check_result(outcome) for outcome in outcomes],
    )


def _pairs(store, result, parents: pl.LazyFrame, count: int = 3) -> list[dict]:
    rows = store.scan(result.manifest).select("parent_id", "rewrite_prompt", "text").head(count).collect()
    if rows.height == 0:
        return []
    found = parents.join(rows.lazy().select(pl.col("parent_id").alias("id")), on="id", how="semi").collect()
    before = {row["id"]: row for row in found.iter_rows(named=True)}
    return [{"prompt": r["rewrite_prompt"], "reason": before.get(r["parent_id"], {}).get("reject_reason"),
             "before": before.get(r["parent_id"], {}).get("text", ""), "after": r["text"]}
            for r in rows.iter_rows(named=True)]
