"""Filtering: heuristic quality signals as Polars expressions (Gopher, C4, FineWeb), blocklists,
bad words, PII, and the keep/reject decision with its reason.

    from textmill.filters import FilterConfig, filter_frame, redact_pii
    out = filter_frame(documents, config=FilterConfig())       # signals + decision + reason
    out = redact_pii(out, config=FilterConfig())                # kept text without e-mails/IPs/phones
"""

from textmill.filters.config import FilterConfig
from textmill.filters.decide import (KEPT, RECYCLABLE, REJECTED, compute_signals, decide, filter_frame,
                                     is_recyclable, recyclable_expr, rule_set_reasons, rules)
from textmill.filters.redact import redact_pii
from textmill.filters.registry import FILTERS, FilterSpec
from textmill.filters.tokenize import word_tokens

__all__ = [
    "FILTERS", "FilterConfig", "FilterSpec", "KEPT", "RECYCLABLE", "REJECTED", "compute_signals", "decide",
    "filter_frame", "is_recyclable", "recyclable_expr", "redact_pii", "rule_set_reasons", "rules", "word_tokens",
]
