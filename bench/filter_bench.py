"""Filtering benchmark: textmill's whole signal + decision pass vs datatrove's FineWeb quality chain.

One invocation runs each side as a child process on the same JSONL landing files (the real-
text corpus of bench/dedup_corpus.py; generated with --generate if missing):

    textmill          .venv/bin/python bench/_filter_textmill.py  every rule set of
                      textmill.filters (URL blocklist, language, bad words, PII, Gopher
                      repetition, Gopher quality, C4, FineWeb: 44 signal columns on every
                      document, decision, reason, recyclable), read part by part
                      (--batch-rows rows at a time, bounded memory), on --docs documents and
                      on the peer's --peer-docs subset
    datatrove         .venv-bench/bin/python bench/_filter_datatrove.py  JsonlReader ->
                      GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter ->
                      FineWebQualityFilter (defaults), one process, on the first --peer-docs
                      documents (datatrove is ~30 docs/s per core; 100k would take an hour)

Measured per child (bench/_procmon.py): wall seconds, CPU seconds of the process tree (the
larger of getrusage(RUSAGE_CHILDREN) deltas and psutil polling), peak RSS summed over the
tree, load average before the run. The machine is shared, so the comparison is per core:

    docs/s        = documents / wall seconds
    docs/s/core   = documents / CPU seconds   (Polars uses every core; datatrove one)
    speedup/core  = textmill docs/s/core / datatrove docs/s/core (same --peer-docs subset)

Results: a Markdown table on stdout, JSON in bench/results/filter-<utc time>.json.

    .venv/bin/python bench/filter_bench.py
    .venv/bin/python bench/filter_bench.py --docs 20000 --peer-docs 2000   # quick run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _procmon import machine, measure_child  # noqa: E402


def throughput(docs: int, measured: dict) -> dict:
    wall, cpu = measured["wall_seconds"], measured["cpu_seconds"]
    return {"docs_per_second": round(docs / wall, 1), "docs_per_second_per_core": round(docs / cpu, 1),
            "cores_used": round(cpu / wall, 2)}


def table(runs: list[dict]) -> str:
    lines = ["| system | docs | wall s | CPU s | cores used | docs/s | docs/s/core | peak RSS MiB (tree) | kept |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        if run["status"] != "ok":
            lines.append(f"| {run['system']} | {run['docs']:,} | {run['status']} | | | | | | |")
            continue
        m, t = run["measured"], run["throughput"]
        kept = (m.get("child") or {}).get("kept")
        lines.append(f"| {run['system']} | {run['docs']:,} | {m['wall_seconds']:.1f} | {m['cpu_seconds']:.1f} | "
                     f"{t['cores_used']:.2f} | {t['docs_per_second']:,.0f} | {t['docs_per_second_per_core']:,.1f} | "
                     f"{m['peak_rss_sum_mib']:,.0f} | {'–' if kept is None else f'{kept:,}'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/dedup-bench/corpus/corpus-100000"),
                        help="a bench/dedup_corpus.py output folder (its landing/*.jsonl are read)")
    parser.add_argument("--generate", action="store_true", help="generate the corpus if it is missing")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="for --generate")
    parser.add_argument("--docs", type=int, default=100_000, help="documents for textmill")
    parser.add_argument("--peer-docs", type=int, default=20_000, help="documents for datatrove (and textmill again)")
    parser.add_argument("--batch-rows", type=int, default=20_000, help="textmill rows per part")
    parser.add_argument("--sides", nargs="+", default=["textmill", "datatrove"], choices=["textmill", "datatrove"])
    parser.add_argument("--poll", type=float, default=0.2, help="process-tree polling interval, s")
    parser.add_argument("--timeout", type=float, default=3 * 3600)
    args = parser.parse_args()

    landing = args.corpus / "landing"
    if not landing.is_dir():
        if not args.generate:
            parser.error(f"{landing} is missing: generate it with bench/dedup_corpus.py or pass --generate")
        subprocess.run([sys.executable, str(REPO / "bench" / "dedup_corpus.py"), "--docs", str(args.docs),
                        "--out", str(args.corpus), "--data", str(args.data)], check=True, cwd=REPO)
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log, out_path = results_dir / f"filter-{stamp}.log", results_dir / f"filter-{stamp}.json"
    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}

    plan = []
    if "textmill" in args.sides:
        for docs in dict.fromkeys((args.docs, args.peer_docs)):
            plan.append(("textmill", docs, [REPO / ".venv/bin/python", "bench/_filter_textmill.py", "--landing",
                                            landing, "--docs", docs, "--batch-rows", args.batch_rows]))
    if "datatrove" in args.sides:
        bench_python = REPO / ".venv-bench/bin/python"
        plan.append(("datatrove", args.peer_docs, [bench_python, "bench/_filter_datatrove.py", "--landing", landing,
                                                   "--docs", args.peer_docs] if bench_python.exists() else None))
    for system, docs, command in plan:
        run: dict = {"system": system, "docs": docs}
        if command is None:
            run["status"] = "not run (.venv-bench missing)"
        else:
            print(f"running {system} on {docs:,} documents ...", file=sys.stderr, flush=True)
            started = time.time()
            run["measured"] = measure_child(command, cwd=REPO, log=log, interval=args.poll, timeout=args.timeout)
            run["throughput"] = throughput(docs, run["measured"])
            run["status"] = "ok"
            print(f"  done in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        results["runs"].append(run)
        out_path.write_text(json.dumps(results, indent=2))

    ok = {(r["system"], r["docs"]): r for r in results["runs"] if r["status"] == "ok"}
    mine, peer = ok.get(("textmill", args.peer_docs)), ok.get(("datatrove", args.peer_docs))
    if mine and peer:
        results["speedup_per_core"] = round(mine["throughput"]["docs_per_second_per_core"]
                                            / peer["throughput"]["docs_per_second_per_core"], 1)
        results["speedup_wall"] = round(mine["throughput"]["docs_per_second"] / peer["throughput"]["docs_per_second"], 1)
    out_path.write_text(json.dumps(results, indent=2))
    print(table(results["runs"]))
    if "speedup_per_core" in results:
        print(f"\ntextmill vs datatrove on the same {args.peer_docs:,} documents: "
              f"{results['speedup_per_core']}x per core, {results['speedup_wall']}x wall")
    print(f"\nJSON: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
