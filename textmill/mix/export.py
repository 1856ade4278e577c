"""Write a sampled mix: Parquet shards in mix order, the order manifest, and optional packed token files.

Shards are written as they come and tokenized into a window packer (``pack.WindowPacker``), so the
whole mix and its tokens are never in memory at once. Packed windows are ``tokens-NNNNN.npy``
(uint32, sequences × sequence length) with ``tokens-index-NNNNN.parquet`` (where each document piece
lies; global sequence and document numbers), and ``tokens.json`` lists them with the statistics.

Paths go through fsspec, so a folder may be local or ``s3://``. The order manifest (position, phase,
component, id, epoch, tokens) is what makes the training set rebuildable bit for bit: join it with the
source versions on (component, id) and, for tokens, re-encode with the named tokenizer and re-pack.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import numpy as np
import polars as pl

from textmill.mix.config import ExportConfig
from textmill.mix.pack import Packed, WindowPacker
from textmill.mix.tokens import encode, eos_token

log = logging.getLogger(__name__)

ORDER_COLUMNS = ["position", "phase", "component", "id", "epoch", "tokens", "lang"]
ENCODE_BATCH = 1024  # documents tokenized at once (tiktoken returns Python ints: bound the lists)


#: Writes one whole file: `Store.write_bytes` (the store's credentials, endpoint and retries), or fsspec.
WriteBytes = Callable[[str, bytes], None]


def _write_bytes(path: str, data: bytes) -> None:
    with fsspec.open(path, "wb") as f:
        f.write(data)


def _write_parquet(frame: pl.DataFrame, path: str, write: WriteBytes = _write_bytes) -> dict[str, Any]:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd")
    write(path, buf.getvalue())
    return {"path": posixpath.basename(path), "rows": frame.height, "bytes": buf.tell()}


def _shards(mix: pl.DataFrame, shard_rows: int) -> Iterator[pl.DataFrame]:
    for i in range(0, max(mix.height, 1), shard_rows):
        yield mix.slice(i, shard_rows)


def export_mix(mix: pl.DataFrame | Iterable[pl.DataFrame], *, folder: str, config: ExportConfig,
               order: pl.DataFrame | None = None, tokenizer: str = "cl100k_base", num_threads: int = 8,
               write: WriteBytes | None = None) -> dict[str, Any]:
    """Write the mix, shard by shard, and return what was written.

    ``mix``: the order manifest's columns plus ``text``, in mix order: one frame (cut into
    ``shard_rows`` shards here) or the shards themselves, so the caller need never hold the whole
    mix. ``order``: the order manifest (default: ``mix`` without its text, when ``mix`` is a frame).
    Each shard is written, then tokenized in batches into the window packer, so memory is bounded by
    a shard and a packing window. ``write``: how a file is written (the stage passes its store's).
    """
    write = write or _write_bytes
    if isinstance(mix, pl.DataFrame):
        order = mix.drop("text") if order is None else order
        shards: Iterable[pl.DataFrame] = _shards(mix, config.shard_rows)
    else:
        shards = mix
    if order is None:
        raise ValueError("export_mix: pass the order manifest when the mix comes as shards")
    order_file = _write_parquet(order.select([c for c in ORDER_COLUMNS if c in order.columns]),
                                posixpath.join(folder, "order.parquet"), write)
    packer, packed_files = None, []
    if config.sequence_length:
        def emit(window: int, packed: Packed) -> None:
            packed_files.extend(write_packed_window(packed, window=window, folder=folder, write=write))

        packer = WindowPacker(sequence_length=config.sequence_length, packer=config.packer,
                              eos=eos_token(tokenizer) if config.eos_between_documents else None,
                              window_tokens=config.pack_window_tokens, emit=emit)
    files = []
    for n, shard in enumerate(shards):
        files.append(_write_parquet(shard, posixpath.join(folder, f"mix-{n:05d}.parquet"), write))
        if packer is not None:
            for start in range(0, shard.height, ENCODE_BATCH):
                batch = shard.slice(start, ENCODE_BATCH)
                flat, offsets = encode(batch["text"], encoding=tokenizer, num_threads=num_threads)
                packer.add(flat, offsets, ids=batch["id"])
        del shard
    out: dict[str, Any] = {"files": files, "order": order_file, "packed": None}
    if packer is not None:
        stats = packer.close()
        log.info("%s packing: %d sequences in %d windows, padding %.2f%%, truncation %.2f%%", config.packer,
                 stats["sequences"], stats["windows"], 100 * stats["padding_rate"], 100 * stats["truncation_rate"])
        meta = stats | {"tokenizer": tokenizer, "dtype": "uint32",
                        "tokens_files": [f for f in packed_files if f.endswith(".npy")],
                        "index_files": [f for f in packed_files if f.endswith(".parquet")]}
        write(posixpath.join(folder, "tokens.json"), json.dumps(meta, indent=2).encode())
        out["packed"] = meta
    return out


def write_packed_window(packed: Packed, *, window: int, folder: str,
                        write: WriteBytes | None = None) -> list[str]:
    """One packed window: ``tokens-NNNNN.npy`` (uint32, sequences × length) and ``tokens-index-NNNNN.parquet``."""
    write = write or _write_bytes
    buf = io.BytesIO()
    np.save(buf, packed.tokens)
    tokens_name = f"tokens-{window:05d}.npy"
    write(posixpath.join(folder, tokens_name), buf.getvalue())
    index = _write_parquet(packed.index, posixpath.join(folder, f"tokens-index-{window:05d}.parquet"), write)
    return [tokens_name, index["path"]]
