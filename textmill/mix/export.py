"""Write a sampled mix: Parquet shards in mix order, the order manifest, and optional packed token files.

Paths go through fsspec, so a folder may be local or ``s3://``. The order manifest (position, phase,
component, id, epoch, tokens) is what makes the training set rebuildable bit for bit: join it with the
source versions on (component, id) and, for tokens, re-encode with the named tokenizer and re-pack.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import polars as pl

from textmill.mix.config import ExportConfig
from textmill.mix.pack import Packed, pack
from textmill.mix.tokens import encode, eos_token

log = logging.getLogger(__name__)


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


def export_mix(mix: pl.DataFrame, *, folder: str, config: ExportConfig, tokenizer: str = "cl100k_base",
               num_threads: int = 8, write: WriteBytes | None = None) -> dict[str, Any]:
    """Write ``mix`` (order manifest columns + ``text``, already in mix order) and return what was written.
    ``write``: how a file is written (the stage passes its store's, so S3 options apply); default fsspec."""
    write = write or _write_bytes
    order_cols = ["position", "phase", "component", "id", "epoch", "tokens", "lang"]
    files = [_write_parquet(mix.slice(i, config.shard_rows), posixpath.join(folder, f"mix-{n:05d}.parquet"), write)
             for n, i in enumerate(range(0, max(mix.height, 1), config.shard_rows))]
    order = _write_parquet(mix.select([c for c in order_cols if c in mix.columns]),
                           posixpath.join(folder, "order.parquet"), write)
    out: dict[str, Any] = {"files": files, "order": order, "packed": None}
    if config.sequence_length:
        flat, offsets = encode(mix["text"], encoding=tokenizer, num_threads=num_threads)
        packed = pack(flat, offsets, ids=mix["id"], sequence_length=config.sequence_length, packer=config.packer,
                      eos=eos_token(tokenizer) if config.eos_between_documents else None)
        out["packed"] = write_packed(packed, folder=folder, tokenizer=tokenizer, write=write)
    return out


def write_packed(packed: Packed, *, folder: str, tokenizer: str = "cl100k_base",
                 write: WriteBytes | None = None) -> dict[str, Any]:
    """``tokens.npy`` (uint32, sequences × length), ``tokens-index.parquet`` and ``tokens.json`` (stats)."""
    write = write or _write_bytes
    buf = io.BytesIO()
    np.save(buf, packed.tokens)
    write(posixpath.join(folder, "tokens.npy"), buf.getvalue())
    index = _write_parquet(packed.index, posixpath.join(folder, "tokens-index.parquet"), write)
    meta = packed.stats | {"tokenizer": tokenizer, "dtype": "uint32", "tokens_file": "tokens.npy",
                           "index_file": index["path"]}
    write(posixpath.join(folder, "tokens.json"), json.dumps(meta, indent=2).encode())
    return meta
