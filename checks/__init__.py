"""Data-quality suites per dataset version, Polars-native. Blocking checks live here."""

from checks.base import CheckOutcome

__all__ = ["CheckOutcome"]
