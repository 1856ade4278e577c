"""Soak benchmark: the whole chain (raw → deduped → filtered → rewritten → mixed) on a large generated
corpus, with the memory of the parent and of every pool worker sampled every second.

    .venv/bin/python bench/soak_bench.py                      # 1,000,000 documents (about 25 min idle)
    .venv/bin/python bench/soak_bench.py --docs 300000         # the first 300k of the same corpus

The corpus is bench/dedup_corpus.py's (real-text recombinations with 20% near/exact copies),
read from `--corpus` (generated there when missing, which needs `--data`). Its landing
files are hard-linked (or copied) into a fresh store under `--work`; `--docs` below the corpus
size takes the first landing files (the last one cut). The chain runs as one child process
(`bench/_soak_chain.py`, a new 2-process pool per stage, the recipe's defaults, a fixed LLM
budget of `--rewrite-documents` with SmolLM2 in process, a mix of `--mix-tokens`); this
script samples the child's process tree every `--interval` seconds.

It prints, per stage: documents in/out, wall and CPU seconds, documents/s and documents/s per
core (documents / CPU seconds), peak RSS of the parent, of each worker and of the tree; then
RSS at 10/25/50/75/100% of each stage, the least-squares slope (MiB/min) and the mean RSS of
the stage's last quarter against its first quarter (peaks of each quarter, so a worker's
start-up does not count as growth). Then the same per phase (deduped: sign, url, exact, edges,
cluster, write, index; mixed: candidates, sample, gather, export; laid end to end from the
manifest's timings): "flat" when a phase's last quarter grew by at most max(64 MiB, 15%) over
its first, since phases have different working sets and creep shows within one. The text goes to `bench/results/soak-<UTC time>.txt` and the samples to
the `.json` beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procmon import child_env, kill_tree, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CRAWL = "SOAK"
MIB = 2**20
POINTS = (0.10, 0.25, 0.50, 0.75, 1.00)
SERIES = ("parent", "worker (largest)", "tree")
# a stage's phases in run order, by the `{phase}_seconds` timings of its manifest
PHASES = {"deduped": ("sign", "url", "exact", "edges", "cluster", "write", "index"),
          "mixed": ("candidates", "sample", "gather", "export")}
MIN_PHASE_SAMPLES = 8  # shorter phases get a peak, not a verdict


class Sampler(threading.Thread):
    """Every `interval` s: RSS of the root process, of each pool worker and of the whole tree."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.samples: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            began = time.time()
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            parent = tree = 0
            workers: dict[str, int] = {}
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    is_worker = proc.pid != self.root.pid and "spawn_main" in " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                tree += rss
                if proc.pid == self.root.pid:
                    parent = rss
                elif is_worker:
                    workers[f"{proc.pid}:{proc.create_time():.2f}"] = rss
            self.samples.append({"t": began, "parent": parent, "tree": tree, "workers": workers})
            self.done.wait(max(0.0, self.interval - (time.time() - began)))


def prepare_landing(corpus: Path, docs: int, landing: Path) -> int:
    """Hard-link (or copy) the corpus's first landing files into `landing`, the last one cut to `docs`."""
    landing.mkdir(parents=True, exist_ok=True)
    taken = 0
    for shard in sorted((corpus / "landing").glob("*.jsonl")):
        if taken >= docs:
            break
        target = landing / shard.name
        with open(shard, "rb") as handle:
            lines = sum(1 for _ in handle)
        if taken + lines <= docs:
            try:
                os.link(shard, target)
            except OSError:
                shutil.copyfile(shard, target)
            taken += lines
        else:
            with open(shard, "rb") as src, open(target, "wb") as dst:
                for _, line in zip(range(docs - taken), src):
                    dst.write(line)
            taken = docs
    return taken


def at(samples: list[dict], t: float) -> dict:
    """The last sample taken at or before `t` (the first one if none)."""
    chosen = samples[0]
    for sample in samples:
        if sample["t"] <= t:
            chosen = sample
        else:
            break
    return chosen


def series(sample: dict, name: str) -> int:
    if name == "worker (largest)":
        return max(sample["workers"].values(), default=0)
    return sample[name]


def slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var * 60 / MIB


