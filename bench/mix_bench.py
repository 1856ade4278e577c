"""Throughput of the mix core on the 100k-document corpus: token counting, sampling, decontamination, packing.

Usage: .venv/bin/python bench/mix_bench.py [--corpus '/tmp/dedup-bench/corpus/corpus-100000/landing/*.jsonl']
       [--sequence-length 2048]. Prints one JSON object; numbers go to docs/mix.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import polars as pl

from textmill.mix.config import DecontamConfig, MixComponent, MixConfig
from textmill.mix.decontam import decontaminate, index_for
from textmill.mix.pack import pack
from textmill.mix.sample import sample_mix
from textmill.mix.tokens import count_tokens, encode, eos_token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/tmp/dedup-bench/corpus/corpus-100000/landing/*.jsonl")
    ap.add_argument("--sequence-length", type=int, default=2048)
    args = ap.parse_args()
    docs = pl.concat([pl.read_ndjson(p).select("id", "text") for p in sorted(glob.glob(args.corpus))])
    n = docs.height
    out: dict = {"documents": n, "mb": round(docs["text"].str.len_bytes().sum() / 1e6, 1), "cpus": os.cpu_count()}

    t = time.perf_counter()
    tokens = count_tokens(docs["text"], num_threads=os.cpu_count() or 8)
    out["count_tokens_docs_per_s"] = round(n / (time.perf_counter() - t))
    out["tokens"] = int(tokens.sum())

    t = time.perf_counter()
    index_for(DecontamConfig())
    out["benchmark_index_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    kept, report = decontaminate(docs, config=DecontamConfig())
    out["decontam_docs_per_s"] = round(n / (time.perf_counter() - t))
    out["contaminated_documents"] = report["id"].n_unique()

    cand = pl.concat([docs.select("id").with_columns(component=pl.lit("web"), tokens=tokens),
                      docs.head(n // 10).select("id").with_columns(component=pl.lit("syn"), tokens=tokens.head(n // 10))])
    config = MixConfig(components=[MixComponent(name="web", kind="kept", token_share=0.8),
                                   MixComponent(name="syn", kind="rewritten", token_share=0.2)],
                       total_tokens=int(tokens.sum()) // 2, seed=1)
    t = time.perf_counter()
    sample = sample_mix(cand, config=config)
    out["sample_docs_per_s"] = round(cand.height / (time.perf_counter() - t))
    main_stats = sample.stats["phases"]["main"]
    out["sample"] = {k: main_stats[k] for k in ("tokens", "budget_error", "max_share_error", "within_tolerance")}

    flat, offsets = encode(docs["text"], num_threads=os.cpu_count() or 8)
    for packer in ("concat", "best_fit"):
        t = time.perf_counter()
        packed = pack(flat, offsets, ids=docs["id"], sequence_length=args.sequence_length, packer=packer,
                      eos=eos_token())
        out[f"pack_{packer}_docs_per_s"] = round(n / (time.perf_counter() - t))
        out[f"pack_{packer}"] = {k: packed.stats[k] for k in ("sequences", "padding_rate", "truncation_rate",
                                                              "truncated_documents", "documents_longer_than_sequence")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
