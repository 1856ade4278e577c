"""Pack tokenized documents into fixed-length sequences: concat-and-chunk or best-fit (Fewer Truncations).

Concat-and-chunk joins every document (plus an end-of-text token) into one stream and cuts it every
``sequence_length`` tokens: no padding except the tail, but most documents straddle a cut.
Best-fit (Ding et al. 2024, 'Fewer Truncations Improve Language Modeling') first cuts each document
into pieces of at most ``sequence_length`` tokens (only documents longer than a sequence are split),
then places pieces, longest first, into the open sequence with the least room that still fits
(best-fit decreasing), opening a new one when none fits. The bin search is a segment tree over
remaining capacities: O(pieces × log sequence_length). Token placement is vectorised.

A mix is packed in windows (``WindowPacker``): documents in mix order are gathered until the window
holds ``window_tokens`` tokens, the window is packed on its own and handed on, so memory is bounded by
the window, not by the mix budget. Each window's last sequence may be padded; windows of millions of
tokens make that a rounding error, and best-fit finds its fits within a window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packed:
    """Sequences (n, sequence_length) of uint32 tokens, the index of what lies where, and efficiency stats."""

    tokens: np.ndarray
    index: pl.DataFrame  # seq, seq_offset, doc, id, doc_offset, length: one row per document piece
    stats: dict[str, Any]


def with_eos(flat: np.ndarray, offsets: np.ndarray, eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Append the end-of-text token to every document (so packed neighbours are separated)."""
    if eos is None:
        return flat, offsets
    out = np.insert(flat, offsets[1:], np.uint32(eos))
    return out, offsets + np.arange(offsets.shape[0], dtype=offsets.dtype)


def _assemble(flat: np.ndarray, src_start: np.ndarray, lengths: np.ndarray, dst_start: np.ndarray,
              n_seq: int, sequence_length: int, pad_id: int) -> np.ndarray:
    """Scatter every piece's tokens to its place; pieces are given in source order and cover ``flat``."""
    out = np.full(n_seq * sequence_length, pad_id, dtype=np.uint32)
    piece = np.repeat(np.arange(lengths.shape[0]), lengths)
    dst = (dst_start - src_start)[piece] + np.arange(flat.shape[0], dtype=np.int64)
    out[dst] = flat
    return out.reshape(n_seq, sequence_length)


def _stats(packer: str, n_seq: int, sequence_length: int, real: int, doc_len: np.ndarray,
           pieces_per_doc: np.ndarray) -> dict[str, Any]:
    slots = n_seq * sequence_length
    docs = doc_len.shape[0]
    truncated = int((pieces_per_doc > 1).sum())
    return {"packer": packer, "sequence_length": sequence_length, "sequences": n_seq, "documents": docs,
            "tokens": real, "padding_tokens": slots - real, "padding_rate": round((slots - real) / slots, 6) if slots else 0.0,
            "truncated_documents": truncated, "truncation_rate": round(truncated / docs, 6) if docs else 0.0,
            "documents_longer_than_sequence": int((doc_len > sequence_length).sum()),
            "min_truncated_documents": int((doc_len > sequence_length).sum())}


