"""A nightly schedule that takes every crawl through the whole chain (raw → rewritten).

New crawl folders become `crawls` partitions. When some crawl has no `rewritten`
materialization, one run of the pipeline job covers the range of all crawls: deduped must
see crawls in order (each against the index of the ones before), which separate concurrent
runs per crawl would not guarantee. Versions that already exist are reused, so finished
crawls in the range cost a lookup.
"""

from dagster import (AssetKey, AssetRecordsFilter, RunRequest, ScheduleEvaluationContext, SkipReason,
                     define_asset_job, schedule)

from assets.deduped import deduped
from assets.filtered import filtered
from assets.partitions import crawls_partitions
from assets.raw import raw
from assets.resources import TextmillResource
from assets.rewritten import rewritten
from textmill import stages

crawl_pipeline = define_asset_job(
    "crawl_pipeline", selection=[raw, deduped, filtered, rewritten], partitions_def=crawls_partitions,
    description="One crawl through raw, deduped, filtered and rewritten.",
)


@schedule(job=crawl_pipeline, cron_schedule="0 2 * * *", execution_timezone="UTC",
          description="Nightly: add new crawl folders as partitions and finish every crawl without a rewritten version.")
def nightly_crawls(context: ScheduleEvaluationContext, textmill: TextmillResource):
    found = stages.crawls(textmill.store())
    known = set(context.instance.get_dynamic_partitions(crawls_partitions.name))
    new = [crawl for crawl in found if crawl not in known]
    if new:
        context.instance.add_dynamic_partitions(crawls_partitions.name, new)
    unfinished = []
    for crawl in sorted(known | set(new)):
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("rewritten"), asset_partitions=[crawl]), limit=1).records
        if not records:
            unfinished.append(crawl)
    if not unfinished:
        return SkipReason(f"every crawl ({len(known)}) has a rewritten version")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d") if context.scheduled_execution_time else "now"
    ordered = context.instance.get_dynamic_partitions(crawls_partitions.name)  # Dagster's order: range ends
    if len(ordered) == 1:
        return RunRequest(partition_key=ordered[0], run_key=f"nightly:{day}:{ordered[0]}")
    return RunRequest(run_key=f"nightly:{day}:{ordered[0]}..{ordered[-1]}",
                      tags={"dagster/asset_partition_range_start": ordered[0],
                            "dagster/asset_partition_range_end": ordered[-1],
                            "textmill/unfinished_crawls": ",".join(unfinished)})
