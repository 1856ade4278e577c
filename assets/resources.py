"""The Dagster resource that hands assets a recipe, a store and an executor.

Configured per environment by environment variables, so the same definitions and recipe
run on a laptop folder or on S3 with a Ray cluster (docs/deploy.md):

- TEXTMILL_RECIPE: the recipe file (default: recipes/default.yaml)
- TEXTMILL_ROOT: storage root overriding the recipe's `storage.root`
- TEXTMILL_EXECUTION_BACKEND: `local`, `serial` or `ray`, overriding `execution.backend`
- TEXTMILL_RAY_ADDRESS: a Ray cluster (`ray://head:10001`); selects the `ray` backend
- TEXTMILL_WORKERS: shard tasks in flight per stage, overriding `execution.workers`
"""

import logging
import os
import time

from dagster import ConfigurableResource

from textmill.config import ExecutionConfig, Recipe, RecipeError, resolve_recipe
from textmill.executor import Executor, make_executor
from textmill.storage import Store

log = logging.getLogger(__name__)
CONNECT_ATTEMPTS, CONNECT_WAIT_S = 3, 5

# every environment variable the resource reads, by field (infra/ and tests check the deploy sets them)
ENV_VARS = {
    "recipe_path": "TEXTMILL_RECIPE",
    "root": "TEXTMILL_ROOT",
    "execution_backend": "TEXTMILL_EXECUTION_BACKEND",
    "ray_address": "TEXTMILL_RAY_ADDRESS",
    "workers": "TEXTMILL_WORKERS",
}


class TextmillResource(ConfigurableResource):
    """Recipe path plus per-deployment overrides of the storage root and the execution backend.

    Empty fields keep the recipe's value, so a deployment points at a cluster without editing
    the recipe that a laptop also runs.
    """

    recipe_path: str = ""
    root: str = ""
    execution_backend: str = ""
    ray_address: str = ""
    workers: int = 0

    def recipe(self) -> Recipe:
        recipe = resolve_recipe(self.recipe_path or None)
        if self.root:
            recipe = recipe.with_root(self.root)
        return recipe.model_copy(update={"execution": self.execution_config(recipe.execution)})

    def execution_config(self, base: ExecutionConfig) -> ExecutionConfig:
        """The recipe's execution section with this resource's overrides; a Ray address implies `ray`."""
        overrides: dict[str, object] = {}
        if self.ray_address:
            overrides |= {"backend": "ray", "ray_address": self.ray_address}
        if self.execution_backend:
            overrides["backend"] = self.execution_backend
        if self.workers:
            overrides["workers"] = self.workers
        if not overrides:
            return base
        try:
            return ExecutionConfig.model_validate(base.model_dump() | overrides)
        except ValueError as exc:
            raise RecipeError(f"TextmillResource execution overrides {overrides}: {exc}") from None

    def store(self) -> Store:
        storage = self.recipe().storage
        return Store(storage.root, storage_options=storage.storage_options)

    def executor(self) -> Executor:
        execution = self.recipe().execution
        if execution.backend == "ray" and execution.ray_address:
            connect_ray(execution.ray_address)
        return make_executor(execution)


def connect_ray(address: str) -> None:
    """Connect this process to the Ray cluster once; every later asset of the run reuses the connection.

    A Ray Client connection costs seconds, and the executor leaves a connection it did not open
    alone, so a run pays it once. The process keeps it until it exits (a Dagster run is its own
    process). Retried while the head is still starting.
    """
    import ray

    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        if ray.is_initialized():
            return
        try:
            ray.init(address=address, logging_level=logging.WARNING)
            return
        except (ConnectionError, RuntimeError) as exc:  # head still starting, or its client server failed
            if attempt == CONNECT_ATTEMPTS:
                raise
            log.warning("connecting to Ray at %s failed (%s); retrying in %d s", address, exc, CONNECT_WAIT_S)
            time.sleep(CONNECT_WAIT_S)


def resource_from_env() -> TextmillResource:
    """The resource as the environment configures it (unset variables keep the recipe's values)."""
    values: dict[str, object] = {field: os.environ.get(name, "") for field, name in ENV_VARS.items()}
    workers = str(values["workers"]).strip()
    if workers and not workers.isdigit():
        raise RecipeError(f"TEXTMILL_WORKERS must be a positive integer, got {workers!r}")
    values["workers"] = int(workers or 0)
    return TextmillResource(**values)
