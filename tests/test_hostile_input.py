"""The raw stage over a corpus of hostile and malformed inputs: nothing stops the run, every bad
record lands in quarantine with a specific reason, and the counts add up.

Input records, per format: WARC records (a stretch of bytes that is no record counts as one),
JSONL lines, Parquet rows of readable row groups; a file that cannot be read at all (zero
bytes, no footer, no text column) counts as one. Every input record ends as exactly one
document, skip or quarantine row: records = documents + skipped + quarantined, per file and
per crawl. The corpus and what each file must give are in `tests/data/hostile/`
(`make_hostile.py` builds both; the expectations come from how a file is built, not from
running the reader).
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from textmill.config import RawConfig
from textmill.executor import SerialExecutor
from textmill.ingest import readers
from textmill.ingest.extract import decode_html, flatten_deep
from textmill.schema import QUARANTINE_SCHEMA
from textmill.stages import raw
from textmill.storage import Manifest, Store

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile"
EXPECTED: dict[str, dict] = json.loads((HOSTILE / "expected.json").read_text())
SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"
REASONS = {value for key, value in vars(readers).items() if key.isupper() and isinstance(value, str)
           and re.fullmatch(r"[a-z_]+", value)}


@dataclass
class Crawl:
    manifest: Manifest
    docs: pl.DataFrame
    quarantine: pl.DataFrame  # with `file`: the landing file each row came from
    seconds: float

    def per_file(self) -> dict[str, dict]:
        return {f["path"]: f for f in self.manifest.statistics["per_file"]}


def good_files(tmp: Path) -> dict[str, bytes]:
    """Real samples of every format: the part of a crawl that must not notice its hostile neighbours."""
    texts = gzip.decompress((SAMPLE / "jsonl" / "cc_en_head-0174.jsonl.gz").read_bytes()).splitlines()
    frame = pl.DataFrame([json.loads(line) for line in texts]).select("text", "id")
    frame.write_parquet(tmp / "good.parquet")
    return {
        "good/cc.warc.gz": (SAMPLE / "warc" / "cc-main-2020-34-sample.warc.gz").read_bytes(),
        "good/whirlwind.warc.wet.gz": (SAMPLE / "warc" / "cc-main-2024-22-whirlwind.warc.wet.gz").read_bytes(),
        "good/cc.jsonl.gz": (SAMPLE / "jsonl" / "cc_en_head-0091.jsonl.gz").read_bytes(),
        "good/texts.parquet": (tmp / "good.parquet").read_bytes(),
    }


def run_crawl(root: Path, files: dict[str, bytes], **config) -> Crawl:
    landing = root / "landing" / "c1"
    for name, data in files.items():
        (landing / name).parent.mkdir(parents=True, exist_ok=True)
        (landing / name).write_bytes(data)
    store = Store(str(root))
    started = time.perf_counter()
    manifest = raw(store=store, crawl="c1", config=RawConfig(**config), executor=SerialExecutor()).manifest
    seconds = time.perf_counter() - started
    paths = [f["path"] for f in manifest.statistics["per_file"]]  # shard order
    folder = root / "quarantine" / "raw" / "c1" / manifest.version
    frames = [pl.read_parquet(p).with_columns(file=pl.lit(paths[int(p.name.split("-")[1])]))
              for p in sorted(folder.glob("part-*.parquet"))]
    quarantine = pl.concat(frames) if frames else pl.DataFrame(schema=QUARANTINE_SCHEMA | {"file": pl.String})
    return Crawl(manifest, store.scan(manifest).collect(), quarantine, seconds)


@pytest.fixture(scope="module")
def crawls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Crawl]:
    """Three crawls: the hostile files alone, the good files alone, and both side by side."""
    tmp = tmp_path_factory.mktemp("hostile")
    hostile = {f"hostile/{name}": (HOSTILE / name).read_bytes() for name in EXPECTED}
    good = good_files(tmp)
    return {
        "hostile": run_crawl(tmp / "hostile", hostile),
        "good": run_crawl(tmp / "good", good),
        "both": run_crawl(tmp / "both", hostile | good),
    }


def test_corpus_is_small_described_and_complete():
    names = {p.name for p in HOSTILE.iterdir()}
    assert names == set(EXPECTED) | {"make_hostile.py", "SOURCE.txt", "expected.json"}
    assert sum(p.stat().st_size for p in HOSTILE.iterdir()) < 2_000_000
    described = (HOSTILE / "SOURCE.txt").read_text()
    assert all(f"\n{name} | " in described for name in EXPECTED)
    kinds = {name.split("-")[0].split(".")[0] for name in EXPECTED}
    assert {"warc", "jsonl", "parquet", "empty", "misnamed"} <= kinds


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hostile_file_ends_as_built(crawls, name):
    crawl = crawls["both"]
    got = crawl.per_file()[f"hostile/{name}"]
    want = EXPECTED[name]
    assert got["records"] == got["documents"] + got["skipped"] + got["quarantined"]  # counts add up
    assert (got["records"], got["documents"]) == (want["records"], want["documents"])
    assert got["quarantined_by_reason"] == want["quarantined"]
    assert got["skipped_by_kind"] == want["skipped"]
    rows = crawl.quarantine.filter(pl.col("file") == f"hostile/{name}")
    assert dict(Counter(rows["reason"].to_list())) == want["quarantined"]  # the rows on disk, not only the counts
    assert all(detail.strip() for detail in rows["detail"].to_list())
    assert set(rows["reason"]) <= REASONS


def test_counts_add_up_over_each_crawl(crawls):
    for label, crawl in crawls.items():
        stats = crawl.manifest.statistics
        skipped, quarantined = sum(stats["skipped"].values()), sum(stats["quarantined"].values())
        assert stats["records_read"] == stats["documents"] + skipped + quarantined, label
        assert stats["unaccounted_records"] == 0, label
        assert crawl.manifest.quarantine["records"] == crawl.quarantine.height == quarantined, label
        assert crawl.docs.height == stats["documents"], label
        assert stats["records_read"] == sum(f["records"] for f in stats["per_file"]), label
    hostile = crawls["hostile"].manifest.statistics
    assert hostile["records_read"] == sum(e["records"] for e in EXPECTED.values())
    assert hostile["documents"] == sum(e["documents"] for e in EXPECTED.values())


def test_good_files_give_the_same_documents_next_to_hostile_ones(crawls):
    both, good, hostile = crawls["both"], crawls["good"], crawls["hostile"]
    assert good.manifest.quarantine["records"] == 0
    assert good.docs.height == 16 + 1 + 10 + 10  # cc WARC, WET, JSONL, Parquet
    key = ["id"]
    assert both.docs.filter(pl.col("id").is_in(good.docs["id"].implode())).sort(key).equals(good.docs.sort(key))
    assert both.docs.filter(~pl.col("id").is_in(good.docs["id"].implode())).sort(key).equals(hostile.docs.sort(key))
    per_file = both.per_file()
    for path, entry in good.per_file().items():
        assert {k: per_file[path][k] for k in ("records", "documents", "skipped", "quarantined")} == \
            {k: entry[k] for k in ("records", "documents", "skipped", "quarantined")}


def _details(crawl: Crawl, name: str, reason: str) -> list[str]:
    rows = crawl.quarantine.filter((pl.col("file") == f"hostile/{name}") & (pl.col("reason") == reason))
    return rows["detail"].to_list()


def test_quarantine_details_say_what_is_wrong(crawls):
    crawl = crawls["hostile"]
    for name in ("warc-length-short.warc", "warc-length-long.warc.gz", "warc-length-past-eof.warc.gz"):
        (detail,) = _details(crawl, name, readers.BAD_CONTENT_LENGTH)
        assert "Content-Length" in detail, name
    binary = " ".join(_details(crawl, "warc-binary-as-html.warc.gz", readers.BINARY_PAYLOAD))
    for kind in ("PNG image", "zip archive", "PDF document", "gzip data", "control bytes"):
        assert kind in binary
    bombs = _details(crawl, "warc-http-garbage.warc.gz", readers.OVERSIZED)
    assert len(bombs) == 3 and all("decoded" in d for d in bombs)
    assert any("negative" not in d for d in bombs)
    assert all("surrogate" in d for d in _details(crawl, "jsonl-surrogates.jsonl", readers.UNDECODABLE))
    assert "nested too deeply" in _details(crawl, "jsonl-deep-nesting.jsonl", readers.BAD_JSON)[0]
    assert "resumed at byte" in _details(crawl, "jsonl-gzip-garbage-between.jsonl.gz", readers.CORRUPT_GZIP)[0]
    assert "int64" in _details(crawl, "parquet-text-int.parquet", readers.BAD_SCHEMA)[0]
    assert "row group 1" in _details(crawl, "parquet-corrupt-row-group.parquet", readers.CORRUPT_FILE)[0]
    assert sorted(_details(crawl, "jsonl-wrong-types.jsonl", readers.BAD_FIELD_TYPE)) == [
        "'id' is a JSON dict", "'id' is a JSON list", "'source' is a JSON dict", "'url' is a JSON list"]
    assert "'text' is int, not a string" in _details(crawl, "jsonl-wrong-types.jsonl", readers.MISSING_TEXT)
    assert _details(crawl, "empty.parquet", readers.EMPTY_FILE) == ["zero-byte file"]


def _text(crawl: Crawl, url: str) -> str:
    (text,) = crawl.docs.filter(pl.col("url") == url)["text"].to_list()
    return text


def test_charsets_and_nesting_give_readable_text(crawls):
    crawl = crawls["hostile"]
    assert "на русском языке" in _text(crawl, "http://charset.example/http-utf8-bytes-cp1251")
    plain = _text(crawl, "http://charset.example/unknown")
    assert plain.startswith("Plain English")
    for label in ("rot13", "base64", "utf7", "utf16-on-ascii", "nul-in-label"):  # the label is ignored, the text kept
        assert _text(crawl, f"http://charset.example/{label}") == plain, label
    assert "The " in _text(crawl, "http://charset.example/meta-utf16")
    for kind in ("declared", "undeclared"):
        mixed = _text(crawl, f"http://mixed.example/{kind}")
        assert "Naïve café über Straße" in mixed and "\ufffd" in mixed  # UTF-8 kept, the foreign bytes replaced
        assert "Café naïve résumé" in _text(crawl, f"http://utf8.example/{kind}")
    deep = _text(crawl, "http://deep.example/divs")
    assert len(deep.split()) > 50  # the paragraph under 100,000 <div>s came out
    assert crawl.per_file()["hostile/warc-nested-divs.warc.gz"]["seconds"] < 30
    misnamed = crawl.docs.filter(pl.col("id").is_in(
        crawl.docs.filter(pl.col("source") == "hostile")["id"].implode()))
    assert misnamed.height == crawl.docs.height


def test_enormous_page_is_extracted_in_bounded_time_and_a_bigger_one_is_oversized(tmp_path, warc):
    """Generated here (megabytes are not committed): 4.5 MB of paragraphs under the 5 MB cap, 6 MB over it."""
    words = "river mountain library window garden kitchen teacher market bridge station".split()
    rng = random.Random(1)
    paragraphs = ["<p>" + " ".join(rng.choice(words) for _ in range(60)) + ".</p>\n" for _ in range(14_000)]
    body = "<html><body><article>" + "".join(paragraphs[:10_500]) + "</article></body></html>"
    big = "<html><body><article>" + "".join(paragraphs) + "</article></body></html>"
    assert 4_000_000 < len(body) < 5_000_000 < 6_000_000 < len(big)
    data = warc.gz([warc.record(warc.http(body.encode()), url="http://huge.example/page"),
                    warc.record(warc.http(big.encode()), url="http://huge.example/too-big")])
    crawl = run_crawl(tmp_path, {"huge.warc.gz": data})
    assert crawl.docs["url"].to_list() == ["http://huge.example/page"]
    assert crawl.docs["n_chars"][0] > 4_000_000
    assert crawl.manifest.quarantine["by_reason"] == {readers.OVERSIZED: 1}
    assert crawl.seconds < 90


def test_decompression_bombs_stay_within_memory():
    """The corpus holds 50 MB gzip, 1 GiB brotli and 40 MB deflate bombs: decoding stops at the 5 MB cap.

    tracemalloc sees the decoded bytes objects (peak RSS would not do: a forked child starts
    with its parent's high-water mark).
    """
    data = (HOSTILE / "warc-http-garbage.warc.gz").read_bytes()
    tracemalloc.start()
    try:
        items = list(readers.read_records(io.BytesIO(data), name="b.warc.gz", source="s", html_mime_types=("text/html",),
                                          max_bytes=5_000_000, skipped=Counter()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(getattr(i, "reason", "") == readers.OVERSIZED for i in items) == 3
    assert peak < 40_000_000, f"peak {peak} bytes: a bomb was decoded past the cap"


# --- regression tests of the fixes, at the function that had the fault -------------------------


def test_negative_chunk_size_does_not_loop():
    body = b"-10\r\n" + b"<html><body>text</body></html>\r\n0\r\n\r\n"
    started = time.perf_counter()
    assert readers._dechunk(body) == body  # not chunked after all: the body as stored
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("label", ["rot13", "base64", "hex", "zlib", "utf-7", "unicode_escape", "undefined",
                                   "idna", "utf-8\x00", "x" * 10_000, "utf-16", "utf-32"])
def test_charset_labels_that_are_not_web_encodings_fall_through(label):
    html = "<html><body><p>caf\u00e9 plain text</p></body></html>"
    text, how = decode_html(html.encode("utf-8"), declared=label)
    assert text == html and how == "utf-8"


def test_flattening_leaves_real_pages_alone():
    records = readers.read_records((SAMPLE / "warc" / "cc-main-2020-34-sample.warc.gz").open("rb"), name="s.warc.gz",
                                   source="s", html_mime_types=("text/html",), max_bytes=10**7, skipped=Counter())
    pages = [r.payload.decode("utf-8", "replace") for r in records if isinstance(r, readers.Record)]
    assert len(pages) == 16
    assert all(flatten_deep(page) is page for page in pages)
    deep = "<div>" * 1000 + "x" + "</div>" * 1000
    flat = flatten_deep(deep)
    assert flat.count("<div>") == 200 and flat.count("</div>") == 200 and "x" in flat


def test_last_record_with_content_length_zero_is_one_outcome(warc):
    """Found by the fuzzer: the bytes after an empty last response were reported a second time as a cut record."""
    page = b"<html><body><p>words enough for a page of text here.</p></body></html>"
    records = [warc.record(warc.http(page), url=f"http://z.example/{i}") for i in range(2)]
    records[1] = re.sub(rb"Content-Length: \d+", b"Content-Length: 0", records[1])
    for data, name in ((b"".join(records), "z.warc"), (warc.gz(records), "z.warc.gz")):
        skipped: Counter[str] = Counter()
        items = list(readers.read_records(io.BytesIO(data), name=name, source="s", html_mime_types=("text/html",),
                                          max_bytes=10**6, skipped=skipped))
        assert len(items) + sum(skipped.values()) == 2, name
        assert [type(i).__name__ for i in items] == ["Record", "Rejected"], name
