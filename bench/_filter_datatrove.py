"""Child of bench/filter_bench.py: datatrove's FineWeb quality chain over a JSONL corpus.

Runs in .venv-bench. JsonlReader(limit=--docs) -> GopherRepetitionFilter -> GopherQualityFilter
-> C4QualityFilter -> FineWebQualityFilter, all with default settings, chained through their
`run()` generators exactly as a LocalPipelineExecutor task chains them (one task, one
process; the executor's own bookkeeping is left out). Prints one JSON line with counts.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landing", required=True)
    parser.add_argument("--docs", type=int, required=True)
    args = parser.parse_args()

    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)
    from datatrove.pipeline.readers import JsonlReader

    started = time.perf_counter()
    reader = JsonlReader(args.landing, glob_pattern="*.jsonl", text_key="text", id_key="id", limit=args.docs)
    filters = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]
    pipeline = reader.run(None, rank=0, world_size=1)
    for step in filters:
        pipeline = step.run(pipeline, rank=0, world_size=1)
    kept = sum(1 for _ in pipeline)
    rejected = {}
    for step in filters:
        for key, value in step.stats.stats.items():
            if key.startswith("dropped_"):
                rejected[f"{type(step).__name__}:{key[len('dropped_'):]}"] = int(value.total)
    print(json.dumps({"side": "datatrove", "docs": args.docs, "kept": kept, "rejected_by": rejected,
                      "seconds": round(time.perf_counter() - started, 2)}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
