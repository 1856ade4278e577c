"""Dagster adapters: assets, partitions, sensors and resources over the textmill core."""
