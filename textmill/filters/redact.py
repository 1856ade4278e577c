"""PII redaction of kept documents, with per-document counts of what was replaced."""

from __future__ import annotations

import polars as pl

from textmill.filters.config import FilterConfig
from textmill.filters.decide import KEPT
from textmill.filters.pii import pii_counts, redacted


def redact_pii(frame: pl.DataFrame, *, config: FilterConfig, only_kept: bool = True) -> pl.DataFrame:
    """Replace e-mails, IPv4 addresses and phone numbers in `text` with the configured placeholders.

    Adds `pii_emails_redacted`, `pii_ipv4_redacted`, `pii_phones_redacted`. With `only_kept`
    (and a `decision` column) rejected documents keep their text untouched and count 0, so
    the rejected side stays exactly what the filters saw.
    """
    text = pl.col("text").fill_null("")
    target = (pl.col("decision") == KEPT) if only_kept and "decision" in frame.columns else pl.lit(True)
    counts = pii_counts(text)
    placeholders = config.pii
    new_text = redacted(text, email=placeholders.email_placeholder, ip=placeholders.ip_placeholder,
                        phone=placeholders.phone_placeholder)
    frame = frame.with_columns(
        text=pl.when(target).then(new_text).otherwise(pl.col("text")),
        **{f"{name}_redacted": pl.when(target).then(expr).otherwise(0) for name, expr in counts.items()},
    )
    # a placeholder is not as long as what it replaces: the stored length must follow the text
    if "n_chars" not in frame.columns:
        return frame
    return frame.with_columns(n_chars=pl.col("text").str.len_chars().cast(frame.schema["n_chars"]))
