"""Each crawl folder under landing/ is one dynamic partition; each mix of the recipe is one of `mixes`."""

from dagster import DynamicPartitionsDefinition

crawls_partitions = DynamicPartitionsDefinition(name="crawls")
mixes_partitions = DynamicPartitionsDefinition(name="mixes")
