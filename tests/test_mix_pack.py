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
    tokens = np.load(tmp_path / "tokens-00000.npy")
    assert tokens.shape == (1, 16) and out["packed"]["tokens"] == 13  # 10 tokens + 3 end-of-text
    assert 15339 in tokens[0].tolist()


def _windowed(flat: np.ndarray, offsets: np.ndarray, ids: pl.Series, *, batch: int, packer: str,
              window_tokens: int) -> tuple[list, dict]:
    from textmill.mix.pack import WindowPacker

    windows: list = []
    packing = WindowPacker(sequence_length=512, packer=packer, eos=100257, window_tokens=window_tokens,
                           emit=lambda n, packed: windows.append((n, packed)))
    for start in range(0, ids.len(), batch):
        stop = min(start + batch, ids.len())
        packing.add(flat[offsets[start]:offsets[stop]], offsets[start:stop + 1] - offsets[start],
                    ids=ids.slice(start, stop - start))
    return windows, packing.close()


def test_window_packer_places_every_token_once_with_global_numbers_whatever_the_batching() -> None:
    flat, offsets, ids = _docs(2000, seed=5)
    eflat, eoff = with_eos(flat, offsets, 100257)
    for packer in ("concat", "best_fit"):
        windows, stats = _windowed(flat, offsets, ids, batch=97, packer=packer, window_tokens=60_000)
        assert [n for n, _ in windows] == list(range(len(windows))) and len(windows) == stats["windows"] > 3
        tokens = np.concatenate([packed.tokens for _, packed in windows])
        index = pl.concat([packed.index for _, packed in windows])
        assert stats["sequences"] == tokens.shape[0] and stats["tokens"] == eflat.shape[0] == int(index["length"].sum())
        assert stats["documents"] == 2000 and index["doc"].n_unique() == 2000
        assert (index["id"] == ids.gather(index["doc"])).all()
        rebuilt = np.zeros_like(eflat)  # global seq and doc numbers put every token back in place
        for s, so, d, do, ln in index.select("seq", "seq_offset", "doc", "doc_offset", "length").iter_rows():
            rebuilt[eoff[d] + do: eoff[d] + do + ln] = tokens[s, so:so + ln]
        assert np.array_equal(rebuilt, eflat)
        # a window closes at the first document that fills it: every window but the last holds ≥ window_tokens
        per_window = [int(packed.index["length"].sum()) for _, packed in windows]
        assert all(n >= 60_000 for n in per_window[:-1])
        # the same documents fed in other batches give the same windows, byte for byte
        again, again_stats = _windowed(flat, offsets, ids, batch=1000, packer=packer, window_tokens=60_000)
        assert again_stats == stats
        assert all(np.array_equal(a.tokens, b.tokens) and a.index.equals(b.index)
                   for (_, a), (_, b) in zip(windows, again, strict=True))
    # best-fit inside windows still truncates only what is longer than a sequence
    assert stats["truncated_documents"] == stats["documents_longer_than_sequence"]


def test_export_of_shards_packs_in_windows_and_lists_every_file(tmp_path: Path) -> None:
    texts = [f"document {i} " + "word " * (20 + i % 50) for i in range(300)]
    mix = pl.DataFrame({"position": range(300), "phase": "main", "component": "web",
                        "id": [f"d{i}" for i in range(300)], "epoch": 0, "tokens": 0, "lang": "en", "text": texts})
    shards = (mix.slice(i, 64) for i in range(0, 300, 64))
    out = export_mix(shards, order=mix.drop("text"), folder=str(tmp_path),
                     config=ExportConfig(shard_rows=64, sequence_length=64, pack_window_tokens=2048))
    assert [f["rows"] for f in out["files"]] == [64, 64, 64, 64, 44]
    packed = out["packed"]
    assert packed["windows"] > 3 and len(packed["tokens_files"]) == len(packed["index_files"]) == packed["windows"]
    tokens = np.concatenate([np.load(tmp_path / name) for name in packed["tokens_files"]])
    index = pl.read_parquet([tmp_path / name for name in packed["index_files"]])
    assert tokens.shape == (packed["sequences"], 64) and index["seq"].max() == packed["sequences"] - 1
    from textmill.mix.tokens import encode

    flat, offsets = encode(mix["text"], num_threads=1)
    assert packed["tokens"] == flat.shape[0] + 300  # every token and one end-of-text per document
    first = index.filter(pl.col("doc") == 123).sort("doc_offset")
    piece = np.concatenate([tokens[s, so:so + ln] for s, so, ln in first.select("seq", "seq_offset", "length").iter_rows()])
    assert piece[:-1].tolist() == flat[offsets[123]:offsets[124]].tolist() and piece[-1] == 100257
