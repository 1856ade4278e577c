"""Near-duplicate removal benchmark: textmill's deduped stage vs datatrove and text-dedup MinHash.

One invocation, for each --sizes (ascending): generates the corpus if missing
(bench/dedup_corpus.py: real text recombined into distinct base documents plus exact, edited,
reordered, truncated and mixed copies with ground-truth clusters; 20% of documents are
copies), then runs each system on the same JSONL landing files as a child process:

    textmill    .venv/bin/python bench/_dedup_textmill.py raw|dedup  (raw ingestion, then the
                deduped stage: URL + exact + MinHash-LSH, 5-gram shingles of words and
                punctuation marks (the default minhash.tokens), 14 bands x 8 rows,
                64-bit hashes; LocalProcessExecutor(workers=W))
    textmill-words  the same deduped stage on textmill's raw version with minhash.tokens=words
                (punctuation dropped, as datatrove/FineWeb) instead of the default
                words_and_punctuation
    datatrove   .venv-bench/bin/python bench/_dedup_datatrove.py run  (MinhashDedupSignature,
                -Buckets, -Cluster, -Filter; MinhashConfig(n_grams=5, num_buckets=14,
                hashes_per_bucket=8, precision 64); LocalPipelineExecutor(workers=W))
    text-dedup  .venv-textdedup/bin/python bench/_dedup_textdedup.py run  (text_dedup.minhash,
                ngram 5, num_perm 112, b 14, r 8, xxh3, num_proc W)

Each measured child runs under HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1 (nothing downloads).
Measured per child: wall time (interpreter start to exit), CPU time (user+sys of the whole
tree: the larger of getrusage(RUSAGE_CHILDREN) deltas and per-process psutil polling, both
lower bounds), peak RSS summed over the process tree (psutil polling every --poll s) and
peak PSS (shared pages divided among sharers), and the host load average before the run.
After a measured run, an unmeasured `export` child writes (id, predicted cluster, kept).

    docs/s          = corpus documents / child wall seconds
    docs/s/core     = corpus documents / child CPU seconds (= docs/s divided by the cores
                      actually used, cpu/wall); docs/s/worker = docs/s / W is also stored
    pair P/R/F1     over pairs of documents: predicted pair = same predicted cluster, true pair =
                    same ground-truth cluster (every system exposes clusters: textmill's
                    dup_cluster, datatrove's minhash_cluster_id, text-dedup's union-find)
    removal P/R     document level: a true cluster of size s needs s-1 removals; removals in a
                    true cluster count as correct up to s-1; P = correct / removed,
                    R = correct / needed (independent of which member a system keeps)
    recall by kind  share of copies of each kind (exact, edit, reorder, truncate, mixed) put in
                    the same predicted cluster as their base document

textmill is reported three ways: its dedup stage alone (the number comparable to the peers'
MinHash pipelines, which read the same JSONL themselves), raw ingestion alone, and raw+dedup.
A peer runs at a size only if its estimate (wall at the previous size x size ratio x 1.15)
is within --budget-minutes; otherwise it is reported as "not run (estimated N min)".
textmill always runs (--budget-exempt).

Also (--mrpc): MRPC paraphrase pairs as a sentence-level sanity check of textmill's MinHash
(textmill.dedup.minhash shingle_hashes + MinHasher 14x8): estimated vs exact Jaccard of word
n-gram shingles (n = 1, 2, 3), LSH candidate decision and est. Jaccard >= 0.5 against the label.

Results: Markdown tables on stdout, JSON in bench/results/dedup-<utc time>.json (rewritten
after every run, so a partial run leaves its results).

    .venv/bin/python bench/dedup_bench.py --sizes 20000 100000
    .venv/bin/python bench/dedup_bench.py --sizes 1000000 --systems textmill textdedup
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _procmon import child_env, machine, measure_child  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
PYTHONS = {"textmill": REPO / ".venv/bin/python", "textmill-words": REPO / ".venv/bin/python", "datatrove": REPO / ".venv-bench/bin/python",
           "textdedup": REPO / ".venv-textdedup/bin/python"}
SCRIPTS = {"textmill": "bench/_dedup_textmill.py", "textmill-words": "bench/_dedup_textmill.py", "datatrove": "bench/_dedup_datatrove.py",
           "textdedup": "bench/_dedup_textdedup.py"}
KIND_ORDER = ("exact", "edit", "reorder", "truncate", "mixed")


# --- measuring a child --------------------------------------------------------------------

def run_export(command: list[str], *, log: Path) -> dict:
    with open(log, "ab") as stderr:
        stderr.write(f"\n$ {' '.join(map(str, command))}\n".encode())
        stderr.flush()
        out = subprocess.run([str(c) for c in command], stdout=subprocess.PIPE, stderr=stderr, cwd=REPO,
                             env=child_env(), check=True)
    lines = [line for line in out.stdout.decode().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# --- scoring ------------------------------------------------------------------------------

def load_truth(corpus: Path):
    import polars as pl

    return pl.read_parquet(sorted((corpus / "truth").glob("*.parquet")))


def score(truth, assignments_path: Path) -> dict:
    """Pair P/R/F1 of predicted vs true clusters, removal P/R, recall of copies by kind."""
    import polars as pl

    predicted = pl.read_parquet(assignments_path).unique("id", keep="first")
    frame = truth.select("id", "cluster", "kind").join(predicted.rename({"cluster": "pred"}), on="id", how="left")
    missing = int(frame["pred"].null_count())
    frame = frame.with_columns(pl.coalesce("pred", "id").alias("pred"),
                               pl.col("kept").fill_null(True))

    def pairs(counts) -> int:
        return int((counts * (counts - 1) // 2).sum())

    true_pairs = pairs(frame.group_by("cluster").len()["len"].cast(pl.Int64))
    pred_pairs = pairs(frame.group_by("pred").len()["len"].cast(pl.Int64))
    hit_pairs = pairs(frame.group_by("cluster", "pred").len()["len"].cast(pl.Int64))
    p = hit_pairs / pred_pairs if pred_pairs else 1.0
    r = hit_pairs / true_pairs if true_pairs else 1.0
    per_cluster = frame.group_by("cluster").agg(size=pl.len(), removed=(~pl.col("kept")).sum())
    needed = int((per_cluster["size"] - 1).sum())
    removed = int(per_cluster["removed"].sum())
    correct = int(per_cluster.select(pl.min_horizontal("removed", pl.col("size") - 1)).to_series().sum())
    rp = correct / removed if removed else 1.0
    rr = correct / needed if needed else 1.0
    base = frame.filter(pl.col("kind") == "base").select("cluster", base_pred="pred")
    copies = frame.filter(pl.col("kind") != "base").join(base, on="cluster", how="left")
    by_kind = {k: round(float(v), 4) for k, v in copies.group_by("kind").agg(
        (pl.col("pred") == pl.col("base_pred")).mean()).iter_rows()}
    return {
        "pair_precision": round(p, 4), "pair_recall": round(r, 4),
        "pair_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "true_pairs": true_pairs, "predicted_pairs": pred_pairs, "correct_pairs": hit_pairs,
        "removal_precision": round(rp, 4), "removal_recall": round(rr, 4),
        "removal_f1": round(2 * rp * rr / (rp + rr), 4) if rp + rr else 0.0,
        "removed": removed, "removals_needed": needed, "kept": int(frame["kept"].sum()),
        "copy_recall_by_kind": {k: by_kind.get(k) for k in KIND_ORDER},
        "documents_without_assignment": missing,
    }


# --- systems ------------------------------------------------------------------------------

def link_landing(corpus: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted((corpus / "landing").glob("*.jsonl")):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copyfile(path, target / path.name)


def run_system(system: str, corpus: Path, work: Path, args, log: Path) -> list[dict]:
    """Measured runs of one system; returns result rows (textmill: dedup, raw, raw+dedup)."""
    python, script = PYTHONS[system], SCRIPTS[system]
    timeout = args.timeout_minutes * 60
    common = ["--workers", str(args.workers)]
    if system == "textmill-words":  # the same raw version as "textmill", other tokens: dedup only
        work = work.parent / "textmill"
        tokens = ["--tokens", "words"]
        dedup = measure_child([python, script, "dedup", "--root", work, *common, *tokens], cwd=REPO, log=log,
                              interval=args.poll, timeout=timeout)
        print(f"    textmill dedup (tokens=words): {dedup['wall_seconds']:.1f} s", file=sys.stderr)
        export = run_export([python, script, "export", "--root", work, "--out", work / "assignments.parquet"],
                            log=log)
        return [("textmill dedup, tokens=words", dedup, export, True)]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    assignments = work / "assignments.parquet"
    if system == "textmill":
        link_landing(corpus, work / "landing" / "bench")
        raw = measure_child([python, script, "raw", "--root", work, *common], cwd=REPO, log=log, interval=args.poll,
                            timeout=timeout)
        print(f"    textmill raw: {raw['wall_seconds']:.1f} s", file=sys.stderr)
        dedup = measure_child([python, script, "dedup", "--root", work, *common], cwd=REPO, log=log,
                              interval=args.poll, timeout=timeout)
        print(f"    textmill dedup: {dedup['wall_seconds']:.1f} s", file=sys.stderr)
        export = run_export([python, script, "export", "--root", work, "--out", assignments], log=log)
        total = {
            "wall_seconds": round(raw["wall_seconds"] + dedup["wall_seconds"], 3),
            "cpu_seconds": round(raw["cpu_seconds"] + dedup["cpu_seconds"], 3),
            "peak_rss_sum_mib": max(raw["peak_rss_sum_mib"], dedup["peak_rss_sum_mib"]),
            "peak_pss_sum_mib": max(raw["peak_pss_sum_mib"], dedup["peak_pss_sum_mib"]),
            "peak_single_rss_mib": max(raw["peak_single_rss_mib"], dedup["peak_single_rss_mib"]),
            "load_average_before": raw["load_average_before"],
        }
        return [("textmill dedup", dedup, export, True), ("textmill raw", raw, None, False),
                ("textmill raw+dedup", total, export, True)]
    landing = corpus / "landing"
    measured = measure_child([python, script, "run", "--landing", landing, "--work", work, *common], cwd=REPO,
                             log=log, interval=args.poll, timeout=timeout)
    print(f"    {system}: {measured['wall_seconds']:.1f} s", file=sys.stderr)
    export = run_export([python, script, "export", "--landing", landing, "--work", work, "--out", assignments],
                        log=log)
    return [({"datatrove": "datatrove", "textdedup": "text-dedup"}[system], measured, export, True)]


def throughput(docs: int, measured: dict, workers: int) -> dict:
    wall, cpu = measured["wall_seconds"], measured["cpu_seconds"]
    return {
        "docs_per_second": round(docs / wall, 1) if wall else None,
        "cores_used": round(cpu / wall, 2) if wall else None,
        "docs_per_second_per_core": round(docs / cpu, 1) if cpu else None,
        "docs_per_second_per_worker": round(docs / wall / workers, 1) if wall else None,
    }


# --- MRPC ---------------------------------------------------------------------------------

def mrpc_check(data: Path) -> dict:
    """textmill MinHash on MRPC sentence pairs vs the paraphrase label."""
    import csv
    import gzip

    import numpy as np
    import polars as pl

    from textmill.dedup.minhash import MinHasher, estimated_jaccard, shingle_hashes

    rows = []
    for name in ("msr_paraphrase_train.txt.gz", "msr_paraphrase_test.txt.gz"):
        with gzip.open(data / "paraphrase-mrpc" / name, "rt", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)
            rows += [(int(r[0]), r[3], r[4]) for r in reader if len(r) >= 5]
    labels = np.array([r[0] for r in rows], dtype=bool)
    hasher = MinHasher(bands=14, rows=8, seed=1)

    def prf(predicted: np.ndarray) -> dict:
        tp = int((predicted & labels).sum())
        p = tp / predicted.sum() if predicted.sum() else 0.0
        r = tp / labels.sum()
        return {"precision": round(p, 4), "recall": round(r, 4),
                "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "predicted_positive": int(predicted.sum())}

    out = {"pairs": len(rows), "positive": int(labels.sum()), "by_ngram": {}}
    for ngram in (1, 2, 3):
        left = shingle_hashes(pl.Series([r[1] for r in rows]), ngram=ngram)
        right = shingle_hashes(pl.Series([r[2] for r in rows]), ngram=ngram)
        sl, sr = hasher.signatures(left), hasher.signatures(right)
        est = estimated_jaccard(sl, sr)
        candidate = (hasher.band_keys(sl) == hasher.band_keys(sr)).any(axis=1)
        exact = np.array([
            len(a & b) / len(a | b) if a | b else 1.0
            for a, b in ((set(left.values[left.offsets[i]:left.offsets[i + 1]].tolist()),
                          set(right.values[right.offsets[i]:right.offsets[i + 1]].tolist())) for i in range(len(rows)))
        ])
        out["by_ngram"][ngram] = {
            "mean_exact_jaccard_positive": round(float(exact[labels].mean()), 4),
            "mean_exact_jaccard_negative": round(float(exact[~labels].mean()), 4),
            "estimate_mean_abs_error": round(float(np.abs(est - exact).mean()), 4),
            "estimate_bias": round(float((est - exact).mean()), 4),
            "lsh_14x8_candidate": prf(candidate),
            "estimated_jaccard_ge_0.5": prf(est >= 0.5),
            "estimated_jaccard_ge_0.3": prf(est >= 0.3),
        }
    return out


# --- reporting ----------------------------------------------------------------------------

def fmt(value, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def tables(results: dict) -> str:
    lines = ["| system | docs | wall s | CPU s | cores used | docs/s | docs/s/core | peak RSS MiB (tree) | "
             "peak PSS MiB | pair P | pair R | pair F1 | removal P | removal R | removed/needed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["runs"]:
        if row.get("status") != "ok":
            lines.append(f"| {row['system']} | {row['docs']:,} | {row['status']} |" + " |" * 12)
            continue
        m, t, q = row["measured"], row["throughput"], row.get("quality") or {}
        lines.append(
            f"| {row['system']} | {row['docs']:,} | {m['wall_seconds']:.1f} | {m['cpu_seconds']:.1f} | "
            f"{fmt(t['cores_used'], '.2f')} | {fmt(t['docs_per_second'])} | {fmt(t['docs_per_second_per_core'])} | "
            f"{m['peak_rss_sum_mib']:,.0f} | {m['peak_pss_sum_mib']:,.0f} | "
            f"{fmt(q.get('pair_precision'), '.3f')} | {fmt(q.get('pair_recall'), '.3f')} | "
            f"{fmt(q.get('pair_f1'), '.3f')} | {fmt(q.get('removal_precision'), '.3f')} | "
            f"{fmt(q.get('removal_recall'), '.3f')} | "
            + (f"{q['removed']:,}/{q['removals_needed']:,} |" if q else "– |"))
    lines += ["", "Recall of copies by kind (copy in the same predicted cluster as its base document):", "",
              "| system | docs | " + " | ".join(KIND_ORDER) + " |", "|---|---:|" + "---:|" * len(KIND_ORDER)]
    for row in results["runs"]:
        q = row.get("quality")
        if row.get("status") == "ok" and q and row["system"] != "textmill raw+dedup":
            lines.append(f"| {row['system']} | {row['docs']:,} | "
                         + " | ".join(fmt(q["copy_recall_by_kind"][k], ".3f") for k in KIND_ORDER) + " |")
    textmill = [r for r in results["runs"] if r["system"] == "textmill dedup" and r.get("status") == "ok"]
    if textmill:
        lines += ["", "textmill dedup stage: phase seconds and memory by size:", "",
                  "| docs | sign | url | exact | edges | cluster | write | index | stage wall | peak RSS tree MiB | "
                  "peak PSS MiB | parent peak RSS MiB | largest worker peak RSS MiB |", "|---:|" + "---:|" * 12]
        for r in textmill:
            tm = (r["measured"].get("child") or {}).get("timings", {})
            m = r["measured"]
            lines.append(f"| {r['docs']:,} | " + " | ".join(
                fmt(tm.get(f"{k}_seconds"), ".1f")
                for k in ("sign", "url", "exact", "edges", "cluster", "write", "index"))
                + f" | {fmt(tm.get('wall_seconds'), '.1f')} | {m['peak_rss_sum_mib']:,.0f} | "
                  f"{m['peak_pss_sum_mib']:,.0f} | {fmt(m.get('peak_parent_rss_mib'))} | "
                  f"{fmt(m.get('peak_worker_rss_mib'))} |")
    mrpc = results.get("mrpc")
    if mrpc:
        lines += ["", f"MRPC ({mrpc['pairs']:,} pairs, {mrpc['positive']:,} paraphrases): textmill MinHash "
                  "(112 permutations, 14x8 bands) on word n-gram shingles vs the paraphrase label:", "",
                  "| n | exact J (para / non) | est. error (MAE, bias) | LSH 14x8 candidate P / R / F1 | "
                  "est. J >= 0.5 P / R / F1 | est. J >= 0.3 P / R / F1 |", "|---:|---|---|---|---|---|"]
        for n, v in mrpc["by_ngram"].items():
            def prf(d):
                return f"{d['precision']:.3f} / {d['recall']:.3f} / {d['f1']:.3f}"
            lines.append(f"| {n} | {v['mean_exact_jaccard_positive']:.3f} / {v['mean_exact_jaccard_negative']:.3f} | "
                         f"{v['estimate_mean_abs_error']:.3f}, {v['estimate_bias']:+.3f} | "
                         f"{prf(v['lsh_14x8_candidate'])} | {prf(v['estimated_jaccard_ge_0.5'])} | "
                         f"{prf(v['estimated_jaccard_ge_0.3'])} |")
    return "\n".join(lines)


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000, 1000000])
    parser.add_argument("--systems", nargs="+", choices=["textmill", "textmill-words", "datatrove", "textdedup"],
                        default=["textmill", "textmill-words", "datatrove", "textdedup"],
                        help="textmill-words: textmill with minhash.tokens=words on textmill's raw version "
                             "(run after textmill)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--corpora", default="/tmp/dedup-bench/corpus", help="corpus-{size}/ folders (reused)")
    parser.add_argument("--work", default="/tmp/dedup-bench/runs", help="per-run working folders")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="skip a peer estimated to take longer")
    parser.add_argument("--budget-exempt", nargs="*", default=["textmill", "textmill-words"])
    parser.add_argument("--estimate-from", help="earlier results JSON to estimate run times from")
    parser.add_argument("--timeout-minutes", type=float, default=90.0)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between process-tree samples")
    parser.add_argument("--no-mrpc", dest="mrpc", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep each run's working folder")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"dedup-{stamp}.json"
    log = out_dir / f"dedup-{stamp}.log"
    results = {
        "started": stamp, "argv": sys.argv[1:], "workers": args.workers,
        "host": machine(),
        "textmill_commit": git("rev-parse", "HEAD"),
        "textmill_dirty_files": git("status", "--porcelain", "--", "textmill").splitlines(),
        "corpora": {}, "runs": [],
    }

    def save() -> None:
        out_path.write_text(json.dumps(results, indent=2))

    if args.mrpc:
        began = time.perf_counter()
        results["mrpc"] = mrpc_check(Path(args.data))
        results["mrpc"]["seconds"] = round(time.perf_counter() - began, 2)
        save()

    last_wall: dict[str, tuple[int, float]] = {}
    if args.estimate_from:
        for row in json.loads(Path(args.estimate_from).read_text())["runs"]:
            if row.get("status") == "ok":
                key = {"datatrove": "datatrove", "text-dedup": "textdedup", "textmill raw+dedup": "textmill"}.get(
                    row["system"])
                if key and row["docs"] >= last_wall.get(key, (0, 0))[0]:
                    last_wall[key] = (row["docs"], row["measured"]["wall_seconds"])
    for size in sorted(args.sizes):
        corpus = Path(args.corpora) / f"corpus-{size}"
        if not (corpus / "corpus.json").exists():
            print(f"generating {corpus}", file=sys.stderr)
            began = time.perf_counter()
            subprocess.run([str(PYTHONS["textmill"]), "bench/dedup_corpus.py", "--docs", str(size), "--out",
                            str(corpus), "--data", args.data, "--processes", str(args.workers)], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL)
            print(f"  generated in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        summary = json.loads((corpus / "corpus.json").read_text())
        results["corpora"][str(size)] = {k: summary[k] for k in (
            "docs", "base_documents", "duplicate_documents", "duplicate_share", "clusters_with_copies",
            "cluster_size_histogram", "true_duplicate_pairs", "documents_by_kind", "bytes", "mean_words",
            "distinctness_check", "pool", "seconds", "shards")}
        truth = load_truth(corpus)
        for system in args.systems:
            name = {"textmill": "textmill", "textmill-words": "textmill (tokens=words)", "datatrove": "datatrove",
                    "textdedup": "text-dedup"}[system]
            if system in last_wall and system not in args.budget_exempt:
                docs_before, wall_before = last_wall[system]
                estimate = wall_before * size / docs_before * 1.15 / 60
                if estimate > args.budget_minutes:
                    status = f"not run (estimated {estimate:.0f} min)"
                    print(f"  {name} @ {size}: {status}", file=sys.stderr)
                    results["runs"].append({"system": name, "docs": size, "status": status,
                                            "estimated_minutes": round(estimate, 1)})
                    save()
                    continue
            print(f"  {name} @ {size:,}", file=sys.stderr)
            work = Path(args.work) / f"{size}" / system
            try:
                rows = run_system(system, corpus, work, args, log)
                if system == "textmill-words":
                    work = work.parent / "textmill"
            except Exception as exc:  # noqa: BLE001 - report and go on with the other systems
                print(f"  {name} @ {size}: FAILED {exc}", file=sys.stderr)
                results["runs"].append({"system": name, "docs": size, "status": f"failed: {str(exc)[:2000]}"})
                save()
                continue
            quality = None
            for label, measured, export, scored in rows:
                if scored and quality is None:
                    quality = score(truth, work / "assignments.parquet")
                results["runs"].append({
                    "system": label, "docs": size, "status": "ok", "workers": args.workers,
                    "measured": measured, "throughput": throughput(size, measured, args.workers),
                    "quality": quality if scored else None, "export": export,
                })
                if label in ("textmill raw+dedup", "datatrove", "text-dedup"):
                    last_wall[system] = (size, measured["wall_seconds"])
            save()
            if not args.keep and not (system == "textmill" and "textmill-words" in args.systems):
                shutil.rmtree(work, ignore_errors=True)
        print(tables(results), file=sys.stderr)

    results["finished"] = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    save()
    print(tables(results))
    print(f"\nwritten: {out_path} (child logs: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
