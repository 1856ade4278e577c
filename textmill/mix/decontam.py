"""N-gram decontamination against the bundled benchmark questions (13-grams of lowercased words).

Both sides are normalised the same way (lowercase, ``\\w+`` words), each word hashed to 64 bits by
Polars and each n-gram to a polynomial hash of its word hashes, all in NumPy. A document is
contaminated when one of its n-gram hashes is in the benchmark set (sorted array + searchsorted,
the vectorised semi-join). Questions shorter than ``ngram`` words but with at least
``short_question_min_words`` words match only as a whole (every word, in a row); shorter ones are
ignored, because a 5-word phrase is no evidence of a leaked test item.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
import polars as pl

from textmill.mix.config import DecontamConfig

log = logging.getLogger(__name__)

WORD = r"\w+"
_HASH_SEED = 0x7E47
_MULT = np.uint64(0x100000001B3)  # FNV prime: odd, so the polynomial is a bijection per position
CONTAMINATION_SCHEMA = {"id": pl.String, "benchmark": pl.String, "split": pl.String, "item": pl.UInt32,
                        "span": pl.String, "span_words": pl.UInt32, "matched_ngrams": pl.UInt32}


def bundled_questions() -> pl.DataFrame:
    """The bundled benchmark questions: benchmark, split, item, text (see textmill/benchmarks/SOURCE.txt)."""
    with resources.files("textmill.benchmarks").joinpath("questions.parquet").open("rb") as f:
        return pl.read_parquet(f)


def _words(texts: pl.Series) -> tuple[pl.Series, np.ndarray, np.ndarray]:
    """Flat normalised words, their 64-bit hashes and per-text word counts."""
    lists = texts.cast(pl.String).fill_null("").str.to_lowercase().str.extract_all(WORD)
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = lists.explode().drop_nulls()
    hashes = flat.hash(_HASH_SEED).to_numpy() if flat.len() else np.zeros(0, dtype=np.uint64)
    return flat, hashes, lengths


def _ngram_hashes(hashes: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash of every n-gram that lies inside one text: (hash, text index, word position in text)."""
    total = hashes.shape[0]
    starts = total - n + 1
    if starts <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty
    acc = np.zeros(starts, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):  # n vector passes, wrapping uint64 arithmetic
            acc = acc * _MULT + hashes[k:k + starts]
    text = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)[:starts]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    pos = np.arange(starts, dtype=np.int64) - offsets[text]
    valid = pos + n <= lengths[text]
    return acc[valid], text[valid], pos[valid]


@dataclass(frozen=True)
class BenchmarkIndex:
    """Sorted n-gram hashes per n-gram length, each with the question (row of ``questions``) it came from."""

    ngram: int
    questions: pl.DataFrame  # benchmark, split, item, text
    hashes: dict[int, np.ndarray]  # length -> sorted unique hashes
    rows: dict[int, np.ndarray]  # length -> question row of each hash (first one)

    @property
    def size(self) -> int:
        return sum(h.shape[0] for h in self.hashes.values())


def build_index(questions: pl.DataFrame, *, ngram: int = 13, short_question_min_words: int | None = 8) -> BenchmarkIndex:
    """Hash every n-gram of every question (and whole short questions) once."""
    _, hashes, lengths = _words(questions["text"])
    out_h: dict[int, np.ndarray] = {}
    out_r: dict[int, np.ndarray] = {}
    h, row, _ = _ngram_hashes(hashes, lengths, ngram)
    short_lengths = []
    if short_question_min_words is not None:
        short_lengths = sorted(set(lengths[(lengths < ngram) & (lengths >= short_question_min_words)].tolist()))
    parts = [(ngram, h, row)]
    for length in short_lengths:  # whole-question hashes of each short length
        sh, srow, spos = _ngram_hashes(hashes, lengths, length)
        keep = (lengths[srow] == length) & (spos == 0)
        parts.append((length, sh[keep], srow[keep]))
    for length, h, row in parts:
        uniq, first = np.unique(h, return_index=True)
        out_h[length], out_r[length] = uniq, row[first]
    index = BenchmarkIndex(ngram, questions.select("benchmark", "split", "item", "text"), out_h, out_r)
    log.info("benchmark index: %d questions, %d hashes (n=%d, whole-question lengths %s)",
             questions.height, index.size, ngram, short_lengths)
    return index


