"""Fuzzing the readers and the extraction path with Hypothesis, on a fixed budget.

Inputs are mutations of real sample bytes (bit flips, truncation, insertion of random bytes,
deletion, splicing of a slice elsewhere) and generated HTML with generated charset labels.
The property everywhere: a reader yields only documents or quarantined records and counts
its skips; it never raises, never hangs (each input runs under a time limit), and where the
number of input records is known from the bytes (plain JSONL lines, generated WARC records),
records = documents + skipped + quarantined. `derandomize=True`: the same examples every run.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textmill.config import RawConfig
from textmill.ingest import readers
from textmill.ingest.extract import UndecodableError, decode_html, extract_text
from textmill.ingest.readers import Record, Rejected, read_records
from textmill.ingest.shard import IngestTask, ingest_shard
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"
HTML = ("text/html", "application/xhtml+xml")
MAX_BYTES = 200_000
PER_INPUT_SECONDS = 20  # generous on a loaded 2-core machine; a hang trips it
REASONS = {value for key, value in vars(readers).items() if key.isupper() and isinstance(value, str)
           and re.fullmatch(r"[a-z_]+", value)}


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (not hang) when one input takes longer than `seconds`: a Python-level loop is interrupted."""

    def expire(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"one input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read(data: bytes, name: str) -> tuple[list[Record], list[Rejected], Counter[str]]:
    """Every item of a reader, checked for shape; raises only if the reader does."""
    skipped: Counter[str] = Counter()
    with time_limit(PER_INPUT_SECONDS):
        items = list(read_records(io.BytesIO(data), name=name, source="fuzz", html_mime_types=HTML,
                                  max_bytes=MAX_BYTES, skipped=skipped))
    records = [i for i in items if isinstance(i, Record)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert len(records) + len(rejected) == len(items)
    for item in rejected:
        assert item.reason in REASONS and item.detail, item
        assert len(item.payload) <= readers.QUARANTINE_PAYLOAD_CAP
    for item in records:
        assert isinstance(item.payload, (bytes, str)) and len(item.payload) <= MAX_BYTES
    return records, rejected, skipped


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` after 1-4 edits: bit flip, truncation, random insertion, deletion, or a slice spliced elsewhere."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 256))]
        else:
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 512))]
    return bytes(data)


def _page(seed: int) -> bytes:
    words = "river mountain library window garden kitchen teacher market bridge station".split()
    text = " ".join(words[(seed * 7 + i * 3) % 10] for i in range(40))
    return f"<html><head><title>t{seed}</title></head><body><p>{text}.</p><p>{text}!</p></body></html>".encode()


def _synthetic_warc(warc) -> bytes:
    records = [warc.record(b"software: fuzz\r\n", rtype="warcinfo", content_type="application/warc-fields")]
    for i in range(3):
        records.append(warc.record(b"GET / HTTP/1.1\r\n\r\n", rtype="request", url=f"http://f.example/{i}",
                                   content_type="application/http; msgtype=request"))
        records.append(warc.record(warc.http(_page(i)), url=f"http://f.example/{i}"))
    return b"".join(records)


@pytest.fixture(scope="module")
def bases(warc) -> dict[str, bytes]:
    plain = _synthetic_warc(warc)
    jsonl_lines = gzip.decompress((SAMPLE / "jsonl" / "cc_en_head-0174.jsonl.gz").read_bytes()).splitlines(keepends=True)
    small_jsonl = b"".join(json.dumps({"id": f"j{i}", "url": f"http://j.example/{i}",
                                       "text": json.loads(line)["text"][:300]}).encode() + b"\n"
                           for i, line in enumerate(jsonl_lines[:6]))
    sink = io.BytesIO()
    pl.DataFrame({"id": [f"p{i}" for i in range(6)], "text": [f"row {i} " * 20 for i in range(6)]}).write_parquet(
        sink, row_group_size=2, compression="uncompressed")
    return {
        "warc.gz": (SAMPLE / "warc" / "cc-main-2024-22-whirlwind.warc.gz").read_bytes(),
        "members.warc.gz": b"".join(gzip.compress(r, mtime=0) for r in re.split(b"(?=WARC/1.0\r\n)", plain) if r),
        "plain.warc": plain,
        "jsonl": small_jsonl,
        "jsonl.gz": gzip.compress(small_jsonl, mtime=0),
        "parquet": sink.getvalue(),
    }


# --- WARC --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["warc.gz", "members.warc.gz"])
def test_mutated_gzip_warc_never_raises(bases, base):
    original = bases[base]
    records, rejected, skipped = read(original, "x.warc.gz")
    assert rejected == [] and records  # the unmutated base reads cleanly

    @fuzz(200)
    @given(mutated(original))
    def check(data: bytes) -> None:
        records, rejected, skipped = read(data, "x.warc.gz")
        # no record appears from nowhere: every outcome needs a gzip member or a WARC line of its own
        starts = data.count(b"\x1f\x8b") + data.count(b"WARC/")
        assert len(records) + sum(skipped.values()) <= max(starts, 1) * 2
        assert len(rejected) <= starts + 2

    check()


def test_mutated_plain_warc_never_raises_and_outcomes_are_bounded_by_headers(bases):
    original = bases["plain.warc"]
    records, rejected, skipped = read(original, "x.warc")
    assert (len(records), rejected, sum(skipped.values())) == (3, [], 4)

    @fuzz(200)
    @given(mutated(original))
    def check(data: bytes) -> None:
        records, rejected, skipped = read(data, "x.warc")
        headers = data.count(b"WARC/")
        assert len(records) + sum(skipped.values()) <= headers  # each yielded or skipped record has a header
        assert len(rejected) <= headers + 2  # one per bad record or bad stretch, at most

    check()


@pytest.mark.parametrize("compressed", [False, True])
def test_a_wrong_content_length_costs_only_its_own_record(warc, compressed):
    """7 records (warcinfo, 3 requests, 3 responses); one gets another Content-Length: still 7 outcomes,
    and every other response is still a document."""
    plain = _synthetic_warc(warc)
    records = [r for r in re.split(b"(?=WARC/1.0\r\n)", plain) if r]
    assert len(records) == 7

    @fuzz(60)
    @given(st.integers(0, 6), st.one_of(st.integers(0, 3000), st.integers(10**6, 10**12)))
    def check(index: int, length: int) -> None:
        edited = list(records)
        edited[index] = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % length, edited[index])
        data = b"".join(gzip.compress(r, mtime=0) for r in edited) if compressed else b"".join(edited)
        docs, rejected, skipped = read(data, "x.warc.gz" if compressed else "x.warc")
        assert len(docs) + len(rejected) + sum(skipped.values()) == 7
        others = {f"http://f.example/{i}" for i in range(3)} - ({f"http://f.example/{index // 2 - 1}"}
                                                                  if index in (2, 4, 6) else set())
        assert others <= {d.url for d in docs}
        # a plain file whose last record claims more bytes than it has is indistinguishable from a cut file
        allowed = {readers.BAD_CONTENT_LENGTH, readers.OVERSIZED, readers.CORRUPT_WARC, readers.TRUNCATED_RECORD}
        assert {r.reason for r in rejected} <= allowed

    check()


def _ingest(tmp: Path, name: str, data: bytes, **config) -> object:
    """One landing file through the real shard worker (extraction, language id, Parquet parts)."""
    store = Store(str(tmp))
    path = tmp / "landing" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    key = f"{abs(hash(data)):x}"
    task = IngestTask(store=store, crawl="fz", version_dir=store.path("out", key), quarantine_dir=store.path("q", key),
                      shard=0, path=str(path), source="fuzz",
                      config=RawConfig(extractor="resiliparse", batch_size=4, rows_per_part=3, **config))
    with time_limit(PER_INPUT_SECONDS):
        result = ingest_shard(task)
    assert result.records == result.documents + sum(result.quarantined.values())  # every yielded item lands once
    written = sum(p.rows for p in result.parts)
    assert written == result.documents
    assert sum(p.rows for p in result.quarantine_parts) == sum(result.quarantined.values())
    return result


_CHARSETS = st.one_of(
    st.sampled_from(["utf-8", "UTF8", "latin-1", "iso-8859-1", "windows-1251", "shift_jis", "euc-jp", "gb2312",
                     "big5", "koi8-r", "utf-16", "utf-16le", "utf-32", "utf-7", "rot13", "base64", "hex", "idna",
                     "punycode", "unicode_escape", "undefined", "x-unknown", "", "\x00", "utf-8\x00"]),
    st.text(max_size=20),
)
_FRAGMENT = st.one_of(
    st.sampled_from(["<div>", "</div>", "<p>", "</p>", "<span class='a'>", "</span>", "<br>", "<table><tr><td>",
                     "</td></tr></table>", "<script>var x = '</div>';</script>", "<!--", "-->", "<![CDATA[", "]]>",
                     "&amp;", "&#0;", "&#xD800;", "&#99999999;", "<meta charset='utf-16'>", "<", ">", "\"", "'",
                     "<html>", "</html>", "<body>", "<svg><foreignObject>", "<math>", "<template>", "<frameset>",
                     "<plaintext>", "<noscript>", "<textarea>", "<title>", "<style>p{}</style>", "\x00", "\x0b",
                     "\ufeff", "\u202e", "\ud7ff", "caf\u00e9", "\u043f\u0440\u0438\u0432\u0435\u0442",
                     "\u65e5\u672c\u8a9e", "\U0001f600"]),
    st.text(max_size=30),
)


@st.composite
def html_bytes(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Generated HTML-ish markup (deep nesting included), encoded in a charset that may not be the declared one."""
    parts = draw(st.lists(_FRAGMENT, max_size=60))
    depth = draw(st.sampled_from([0, 0, 5, 300, 3000]))
    text = "<div>" * depth + "".join(parts) + "</div>" * draw(st.integers(0, depth))
    encoding = draw(st.sampled_from(["utf-8", "cp1251", "shift_jis", "utf-16", "latin-1"]))
    data = text.encode(encoding, "replace") if encoding != "utf-16" else text.encode("utf-16", "surrogatepass")
    if draw(st.booleans()):
        data = draw(mutated(data)) if data else data
    declared = draw(st.none() | _CHARSETS)
    return data, declared


@fuzz(300)
@given(html_bytes())
def test_decode_html_returns_text_or_says_undecodable(case):
    data, declared = case
    with time_limit(PER_INPUT_SECONDS):
        try:
            text, how = decode_html(data, declared=declared)
        except UndecodableError:
            return
    assert isinstance(text, str) and how
    text.encode("utf-8", "surrogatepass")  # a str, whatever the label


@fuzz(100)
@given(st.text(max_size=2000) | html_bytes().map(lambda case: case[0].decode("utf-8", "replace")))
def test_extractors_return_text_in_bounded_time(html):
    for extractor in ("resiliparse", "trafilatura"):
        started = time.perf_counter()
        with time_limit(PER_INPUT_SECONDS):
            out = extract_text(html, extractor=extractor)
        assert isinstance(out, str)
        assert time.perf_counter() - started < PER_INPUT_SECONDS


def test_generated_pages_through_the_shard_worker_add_up(warc):
    """3 responses with generated bodies and charset headers: 3 records, each a document or quarantined."""
    with tempfile.TemporaryDirectory() as tmp:

        @fuzz(60)
        @given(st.lists(html_bytes(), min_size=3, max_size=3), st.booleans())
        def check(pages, compressed) -> None:
            records = []
            for i, (body, declared) in enumerate(pages):
                header = "Content-Type: text/html" + (f"; charset={declared}" if declared else "")
                header = header.replace("\r", "").replace("\n", "")
                records.append(warc.record(warc.http(body, headers=(header,)), url=f"http://g.example/{i}"))
            data = warc.gz(records) if compressed else b"".join(records)
            result = _ingest(Path(tmp), "g.warc.gz" if compressed else "g.warc", data)
            assert result.records + sum(result.skipped.values()) == 3

        check()


# --- JSONL -------------------------------------------------------------------------------------


def _jsonl_lines(data: bytes) -> int:
    """Input records of a plain JSONL file, counted straight from the bytes: lines, the last one unterminated too."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _plain_jsonl(data: bytes) -> bool:
    """True when the reader must treat `data` as plain JSONL (not sniffed as another format or encoding)."""
    bom = data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"))
    return bool(data) and not bom and readers.sniff_format(data[:4096]) in (None, "jsonl")


def test_mutated_plain_jsonl_yields_one_outcome_per_line(bases):
    original = bases["jsonl"]

    @fuzz(200)
    @given(mutated(original) | st.binary(max_size=400))
    def check(data: bytes) -> None:
        if not _plain_jsonl(data):
            return
        records, rejected, skipped = read(data, "x.jsonl")
        expected = _jsonl_lines(data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
        assert len(records) + len(rejected) + sum(skipped.values()) == expected
        objects = 0
        for line in data.split(b"\n"):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            objects += isinstance(obj, dict) and isinstance(obj.get("text"), str)
        assert len(records) <= objects  # a document only from a line holding an object with a string text

    check()


def test_mutated_gzip_jsonl_never_raises(bases):
    original = bases["jsonl.gz"]

    @fuzz(60)
    @given(mutated(original))
    def check(data: bytes) -> None:
        records, rejected, skipped = read(data, "x.jsonl.gz")
        assert len(records) <= 6 + data.count(b"\x1f\x8b") * 6  # no document appears from nowhere

    check()


def test_mutated_jsonl_through_the_shard_worker_adds_up(bases):
    original = bases["jsonl"]
    with tempfile.TemporaryDirectory() as tmp:

        @fuzz(60)
        @given(mutated(original))
        def check(data: bytes) -> None:
            if not _plain_jsonl(data):
                return
            result = _ingest(Path(tmp), "m.jsonl", data)
            assert result.records + sum(result.skipped.values()) == _jsonl_lines(data.removeprefix(b"\xef\xbb\xbf"))

        check()


# --- Parquet -----------------------------------------------------------------------------------


def test_mutated_parquet_never_raises(bases):
    original = bases["parquet"]
    records, rejected, _ = read(original, "x.parquet")
    assert len(records) == 6 and rejected == []

    @fuzz(60)
    @given(mutated(original))
    def check(data: bytes) -> None:
        records, rejected, skipped = read(data, "x.parquet")
        assert not skipped
        # at most one outcome per row, plus one per unreadable row group (3 of 2 rows): 9
        assert len(records) + len(rejected) <= 9 or readers.sniff_format(data[:4096]) != "parquet"

    check()
