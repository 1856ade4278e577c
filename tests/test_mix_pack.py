"""Packers lose no token, respect the sequence length, and best-fit truncates fewer documents."""

from pathlib import Path

import numpy as np
import polars as pl

from textmill.mix.config import ExportConfig
from textmill.mix.export import export_mix
from textmill.mix.pack import pack, with_eos


def _docs(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    rng = np.random.default_rng(seed)
    lens = rng.lognormal(5, 1.0, n).astype(np.int64) + 1
    offsets = np.concatenate(([0], np.cumsum(lens)))
    return rng.integers(1, 50_000, offsets[-1]).astype(np.uint32), offsets, pl.Series([f"d{i}" for i in range(n)])


def _check(packed, flat: np.ndarray, offsets: np.ndarray, length: int) -> None:
    assert packed.tokens.shape[1] == length and packed.tokens.dtype == np.uint32
    idx = packed.index
    assert int(idx["length"].sum()) == flat.shape[0]  # every token placed once
    assert int((idx["seq_offset"] + idx["length"]).max()) <= length
    rebuilt = np.zeros_like(flat)
    for s, so, d, do, ln in idx.select("seq", "seq_offset", "doc", "doc_offset", "length").iter_rows():
        rebuilt[offsets[d] + do: offsets[d] + do + ln] = packed.tokens[s, so:so + ln]
    assert np.array_equal(rebuilt, flat)
    # no overlap inside a sequence
    ends = idx.sort("seq", "seq_offset").with_columns(nxt=pl.col("seq_offset").shift(-1).over("seq"))
    assert ends.filter(pl.col("nxt").is_not_null() & (pl.col("seq_offset") + pl.col("length") > pl.col("nxt"))).height == 0


def test_both_packers_and_efficiency() -> None:
    flat, offsets, ids = _docs()
    eflat, eoff = with_eos(flat, offsets, 100257)
    concat = pack(flat, offsets, ids=ids, sequence_length=512, packer="concat", eos=100257)
    best = pack(flat, offsets, ids=ids, sequence_length=512, packer="best_fit", eos=100257)
    _check(concat, eflat, eoff, 512)
    _check(best, eflat, eoff, 512)
    assert best.stats["truncated_documents"] < concat.stats["truncated_documents"]
    assert best.stats["truncated_documents"] == best.stats["documents_longer_than_sequence"]
    assert concat.stats["padding_rate"] < 512 / flat.shape[0] + 1e-9 and best.stats["padding_rate"] < 0.05


def test_export_writes_shards_order_and_tokens(tmp_path: Path) -> None:
    mix = pl.DataFrame({"position": [0, 1, 2], "phase": "main", "component": "web", "id": ["a", "b", "c"],
                        "epoch": [0, 0, 0], "tokens": [2, 6, 2], "lang": "en",
                        "text": ["hello world", "tiktoken is great!", "hello world"]})
    out = export_mix(mix, folder=str(tmp_path), config=ExportConfig(shard_rows=2, sequence_length=16, packer="best_fit"))
    assert [f["rows"] for f in out["files"]] == [2, 1]
    assert pl.read_parquet(tmp_path / "order.parquet")["id"].to_list() == ["a", "b", "c"]
    tokens = np.load(tmp_path / "tokens.npy")
    assert tokens.shape == (1, 16) and out["packed"]["tokens"] == 13  # 10 tokens + 3 end-of-text
    assert 15339 in tokens[0].tolist()
