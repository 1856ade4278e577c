"""Child of bench/rewrite_bench.py: the rewrite engine with the in-process llama.cpp backend.

Reads the benchmark's input documents (Parquet), rewrites them with a fresh cache, prints one
JSON line of the engine's stats. A separate process, so the model's threads and memory do not
mix with the benchmark parent's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import polars as pl

from textmill.rewrite.backends import LlamaCppBackend, LlamaCppBackendConfig, bundled_smollm2_gguf
from textmill.rewrite.cache import RewriteCache
from textmill.rewrite.config import RewriteConfig
from textmill.rewrite.engine import rewrite_documents
from textmill.storage import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--config", required=True, help="RewriteConfig as JSON")
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = RewriteConfig.model_validate_json(args.config)
    inputs = pl.read_parquet(args.inputs)
    began = time.perf_counter()
    backend = LlamaCppBackend(LlamaCppBackendConfig(model_path=bundled_smollm2_gguf(), max_tokens=args.max_tokens,
                                                    n_threads=args.threads, n_ctx=2048))
    load_s = time.perf_counter() - began
    # warm-up, as the HTTP runs have one: the first call builds compute graphs and fills the prompt prefix
    from textmill.rewrite.prompts import get_prompt

    warm = get_prompt(cfg.prompts[0])
    backend.generate(warm.render(inputs["text"][0][:200]), system=warm.system)
    with tempfile.TemporaryDirectory() as root:
        began = time.perf_counter()
        result = rewrite_documents(inputs, config=cfg, backend=backend, cache=RewriteCache(Store(root)))
        wall = time.perf_counter() - began
    backend.close()
    print(json.dumps({"wall_s": wall, "load_s": load_s, **result.stats.to_dict()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
