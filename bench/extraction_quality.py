"""Extraction quality and speed of textmill's HTML extractors against two public gold sets.

Every page goes through textmill's own path: `decode_html(bytes)` (the charset logic the raw
stage uses), then `extract_text(html, extractor=..., main_content=...)`. Configurations:

    resiliparse/main      extractor="resiliparse", main_content=True
    resiliparse/full      extractor="resiliparse", main_content=False  (whole-page text)
    trafilatura/main      extractor="trafilatura", main_content=True   (recipe default; with fallbacks)
    trafilatura/fast      reference only, NOT a textmill setting: trafilatura.extract with
                          no_fallback=True (the numbers of record were taken when textmill
                          mapped main_content=False to this; that mapping is gone)
    trafilatura/precision reference only, NOT a textmill setting: trafilatura.extract with the
                          options datatrove's `Trafilatura` step uses (favor_precision=True,
                          include_comments=False) but deduplicate=False, as in
                          bench/ingest_throughput.py (the dedup cache makes scores depend on
                          page order); trafilatura 2.x from .venv, not datatrove's 1.x.

Gold sets (read from --data; the product never depends on them):

* extraction-gold-scrapinghub-aeb (181 news/blog pages, gold article body). Scored as
  bag-of-words: text -> lowercase -> tokens = `re.findall(r"\\w+", text)` (Unicode \\w) -> a
  multiset (Counter). Overlap = sum over tokens of min(count in output, count in gold).
  Per page: P = overlap / |output|, R = overlap / |gold|, F1 = 2PR/(P+R); an empty output
  scores P=R=F1=0. The table reports the mean over pages (macro) and, in the JSON, the
  micro (summed over pages) values too.
* extraction-gold-trafilatura (990 multilingual pages, "with"/"without" snippets). The
  trafilatura repo's convention: a "with" snippet found in the output is a true positive,
  missing a false negative; a "without" snippet found is a false positive, absent a true
  negative. Counts are summed over all pages (micro), then P = TP/(TP+FP),
  R = TP/(TP+FN), F1, accuracy = (TP+TN)/all. Matching is substring matching after
  collapsing every whitespace run to one space in both the output and the snippet (so
  line-break placement does not count; the case and punctuation must match).

Speed: pages/s of `extract_text` alone (the HTML already decoded), single process, one
warm-up call per configuration excluded, over all pages of both sets; measured with
time.perf_counter (wall) and time.process_time (CPU) around each call. pages/CPU-s is the
steadier number on a shared machine (other processes stretch wall time, not CPU time).

Usage (from the repository root, textmill's virtualenv):

    .venv/bin/python bench/extraction_quality.py [--data ../shared/data] [--configs ...]

Prints a table and writes bench/results/extraction_quality.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from _procmon import machine  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"

TOKEN = re.compile(r"\w+")
SPACE = re.compile(r"\s+")


def tokens(text: str) -> Counter[str]:
    """The bag of words of a text: lowercase \\w+ tokens as a multiset."""
    return Counter(TOKEN.findall(text.lower()))


def squash(text: str) -> str:
    return SPACE.sub(" ", text).strip()


def _precision_datatrove_style(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=False) or ""


def make_configs() -> dict[str, Callable[[str], str]]:
    from textmill.ingest.extract import extract_text

    def _trafilatura_no_fallback(html: str) -> str:
        import trafilatura

        return trafilatura.extract(html, no_fallback=True, include_comments=False, include_tables=True,
                                   deduplicate=False) or ""

    return {
        "resiliparse/main": lambda h: extract_text(h, extractor="resiliparse", main_content=True),
        "resiliparse/full": lambda h: extract_text(h, extractor="resiliparse", main_content=False),
        "trafilatura/main": lambda h: extract_text(h, extractor="trafilatura", main_content=True),
        "trafilatura/fast": lambda h: _trafilatura_no_fallback(h).strip(),
        "trafilatura/precision": lambda h: _precision_datatrove_style(h).strip(),
    }


@dataclass
class Page:
    key: str
    html: str
    gold_text: str | None = None  # AEB
    with_: list[str] = field(default_factory=list)  # trafilatura set
    without: list[str] = field(default_factory=list)


def load_aeb(folder: Path) -> list[Page]:
    from textmill.ingest.extract import decode_html

    with gzip.open(folder / "ground-truth.json.gz", "rt", encoding="utf-8") as handle:
        truth = json.load(handle)
    pages = []
    for key in sorted(truth):
        data = gzip.decompress((folder / "html" / f"{key}.html.gz").read_bytes())
        html, _ = decode_html(data)
        pages.append(Page(key=key, html=html, gold_text=truth[key]["articleBody"]))
    return pages


def load_trafilatura_set(folder: Path) -> list[Page]:
    from textmill.ingest.extract import decode_html

    with gzip.open(folder / "evaldata.json.gz", "rt", encoding="utf-8") as handle:
        evaldata = json.load(handle)
    wanted = {item["file"] for item in evaldata.values()}
    blobs: dict[str, bytes] = {}
    with tarfile.open(folder / "trafilatura-eval-html.tar.xz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            # the repo's loader looks in cache/ first, then eval/
            if (len(parts) == 3 and parts[1] in ("cache", "eval") and parts[2] in wanted
                    and (parts[1] == "cache" or parts[2] not in blobs)):
                blobs[parts[2]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    pages = []
    missing = 0
    for url in sorted(evaldata):
        item = evaldata[url]
        data = blobs.get(item["file"])
        if data is None:
            missing += 1
            continue
        html, _ = decode_html(data)
        pages.append(Page(key=url, html=html,
                          with_=[s for s in item.get("with", []) if s],
                          without=[s for s in item.get("without", []) if s]))
    if missing:
        print(f"warning: {missing} pages of evaldata.json have no HTML file", file=sys.stderr)
    return pages


def run_config(fn: Callable[[str], str], pages: list[Page]) -> tuple[list[str], float, float, int]:
    """Outputs, wall seconds, CPU seconds and error count of one configuration over pages."""
    fn(pages[0].html)  # warm-up: imports, lazy model loading
    outputs, wall, cpu, errors = [], 0.0, 0.0, 0
    for page in pages:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            text = fn(page.html)
        except Exception:  # noqa: BLE001 - an extractor crash scores as empty output
            text = ""
            errors += 1
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        outputs.append(text)
    return outputs, wall, cpu, errors


def score_aeb(pages: list[Page], outputs: list[str]) -> dict:
    ps, rs, fs = [], [], []
    overlap_sum = out_sum = gold_sum = empty = 0
    for page, text in zip(pages, outputs):
        out, gold = tokens(text), tokens(page.gold_text or "")
        overlap = sum((out & gold).values())
        n_out, n_gold = sum(out.values()), sum(gold.values())
        p = overlap / n_out if n_out else 0.0
        r = overlap / n_gold if n_gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(f)
        overlap_sum += overlap
        out_sum += n_out
        gold_sum += n_gold
        empty += n_out == 0
    n = len(pages)
    mp, mr = overlap_sum / out_sum if out_sum else 0.0, overlap_sum / gold_sum if gold_sum else 0.0
    return {
        "pages": n,
        "precision": sum(ps) / n,
        "recall": sum(rs) / n,
        "f1": sum(fs) / n,
        "micro_precision": mp,
        "micro_recall": mr,
        "micro_f1": 2 * mp * mr / (mp + mr) if mp + mr else 0.0,
        "empty_outputs": empty,
    }


def score_snippets(pages: list[Page], outputs: list[str]) -> dict:
    tp = fn = fp = tn = empty = 0
    for page, text in zip(pages, outputs):
        text = squash(text)
        empty += not text
        for snippet in page.with_:
            if squash(snippet) in text:
                tp += 1
            else:
                fn += 1
        for snippet in page.without:
            if squash(snippet) in text:
                fp += 1
            else:
                tn += 1
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "pages": len(pages),
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "accuracy": (tp + tn) / (tp + fn + fp + tn),
        "tp": tp, "fn": fn, "fp": fp, "tn": tn,
        "empty_outputs": empty,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding extraction-gold-scrapinghub-aeb/ and extraction-gold-trafilatura/ "
                             "(default: %(default)s)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="configurations to run (default: all): resiliparse/main resiliparse/full "
                             "trafilatura/main trafilatura/fast trafilatura/precision")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N pages of each set (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "extraction_quality.json")
    args = parser.parse_args(argv)

    configs = make_configs()
    chosen = args.configs or list(configs)
    unknown = [c for c in chosen if c not in configs]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(configs)}")

    t0 = time.perf_counter()
    sets = {
        "scrapinghub-aeb": load_aeb(args.data / "extraction-gold-scrapinghub-aeb"),
        "trafilatura-eval": load_trafilatura_set(args.data / "extraction-gold-trafilatura"),
    }
    if args.limit:
        sets = {name: pages[: args.limit] for name, pages in sets.items()}
    print(f"loaded {', '.join(f'{n}: {len(p)} pages' for n, p in sets.items())} in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)

    results: list[dict] = []
    for config in chosen:
        for set_name, pages in sets.items():
            outputs, wall, cpu, errors = run_config(configs[config], pages)
            score = score_aeb(pages, outputs) if set_name == "scrapinghub-aeb" else score_snippets(pages, outputs)
            row = {"config": config, "set": set_name, **score, "errors": errors,
                   "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
                   "pages_per_second": len(pages) / wall if wall else 0.0}
            results.append(row)
            print(f"{config:22s} {set_name:17s} P={row['precision']:.3f} R={row['recall']:.3f} "
                  f"F1={row['f1']:.3f} {row['pages_per_second']:8.1f} pages/s", file=sys.stderr)

    # speed over both sets together
    speed = {}
    for config in chosen:
        rows = [r for r in results if r["config"] == config]
        pages = sum(r["pages"] for r in rows)
        wall = sum(r["seconds"] for r in rows)
        speed[config] = {"pages": pages, "seconds": round(wall, 3), "pages_per_second": pages / wall if wall else 0.0,
                         "cpu_seconds": round(sum(r["cpu_seconds"] for r in rows), 3)}

    print()
    print("| configuration | gold set | pages | precision | recall | F1 | empty | pages/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['config']} | {r['set']} | {r['pages']} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['f1']:.3f} | {r['empty_outputs']} | {r['pages_per_second']:.1f} |")
    print()
    print("| configuration | pages (both sets) | extraction wall s | CPU s | pages/s (1 process) | pages/CPU-s |")
    print("|---|---:|---:|---:|---:|---:|")
    for config, s in speed.items():
        per_cpu = s["pages"] / s["cpu_seconds"] if s["cpu_seconds"] else 0.0
        print(f"| {config} | {s['pages']} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | "
              f"{s['pages_per_second']:.1f} | {per_cpu:.1f} |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "extraction_quality",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": {name: version(name) for name in ("textmill", "resiliparse", "trafilatura")},
        "tokenizer": "lowercase, re.findall(r'\\w+'), multiset",
        "results": results,
        "speed": speed,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
