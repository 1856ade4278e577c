"""The persistent cross-crawl index under `state/dedup/`.

For every deduped version it holds the kept documents' LSH band keys (`bands/`, bucketed
by the top bits of the key) and their 128-bit exact-text hashes with doc_key and id
(`exact/`, bucketed by the top bits of the hash's high half). Crawl N reads the index of the earlier
crawls' versions in the same scope; a crawl never reads its own entry, so reprocessing a
crawl is idempotent. The folder of a version is complete once `_complete.json` exists.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import polars as pl

from textmill.storage import Store

COMPLETE = "_complete.json"
INDEX_FOLDER = ("state", "dedup")  # under the store root: {scope}/{crawl}/{version}/ per index entry


def index_root(store: Store, scope_key: str) -> str:
    return store.path(*INDEX_FOLDER, scope_key)


def entry_dir(store: Store, scope_key: str, crawl: str, version: str) -> str:
    return posixpath.join(index_root(store, scope_key), crawl, version)


def bucket_name(bucket: int) -> str:
    return f"bucket={bucket:04d}"


@dataclass(frozen=True)
class IndexEntry:
    """One earlier crawl's contribution: where it is and how its band keys were bucketed."""

    crawl: str
    version: str
    folder: str
    bucket_bits: int

    def as_input(self) -> dict[str, str]:
        return {"kind": "dedup_index", "crawl": self.crawl, "version": self.version}

    def bucket_file(self, table: str, bucket: int) -> str:
        return posixpath.join(self.folder, table, f"{bucket_name(bucket)}.parquet")


def earlier_entries(store: Store, scope_key: str, crawl: str) -> list[IndexEntry]:
    """Complete index entries of crawls that sort before `crawl` (the newest version of each)."""
    entries = []
    for earlier in store.listdir(index_root(store, scope_key)):
        if earlier >= crawl:
            continue
        finished = {m.version: m.created_at for m in store.versions("deduped", earlier)}
        candidates = []
        for version in store.listdir(posixpath.join(index_root(store, scope_key), earlier)):
            marker = posixpath.join(entry_dir(store, scope_key, earlier, version), COMPLETE)
            if version in finished and store.exists(marker):
                candidates.append((finished[version], version, json.loads(store.read_bytes(marker))))
        if candidates:
            _, version, info = max(candidates)
            entries.append(IndexEntry(earlier, version, entry_dir(store, scope_key, earlier, version),
                                      int(info["bucket_bits"])))
    return entries


def key_range(bucket: int, bits: int) -> tuple[int, int]:
    """Inclusive range of 64-bit keys whose top `bits` bits equal `bucket`."""
    if bits == 0:
        return 0, (1 << 64) - 1
    width = 64 - bits
    return bucket << width, ((bucket + 1) << width) - 1


def _earlier_bucket(store: Store, entries: list[IndexEntry], table: str, column: str,
                    bucket: int, bits: int) -> pl.LazyFrame | None:
    """Rows of earlier entries' `table` whose `column` falls in this run's bucket.

    Entries may have been bucketed more coarsely or finely than this run; the key range
    filter makes the two line up.
    """
    low, high = key_range(bucket, bits)
    frames = []
    for entry in entries:
        if entry.bucket_bits <= bits:
            files = [entry.bucket_file(table, bucket >> (bits - entry.bucket_bits))]
        else:
            span = 1 << (entry.bucket_bits - bits)
            files = [entry.bucket_file(table, b) for b in range(bucket * span, (bucket + 1) * span)]
        files = [f for f in files if store.exists(f)]
        if files:
            frames.append(store.scan_files(files))
    if not frames:
        return None
    return pl.concat(frames).filter(pl.col(column).is_between(low, high))


def earlier_band_keys(store: Store, entries: list[IndexEntry], bucket: int, bits: int) -> pl.LazyFrame | None:
    """Band keys (key, doc_key) of earlier crawls that fall in this run's bucket."""
    return _earlier_bucket(store, entries, "bands", "key", bucket, bits)


def earlier_exact(store: Store, entries: list[IndexEntry], bucket: int | None = None,
                  bits: int = 0) -> pl.LazyFrame | None:
    """Exact-text hashes (text_hi, text_lo) with the doc_key and id of earlier kept documents.

    With a bucket, only that bucket's hashes; without, every kept document of the entries.
    """
    if bucket is not None:
        return _earlier_bucket(store, entries, "exact", "text_hi", bucket, bits)
    files = [posixpath.join(e.folder, "exact", name) for e in entries
             for name in store.listdir(posixpath.join(e.folder, "exact"))]
    return store.scan_files(files) if files else None
