"""Child process of bench/dedup_bench.py: textmill's raw and deduped stages on one corpus.

Runs in textmill's own virtualenv (.venv). Three modes, each a separate process so the parent
can measure them separately:

    raw     raw(store=Store(root), crawl, RawConfig(), LocalProcessExecutor(workers=N))
            on {root}/landing/{crawl}/*.jsonl (JSONL reader, language id, zstd Parquet parts)
    dedup   deduped(store, crawl, raw_version=<latest raw>, DedupConfig(minhash=...),
            LocalProcessExecutor(workers=N)): URL + exact + MinHash-LSH near duplicates
    export  (not measured) kept parts and removed-*.parquet -> {out}: id (the corpus id, from
            the url), cluster (dup_cluster: the kept document's id; a kept document's own id), kept

max_tasks_per_child=None, as in _textmill_ingest.py (worker recycling deadlocks on Python
3.11: CPython gh-115634). Prints one JSON line with the stage's counts and timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["raw", "dedup", "export"])
    parser.add_argument("--root", required=True, help="store root holding landing/{crawl}/")
    parser.add_argument("--crawl", default="bench")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--tokens", default="words_and_punctuation", choices=["words", "words_and_punctuation"])
    parser.add_argument("--bands", type=int, default=14)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1, help="MinHash seed (its spread is the F1 noise level)")
    parser.add_argument("--out", help="export: assignments Parquet file")
    args = parser.parse_args()

    import polars as pl

    from textmill.config import DedupConfig, MinHashConfig, RawConfig
    from textmill.executor import LocalProcessExecutor
    from textmill.stages import deduped, raw
    from textmill.storage import Store

    store = Store(args.root)
    if args.mode == "export":
        manifest = store.latest("deduped", args.crawl)
        folder = store.version_dir("deduped", args.crawl, manifest.version)
        kept = store.scan(manifest).select("url", "id", "dup_cluster").collect()
        removed_files = [f"{folder}/{f['path']}" for f in manifest.extra_files.get("removed", [])]
        removed = (store.scan_files(removed_files).select("url", "id", "dup_cluster").collect() if removed_files
                   else pl.DataFrame(schema={"url": pl.String, "id": pl.String, "dup_cluster": pl.String}))
        both = pl.concat([kept.with_columns(kept=pl.lit(True)), removed.with_columns(kept=pl.lit(False))])
        out = both.select(
            ("d" + pl.col("url").str.extract(r"doc-(\d+)\.html$", 1)).alias("id"),
            pl.coalesce("dup_cluster", "id").alias("cluster"),
            "kept",
        )
        out.write_parquet(args.out)
        print(json.dumps({"side": "textmill", "mode": "export", "rows": out.height,
                          "removed_by_kind": manifest.statistics.get("removed_by_kind")}))
        return 0

    executor = LocalProcessExecutor(workers=args.workers)
    started = time.perf_counter()
    try:
        if args.mode == "raw":
            result = raw(store=store, crawl=args.crawl, config=RawConfig(), executor=executor)
        else:
            raw_manifest = store.latest("raw", args.crawl)
            config = DedupConfig(minhash=MinHashConfig(ngram=args.ngram, tokens=args.tokens, bands=args.bands,
                                                         rows=args.rows, seed=args.seed))
            result = deduped(store=store, crawl=args.crawl, raw_version=raw_manifest.version, config=config,
                             executor=executor)
    finally:
        executor.close()
    seconds = time.perf_counter() - started
    stats = result.manifest.statistics
    report = {"side": "textmill", "mode": args.mode, "reused": result.reused, "run_seconds": round(seconds, 3),
              "documents": stats.get("documents"), "timings": result.manifest.timings}
    if args.mode == "dedup":
        report |= {"documents_in": stats["documents_in"], "removed": stats["removed"],
                   "removed_by_kind": stats["removed_by_kind"], "candidate_pairs": stats["candidate_pairs"],
                   "bucket_bits": stats["bucket_bits"]}
    else:
        report |= {"records_read": stats["records_read"], "quarantined": stats["quarantined"]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