def growth(values: list[tuple[float, int]]) -> dict:
    """Peak RSS of the first and last quarter of a run of samples; flat when it grew ≤ max(64 MiB, 15%)."""
    quarter = max(1, len(values) // 4)
    first = max(v for _, v in values[:quarter])
    last = max(v for _, v in values[-quarter:])
    return {"first_quarter_mib": first / MIB, "last_quarter_mib": last / MIB,
            "flat": last - first <= max(64 * MIB, 0.15 * first)}


def phase_reports(name: str, t0: float, t1: float, timings: dict, samples: list[dict]) -> list[dict]:
    """Memory per phase: windows laid end to end from the stage's start by the manifest's phase timings.

    A stage's phases have different working sets (deduped's per-part signing, then per-bucket
    grouping; mixed's per-part reading, then its export), so growth is judged within a phase:
    that is where memory would creep if something accumulated over the data.
    """
    names = [phase for phase in PHASES.get(name, ()) if f"{phase}_seconds" in timings]
    windows, at_ = [], t0
    for phase in names:
        windows.append((phase, at_, at_ + timings[f"{phase}_seconds"]))
        at_ += timings[f"{phase}_seconds"]
    if not windows:
        windows = [("whole stage", t0, t1)]
    out = []
    for phase, start, stop in windows:
        inside = [s for s in samples if start <= s["t"] <= stop]
        row = {"stage": name, "phase": phase, "seconds": stop - start, "samples": len(inside), "memory": {}}
        for series_name in SERIES:
            values = [(s["t"], series(s, series_name)) for s in inside]
            if not values:
                continue
            row["memory"][series_name] = {"peak_mib": max(v for _, v in values) / MIB} | (
                growth(values) if len(values) >= MIN_PHASE_SAMPLES else {"flat": None})
        out.append(row)
    return out


def stage_report(name: str, start: dict, end: dict, samples: list[dict]) -> dict:
    t0, t1 = start["t"], end["t"]
    inside = [s for s in samples if t0 <= s["t"] <= t1] or [at(samples, t1)]
    wall = t1 - t0
    cpu = end["cpu_s"] - start["cpu_s"]
    docs_in = end.get("documents_in") or 0
    worker_peaks: dict[str, int] = {}
    for sample in inside:
        for key, rss in sample["workers"].items():
            worker_peaks[key] = max(worker_peaks.get(key, 0), rss)
    memory = {}
    for name_ in SERIES:
        values = [(s["t"] - t0, series(s, name_)) for s in inside]
        memory[name_] = {
            "at": [series(at(samples, t0 + p * wall), name_) / MIB for p in POINTS],
            "peak_mib": max(v for _, v in values) / MIB,
            "slope_mib_per_min": slope_mib_per_min(values),
        } | growth(values)
    return {
        "stage": name, "documents_in": docs_in, "documents_out": end.get("documents_out"),
        "wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall if wall else 0.0,
        "docs_per_s": docs_in / wall if wall else 0.0, "docs_per_s_per_core": docs_in / cpu if cpu else 0.0,
        "samples": len(inside), "worker_peaks_mib": sorted((v / MIB for v in worker_peaks.values()), reverse=True),
        "memory": memory, "version": end.get("version"),
        "phases": phase_reports(name, t0, t1, end.get("timings") or {}, samples),
    }


def print_report(reports: list[dict], *, docs: int, total_wall: float, facts: dict, args: argparse.Namespace) -> None:
    print(f"# textmill soak: {docs:,} documents, whole chain, {args.workers} workers")
    print()
    print(f"machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['memory_gib']} GiB, Python {facts['python']}; "
          f"load average at start {facts['loadavg_at_start'][0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"chain wall time {total_wall:.1f} s; RSS sampled every {args.interval:g} s; "
          f"rewrite budget {args.rewrite_documents} documents; mix {args.mix_tokens:,} tokens")
    print()
    print("| stage | docs in | docs out | wall s | CPU s | cores used | docs/s | docs/s per core "
          "| peak parent MiB | peak worker MiB | peak tree MiB | workers' peaks MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in reports:
        m = r["memory"]
        peaks = ", ".join(f"{p:.0f}" for p in r["worker_peaks_mib"]) or "-"
        print(f"| {r['stage']} | {r['documents_in']:,} | {r['documents_out']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
              f"| {r['cores_used']:.2f} | {r['docs_per_s']:,.0f} | {r['docs_per_s_per_core']:,.0f} "
              f"| {m['parent']['peak_mib']:.0f} | {m['worker (largest)']['peak_mib']:.0f} | {m['tree']['peak_mib']:.0f} "
              f"| {peaks} |")
    print()
    print("RSS (MiB) at 10/25/50/75/100% of each stage; slope by least squares over the stage; "
          "first/last ¼ = peak RSS in the stage's first/last quarter; grew = last > first + max(64 MiB, 15%) "
          "(across a stage this also counts a later phase's larger working set: see the phase table)")
    print()
    print("| stage | process | 10% | 25% | 50% | 75% | 100% | slope MiB/min | first ¼ | last ¼ | grew |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in reports:
        for name, m in r["memory"].items():
            cells = " | ".join(f"{v:.0f}" for v in m["at"])
            print(f"| {r['stage']} | {name} | {cells} | {m['slope_mib_per_min']:+.1f} | {m['first_quarter_mib']:.0f} "
                  f"| {m['last_quarter_mib']:.0f} | {'no' if m['flat'] else 'yes'} |")
    print()
    print(f"Per phase (windows from the manifest's phase timings; flat = peak of the phase's last quarter "
          f"≤ its first quarter's + max(64 MiB, 15%), judged on phases with ≥ {MIN_PHASE_SAMPLES} samples)")
    print()
    print("| stage | phase | s | samples | peak parent MiB | peak worker MiB | peak tree MiB | parent ¼→¼ "
          "| worker ¼→¼ | tree ¼→¼ | flat |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|---|")
    not_flat = []
    for r in reports:
        for ph in r["phases"]:
            m = ph["memory"]
            peaks = " | ".join(f"{m[n]['peak_mib']:.0f}" if n in m else "-" for n in SERIES)
            moves = " | ".join(f"{m[n]['first_quarter_mib']:.0f}→{m[n]['last_quarter_mib']:.0f}"
                               if n in m and m[n].get("flat") is not None else "-" for n in SERIES)
            verdicts = [m[n]["flat"] for n in SERIES if n in m and m[n].get("flat") is not None]
            verdict = "short" if not verdicts else ("yes" if all(verdicts) else "NO")
            if verdict == "NO":
                not_flat.append(f"{r['stage']}/{ph['phase']}")
            print(f"| {r['stage']} | {ph['phase']} | {ph['seconds']:.1f} | {ph['samples']} | {peaks} | {moves} | {verdict} |")
    print()
    print("memory flat within every phase: " + ("yes" if not not_flat else f"no ({', '.join(not_flat)})"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/dedup-bench/corpus/corpus-1000000")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="for generating a missing corpus")
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/soak-bench")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rewrite-documents", type=int, default=4, help="LLM budget (SmolLM2 in process); 0 skips")
    ap.add_argument("--rewrite-max-tokens", type=int, default=48)
    ap.add_argument("--mix-tokens", type=int, default=20_000_000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=3 * 3600)
    ap.add_argument("--out", default=None, help="default: bench/results/soak-<UTC time>.txt")
    ap.add_argument("--keep", action="store_true", help="keep the store under --work")
    args = ap.parse_args()

    corpus = Path(args.corpus)
    if not (corpus / "landing").is_dir():
        print(f"generating the corpus in {corpus} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(REPO / "bench" / "dedup_corpus.py"), "--docs", str(args.docs),
                        "--out", str(corpus), "--data", args.data], check=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    root = work / "store"
    docs = prepare_landing(corpus, args.docs, root / "landing" / CRAWL)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"soak-{stamp}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    facts = machine()

    command = [sys.executable, str(REPO / "bench" / "_soak_chain.py"), "--root", str(root), "--crawl", CRAWL,
               "--recipe", str(REPO / "recipes" / "default.yaml"), "--workers", str(args.workers),
               "--rewrite-documents", str(args.rewrite_documents), "--rewrite-max-tokens", str(args.rewrite_max_tokens),
               "--mix-tokens", str(args.mix_tokens)]
    began = time.time()
    with open(log, "wb") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=child_env(), text=True)
        sampler = Sampler(child.pid, args.interval)
        sampler.start()
        events: list[dict] = []
        try:
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("{"):
                    events.append(json.loads(line))
                    ev = events[-1]
                    if ev.get("event") in ("start", "end"):
                        print(f"[{time.time() - began:7.1f}s] {ev['stage']} {ev['event']}", file=sys.stderr, flush=True)
                if time.time() - began > args.timeout:
                    raise TimeoutError(f"the chain did not finish within {args.timeout:.0f} s")
            child.wait()
        finally:
            sampler.done.set()
            sampler.join()
            if child.poll() is None:
                kill_tree(child.pid)
    if child.returncode != 0:
        raise SystemExit(f"the chain failed ({child.returncode}); see {log}:\n{log.read_text(errors='replace')[-3000:]}")
    total_wall = time.time() - began

    starts = {e["stage"]: e for e in events if e.get("event") == "start"}
    reports = [stage_report(e["stage"], starts[e["stage"]], e, sampler.samples)
               for e in events if e.get("event") == "end"]
    text = io.StringIO()
    with redirect_stdout(text):
        print_report(reports, docs=docs, total_wall=total_wall, facts=facts, args=args)
    print(text.getvalue())
    out.write_text(text.getvalue())
    out.with_suffix(".json").write_text(json.dumps(
        {"docs": docs, "args": vars(args), "machine": facts, "events": events, "reports": reports,
         "samples": sampler.samples}, default=str))
    print(f"written: {out} (samples: {out.with_suffix('.json')})", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
