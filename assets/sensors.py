"""A sensor that turns new crawl folders under landing/ into partitions and runs."""


from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import crawls_partitions
from assets.resources import TextmillResource
from textmill import stages
from textmill.names import name_problem


@sensor(
    asset_selection=AssetSelection.keys("raw"),
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds a `crawls` partition for each new folder under landing/ and requests its raw run.",
)
def landing_sensor(context: SensorEvaluationContext, textmill: TextmillResource) -> SensorResult | SkipReason:
    found = []
    for crawl in stages.crawls(textmill.store()):  # stages.crawls already skips unsafe names; never add one
        problem = name_problem(crawl)
        if problem is None:
            found.append(crawl)
        else:
            context.log.warning(f"not a partition: landing folder {crawl!r} {problem}")
    known = set(context.instance.get_dynamic_partitions(crawls_partitions.name))
    new = [crawl for crawl in found if crawl not in known]
    if not new:
        return SkipReason(f"no new crawl folders ({len(found)} known)")
    context.log.info(f"new crawls: {new}")
    return SensorResult(
        run_requests=[RunRequest(partition_key=crawl, run_key=f"raw:{crawl}") for crawl in new],
        dynamic_partitions_requests=[crawls_partitions.build_add_request(new)],
    )
