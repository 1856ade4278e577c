"""Build the real-text fixture of the filter parity test (tests/data/filter-parity/).

Every document is real web text from the shared data folder (`--data`, see its README.txt):

  trafilatura-eval  990 HTML pages of trafilatura's evaluation set (mostly German, also English,
                    Polish, French ...), extracted three ways: trafilatura main text, resiliparse main
                    text and resiliparse whole page (navigation, footers, link lists: the boilerplate
                    the C4 and FineWeb rules exist for)
  scrapinghub       181 news/blog HTML pages, same three extractions, plus the gold article body
  readability       130 pages of Mozilla Readability's tests, same three extractions
  warc-samples      the HTML responses of the Common Crawl / wget / UKWA WARC samples (resiliparse)
  ccnet             30 CCNet-processed Common Crawl documents (text as published)

Empty extractions are dropped, texts are cut at `--max-chars` (on a line boundary) to keep the
fixture small, and a seeded sample of `--docs` documents is written as xz-compressed JSON lines
with the fields `id`, `origin`, `url`, `text`. The script is deterministic for the same inputs.

    .venv/bin/python bench/_filter_fixture.py --data ../shared/data --docs 1500
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import lzma
import random
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textmill.ingest.extract import decode_html, extract_text  # noqa: E402
from textmill.ingest.readers import Record, read_records  # noqa: E402

EXTRACTIONS = (("trafilatura", True, "traf"), ("resiliparse", True, "resi-main"), ("resiliparse", False, "resi-page"))


def _extractions(html: bytes) -> Iterator[tuple[str, str]]:
    try:
        page, _ = decode_html(html)
    except ValueError:
        return
    for extractor, main, label in EXTRACTIONS:
        try:
            text = extract_text(page, extractor=extractor, main_content=main)
        except Exception:  # a page an extractor cannot parse is simply not in the pool
            continue
        yield label, text


def trafilatura_pages(data: Path) -> Iterator[dict]:
    meta = json.load(gzip.open(data / "extraction-gold-trafilatura/evaldata.json.gz"))
    by_file = {entry["file"]: url for url, entry in meta.items()}
    with tarfile.open(data / "extraction-gold-trafilatura/trafilatura-eval-html.tar.xz") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or name not in by_file:
                continue
            html = tar.extractfile(member).read()
            for label, text in _extractions(html):
                yield {"origin": f"trafilatura-eval/{label}", "url": by_file[name], "key": name, "text": text}


def scrapinghub_pages(data: Path) -> Iterator[dict]:
    folder = data / "extraction-gold-scrapinghub-aeb"
    gold = json.load(gzip.open(folder / "ground-truth.json.gz"))
    for key in sorted(gold):
        yield {"origin": "scrapinghub/gold", "url": gold[key]["url"], "key": key, "text": gold[key]["articleBody"]}
        html = gzip.open(folder / f"html/{key}.html.gz").read()
        for label, text in _extractions(html):
            yield {"origin": f"scrapinghub/{label}", "url": gold[key]["url"], "key": key, "text": text}


def readability_pages(data: Path) -> Iterator[dict]:
    with tarfile.open(data / "extraction-gold-readability/readability-test-pages.tar.xz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith("/source.html"):
                continue
            key = member.name.split("/")[-2]
            for label, text in _extractions(tar.extractfile(member).read()):
                yield {"origin": f"readability/{label}", "url": f"http://fakehost/{key}", "key": key, "text": text}


def warc_pages(data: Path) -> Iterator[dict]:
    for path in sorted((data / "warc-samples").glob("*.warc.gz")):
        with path.open("rb") as handle:
            records = list(read_records(handle, name=path.name, source="warc", html_mime_types=("text/html",),
                                        max_bytes=1 << 24, skipped=Counter()))
        for item in records:
            if not isinstance(item, Record) or item.kind != "html":
                continue
            payload = item.payload if isinstance(item.payload, bytes) else item.payload.encode()
            for label, text in _extractions(payload):
                if label == "resi-main":
                    yield {"origin": "warc-samples/resi-main", "url": item.url, "key": item.url, "text": text}


def ccnet_docs(data: Path) -> Iterator[dict]:
    for path in sorted((data / "ccnet-processed-cc-docs").glob("*.gz")):
        for line in io.TextIOWrapper(gzip.open(path), encoding="utf-8"):
            doc = json.loads(line)
            url = doc.get("metadata", {}).get("url") or doc.get("id", "")
            yield {"origin": "ccnet", "url": url, "key": doc["id"], "text": doc["text"]}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    return head[: head.rfind("\n")] if "\n" in head else head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/data/filter-parity/documents.jsonl.xz")
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--max-chars", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    pool: list[dict] = []
    for source in (ccnet_docs, warc_pages, scrapinghub_pages, readability_pages, trafilatura_pages):
        before = len(pool)
        pool.extend(doc for doc in source(args.data) if doc["text"].strip())
        print(f"{source.__name__}: {len(pool) - before} texts", file=sys.stderr)
    random.Random(args.seed).shuffle(pool)
    chosen = pool[: args.docs]
    frame = pl.DataFrame({
        "id": [f"{i:05d}" for i in range(len(chosen))],
        "origin": [d["origin"] for d in chosen],
        "url": [d["url"] for d in chosen],
        "text": [_cut(d["text"], args.max_chars) for d in chosen],
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.name.endswith(".parquet"):
        frame.write_parquet(args.out, compression="zstd", compression_level=19)
    else:
        args.out.write_bytes(lzma.compress(frame.write_ndjson().encode(), preset=9 | lzma.PRESET_EXTREME))
    print(f"{len(frame)} of {len(pool)} texts -> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    print(frame.group_by("origin").len().sort("origin"), file=sys.stderr)


if __name__ == "__main__":
    main()