def pack_concat(flat: np.ndarray, offsets: np.ndarray, *, ids: pl.Series, sequence_length: int,
                pad_id: int = 0) -> Packed:
    """Concat-and-chunk: one stream cut every ``sequence_length`` tokens; the last sequence is padded."""
    total = int(flat.shape[0])
    n_seq = -(-total // sequence_length)
    cuts = np.union1d(offsets, np.arange(0, total + 1, sequence_length, dtype=np.int64))
    cuts = cuts[cuts <= total]
    start, end = cuts[:-1], cuts[1:]
    doc = np.searchsorted(offsets, start, side="right") - 1
    tokens = np.full(n_seq * sequence_length, pad_id, dtype=np.uint32)
    tokens[:total] = flat
    index = pl.DataFrame({"seq": start // sequence_length, "seq_offset": start % sequence_length, "doc": doc,
                          "id": ids.cast(pl.String).gather(doc), "doc_offset": start - offsets[doc], "length": end - start})
    doc_len = np.diff(offsets)
    pieces = np.bincount(doc, minlength=doc_len.shape[0])
    return Packed(tokens.reshape(n_seq, sequence_length), index,
                  _stats("concat", n_seq, sequence_length, total, doc_len, pieces))


class _CapacityTree:
    """Counts of open sequences per remaining capacity; finds the smallest capacity ≥ x in O(log L)."""

    def __init__(self, capacity: int) -> None:
        self.size = 1 << max(1, capacity.bit_length())  # > capacity
        self.tree = [0] * (2 * self.size)

    def add(self, cap: int, delta: int) -> None:
        i = cap + self.size
        while i:
            self.tree[i] += delta
            i >>= 1

    def smallest_at_least(self, x: int) -> int:
        """Smallest capacity ≥ x with an open sequence, or -1."""
        tree, size = self.tree, self.size
        i = x + size
        while not tree[i]:  # climb until a subtree to the right holds something
            while i & 1:
                if i == 1:
                    return -1
                i >>= 1
            i += 1
        while i < size:  # then descend to its leftmost non-empty leaf
            i = 2 * i if tree[2 * i] else 2 * i + 1
        return i - size


def pack_best_fit(flat: np.ndarray, offsets: np.ndarray, *, ids: pl.Series, sequence_length: int,
                  pad_id: int = 0) -> Packed:
    """Best-fit decreasing over document pieces of at most ``sequence_length`` tokens."""
    L = sequence_length
    doc_len = np.diff(offsets)
    n_pieces = np.maximum(-(-doc_len // L), 1) * (doc_len > 0)
    doc = np.repeat(np.arange(doc_len.shape[0]), n_pieces)
    first = np.concatenate(([0], np.cumsum(n_pieces)[:-1]))
    k = np.arange(doc.shape[0]) - first[doc]  # piece number inside its document
    src = offsets[doc] + k * L
    length = np.minimum(L, offsets[doc + 1] - src)
    # full pieces take a sequence each; the rest go through best-fit decreasing
    seq = np.full(doc.shape[0], -1, dtype=np.int64)
    seq_off = np.zeros(doc.shape[0], dtype=np.int64)
    full = np.flatnonzero(length == L)
    seq[full] = np.arange(full.shape[0])
    n_seq = int(full.shape[0])
    rest = np.flatnonzero(length < L)
    rest = rest[np.argsort(-length[rest], kind="stable")]
    tree = _CapacityTree(L)
    bins_by_cap: dict[int, list[int]] = {}
    fill: list[int] = []
    for p, ln in zip(rest.tolist(), length[rest].tolist()):
        cap = tree.smallest_at_least(ln)
        if cap < 0:
            b, used = n_seq + len(fill), 0
            fill.append(0)
        else:
            b = bins_by_cap[cap].pop()
            tree.add(cap, -1)
            used = L - cap
        seq[p], seq_off[p] = b, used
        fill[b - n_seq] = used + ln
        left = L - used - ln
        if left > 0:
            bins_by_cap.setdefault(left, []).append(b)
            tree.add(left, 1)
    n_seq += len(fill)
    tokens = _assemble(flat, src, length, seq * L + seq_off, n_seq, L, pad_id)
    index = pl.DataFrame({"seq": seq, "seq_offset": seq_off, "doc": doc, "id": ids.cast(pl.String).gather(doc),
                          "doc_offset": src - offsets[doc], "length": length}).sort("seq", "seq_offset")
    return Packed(tokens, index, _stats("best_fit", n_seq, L, int(flat.shape[0]), doc_len, n_pieces))


def pack(flat: np.ndarray, offsets: np.ndarray, *, ids: pl.Series, sequence_length: int,
         packer: Literal["concat", "best_fit"] = "best_fit", eos: int | None = None, pad_id: int = 0) -> Packed:
    """Pack documents (flat tokens + offsets, in mix order) with the chosen packer; ``eos`` is appended to each."""
    flat, offsets = with_eos(flat, offsets, eos)
    fn = pack_concat if packer == "concat" else pack_best_fit
    packed = fn(flat, offsets, ids=ids, sequence_length=sequence_length, pad_id=pad_id)
    log.info("%s packing: %d sequences, padding %.2f%%, truncation %.2f%%", packer, packed.stats["sequences"],
             100 * packed.stats["padding_rate"], 100 * packed.stats["truncation_rate"])
    return packed


#: Statistics that add up over windows (the rates are recomputed from them).
_SUMMED = ("sequences", "documents", "tokens", "padding_tokens", "truncated_documents",
           "documents_longer_than_sequence", "min_truncated_documents")


class WindowPacker:
    """Packs documents fed in mix order, window by window, and hands each packed window to ``emit``.

    ``emit(window, packed)`` gets the window number and its ``Packed`` with global ``seq`` and ``doc``
    numbers in the index (``doc`` = the document's place in mix order). Window boundaries depend only
    on the documents' token counts, never on how they were batched, so the output is reproducible.
    """

    def __init__(self, *, sequence_length: int, packer: Literal["concat", "best_fit"] = "best_fit",
                 eos: int | None = None, window_tokens: int, emit: Callable[[int, Packed], None],
                 pad_id: int = 0) -> None:
        self.sequence_length, self.packer, self.eos, self.pad_id = sequence_length, packer, eos, pad_id
        self.window_tokens, self.emit = window_tokens, emit
        self._chunks: list[np.ndarray] = []  # buffered documents' tokens, eos appended
        self._ids: list[pl.Series] = []
        self._lengths: list[np.ndarray] = []
        self._buffered = 0
        self.windows = 0
        self.totals = dict.fromkeys(_SUMMED, 0)  # over the windows packed so far

    def add(self, flat: np.ndarray, offsets: np.ndarray, *, ids: pl.Series) -> None:
        """Buffer documents (flat tokens + offsets, in mix order); pack every window that fills up."""
        flat, offsets = with_eos(flat, offsets, self.eos)
        lengths = np.diff(offsets)
        start = 0
        while start < lengths.shape[0]:
            # the first document that brings the buffer to a full window closes it
            reach = np.cumsum(lengths[start:]) + self._buffered
            full = np.flatnonzero(reach >= self.window_tokens)
            stop = start + int(full[0]) + 1 if full.shape[0] else lengths.shape[0]
            self._chunks.append(flat[offsets[start]:offsets[stop]])
            self._ids.append(ids.slice(start, stop - start))
            self._lengths.append(lengths[start:stop])
            self._buffered += int(offsets[stop] - offsets[start])
            start = stop
            if full.shape[0]:
                self._flush()

    def close(self) -> dict[str, Any]:
        """Pack what is left and return the statistics over all windows."""
        if self._buffered or self._lengths:
            self._flush()
        slots = self.totals["sequences"] * self.sequence_length
        docs = self.totals["documents"]
        return {"packer": self.packer, "sequence_length": self.sequence_length, **self.totals,
                "padding_rate": round(self.totals["padding_tokens"] / slots, 6) if slots else 0.0,
                "truncation_rate": round(self.totals["truncated_documents"] / docs, 6) if docs else 0.0,
                "windows": self.windows, "window_tokens": self.window_tokens}

    def _flush(self) -> None:
        lengths = np.concatenate(self._lengths)
        if lengths.shape[0] == 0:
            return
        flat = np.concatenate(self._chunks)
        offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = pl.concat(self._ids)
        self._chunks, self._ids, self._lengths, self._buffered = [], [], [], 0
        fn = pack_concat if self.packer == "concat" else pack_best_fit
        packed = fn(flat, offsets, ids=ids, sequence_length=self.sequence_length, pad_id=self.pad_id)
        del flat
        index = packed.index.with_columns(pl.col("seq") + self.totals["sequences"],
                                          pl.col("doc") + self.totals["documents"])
        packed = Packed(packed.tokens, index, packed.stats)
        for key in _SUMMED:
            self.totals[key] += packed.stats[key]
        self.emit(self.windows, packed)
        self.windows += 1
