"""Seeded near-duplicate benchmark corpus built from real text, with ground-truth clusters.

Text pool (all real, from `--data`, see each folder's SOURCE.txt):
  wikitext-2-raw-tokenized/   WikiText-2 test + valid, split into articles and paragraphs
                              (tokenization spaces undone: "@-@", " , ", " 's" ...)
  extraction-gold-scrapinghub-aeb/ground-truth.json.gz   181 gold article bodies (one paragraph a line)
  extraction-gold-readability/readability-test-pages.tar.xz  130 gold pages: <p>/<li>/<h*> text of expected.html
  extraction-gold-trafilatura/evaldata.json.gz  the "with" snippets of 990 pages (>= 8 words each)
  ccnet-processed-cc-docs/    30 CCNet-processed Common Crawl documents (one paragraph a line)

Paragraphs are split into sentences; sentences shorter than 4 words and repeated sentences are
dropped, so every sentence of the pool is distinct (36.5k sentences, 0.72M words).

Base documents: the pool is far smaller than the corpus, so a base document is a seeded random
recombination: a target length is drawn (log-normal, median 450 words, clipped to 250..3000),
then paragraphs are added until it is reached, each paragraph a run of 1..4 consecutive
sentences (at most 60 words; sentences over 40 words are cut into even pieces first) of one
real paragraph, starting at a uniformly drawn sentence. So no paragraph is more than ~1/4 of
a document, two base documents share a paragraph with probability ~1%, and they would need
to share several paragraphs before their word-5-gram
Jaccard similarity gets anywhere near the LSH threshold (~0.7 for 14 bands x 8 rows); the
generator checks pairwise Jaccard on a sample (`--check-sample`) and writes the numbers into
`corpus.json`. Base document `c` is a pure function of (seed, c), so shards are generated
independently (in `--processes` processes) with memory bounded by one shard.

Duplicates (`--dup-rate`, default 0.2 = 20% of all documents are copies of a base document):
a base document that gets copies gets 1 (60%), 2 (25%), 3 (10%) or 5 (5%) of them; each copy
is, independently,
  exact     25%  identical text
  edit      25%  1..5% of the words replaced, inserted or deleted (a real word from the pool)
  reorder   20%  the paragraphs shuffled
  truncate  20%  only the first 80..95% of the words kept
  mixed     10%  truncated to 85..95% and 1..2% of the words edited
Documents (base and copies) are shuffled over all shards, so copies land in other shards.

Output (`--out`):
  landing/shard-XXXXX.jsonl        {"id", "url", "text", "fetched_at", "source"}; url unique per doc
  truth/shard-XXXXX.parquet        id, cluster (int64), kind (base/exact/edit/...), param, words
  corpus.json                      sizes, duplicate rates by kind, distinctness check, timings

    .venv/bin/python bench/dedup_corpus.py --docs 20000 --out /tmp/dedup-bench/20k
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

COPY_COUNTS = ((1, 0.60), (2, 0.25), (3, 0.10), (5, 0.05))
KINDS = (("exact", 0.25), ("edit", 0.25), ("reorder", 0.20), ("truncate", 0.20), ("mixed", 0.10))
SENTENCE_END = re.compile(r"(?<=[.!?…])[\"”’)]?\s+(?=[\"“‘(\[]?[A-ZÀ-ÖØ-ÞĀ-Ž0-9])")
WORD = re.compile(r"\w+")


# --- the real-text pool -------------------------------------------------------------------

def _detok_wikitext(line: str) -> str:
    s = line.strip()
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r" ([.,;:!?%)\]])", r"\1", s)
    s = re.sub(r"([(\[]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    return s


def wikitext_paragraphs(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.glob("*.txt.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                s = line.strip()
                if not s or s.startswith("="):
                    continue  # blank lines and (sub)headings
                out.append(_detok_wikitext(s))
    return out


def scrapinghub_paragraphs(folder: Path) -> list[str]:
    with gzip.open(folder / "ground-truth.json.gz", "rt", encoding="utf-8") as handle:
        gold = json.load(handle)
    return [p.strip() for v in gold.values() for p in v["articleBody"].split("\n") if p.strip()]


def ccnet_paragraphs(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.glob("*.json*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    out += [p.strip() for p in json.loads(line)["text"].split("\n") if p.strip()]
    return out


def trafilatura_paragraphs(folder: Path) -> list[str]:
    with gzip.open(folder / "evaldata.json.gz", "rt", encoding="utf-8") as handle:
        gold = json.load(handle)
    return [s.strip() for v in gold.values() for s in v.get("with", []) if len(s.split()) >= 8]


class _BlockText(html.parser.HTMLParser):
    BLOCKS = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "td", "dd", "figcaption"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.depth = 0
        self.buffer: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self._flush()
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self._flush()
            self.depth = max(0, self.depth - 1)

    def handle_data(self, data):
        if self.depth:
            self.buffer.append(data)

    def _flush(self):
        text = " ".join("".join(self.buffer).split())
        if text:
            self.blocks.append(text)
        self.buffer = []


def readability_paragraphs(folder: Path) -> list[str]:
    out = []
    with tarfile.open(folder / "readability-test-pages.tar.xz") as tar:
        for member in tar:
            if member.name.endswith("/expected.html"):
                parser = _BlockText()
                parser.feed(tar.extractfile(member).read().decode("utf-8", "replace"))
                parser.close()
                out += parser.blocks
    return out


SOURCES = {
    "wikitext": ("wikitext-2-raw-tokenized", wikitext_paragraphs),
    "scrapinghub": ("extraction-gold-scrapinghub-aeb", scrapinghub_paragraphs),
    "readability": ("extraction-gold-readability", readability_paragraphs),
    "trafilatura": ("extraction-gold-trafilatura", trafilatura_paragraphs),
    "ccnet": ("ccnet-processed-cc-docs", ccnet_paragraphs),
}


def _pieces(sentence: str, longest: int = 40) -> list[str]:
    """A sentence, or a longer one cut into even pieces of at most `longest` words."""
    words = sentence.split()
    n = math.ceil(len(words) / longest) if words else 1
    size = math.ceil(len(words) / n) if words else 0
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)] if words else []


class Pool:
    """Distinct real sentences grouped by the real paragraph they come from."""

    def __init__(self, data: Path) -> None:
        self.sentences: list[str] = []
        self.paragraph_of: list[int] = []   # sentence -> paragraph number
        self.paragraphs: list[tuple[int, int]] = []  # paragraph -> [first, last) sentence
        self.by_source: Counter[str] = Counter()
        seen: set[str] = set()
        for name, (folder, loader) in SOURCES.items():
            if not (data / folder).is_dir():
                print(f"warning: {data / folder} missing; pool without {name}", file=sys.stderr)
                continue
            for paragraph in loader(data / folder):
                first = len(self.sentences)
                for sentence in (piece for whole in SENTENCE_END.split(paragraph) for piece in _pieces(whole)):
                    key = " ".join(WORD.findall(sentence.lower()))
                    if len(sentence.split()) < 4 or key in seen:
                        continue
                    seen.add(key)
                    self.sentences.append(sentence)
                    self.paragraph_of.append(len(self.paragraphs))
                    self.by_source[name] += 1
                if len(self.sentences) > first:
                    self.paragraphs.append((first, len(self.sentences)))
        if not self.sentences:
            raise SystemExit(f"no text found under {data}")
        self.words = [len(s.split()) for s in self.sentences]
        vocabulary = Counter(w for s in self.sentences[::7] for w in s.split() if w.isalpha())
        self.vocabulary = [w for w, _ in vocabulary.most_common(20000)]

    def run(self, rng: random.Random, most_words: int = 60) -> list[int]:
        """1..4 consecutive sentences (at most `most_words` words unless one sentence) of one real
        paragraph, around a uniformly drawn sentence."""
        s = rng.randrange(len(self.sentences))
        first, last = self.paragraphs[self.paragraph_of[s]]
        length = rng.randint(1, 4)
        start = max(first, min(s, last - length))
        run = list(range(start, min(last, start + length)))
        while len(run) > 1 and sum(self.words[i] for i in run) > most_words:
            run.pop()
        return run

    def stats(self) -> dict:
        return {"sentences": len(self.sentences), "paragraphs": len(self.paragraphs),
                "words": sum(self.words), "sentences_by_source": dict(self.by_source)}


# --- documents ----------------------------------------------------------------------------

def base_document(pool: Pool, seed: int, cluster: int) -> list[str]:
    """Paragraphs of base document `cluster`: a pure function of (seed, cluster)."""
    rng = random.Random(seed * 1_000_003 + cluster * 2 + 1)
    target = min(3000, max(250, int(rng.lognormvariate(math.log(450), 0.6))))
    paragraphs, words = [], 0
    while words < target or len(paragraphs) < 3:
        run = pool.run(rng)
        paragraphs.append(" ".join(pool.sentences[i] for i in run))
        words += sum(pool.words[i] for i in run)
    return paragraphs


def edit_words(words: list[str], rate: float, rng: random.Random, vocabulary: list[str]) -> list[str]:
    """Replace, insert or delete `rate` of the words (at least one edit)."""
    words = list(words)
    edits = max(1, round(len(words) * rate))
    for _ in range(edits):
        op = rng.random()
        i = rng.randrange(len(words))
        if op < 0.4:
            words[i] = rng.choice(vocabulary)
        elif op < 0.7:
            words.insert(i, rng.choice(vocabulary))
        elif len(words) > 1:
            del words[i]
    return words


def variant(paragraphs: list[str], kind: str, rng: random.Random, vocabulary: list[str]) -> tuple[str, float]:
    text = "\n".join(paragraphs)
    if kind in ("base", "exact"):
        return text, 0.0
    if kind == "reorder":
        shuffled = list(paragraphs)
        while shuffled == paragraphs:
            rng.shuffle(shuffled)
        return "\n".join(shuffled), 0.0
    words = text.split(" ")  # newlines stay inside tokens, so paragraph breaks survive edits
    if kind == "edit":
        rate = rng.uniform(0.01, 0.05)
        return " ".join(edit_words(words, rate, rng, vocabulary)), round(rate, 4)
    if kind == "truncate":
        keep = rng.uniform(0.80, 0.95)
        return " ".join(words[: max(1, int(len(words) * keep))]), round(keep, 4)
    if kind == "mixed":
        keep, rate = rng.uniform(0.85, 0.95), rng.uniform(0.01, 0.02)
        words = edit_words(words[: max(1, int(len(words) * keep))], rate, rng, vocabulary)
        return " ".join(words), round(keep + rate / 10, 4)  # param: keep share (+ edit rate / 10)
    raise ValueError(kind)


def plan_slots(docs: int, dup_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For every document position: its cluster (base document) and its kind code (0 = base)."""
    rng = np.random.default_rng(seed)
    duplicates = int(round(docs * dup_rate))
    bases = docs - duplicates
    counts_values = np.array([c for c, _ in COPY_COUNTS])
    counts_p = np.array([p for _, p in COPY_COUNTS])
    draws = rng.choice(counts_values, size=max(1, duplicates), p=counts_p)
    cumulative = np.cumsum(draws)
    take = int(np.searchsorted(cumulative, duplicates)) + 1
    draws = draws[:take]
    draws[-1] -= int(cumulative[take - 1] - duplicates)  # exactly `duplicates` copies
    draws = draws[draws > 0]
    if duplicates == 0:
        draws = draws[:0]
    if len(draws) > bases:
        raise SystemExit("dup-rate too high")
    with_copies = rng.choice(bases, size=len(draws), replace=False)
    cluster = np.concatenate([np.arange(bases, dtype=np.int64), np.repeat(with_copies, draws).astype(np.int64)])
    kind_p = np.array([p for _, p in KINDS])
    kind = np.concatenate([np.zeros(bases, dtype=np.int8),
                           (1 + rng.choice(len(KINDS), size=duplicates, p=kind_p)).astype(np.int8)])
    order = rng.permutation(docs)
    return cluster[order], kind[order], bases


