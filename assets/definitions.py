"""The Dagster code location: `dagster-webserver -m assets.definitions`."""

from dagster import Definitions, in_process_executor

from assets.deduped import deduped
from assets.filtered import filtered
from assets.mixed import mixed
from assets.rewritten import rewritten
from assets.raw import raw
from assets.resources import resource_from_env
from assets.schedules import crawl_pipeline, nightly_crawls
from assets.sensors import landing_sensor
from checks.gx_reports import GX_REPORT_CHECKS

# every asset in lineage order; `textmill demo` materializes all of them for a crawl
ALL_ASSETS = [raw, deduped, filtered, rewritten]
MIX_ASSETS = [mixed]  # partitioned by mix name, over every crawl

defs = Definitions(
    assets=ALL_ASSETS + MIX_ASSETS,
    asset_checks=GX_REPORT_CHECKS,  # non-blocking Great Expectations reports with Data Docs
    sensors=[landing_sensor],
    schedules=[nightly_crawls],
    jobs=[crawl_pipeline],
    resources={"textmill": resource_from_env()},
    # a stage already spreads over every core through its own executor (process pool or Ray); a fresh
    # Python process per step would only add start-up time (seconds per step, more under load)
    executor=in_process_executor,
)
