"""Vectorized MinHash: tokens → stable 64-bit token hashes → n-gram shingles → signatures → band keys.

Everything runs over whole batches with NumPy array operations; there is no Python loop per
document, shingle or permutation (only over batches of documents, to bound memory).

Hashes must be stable across processes, machines and library versions, because band keys
persist in the cross-crawl index. So token hashes are computed from the UTF-8 bytes with a
polynomial hash (mod 2^64) finished by the splitmix64/murmur3 mixer, not with a library's
unspecified string hash.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

# Scripts written without spaces: each character is a token, so shingles work for them too.
_NO_SPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
TOKEN_PATTERN = rf"[{_NO_SPACE_SCRIPTS}]|[\w--{_NO_SPACE_SCRIPTS}]+"
# the same, plus each punctuation or symbol character as a token of its own (as word tokenizers emit them)
PUNCTUATION_TOKEN_PATTERN = rf"{TOKEN_PATTERN}|[^\w\s]"
TOKEN_PATTERNS = {"words": TOKEN_PATTERN, "words_and_punctuation": PUNCTUATION_TOKEN_PATTERN}

_BASE = np.uint64(0x100000001B3)  # odd multiplier of the byte polynomial
_MASK64 = (1 << 64) - 1


def fmix64(values: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer, vectorized (wrapping uint64 arithmetic)."""
    h = values.astype(np.uint64, copy=True)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@functools.lru_cache(maxsize=8)
def _powers(length: int) -> np.ndarray:
    powers = np.empty(length, dtype=np.uint64)
    powers[0] = 1
    if length > 1:
        powers[1:] = _BASE
        with np.errstate(over="ignore"):
            np.multiply.accumulate(powers, out=powers)
    return powers


def _grow(length: int) -> int:
    return 1 << max(6, int(length - 1).bit_length())


def token_hashes(tokens: pa.Array) -> np.ndarray:
    """Stable 64-bit hash of each string in an Arrow string array (no nulls, no empty strings)."""
    if len(tokens) == 0:
        return np.empty(0, dtype=np.uint64)
    tokens = pc.cast(tokens, pa.large_string())
    offsets = np.frombuffer(tokens.buffers()[1], dtype=np.int64, count=len(tokens) + 1, offset=tokens.offset * 8)
    data = np.frombuffer(tokens.buffers()[2], dtype=np.uint8)
    start, end = offsets[0], offsets[-1]
    data = data[start:end].astype(np.uint64)
    starts = offsets[:-1] - start
    lengths = np.diff(offsets)
    # position of each byte inside its token: a running count that restarts at every token start
    steps = np.ones(len(data), dtype=np.int64)
    steps[starts[1:]] = 1 - lengths[:-1]
    steps[0] = 0
    position = np.cumsum(steps)
    with np.errstate(over="ignore"):
        weighted = data * _powers(_grow(int(lengths.max())))[position]
        sums = np.add.reduceat(weighted, starts)
        return fmix64(sums ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))


@dataclass(frozen=True)
class Shingles:
    """Shingle hashes of a batch, grouped by document: doc i owns values[offsets[i]:offsets[i+1]]."""

    values: np.ndarray
    offsets: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def tokenize(texts: pl.Series, *, tokens: str = "words_and_punctuation") -> pl.Series:
    """Lower-cased tokens of each text (one token per character for unspaced scripts).

    `words` keeps words only (as FineWeb/datatrove); `words_and_punctuation` also keeps each
    punctuation mark, so an edited word breaks shingles spanning fewer real words.
    """
    return texts.fill_null("").str.to_lowercase().str.extract_all(TOKEN_PATTERNS[tokens])


def shingle_hashes(texts: pl.Series, *, ngram: int, tokens: str = "words_and_punctuation") -> Shingles:
    """Hashes of the token n-grams of each text; a text shorter than n tokens is one shingle."""
    tokens = tokenize(texts, tokens=tokens)
    counts = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = tokens.explode().drop_nulls().to_arrow()
    # hash each distinct token once (a batch repeats its vocabulary many times over)
    encoded = pc.dictionary_encode(pc.cast(flat, pa.large_string()))
    hashes = token_hashes(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False)]
    doc_starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    position = np.arange(len(hashes), dtype=np.int64) - np.repeat(doc_starts, counts)
    remaining = np.repeat(counts, counts) - position
    combined = hashes.copy()
    with np.errstate(over="ignore"):
        for k in range(1, ngram):  # n-1 vector passes over the whole batch
            shifted = np.zeros_like(hashes)
            shifted[:-k] = hashes[k:]
            shifted[remaining <= k] = 0  # past the end of this document
            combined = fmix64(combined * np.uint64(0x9E3779B97F4A7C15) + shifted + np.uint64(k))
    valid = (remaining >= ngram) | ((position == 0) & (np.repeat(counts, counts) < ngram))
    per_doc = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    return Shingles(values=combined[valid], offsets=np.concatenate(([0], np.cumsum(per_doc))).astype(np.int64))


