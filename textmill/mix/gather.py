"""The sampled texts, gathered shard by shard for export through a spill on the store.

The mix order is a seeded shuffle, so every output shard draws on every source part. Reading each
source part once, the texts it holds for the mix go to spill files by output shard
(``{spill}/shard-NNNNN/``); a shard is then assembled from its own spill files alone. Memory is
bounded by one source part or one output shard, whatever the mix budget and the crawl size.
A text found in an earlier source part of a component is not taken again from a later one.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator

import polars as pl

from textmill.storage import Store

log = logging.getLogger(__name__)


def _shard_dir(spill: str, shard: int) -> str:
    return posixpath.join(spill, f"shard-{shard:05d}")


def spill_texts(store: Store, *, sources: dict[str, list[tuple[str, pl.LazyFrame]]], order: pl.DataFrame,
                spill: str, shard_rows: int) -> int:
    """Write every sampled text (position, text) to its output shard's spill folder; return the texts found."""
    found = 0
    for c, (component, frames) in enumerate(sources.items()):
        wanted = order.filter(pl.col("component") == component).select("id", "position")
        for p, (label, lazy) in enumerate(frames):
            if wanted.height == 0:
                break
            hits = (lazy.select("id", "text").join(wanted.lazy(), on="id", how="inner", maintain_order="left")
                    .unique("position", keep="first", maintain_order=True).collect())
            if hits.height == 0:
                continue
            found += hits.height
            shards = hits.select("position", "text", shard=pl.col("position") // shard_rows)
            for (shard,), frame in shards.partition_by("shard", as_dict=True, include_key=False).items():
                store.write_parquet(frame, posixpath.join(_shard_dir(spill, int(shard)),
                                                          f"c{c:03d}-p{p:05d}.parquet"))
            wanted = wanted.join(hits.select("id").unique(), on="id", how="anti")
            log.debug("mix texts: %d from %s (%s)", hits.height, label, component)
    return found


def mix_shards(store: Store, *, order: pl.DataFrame, spill: str, shard_rows: int) -> Iterator[pl.DataFrame]:
    """The mix in order, one shard at a time: the order's rows with their text (null when not found)."""
    for n, start in enumerate(range(0, max(order.height, 1), shard_rows)):
        rows = order.slice(start, shard_rows)
        folder = _shard_dir(spill, n)
        files = [posixpath.join(folder, name) for name in store.listdir(folder) if name.endswith(".parquet")]
        texts = store.scan_files(files).collect() if files else pl.DataFrame(
            schema={"position": rows.schema["position"], "text": pl.String})
        yield rows.join(texts.cast({"position": rows.schema["position"]}), on="position", how="left",
                        maintain_order="left")
