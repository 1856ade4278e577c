"""Child process of bench/ingest_throughput.py: textmill's raw stage on `{root}/landing/{crawl}/`.

Runs in textmill's own virtualenv (.venv). Calls the public stage exactly as the CLI and the
orchestrators do:

    raw(store=Store(root), crawl=crawl, config=RawConfig(extractor=...),
        executor=LocalProcessExecutor(workers=N, max_tasks_per_child=None))

(max_tasks_per_child=None, pinned: with a limit, the process pool hangs on Python 3.11 once
a worker retires while files are still queued: CPython gh-115634.)

which, per input file (one shard per file): reads the WARC with fastwarc, keeps 2xx HTML
responses, decodes the charset, extracts the text (--extractor, resiliparse unless told,
main_content=True), identifies the language (fastText lid.176.ftz), and writes zstd Parquet
parts plus quarantine parts and a manifest. Prints one JSON line with the manifest's counts
and the time of the `raw(...)` call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="store root holding landing/{crawl}/")
    parser.add_argument("--crawl", default="bench")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--extractor", choices=["resiliparse", "trafilatura"], default="resiliparse")
    parser.add_argument("--max-tasks-per-child", type=int, default=0,
                        help="ignored: LocalProcessExecutor no longer recycles workers (a limit deadlocks on "
                             "Python 3.11, CPython gh-115634); accepted so older driver commands still run")
    args = parser.parse_args()

    from textmill.config import RawConfig
    from textmill.executor import LocalProcessExecutor
    from textmill.stages import raw
    from textmill.storage import Store

    executor = LocalProcessExecutor(workers=args.workers)  # no worker recycling (deadlocks on 3.11)
    started = time.perf_counter()
    try:
        result = raw(store=Store(args.root), crawl=args.crawl, config=RawConfig(extractor=args.extractor),
                     executor=executor)
    finally:
        close = getattr(executor, "close", None)  # newer executors keep their pool until closed
        if close is not None:
            close()
    seconds = time.perf_counter() - started
    stats = result.manifest.statistics
    print(json.dumps({
        "side": "textmill", "reused": result.reused, "run_seconds": round(seconds, 3),
        "documents": stats["documents"], "records_read": stats["records_read"],
        "quarantined": stats["quarantined"], "skipped": stats["skipped"],
        "languages_top": dict(list(stats["languages"].items())[:5]),
        "output_bytes": sum(f.get("bytes", 0) for f in result.manifest.files),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