@dataclass(frozen=True)
class MinHasher:
    """`bands × rows` permutations of the form (a·x + b) mod 2^64, seeded for reproducibility."""

    bands: int = 14
    rows: int = 8
    seed: int = 1

    @functools.cached_property
    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(self.seed))
        count = self.bands * self.rows
        a = rng.integers(1, _MASK64, size=count, dtype=np.uint64, endpoint=True) | np.uint64(1)  # odd
        b = rng.integers(0, _MASK64, size=count, dtype=np.uint64, endpoint=True)
        return a, b

    @functools.cached_property
    def band_salts(self) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(self.seed + 7919))
        return rng.integers(0, _MASK64, size=(self.bands, self.rows), dtype=np.uint64, endpoint=True) | np.uint64(1)

    def signatures(self, shingles: Shingles, *, chunk_cells: int = 1 << 19) -> np.ndarray:
        """(documents × permutations) MinHash matrix; documents without shingles get all-max rows."""
        a, b = self.parameters
        permutations = len(a)
        counts = shingles.counts
        result = np.full((len(counts), permutations), np.iinfo(np.uint64).max, dtype=np.uint64)
        has = np.flatnonzero(counts > 0)
        if len(has) == 0:
            return result
        # group whole documents into chunks of about chunk_cells matrix cells: small chunks bound
        # memory and reuse warm pages (first-touch faults on big temporaries cost more than the math)
        chunk_of = (np.cumsum(counts[has] * permutations) - 1) // chunk_cells
        edges = np.concatenate(([0], np.flatnonzero(np.diff(chunk_of)) + 1, [len(has)]))
        with np.errstate(over="ignore"):
            for lo, hi in zip(edges[:-1], edges[1:]):
                docs = has[lo:hi]
                start, stop = shingles.offsets[docs[0]], shingles.offsets[docs[-1] + 1]
                # (permutations × shingles): the per-document minimum runs along contiguous rows
                cells = np.multiply.outer(a, shingles.values[start:stop])
                cells += b[:, None]
                result[docs] = np.minimum.reduceat(cells, shingles.offsets[docs] - start, axis=1).T
        return result

    def band_keys(self, signatures: np.ndarray, *, scope: np.ndarray | None = None) -> np.ndarray:
        """(documents × bands) 64-bit keys; equal keys mean equal rows in that band (and scope)."""
        shaped = signatures.reshape(len(signatures), self.bands, self.rows)
        with np.errstate(over="ignore"):
            mixed = fmix64(shaped * self.band_salts[None, :, :])
            keys = fmix64(mixed.sum(axis=2, dtype=np.uint64) + np.arange(self.bands, dtype=np.uint64)[None, :])
            if scope is not None:
                keys = fmix64(keys ^ scope.astype(np.uint64)[:, None])
        return keys


def bands_rows_for_threshold(threshold: float, *, permutations: int = 112) -> tuple[int, int]:
    """Bands and rows (bands·rows ≤ permutations) minimizing false positives + negatives at a Jaccard threshold."""
    from scipy.integrate import quad

    best, best_error = (1, permutations), float("inf")
    for bands in range(1, permutations + 1):
        rows = permutations // bands
        if rows == 0:
            break
        false_positive, _ = quad(lambda s: 1 - (1 - s**rows) ** bands, 0.0, threshold)
        false_negative, _ = quad(lambda s: (1 - s**rows) ** bands, threshold, 1.0)
        error = false_positive + false_negative
        if error < best_error:
            best, best_error = (bands, rows), error
    return best


def estimated_jaccard(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise share of equal MinHash values: an unbiased estimate of Jaccard similarity."""
    return (left == right).mean(axis=1)
