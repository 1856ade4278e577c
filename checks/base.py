"""The result type every check suite returns, independent of any orchestrator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict; `severity` ERROR blocks everything downstream when it fails."""

    name: str
    passed: bool
    description: str
    severity: Literal["ERROR", "WARN"] = "ERROR"
    metadata: dict[str, Any] = field(default_factory=dict)