@functools.cache
def bundled_index(ngram: int = 13, benchmarks: tuple[str, ...] | None = None,
                  short_question_min_words: int | None = 8) -> BenchmarkIndex:
    """The index over the bundled questions (cached per process)."""
    questions = bundled_questions()
    if benchmarks is not None:
        unknown = set(benchmarks) - set(questions["benchmark"].unique().to_list())
        if unknown:
            raise ValueError(f"unknown benchmarks {sorted(unknown)}")
        questions = questions.filter(pl.col("benchmark").is_in(list(benchmarks)))
    return build_index(questions, ngram=ngram, short_question_min_words=short_question_min_words)


def index_for(config: DecontamConfig) -> BenchmarkIndex:
    """The bundled index a decontamination config asks for."""
    names = tuple(sorted(config.benchmarks)) if config.benchmarks is not None else None
    return bundled_index(config.ngram, names, config.short_question_min_words)


def _find_batch(ids: pl.Series, texts: pl.Series, index: BenchmarkIndex) -> pl.DataFrame:
    words, hashes, lengths = _words(texts)
    hits: list[pl.DataFrame] = []
    for length, bench_hashes in index.hashes.items():
        if bench_hashes.shape[0] == 0:
            continue
        h, text, pos = _ngram_hashes(hashes, lengths, length)
        slot = np.searchsorted(bench_hashes, h)
        slot[slot == bench_hashes.shape[0]] = 0
        found = bench_hashes[slot] == h
        if found.any():
            hits.append(pl.DataFrame({"doc": text[found], "pos": pos[found], "n": np.full(int(found.sum()), length),
                                      "qrow": index.rows[length][slot[found]]}))
    if not hits:
        return pl.DataFrame(schema=CONTAMINATION_SCHEMA)
    q = index.questions.with_row_index("qrow").select("qrow", "benchmark", "split", "item")
    found_df = (pl.concat(hits).with_columns(pl.col("qrow").cast(pl.UInt32))
                .join(q, on="qrow", how="left").sort("doc", "benchmark", "pos"))
    # runs of consecutive matching n-grams of one benchmark make one span; keep each pair's longest
    runs = (found_df.with_columns(run=((pl.col("pos").diff().fill_null(2) != 1)
                                       | (pl.col("doc").diff().fill_null(1) != 0)
                                       | (pl.col("benchmark") != pl.col("benchmark").shift())).cum_sum())
            .group_by("doc", "benchmark", "run")
            .agg(start=pl.col("pos").first(), end=pl.col("pos").last() + pl.col("n").last(),
                 split=pl.col("split").first(), item=pl.col("item").first(), ngrams=pl.len())
            .with_columns(span_words=(pl.col("end") - pl.col("start")).cast(pl.UInt32)))
    best = (runs.sort("span_words", "start", descending=[True, False])
            .group_by("doc", "benchmark", maintain_order=True)
            .agg(pl.all().first(), matched_ngrams=pl.col("ngrams").sum().cast(pl.UInt32)).sort("doc", "benchmark"))
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    word_list = words.to_list()
    spans = [" ".join(word_list[offsets[d] + s: offsets[d] + e])  # only contaminated documents loop here
             for d, s, e in zip(best["doc"].to_list(), best["start"].to_list(), best["end"].to_list())]
    return pl.DataFrame({
        "id": ids.gather(best["doc"]).cast(pl.String), "benchmark": best["benchmark"], "split": best["split"],
        "item": best["item"].cast(pl.UInt32), "span": spans, "span_words": best["span_words"],
        "matched_ngrams": best["matched_ngrams"],
    }, schema=CONTAMINATION_SCHEMA)


def find_contamination(docs: pl.DataFrame | pl.LazyFrame, *, index: BenchmarkIndex, id_column: str = "id",
                       text_column: str = "text", batch_documents: int = 2_000) -> pl.DataFrame:
    """One row per (contaminated document, benchmark): the longest matching span and its question."""
    frame = docs.select(id_column, text_column)
    frame = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    out = [_find_batch(batch[id_column], batch[text_column], index)
           for batch in frame.iter_slices(batch_documents)]
    result = pl.concat(out) if out else pl.DataFrame(schema=CONTAMINATION_SCHEMA)
    log.info("decontamination: %d of %d documents match a benchmark", result["id"].n_unique(), frame.height)
    return result


def decontaminate(docs: pl.DataFrame, *, config: DecontamConfig, id_column: str = "id",
                  text_column: str = "text") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(documents without any benchmark match, the contamination report) — removed rows are listed, not lost."""
    if not config.enabled:
        return docs, pl.DataFrame(schema=CONTAMINATION_SCHEMA)
    report = find_contamination(docs, index=index_for(config), id_column=id_column, text_column=text_column,
                                batch_documents=config.batch_documents)
    kept = docs.filter(~pl.col(id_column).cast(pl.String).is_in(report["id"].unique().implode()))
    return kept, report
