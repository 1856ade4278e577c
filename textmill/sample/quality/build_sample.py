"""Rebuild `labelled.jsonl.gz` from the ScrapingHub article-extraction benchmark.

Run from the repository root, with the shared data folder beside it:

    .venv/bin/python textmill/sample/quality/build_sample.py /work/shared/data/extraction-gold-scrapinghub-aeb

High quality ("hq"): the hand-checked article body of each page (the benchmark's gold),
cut into chunks of whole paragraphs. Low quality ("lq"): the text of the same page that
is *not* in the gold body (menus, share buttons, cookie and subscription notices, related
links, footers), as extracted by resiliparse without main-content detection. Both classes
come from the same 181 pages, so topic words do not give the label away.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from textmill.ingest.extract import decode_html

CHUNK_CHARS = 1200  # about a FineWeb-Edu annotation snippet's size, keeps the file < 1 MB
MAX_CHUNKS_PER_PAGE = 2
MIN_LQ_CHARS = 200


def _norm(line: str) -> str:
    return " ".join(re.sub(r"\W+", " ", line.lower()).split())


def _chunks(lines: list[str], *, limit: int) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for line in lines:
        cur.append(line)
        size += len(line) + 1
        if size >= CHUNK_CHARS:
            out.append("\n".join(cur))
            cur, size = [], 0
            if len(out) == limit:
                return out
    if size >= MIN_LQ_CHARS:
        out.append("\n".join(cur))
    return out[:limit]


def build(aeb: Path, out: Path) -> dict[str, int]:
    gold = json.load(gzip.open(aeb / "ground-truth.json.gz"))
    counts = {"hq": 0, "lq": 0, "pages": 0}
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        for page_id in sorted(gold):
            body = gold[page_id]["articleBody"]
            url = gold[page_id]["url"]
            body_lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
            body_norm = {_norm(ln) for ln in body_lines}
            body_text = _norm(body)
            html, _ = decode_html(gzip.open(aeb / "html" / f"{page_id}.html.gz").read())
            full = extract_plain_text(HTMLTree.parse(html), main_content=False)
            rest: list[str] = []
            for ln in full.splitlines():
                ln = ln.strip()
                n = _norm(ln)
                # Drop lines of the article itself (whole, or a piece of a gold paragraph).
                if not n or n in body_norm or (len(n) > 30 and n in body_text):
                    continue
                rest.append(ln)
            counts["pages"] += 1
            for label, lines in (("hq", body_lines), ("lq", rest)):
                for i, text in enumerate(_chunks(lines, limit=MAX_CHUNKS_PER_PAGE)):
                    rec = {"id": f"{page_id[:16]}-{label}-{i}", "page": page_id[:16], "url": url,
                           "label": label, "text": text}
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    counts[label] += 1
    return counts


if __name__ == "__main__":
    src = Path(sys.argv[1])
    dst = Path(__file__).with_name("labelled.jsonl.gz")
    print(build(src, dst), dst.stat().st_size)
