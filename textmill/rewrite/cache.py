"""The rewrite cache: LLM replies stored by what produced them, so nothing is generated twice.

A reply's key is sha256 over (hash of the exact text sent, prompt id@version, model name,
sampling parameters). Replies are stored raw (before post-processing), so changing a
post-processing threshold re-judges old replies without new requests.

Layout: `{root}/{prefix}/shard-{time}-{uuid}.parquet`, one small shard per finished batch,
each written atomically (`Store.write_parquet`: temp file + rename, or one PUT). A run
killed half-way loses at most the batch it had not written yet; a shard is either whole
or absent. A key already present is never written again by this process; if two
processes race on one key, readers keep the first row per key, so lookups never see a
duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import polars as pl

from textmill.storage import Store

log = logging.getLogger(__name__)

CACHE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "text_sha256": pl.String(),
    "prompt": pl.String(),
    "model": pl.String(),
    "params": pl.String(),
    "reply": pl.String(),
    "finish_reason": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "seconds": pl.Float64(),
    "created_at": pl.Float64(),
}


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def params_json(params: dict[str, Any]) -> str:
    """Canonical JSON of sampling parameters (sorted keys, no spaces): equal params, equal string."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(*, text_hash: str, prompt: str, model: str, params: str) -> str:
    """sha256 of (text hash, prompt id@version, model, canonical params JSON)."""
    payload = "\x1f".join((text_hash, prompt, model, params))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class RewriteCache:
    """Replies by key, in atomic Parquet shards under `{store root}/{prefix}`."""

    def __init__(self, store: Store, prefix: str = "cache/rewrite") -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.folder = store.path(*self.prefix.split("/"))
        self._known: set[str] | None = None
        self._lock = threading.Lock()
        self.shards_written = 0

    def shard_paths(self) -> list[str]:
        return [posixpath.join(self.folder, name) for name in self.store.listdir(self.folder)
                if name.startswith("shard-") and name.endswith(".parquet")]

    def _scan(self) -> pl.LazyFrame | None:
        paths = self.shard_paths()
        return self.store.scan_files(paths) if paths else None

    def keys(self) -> set[str]:
        """Every key stored (read once per process, then kept up to date by `put`)."""
        with self._lock:
            if self._known is None:
                scan = self._scan()
                self._known = set(scan.select("key").collect()["key"].to_list()) if scan is not None else set()
            return set(self._known)

    def lookup(self, keys: Iterable[str]) -> pl.DataFrame:
        """Stored rows for the given keys (CACHE_SCHEMA), one per key: the earliest written."""
        wanted = list(set(keys))
        scan = self._scan()
        if scan is None or not wanted:
            return pl.DataFrame(schema=CACHE_SCHEMA)
        found = (scan.filter(pl.col("key").is_in(wanted)).collect()
                 .sort("created_at").unique("key", keep="first", maintain_order=True))
        return found.select([pl.col(c).cast(t) for c, t in CACHE_SCHEMA.items()])

    def put(self, rows: pl.DataFrame) -> int:
        """Write the rows whose key is not stored yet as one shard; returns how many were written."""
        if rows.height == 0:
            return 0
        known = self.keys()
        rows = rows.unique("key", keep="first", maintain_order=True).filter(~pl.col("key").is_in(list(known)))
        if rows.height == 0:
            return 0
        if "created_at" not in rows.columns or rows["created_at"].null_count() == rows.height:
            rows = rows.with_columns(created_at=pl.lit(time.time(), dtype=pl.Float64))
        frame = rows.select([pl.col(c).cast(t) for c, t in CACHE_SCHEMA.items()])
        name = f"shard-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.parquet"
        self.store.write_parquet(frame, posixpath.join(self.folder, name))
        with self._lock:
            assert self._known is not None
            self._known.update(frame["key"].to_list())
        self.shards_written += 1
        log.debug("rewrite cache: wrote %s (%d replies)", name, frame.height)
        return frame.height

    def compact(self, *, min_shards: int = 256) -> int:
        """Merge the shards into one when there are at least `min_shards` (lookups scan every shard).
        The merged shard is written before the old ones are removed: a crash in between leaves
        duplicate rows across shards, which lookups already resolve. Returns shards removed.
        Run it when no other process writes to this cache."""
        paths = self.shard_paths()
        if len(paths) < min_shards:
            return 0
        merged = (self.store.scan_files(paths).collect().sort("created_at")
                  .unique("key", keep="first", maintain_order=True))
        name = f"shard-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}-merged.parquet"
        self.store.write_parquet(merged.select([pl.col(c).cast(t) for c, t in CACHE_SCHEMA.items()]),
                                 posixpath.join(self.folder, name))
        for path in paths:
            self.store.fs.rm(path)
        log.info("rewrite cache: merged %d shards (%d replies) into %s", len(paths), merged.height, name)
        return len(paths)

    def __len__(self) -> int:
        return len(self.keys())