KIND_NAMES = ("base",) + tuple(k for k, _ in KINDS)

# set by main() before forking the shard workers
_POOL: Pool | None = None
_ARGS: dict = {}


def write_shard(job: tuple[int, int, np.ndarray, np.ndarray]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard, offset, clusters, kinds = job
    pool, seed, out = _POOL, _ARGS["seed"], Path(_ARGS["out"])
    began = time.perf_counter()
    ids, cluster_col, kind_col, param_col, words_col = [], [], [], [], []
    landing = out / "landing" / f"shard-{shard:05d}.jsonl"
    tmp = landing.with_suffix(".tmp")
    nbytes = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for j, (cluster, kind) in enumerate(zip(clusters.tolist(), kinds.tolist())):
            position = offset + j
            rng = random.Random(seed * 7_000_003 + position * 2)
            kind_name = KIND_NAMES[kind]
            text, param = variant(base_document(pool, seed, cluster), kind_name, rng, pool.vocabulary)
            doc_id = f"d{position:08d}"
            day, second = rng.randrange(31), rng.randrange(86400)
            line = json.dumps({
                "id": doc_id,
                "url": f"https://www.site{position % 9973}.example/{cluster % 97}/doc-{position:08d}.html",
                "text": text,
                "fetched_at": f"2024-01-{day + 1:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z",
                "source": "dedup-bench",
            }, ensure_ascii=False)
            handle.write(line + "\n")
            nbytes += len(line) + 1
            ids.append(doc_id)
            cluster_col.append(cluster)
            kind_col.append(kind_name)
            param_col.append(param)
            words_col.append(len(text.split()))
    os.replace(tmp, landing)
    table = pa.table({"id": ids, "cluster": pa.array(cluster_col, pa.int64()), "kind": kind_col,
                      "param": pa.array(param_col, pa.float64()), "words": pa.array(words_col, pa.int32())})
    pq.write_table(table, out / "truth" / f"shard-{shard:05d}.parquet")
    return {"shard": shard, "documents": len(ids), "bytes": nbytes, "words": int(sum(words_col)),
            "seconds": round(time.perf_counter() - began, 2)}


def shingles(text: str, n: int = 5) -> set[int]:
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {hash(tuple(words))}
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def distinctness(pool: Pool, seed: int, bases: int, sample: int) -> dict:
    """Exact word-5-gram Jaccard of all pairs of a random sample of base documents."""
    rng = random.Random(seed + 99)
    chosen = rng.sample(range(bases), min(sample, bases))
    sets = [shingles("\n".join(base_document(pool, seed, c))) for c in chosen]
    postings: dict[int, list[int]] = defaultdict(list)
    for d, s in enumerate(sets):
        for h in s:
            postings[h].append(d)
    common: Counter[tuple[int, int]] = Counter()
    for docs in postings.values():
        if len(docs) > 1:
            for a, b in itertools.combinations(docs, 2):
                common[a, b] += 1
    jaccards = sorted((c / (len(sets[a]) + len(sets[b]) - c) for (a, b), c in common.items()), reverse=True)
    pairs = len(sets) * (len(sets) - 1) // 2
    return {
        "sampled_base_docs": len(sets), "pairs": pairs, "pairs_sharing_a_5gram": len(common),
        "max_jaccard": round(jaccards[0], 4) if jaccards else 0.0,
        "top10_jaccard": [round(j, 4) for j in jaccards[:10]],
        "pairs_jaccard_ge_0.1": sum(j >= 0.1 for j in jaccards),
        "pairs_jaccard_ge_0.3": sum(j >= 0.3 for j in jaccards),
        "pairs_jaccard_ge_0.5": sum(j >= 0.5 for j in jaccards),
    }


def main() -> int:
    global _POOL, _ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--docs", type=int, required=True, help="documents in the corpus (base + copies)")
    parser.add_argument("--out", required=True, help="output folder (landing/, truth/, corpus.json)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--seed", type=int, default=20240101)
    parser.add_argument("--dup-rate", type=float, default=0.2, help="share of documents that are copies")
    parser.add_argument("--shard-docs", type=int, default=50_000, help="documents per landing file (at least 4 files)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--check-sample", type=int, default=2000, help="base documents in the pairwise Jaccard check")
    args = parser.parse_args()

    began = time.perf_counter()
    out = Path(args.out)
    if (out / "corpus.json").exists():
        print(f"{out}/corpus.json exists; remove the folder to regenerate", file=sys.stderr)
        return 0
    (out / "landing").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    _POOL = Pool(Path(args.data))
    _ARGS = {"seed": args.seed, "out": str(out)}
    pool_seconds = time.perf_counter() - began
    clusters, kinds, bases = plan_slots(args.docs, args.dup_rate, args.seed)
    shards = max(4, math.ceil(args.docs / args.shard_docs))
    edges = np.linspace(0, args.docs, shards + 1).astype(np.int64)
    jobs = [(s, int(lo), clusters[lo:hi], kinds[lo:hi]) for s, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    results = []
    if args.processes > 1:
        with multiprocessing.get_context("fork").Pool(args.processes) as workers:
            for r in workers.imap_unordered(write_shard, jobs):
                results.append(r)
                print(f"shard {r['shard']}: {r['documents']} docs in {r['seconds']} s", file=sys.stderr)
    else:
        results = [write_shard(job) for job in jobs]
    gen_seconds = time.perf_counter() - began - pool_seconds
    check = distinctness(_POOL, args.seed, bases, args.check_sample) if args.check_sample else None

    sizes = np.bincount(clusters)
    kind_counts = {KIND_NAMES[k]: int(n) for k, n in enumerate(np.bincount(kinds, minlength=len(KIND_NAMES)))}
    size_hist = {int(s): int(n) for s, n in enumerate(np.bincount(sizes)) if n and s}
    summary = {
        "docs": args.docs, "seed": args.seed, "dup_rate": args.dup_rate, "shards": shards,
        "base_documents": bases, "duplicate_documents": int(args.docs - bases),
        "duplicate_share": round((args.docs - bases) / args.docs, 4),
        "clusters_with_copies": int((sizes > 1).sum()),
        "cluster_size_histogram": size_hist,
        "true_duplicate_pairs": int((sizes * (sizes - 1) // 2).sum()),
        "documents_by_kind": kind_counts,
        "bytes": sum(r["bytes"] for r in results), "words": sum(r["words"] for r in results),
        "mean_words": round(sum(r["words"] for r in results) / args.docs, 1),
        "pool": _POOL.stats(), "distinctness_check": check,
        "seconds": {"pool": round(pool_seconds, 2), "generate": round(gen_seconds, 2),
                    "total": round(time.perf_counter() - began, 2)},
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
