"""Child of bench/filter_bench.py: textmill's whole signal + decision pass over a JSONL corpus.

Reads the first `--docs` documents of the landing files part by part (`--batch-rows` rows
at a time, Polars streaming NDJSON scan, so memory is bounded by a part), runs
`textmill.filters.filter_frame` with the default FilterConfig (every rule set: URL blocklist,
language, bad words, PII, Gopher repetition, Gopher quality, C4, FineWeb) and prints one JSON
line with counts and timings. The corpus has no language id, so every document gets
lang="en", lang_score=1.0 (the language rules still run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from textmill.filters import FilterConfig, filter_frame  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landing", required=True, help="folder of *.jsonl files (id, url, text)")
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    args = parser.parse_args()

    files = sorted(glob.glob(os.path.join(args.landing, "*.jsonl")))
    started = time.perf_counter()
    config = FilterConfig()
    scan = pl.scan_ndjson(files, schema={"id": pl.String, "url": pl.String, "text": pl.String}).head(args.docs)
    docs = kept = recyclable = 0
    reasons: Counter[str] = Counter()
    signal_columns = 0
    for part in scan.collect_batches(chunk_size=args.batch_rows):
        part = part.with_columns(lang=pl.lit("en"), lang_score=pl.lit(1.0, dtype=pl.Float32))
        out = filter_frame(part, config=config)
        signal_columns = out.width - part.width - 3
        docs += out.height
        kept += int((out["decision"] == "kept").sum())
        recyclable += int(out["recyclable"].sum())
        reasons.update(dict(out["reject_reason"].drop_nulls().value_counts().iter_rows()))
    print(json.dumps({"side": "textmill", "docs": docs, "kept": kept, "recyclable": recyclable,
                      "signal_columns": signal_columns, "rejected_by": dict(reasons.most_common()),
                      "seconds": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
