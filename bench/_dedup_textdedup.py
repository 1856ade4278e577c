"""Child process of bench/dedup_bench.py: text-dedup's MinHash (text_dedup.minhash) on one corpus.

Runs in .venv-textdedup (`pip install text-dedup psutil`; text-dedup 0.4 pins its own
datasets/pyspark, so it gets its own virtualenv). Two modes:

    run     text_dedup.minhash's click command, in this process, as its CLI would run it:
              --path json --data_files '{landing}/*.jsonl' --split train (datasets' packaged
              JSON builder: local files, nothing downloaded; HF_DATASETS_OFFLINE=1 anyway)
              --column text --idx_column id --ngram 5 --num_perm 112 --b 14 --r 8
              --hash_func xxh3 --hash_bits 64 --num_proc N --debug --cache_dir {work}/cache
            (--debug makes it pickle its union-find keyed by our ids; hash_bits 64 is its
            "backwards compatible" mode: uint64 arithmetic mod 2^61-1 but 32-bit base hashes
            and 32-bit minhash values, see its --help)
    export  (not measured) uf.pkl + the saved dataset -> {out}: id, cluster (the union-find
            root; kept documents in no union get their own id), kept (id in the saved dataset)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["run", "export"])
    parser.add_argument("--landing", required=True, help="folder of *.jsonl landing files")
    parser.add_argument("--work", required=True, help="cache and output folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--bands", type=int, default=14)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", help="export: assignments Parquet file")
    args = parser.parse_args()
    output = os.path.join(args.work, "output")

    if args.mode == "export":
        import pickle

        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq

        with open(os.path.join(output, "uf.pkl"), "rb") as handle:
            uf = pickle.load(handle)
        kept = set(datasets.load_from_disk(output)["id"])
        ids = [str(i) for i in uf.parent]
        clusters = [str(uf.find(i)) for i in uf.parent]
        in_uf = set(ids)
        singletons = sorted(kept - in_uf)
        table = pa.table({"id": ids + singletons, "cluster": clusters + singletons,
                          "kept": [i in kept for i in ids] + [True] * len(singletons)})
        pq.write_table(table, args.out)
        print(json.dumps({"side": "text-dedup", "mode": "export", "rows": table.num_rows, "documents": len(kept)}))
        return 0

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from text_dedup import minhash

    argv = [
        "--path", "json", "--data_files", os.path.join(args.landing, "*.jsonl"), "--split", "train",
        "--cache_dir", os.path.join(args.work, "cache"), "--output", output,
        "--column", "text", "--idx_column", "id",
        "--ngram", str(args.ngram), "--num_perm", str(args.bands * args.rows),
        "--b", str(args.bands), "--r", str(args.rows),
        "--hash_func", "xxh3", "--hash_bits", "64", "--num_proc", str(args.workers), "--debug",
    ]
    started = time.perf_counter()
    minhash.main.main(args=argv, standalone_mode=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"side": "text-dedup", "mode": "run", "run_seconds": round(seconds, 3), "argv": argv}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
