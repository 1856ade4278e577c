"""The document schema every dataset version shares, and the columns stages add.

Stages add columns and never rename earlier ones, so a reader of any version can rely
on `DOCUMENT_SCHEMA` being a prefix of what it reads.
"""

from __future__ import annotations

import polars as pl
import xxhash

DOCUMENT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "url": pl.String(),
    "domain": pl.String(),
    "crawl": pl.String(),
    "source": pl.String(),
    "fetched_at": pl.Datetime("us", "UTC"),
    "text": pl.String(),
    "lang": pl.String(),
    "lang_score": pl.Float32(),
    "n_chars": pl.Int64(),
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "crawl": pl.String(),
    "stage": pl.String(),
    "source": pl.String(),
    "offset": pl.Int64(),
    "record_id": pl.String(),
    "url": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
    "payload": pl.Binary(),
}


def document_id(*, crawl: str, url: str, record_id: str) -> str:
    """Stable id of a document: 128-bit xxhash of crawl, url and the record's own id."""
    return xxhash.xxh3_128_hexdigest("\x1f".join((crawl, url, record_id)).encode())


def empty_documents() -> pl.DataFrame:
    return pl.DataFrame(schema=DOCUMENT_SCHEMA)


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType] = DOCUMENT_SCHEMA) -> pl.DataFrame:
    """Cast and order the schema's columns first; any extra columns follow unchanged."""
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks schema columns: {missing}")
    head = [pl.col(name).cast(dtype) for name, dtype in schema.items()]
    extra = [name for name in frame.columns if name not in schema]
    return frame.select(head + extra)


def check_schema(schema: pl.Schema | dict[str, pl.DataType], expected: dict[str, pl.DataType] = DOCUMENT_SCHEMA) -> list[str]:
    """Differences between a version's schema and the expected columns, as messages."""
    problems: list[str] = []
    for name, dtype in expected.items():
        if name not in schema:
            problems.append(f"missing column {name!r}")
        elif schema[name] != dtype:
            problems.append(f"column {name!r} is {schema[name]}, expected {dtype}")
    return problems
