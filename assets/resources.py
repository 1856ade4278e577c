"""The Dagster resource that hands assets a recipe, a store and an executor.

Configured per environment by environment variables (TEXTMILL_RECIPE, TEXTMILL_ROOT), so
the same definitions run on a laptop folder or on S3.
"""


import os

from dagster import ConfigurableResource

from textmill.config import Recipe, resolve_recipe
from textmill.executor import Executor, make_executor
from textmill.storage import Store


class TextmillResource(ConfigurableResource):
    """Recipe path and an optional storage-root override."""

    recipe_path: str = ""
    root: str = ""

    def recipe(self) -> Recipe:
        recipe = resolve_recipe(self.recipe_path or None)
        return recipe.with_root(self.root) if self.root else recipe

    def store(self) -> Store:
        storage = self.recipe().storage
        return Store(storage.root, storage_options=storage.storage_options)

    def executor(self) -> Executor:
        return make_executor(self.recipe().execution)


def resource_from_env() -> TextmillResource:
    return TextmillResource(recipe_path=os.environ.get("TEXTMILL_RECIPE", ""), root=os.environ.get("TEXTMILL_ROOT", ""))
