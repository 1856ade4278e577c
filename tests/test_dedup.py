"""deduped: constructed duplicates are removed, distinct documents kept, across crawls too."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from textmill import stages
from textmill.config import DedupConfig, MinHashConfig, RawConfig
from textmill.dedup.minhash import MinHasher, shingle_hashes, token_hashes
from textmill.dedup.normalize import normalized_url
from textmill.executor import LocalProcessExecutor, SerialExecutor
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "jsonl"


def real_texts() -> list[str]:
    texts = []
    for path in sorted(SAMPLE.glob("*.gz")):
        with gzip.open(path, "rt") as handle:
            texts += [json.loads(line)["text"] for line in handle if line.strip()]
    return [t for t in texts if len(t.split()) > 60]


def edit_words(text: str, rng: random.Random, share: float = 0.03) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(len(words) * share))):
        words[i] = words[i][::-1] + "x"
    return " ".join(words)


def write_crawl(root: Path, crawl: str, docs: list[dict]) -> None:
    target = root / "landing" / crawl
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "docs.jsonl", "w") as handle:
        for doc in docs:
            handle.write(json.dumps(doc) + "\n")


def run(store: Store, crawl: str, config: DedupConfig | None = None, executor=None):
    raw = stages.raw(store=store, crawl=crawl, config=RawConfig(), executor=SerialExecutor())
    return stages.deduped(store=store, crawl=crawl, raw_version=raw.version, config=config or DedupConfig(),
                          executor=executor or SerialExecutor())


def removed(store: Store, result) -> pl.DataFrame:
    folder = store.version_dir("deduped", result.manifest.partition, result.version)
    files = [f"{folder}/{f['path']}" for f in result.manifest.extra_files.get("removed", [])]
    if not files:
        return pl.DataFrame(schema={"id": pl.String, "url": pl.String, "kind": pl.String, "dup_cluster": pl.String})
    return store.scan_files(files).collect()


@pytest.fixture
def corpus():
    rng = random.Random(7)
    texts = real_texts()
    assert len(texts) >= 20
    docs = [{"id": f"orig-{i}", "url": f"https://site{i}.example/page", "text": t,
             "fetched_at": f"2024-01-{1 + i % 28:02d}T00:00:00Z"} for i, t in enumerate(texts)]
    exact = [{"id": f"exact-{i}", "url": f"https://mirror{i}.example/copy", "text": texts[i] + "\n\n  ",
              "fetched_at": "2024-03-01T00:00:00Z"} for i in range(3)]
    near = [{"id": f"near-{i}", "url": f"https://near{i}.example/x", "text": edit_words(texts[3 + i], rng),
             "fetched_at": "2024-03-02T00:00:00Z"} for i in range(3)]
    url_dup = [{"id": "urlnew", "url": "http://WWW.site6.example/page/", "text": texts[6] + " updated footer",
                "fetched_at": "2024-06-01T00:00:00Z"}]
    japanese = "東京都は日本の首都であり、世界で最も人口の多い都市圏の一つである。" * 6
    cjk = [{"id": "ja-1", "url": "https://ja.example/1", "text": japanese, "fetched_at": "2024-01-01T00:00:00Z"},
           {"id": "ja-2", "url": "https://ja.example/2", "text": japanese.replace("首都", "首府", 1),
            "fetched_at": "2024-01-02T00:00:00Z"},
           {"id": "ja-3", "url": "https://ja.example/3", "text": "大阪は関西地方の中心都市で、食文化で知られている。" * 6,
            "fetched_at": "2024-01-02T00:00:00Z"}]
    short = [{"id": "s1", "url": "https://s.example/1", "text": "Hello"},
             {"id": "s2", "url": "https://s.example/2", "text": "hello"},
             {"id": "s3", "url": "https://s.example/3", "text": "Hello"}]
    return {"texts": texts, "docs": docs + exact + near + url_dup + cjk + short}


def test_constructed_duplicates_removed_and_distinct_kept(tmp_path, corpus):
    store = Store(str(tmp_path))
    write_crawl(tmp_path, "c1", corpus["docs"])
    result = run(store, "c1")
    stats = result.manifest.statistics
    kept = store.scan(result.manifest).collect()
    gone = removed(store, result)
    by_kind = stats["removed_by_kind"]
    assert by_kind["exact"] == 3 + 1  # three mirrors and the repeated short "Hello"
    assert by_kind["url"] == 1
    # three word-edited copies, the Japanese variant, and "hello" (shingles are lower-cased)
    assert by_kind["near"] == 3 + 1 + 1
    assert stats["documents"] == kept.height == len(corpus["docs"]) - 10
    # every original survives except the one whose URL was fetched again later
    kept_urls = set(kept["url"])
    assert "http://WWW.site6.example/page/" in kept_urls and "https://site6.example/page" not in kept_urls
    originals = [d for d in corpus["docs"] if d["id"].startswith("orig-") and d["id"] != "orig-6"]
    assert {d["url"] for d in originals} <= kept_urls
    assert {"https://ja.example/1", "https://ja.example/3", "https://s.example/1"} <= kept_urls
    # removed rows point at the kept document of their cluster
    assert set(gone["dup_cluster"]) <= set(kept["id"])
    near_rows = gone.filter(pl.col("kind") == "near")
    assert set(near_rows["url"]) == {"https://near0.example/x", "https://near1.example/x", "https://near2.example/x",
                                     "https://ja.example/2", "https://s.example/2"}
    sizes = dict(zip(kept["url"], kept["dup_cluster_size"]))
    assert sizes["https://site0.example/page"] == 2 and sizes["https://site9.example/page"] == 1
    assert sizes["https://s.example/1"] == 3
    assert kept["id"].n_unique() == kept.height


def test_earlier_crawl_documents_are_removed_and_rerun_is_idempotent(tmp_path, corpus):
    rng = random.Random(3)
    store = Store(str(tmp_path))
    write_crawl(tmp_path, "c1", corpus["docs"])
    first = run(store, "c1")
    texts = corpus["texts"]
    fresh = "A completely new article about sailing boats, knots, tides and harbour life. " * 12
    second_docs = [
        {"id": "again-exact", "url": "https://other.example/a", "text": texts[10]},
        {"id": "again-near", "url": "https://other.example/b", "text": edit_words(texts[11], rng)},
        {"id": "new", "url": "https://other.example/c", "text": fresh},
    ]
    write_crawl(tmp_path, "c2", second_docs)
    second = run(store, "c2")
    kinds = dict(zip(*removed(store, second).select("url", "kind").to_dict(as_series=False).values()))
    assert kinds == {"https://other.example/a": "exact_earlier_crawl", "https://other.example/b": "near_earlier_crawl"}
    assert second.manifest.statistics["earlier_crawls"] == ["c1"]
    gone = removed(store, second)
    first_ids = set(store.scan(first.manifest).select("id").collect()["id"])
    assert set(gone["dup_cluster"]) <= first_ids  # they point at the earlier kept documents
    assert store.scan(second.manifest).collect()["url"].to_list() == ["https://other.example/c"]

    # reprocessing either crawl is a no-op with the same version
    assert run(store, "c2").reused and run(store, "c2").version == second.version
    assert run(store, "c1").version == first.version
    # without the cross-crawl index the duplicates stay
    alone = run(store, "c2", DedupConfig(cross_crawl=False))
    assert alone.manifest.statistics["documents"] == 3


def test_source_scope_keeps_duplicates_across_sources(tmp_path, corpus):
    texts = corpus["texts"]
    docs = [{"id": "a", "url": "https://a.example/", "text": texts[0], "source": "web"},
            {"id": "b", "url": "https://b.example/", "text": texts[0], "source": "books"},
            {"id": "c", "url": "https://c.example/", "text": texts[0], "source": "web"}]
    write_crawl(tmp_path, "c1", docs)
    store = Store(str(tmp_path))
    scoped = run(store, "c1", DedupConfig(scope="source"))
    assert scoped.manifest.statistics["documents"] == 2
    assert run(store, "c1", DedupConfig(scope="global")).manifest.statistics["documents"] == 1


def test_jaccard_verification_and_process_pool_agree(tmp_path, corpus):
    write_crawl(tmp_path, "c1", corpus["docs"])
    store = Store(str(tmp_path))
    serial = run(store, "c1", DedupConfig(minhash=MinHashConfig(verify_jaccard=0.7)))
    pooled = run(Store(str(tmp_path)), "c1", DedupConfig(minhash=MinHashConfig(verify_jaccard=0.7, buckets=4)),
                 executor=LocalProcessExecutor(workers=2))
    assert serial.manifest.statistics["removed_by_kind"] == pooled.manifest.statistics["removed_by_kind"]
    assert serial.manifest.statistics["removed_by_kind"]["near"] == 5
    strict = run(store, "c1", DedupConfig(minhash=MinHashConfig(verify_jaccard=0.99)))
    # edited copies are below 0.99; only "hello" (identical shingles) remains a near duplicate
    assert strict.manifest.statistics["removed_by_kind"]["near"] == 1


def test_empty_crawl_after_dedup_keeps_schema(tmp_path):
    docs = [{"id": str(i), "url": "https://same.example/", "text": "same words here", "fetched_at": f"2024-01-0{i}"}
            for i in range(1, 4)]
    write_crawl(tmp_path, "c1", docs)
    store = Store(str(tmp_path))
    result = run(store, "c1")
    frame = store.scan(result.manifest).collect()
    assert frame.height == 1 and frame["fetched_at"].dt.day().to_list() == [3]  # newest fetch of the URL
    assert {"dup_cluster", "dup_cluster_size"} <= set(frame.columns)


def test_minhash_is_stable_and_estimates_jaccard():
    import pyarrow as pa

    assert token_hashes(pa.array(["hello", "world"])).tolist() == [8858916992721591705, 8016627611325026989]
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(3000)]
    base = list(rng.choice(vocabulary, 600))
    variant = base[:450] + list(rng.choice(vocabulary, 150))
    sig = MinHasher(bands=16, rows=16).signatures(shingle_hashes(pl.Series([" ".join(base), " ".join(variant)]),
                                                                    ngram=5))

    def grams(words):
        return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}

    truth = len(grams(base) & grams(variant)) / len(grams(base) | grams(variant))
    assert abs((sig[0] == sig[1]).mean() - truth) < 0.08


def test_url_normalization():
    frame = pl.DataFrame({"url": ["HTTP://WWW.Example.com:80/a/#x", "https://example.com/a", "https://example.com:8443/a",
                                  "https://example.com/a?q=1", ""]})
    assert frame.select(normalized_url().alias("n"))["n"].to_list() == [
        "example.com/a", "example.com/a", "example.com:8443/a", "example.com/a?q=1", ""]


def test_documents_without_word_tokens_only_meet_exact_dedup(tmp_path):
    docs = [{"id": "p1", "url": "https://p.example/1", "text": "!!! ???"},
            {"id": "p2", "url": "https://p.example/2", "text": "!!!  ???"},
            {"id": "p3", "url": "https://p.example/3", "text": "*** ..."},
            {"id": "w1", "url": "https://p.example/4", "text": "word"}]
    write_crawl(tmp_path, "c1", docs)
    store = Store(str(tmp_path))
    result = run(store, "c1")
    assert result.manifest.statistics["removed_by_kind"]["exact"] == 1
    assert result.manifest.statistics["removed_by_kind"]["near"] == 0  # no shingles: never a near duplicate
    assert sorted(store.scan(result.manifest).collect()["url"]) == [
        "https://p.example/1", "https://p.example/3", "https://p.example/4"]


@pytest.mark.parametrize("buckets", [(8, 1), (1, 8)])
def test_earlier_crawl_bucketed_differently_is_still_found(tmp_path, corpus, buckets):
    """Index entries written with other bucket bits map onto this run's buckets by key range."""
    first_buckets, second_buckets = buckets
    rng = random.Random(5)
    store = Store(str(tmp_path))
    write_crawl(tmp_path, "c1", corpus["docs"])
    run(store, "c1", DedupConfig(minhash=MinHashConfig(buckets=first_buckets)))
    texts = corpus["texts"]
    write_crawl(tmp_path, "c2", [
        {"id": "x", "url": "https://x.example/a", "text": texts[12]},
        {"id": "y", "url": "https://x.example/b", "text": edit_words(texts[13], rng, share=0.01)},
        {"id": "z", "url": "https://x.example/c", "text": "Entirely fresh prose about mountain huts. " * 15},
    ])
    second = run(store, "c2", DedupConfig(minhash=MinHashConfig(buckets=second_buckets)))
    kinds = dict(removed(store, second).select("url", "kind").iter_rows())
    assert kinds == {"https://x.example/a": "exact_earlier_crawl", "https://x.example/b": "near_earlier_crawl"}


def test_punctuation_tokens_make_shorter_shingles():
    text = pl.Series(["Well, yes: it works. Does it? Yes!"])
    words = shingle_hashes(text, ngram=2, tokens="words")
    both = shingle_hashes(text, ngram=2, tokens="words_and_punctuation")
    assert words.counts.tolist() == [6]  # 7 words
    assert both.counts.tolist() == [11]  # 7 words + 5 marks
    # an edited word breaks fewer shingles when punctuation marks carry part of the context
    base = "Alpha beta, gamma delta. Epsilon zeta, eta theta. Iota kappa, lambda mu."
    edited = base.replace("gamma", "GAMMAX")

    def jaccard(tokens: str) -> float:
        left, right = (set(shingle_hashes(pl.Series([t]), ngram=5, tokens=tokens).values) for t in (base, edited))
        return len(left & right) / len(left | right)

    assert jaccard("words_and_punctuation") > jaccard("words")
