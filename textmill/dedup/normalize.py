"""Normalization of text and URLs for duplicate detection, as Polars expressions."""

from __future__ import annotations

import polars as pl


def normalized_text(column: str = "text", *, case_fold: bool = False, nfc: bool = True) -> pl.Expr:
    """Unicode NFC, runs of whitespace collapsed to one space, trimmed; optionally lower-cased.

    `nfc=False` leaves NFC to the caller (the dedup stage applies it per document, faster).
    """
    expr = pl.col(column).fill_null("")
    if nfc:
        expr = expr.str.normalize("NFC")
    expr = expr.str.replace_all(r"\s+", " ").str.strip_chars()
    return expr.str.to_lowercase() if case_fold else expr


def normalized_url(column: str = "url") -> pl.Expr:
    """Scheme-less, lower-cased host without `www.` or a default port, no fragment, no trailing slash.

    http and https fetches of the same page, and `example.com/a/` vs `example.com/a`, are one URL.
    """
    url = pl.col(column).fill_null("").str.strip_chars()
    parts = url.str.extract_groups(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://)?(?:[^@/?#]*@)?([^/?#:]*)(?::(\d+))?([^#]*)")
    host = parts.struct.field("1").str.to_lowercase().str.strip_prefix("www.").str.strip_suffix(".")
    port = parts.struct.field("2")
    rest = parts.struct.field("3").str.replace(r"^/*$", "").str.replace(r"/+(\?|$)", "$1")
    keep_port = port.is_not_null() & ~port.is_in(["80", "443"])
    return (
        pl.when(url == "")
        .then(pl.lit(""))
        .otherwise(host + pl.when(keep_port).then(":" + port).otherwise(pl.lit("")) + rest)
    )
