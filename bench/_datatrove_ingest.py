"""Child process of bench/ingest_throughput.py: datatrove's WARC ingestion on a folder of WARC files.

Runs in the separate virtualenv .venv-bench (datatrove pins an older trafilatura than
textmill, so the two cannot share .venv). Pipeline, with datatrove's own steps:

    WarcReader(input, glob "*.warc.gz")       warcio; response/conversion records whose
                                              payload is text/html or xhtml (WARC-Identified-
                                              Payload-Type, else libmagic sniffing); UTF-8,
                                              else cchardet; no HTTP-status filter
    Trafilatura(favour_precision=True,        trafilatura.extract in a sandbox subprocess
                deduplicate=D, timeout=T)     with a per-document timeout (datatrove defaults,
                                              except deduplicate: see --dedup)
    LocalLanguageLabel (optional)             datatrove's LanguageFilter with label_only=True
                                              (labels, drops nothing, like textmill), its
                                              fastText model pointed at a local lid.176.ftz
                                              file instead of the download datatrove does
    ParquetWriter(output, compression=zstd)   one Parquet file per task

executed by LocalPipelineExecutor(tasks=N, workers=N). Prints one JSON line with the
counts (read back from the written Parquet files) and the time of `executor.run()`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def build_pipeline(args: argparse.Namespace) -> list:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.lid import FastTextLID

    class LocalLID(FastTextLID):
        """FastText language id from a local model file (no download)."""

        def __init__(self, path: str) -> None:
            super().__init__(languages=None, k=1)
            self.path = path

        @property
        def model(self):
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _FastText(self.path)
            return self._model

    class LocalLanguageLabel(LanguageFilter):
        name = "🌍 Language ID (local model)"

        def __init__(self, path: str) -> None:
            super().__init__(languages=None, label_only=True)
            self.model = LocalLID(path)

    steps = [
        WarcReader(str(args.input), glob_pattern="*.warc.gz", recursive=False),
        Trafilatura(favour_precision=True, deduplicate=args.dedup, timeout=args.timeout),
    ]
    if args.lid_model:
        steps.append(LocalLanguageLabel(str(args.lid_model)))
    steps.append(ParquetWriter(str(args.output), compression="zstd"))
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of *.warc.gz files")
    parser.add_argument("--output", type=Path, required=True, help="output folder (Parquet)")
    parser.add_argument("--logs", type=Path, required=True, help="datatrove logging folder")
    parser.add_argument("--workers", type=int, default=1, help="tasks = workers = N")
    parser.add_argument("--timeout", type=float, default=1.0, help="datatrove's per-document extraction timeout")
    parser.add_argument("--dedup", action="store_true",
                        help="trafilatura deduplicate=True (datatrove's default). Off by default here: its "
                             "per-process segment cache empties every repeated copy of a page, which the "
                             "benchmark's replicated input is full of")
    parser.add_argument("--lid-model", type=Path, default=None, help="local fastText lid.176 model file")
    args = parser.parse_args()

    from datatrove.executor import LocalPipelineExecutor

    executor = LocalPipelineExecutor(pipeline=build_pipeline(args), tasks=args.workers, workers=args.workers,
                                     logging_dir=str(args.logs), skip_completed=False)
    started = time.perf_counter()
    stats = executor.run()
    seconds = time.perf_counter() - started

    import pyarrow.parquet as pq

    documents = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(args.output.glob("*.parquet")))
    steps = {}
    for step in json.loads(stats.to_json()) if stats is not None else []:
        steps[step["name"]] = {k: v for k, v in step.get("stats", {}).items() if isinstance(v, (int, float))}
    print(json.dumps({"side": "datatrove", "documents": documents, "run_seconds": round(seconds, 3),
                      "steps": steps, "output_bytes": sum(p.stat().st_size for p in args.output.glob("*.parquet"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
