"""Child process of bench/dedup_bench.py: datatrove's four-step MinHash dedup on one corpus.

Runs in .venv-bench (datatrove pins conflict with textmill's). Two modes:

    run     the four steps, each a LocalPipelineExecutor(workers=N), in sequence:
              1 JsonlReader -> MinhashDedupSignature         tasks = landing files
              2 MinhashDedupBuckets                          tasks = 14 (one per bucket)
              3 MinhashDedupCluster(save_cluster_id=True)    tasks = 1 (datatrove requires it)
              4 JsonlReader -> MinhashDedupFilter(load_cluster_ids=True,
                exclusion_writer=JsonlWriter) -> JsonlWriter  tasks = landing files
            MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                          hash_config=HashConfig(precision=64)) (xxhash, datatrove's default).
            Writers use compression=None (datatrove's default is gzip; textmill writes zstd
            Parquet) so output compression does not weigh on datatrove.
    export  (not measured) kept + removed JSONL -> {out}: id, cluster ("dt<minhash_cluster_id>",
            or the document's own id when it is in no cluster), kept (in output/ or removed/)

Prints one JSON line with the seconds of each step.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["run", "export"])
    parser.add_argument("--landing", required=True, help="folder of *.jsonl landing files")
    parser.add_argument("--work", required=True, help="datatrove's working and output folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--bands", type=int, default=14)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", help="export: assignments Parquet file")
    args = parser.parse_args()

    if args.mode == "export":
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids, clusters, kept = [], [], []
        for folder, is_kept in (("output", True), ("removed", False)):
            for path in sorted(glob.glob(f"{args.work}/{folder}/*.jsonl")):
                with open(path, encoding="utf-8") as handle:
                    for line in handle:
                        doc = json.loads(line)
                        cid = doc.get("metadata", {}).get("minhash_cluster_id", -1)
                        ids.append(doc["id"])
                        clusters.append(doc["id"] if cid == -1 else f"dt{cid}")
                        kept.append(is_kept)
        pq.write_table(pa.table({"id": ids, "cluster": clusters, "kept": kept}), args.out)
        print(json.dumps({"side": "datatrove", "mode": "export", "rows": len(ids), "documents": sum(kept)}))
        return 0

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    config = MinhashConfig(n_grams=args.ngram, num_buckets=args.bands, hashes_per_bucket=args.rows,
                           hash_config=HashConfig(precision=64))
    files = sorted(glob.glob(os.path.join(args.landing, "*.jsonl")))
    work = args.work
    logs = os.path.join(work, "logs")

    def reader():
        return JsonlReader(args.landing, glob_pattern="*.jsonl", text_key="text", id_key="id")

    steps = {
        "signatures": LocalPipelineExecutor(
            pipeline=[reader(), MinhashDedupSignature(output_folder=f"{work}/signatures", config=config)],
            tasks=len(files), workers=args.workers, logging_dir=f"{logs}/signatures"),
        "buckets": LocalPipelineExecutor(
            pipeline=[MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets",
                                          config=config)],
            tasks=config.num_buckets, workers=args.workers, logging_dir=f"{logs}/buckets"),
        "cluster": LocalPipelineExecutor(
            pipeline=[MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids",
                                          config=config, save_cluster_id=True)],
            tasks=1, workers=1, logging_dir=f"{logs}/cluster"),
        "filter": LocalPipelineExecutor(
            pipeline=[reader(),
                      MinhashDedupFilter(input_folder=f"{work}/remove_ids", load_cluster_ids=True,
                                         exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)),
                      JsonlWriter(f"{work}/output", compression=None)],
            tasks=len(files), workers=args.workers, logging_dir=f"{logs}/filter"),
    }
    seconds = {}
    started = time.perf_counter()
    for name, executor in steps.items():
        began = time.perf_counter()
        executor.run()
        seconds[name] = round(time.perf_counter() - began, 3)
    total = time.perf_counter() - started
    print(json.dumps({"side": "datatrove", "mode": "run", "run_seconds": round(total, 3), "step_seconds": seconds,
                      "files": len(files)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
