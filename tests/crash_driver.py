"""Runs one textmill stage in its own process, so that a crash drill can SIGKILL it.

    python tests/crash_driver.py STAGE ROOT RECIPE_JSON [UPSTREAM_VERSION ...]

STAGE is raw, deduped, filtered, rewritten or mixed; RECIPE_JSON a whole recipe as JSON;
the upstream versions are the stage's inputs (raw: none; deduped: raw; filtered: deduped;
rewritten: filtered; mixed: filtered and rewritten). The crawl is `CRAWL` below. On success
it prints one JSON line: {"version": ..., "reused": ...}. It is a plain script (not a
test module) so the drill starts exactly what a user's run starts: the stage and its pool.
The store takes the recipe's `storage.storage_options` (an S3 root: endpoint and keys), and
`execution.backend: ray` runs the shards on Ray (`execution.ray_address`, or a local Ray).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys

from textmill.config import Recipe
from textmill.executor import Executor, LocalProcessExecutor, RayExecutor
from textmill.stages import deduped, filtered, mixed, raw, rewritten
from textmill.storage import Store

CRAWL = "CC-MAIN-DRILL"


def run_stage(stage: str, store: Store, recipe: Recipe, upstream: list[str],
              executor: Executor | None = None) -> dict:
    """Run `stage` once with `executor` (default: a new pool of `execution.workers`); returns its
    version, whether it was reused and (rewritten) its statistics."""
    with contextlib.ExitStack() as stack:
        if executor is None and recipe.execution.backend == "ray":
            executor = stack.enter_context(RayExecutor(workers=recipe.execution.workers,
                                                       address=recipe.execution.ray_address))
        elif executor is None:
            executor = stack.enter_context(LocalProcessExecutor(workers=recipe.execution.workers or 2))
        if stage == "raw":
            result = raw(store=store, crawl=CRAWL, config=recipe.raw, executor=executor)
        elif stage == "deduped":
            result = deduped(store=store, crawl=CRAWL, raw_version=upstream[0], config=recipe.deduped,
                             executor=executor)
        elif stage == "filtered":
            result = filtered(store=store, crawl=CRAWL, deduped_version=upstream[0], config=recipe.filtered,
                              executor=executor)
        elif stage == "rewritten":
            result = rewritten(store=store, crawl=CRAWL, filtered_version=upstream[0], config=recipe.rewritten,
                               filter_config=recipe.filtered)
        elif stage == "mixed":
            result = mixed(store=store, config=recipe.mixed[0],
                           versions={CRAWL: {"filtered": upstream[0], "rewritten": upstream[1]}})
        else:
            raise SystemExit(f"unknown stage {stage!r}")
    return {"version": result.version, "reused": result.reused,
            "statistics": result.manifest.statistics if stage == "rewritten" else None}


def main() -> None:
    stage, root, recipe_json, *upstream = sys.argv[1:]
    logging.basicConfig(level=logging.WARNING)
    recipe = Recipe.model_validate_json(recipe_json)
    store = Store(root, storage_options=recipe.storage.storage_options)
    print(json.dumps(run_stage(stage, store, recipe, upstream), default=str), flush=True)


if __name__ == "__main__":
    main()
