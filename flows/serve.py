"""Serve textmill's deployments from this process, without a work pool: `python -m flows.serve`.

Serves `textmill-pipeline/scheduled` on a cron (or interval) schedule and
`textmill-crawl/crawl` on demand (`prefect deployment run textmill-crawl/crawl -p crawl=...`).
Runs execute here one at a time (`limit=1`): two runs of the same stage and version must not
write the same folder at once. For a work pool and a process worker use `prefect.yaml`.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect import serve

from flows.pipeline import crawl_pipeline, textmill_pipeline

DEFAULT_CRON = "0 2 * * *"


def deployments(*, cron: str | None, interval: float | None, recipe: str | None, root: str | None,
                name: str = "scheduled") -> list:
    """The pipeline on its schedule (interval wins over cron) and the crawl flow with the same settings."""
    parameters = {"recipe": recipe, "root": root}
    schedule = {"interval": timedelta(seconds=interval)} if interval else {"cron": cron or DEFAULT_CRON}
    return [
        textmill_pipeline.to_deployment(name=name, parameters=parameters, tags=["textmill"], **schedule),
        crawl_pipeline.to_deployment(name="crawl", parameters=parameters, tags=["textmill"]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule of the pipeline (default: {DEFAULT_CRON!r})")
    parser.add_argument("--interval", type=float, default=None, help="seconds between pipeline runs (instead of cron)")
    parser.add_argument("--recipe", default=None, help="recipe YAML (default: $TEXTMILL_RECIPE, else recipes/default.yaml)")
    parser.add_argument("--root", default=None, help="storage root override: a folder or s3://bucket/prefix")
    parser.add_argument("--name", default="scheduled", help="name of the pipeline deployment")
    args = parser.parse_args(argv)
    serve(*deployments(cron=args.cron, interval=args.interval, recipe=args.recipe, root=args.root, name=args.name),
          limit=1)


if __name__ == "__main__":
    main()
