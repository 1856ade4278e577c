"""Each crawl folder under landing/ is one dynamic partition."""

from dagster import DynamicPartitionsDefinition

crawls_partitions = DynamicPartitionsDefinition(name="crawls")
