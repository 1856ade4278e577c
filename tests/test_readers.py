"""Every reader on the real bundled crawl files: what it yields, what it counts as skipped, and why.

Expected numbers are derived independently of the reader where possible (regexes over the
raw bytes, the json module, Polars), so a reader bug cannot hide behind its own answer.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
import zstandard

from textmill.ingest import readers
from textmill.ingest.extract import UndecodableError, decode_html, extract_text
from textmill.ingest.readers import Record, Rejected, detect_format, read_parquet, read_records

HTML = ("text/html", "application/xhtml+xml")
SAMPLES = sorted(p.name for folder in ("warc", "jsonl")  # the crawl sample, not the quality-classifier data
                 for p in (Path(__file__).resolve().parents[1] / "textmill" / "sample" / folder).glob("*.gz"))


def read(source: Path | bytes, name: str | None = None, *, max_bytes: int = 5_000_000):
    """(records, rejected, skipped) of one file through the public dispatcher."""
    data = source.read_bytes() if isinstance(source, Path) else source
    name = name or source.name  # type: ignore[union-attr]
    skipped: Counter[str] = Counter()
    items = list(read_records(io.BytesIO(data), name=name, source="test", html_mime_types=HTML,
                              max_bytes=max_bytes, skipped=skipped))
    assert all(isinstance(item, (Record, Rejected)) for item in items)
    return ([i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Rejected)], skipped)


def warc_types(plain: bytes) -> Counter[str]:
    """Record types counted straight from the WARC header lines."""
    return Counter(m.decode() for m in re.findall(rb"\r\nWARC-Type: (\w+)\r\n", b"\r\n" + plain))


# --- WARC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_every_bundled_sample_reads_without_rejections(sample, name):
    records, rejected, _ = read(sample(name))
    assert rejected == []
    assert records, f"{name} yielded nothing"
    assert len({r.record_id for r in records}) == len(records)


def test_common_crawl_warc_gzip_yields_the_16_html_responses_and_counts_the_rest(sample):
    path = sample("cc-main-2020-34-sample.warc.gz")
    types = warc_types(gzip.decompress(path.read_bytes()))
    assert types == {"warcinfo": 1, "request": 17, "response": 16, "metadata": 16}

    records, rejected, skipped = read(path)

    assert rejected == []
    assert len(records) == types["response"] == 16
    assert dict(skipped) == {"warcinfo_record": 1, "request_record": 17, "metadata_record": 16}
    assert all(r.kind == "html" and isinstance(r.payload, bytes) for r in records)
    assert all(re.match(r"https?://[^<>\s]+$", r.url) for r in records)
    assert all(r.record_id.startswith("<urn:uuid:") for r in records)
    # every fetch of this excerpt happened on 2020-08-08 (UTC), within the file's time window
    assert {r.fetched_at.date().isoformat() for r in records} == {"2020-08-08"}
    assert all(r.fetched_at.tzinfo is not None and r.fetched_at.utcoffset().total_seconds() == 0 for r in records)
    # the HTTP charset is taken from Content-Type; the body starts after the HTTP headers
    by_url = {r.url: r for r in records}
    assert by_url["http://01spb.ru/company/"].charset == "windows-1251"
    assert all(not r.payload.startswith(b"HTTP/") for r in records)


def test_gzip_offsets_point_at_the_member_holding_the_record(sample):
    data = sample("cc-main-2020-34-sample.warc.gz").read_bytes()
    records, _, _ = read(data, "cc.warc.gz")
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    for record in records:
        head = zlib.decompressobj(wbits=31).decompress(data[record.offset :], 4096)
        assert head.startswith(b"WARC/1.0\r\nWARC-Type: response\r\n")
        assert record.record_id.encode() in head


def test_plain_warc_gives_the_same_records_as_gzip(sample, tmp_path):
    gz_path = sample("cc-main-2020-34-sample.warc.gz")
    plain_path = tmp_path / "cc-main-2020-34-sample.warc"
    plain_path.write_bytes(gzip.decompress(gz_path.read_bytes()))

    gz_records, _, gz_skipped = read(gz_path)
    plain_records, rejected, plain_skipped = read(plain_path)

    assert rejected == []
    assert plain_skipped == gz_skipped
    key = lambda r: (r.url, r.record_id, r.fetched_at, r.charset, r.payload)  # noqa: E731
    assert [key(r) for r in plain_records] == [key(r) for r in gz_records]
    plain = plain_path.read_bytes()
    for record in plain_records:  # plain offsets are byte positions of the record header
        assert plain[record.offset : record.offset + 9] == b"WARC/1.0\r"


def test_misnamed_compression_is_read_by_content(sample):
    data = sample("cc-main-2020-34-sample.warc.gz").read_bytes()
    for payload, name in ((gzip.decompress(data), "plain-but-named.warc.gz"), (data, "gzip-but-named.warc")):
        records, rejected, _ = read(payload, name)
        assert len(records) == 16 and rejected == [], name


@pytest.mark.parametrize(
    ("name", "documents", "skipped"),
    [
        # Webrecorder example: a revisit record has no payload of its own
        ("warcio-example.warc.gz", 1, {"warcinfo_record": 2, "request_record": 2, "revisit_record": 1}),
        # wget page capture: 1 HTML page + 69 images/css/js responses + 3 non-HTML resource records
        ("ukwa-wikipedia-post-blackout-main-page-2012.warc.gz", 1,
         {"warcinfo_record": 1, "request_record": 77, "non_html": 72}),
        # Heritrix: a dns: response is not HTTP; robots.txt and images are not HTML
        ("ukwa-IAH-2008-blackbook-truncated.warc.gz", 2,
         {"warcinfo_record": 1, "request_record": 7, "metadata_record": 7, "non_http_response": 1, "non_html": 5}),
        # wget: 22 HTML responses; its two resource records (log, manifest) are not HTML
        ("dolma-wget-2024-sample-0000.warc.gz", 22,
         {"warcinfo_record": 1, "request_record": 22, "metadata_record": 1, "non_html": 2}),
    ],
)
def test_non_html_and_non_document_records_are_counted_as_skipped(sample, name, documents, skipped):
    path = sample(name)
    records, rejected, counted = read(path)
    assert rejected == []
    assert len(records) == documents
    assert dict(counted) == skipped
    types = warc_types(gzip.decompress(path.read_bytes()))
    # nothing disappears: every record is either yielded or counted
    assert len(records) + sum(counted.values()) == sum(types.values())


def test_wget_angle_bracket_uris_are_cleaned(sample):
    path = sample("dolma-wget-2024-sample-0000.warc.gz")
    assert b"WARC-Target-URI: <https://" in gzip.decompress(path.read_bytes())  # the quirk is in the sample
    records, _, _ = read(path)
    assert records
    for record in records:
        assert not record.url.startswith("<") and not record.url.endswith(">")
        assert re.match(r"https?://", record.url)
    assert "https://www.semanticscholar.org/research/research-team" in {r.url for r in records}
    assert readers._clean_uri("  <http://a.example/x>  ") == "http://a.example/x"
    assert readers._clean_uri("http://a.example/<x>") == "http://a.example/<x>"
    assert readers._clean_uri(None) == ""


def test_fetched_at_comes_from_warc_date(sample):
    path = sample("cc-main-2019-commoncrawl-org.warc.gz")
    date = re.search(rb"WARC-Date: (\S+)\r\n", gzip.decompress(path.read_bytes())).group(1).decode()
    assert date == "2019-12-10T10:00:01Z"
    (record,), _, _ = read(path)
    assert record.fetched_at == datetime(2019, 12, 10, 10, 0, 1, tzinfo=timezone.utc)
    assert record.url == "http://commoncrawl.org/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-08-08T17:27:41Z", datetime(2020, 8, 8, 17, 27, 41, tzinfo=timezone.utc)),
        ("2020-08-08T17:27:41", datetime(2020, 8, 8, 17, 27, 41, tzinfo=timezone.utc)),  # naive means UTC
        ("2020-08-08T19:27:41+02:00", datetime(2020, 8, 8, 17, 27, 41, tzinfo=timezone.utc)),
        ("2020-08-08", datetime(2020, 8, 8, tzinfo=timezone.utc)),
        ("2008-10-294T05:21:46-0700", None),  # ClueWeb09's malformed date: unknown, not a guess
        ("", None),
        (None, None),
    ],
)
def test_date_parsing(value, expected):
    parsed = readers._parse_date(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


def test_wet_conversion_record_is_text(sample):
    path = sample("cc-main-2024-22-whirlwind.warc.wet.gz")
    assert warc_types(gzip.decompress(path.read_bytes())) == {"warcinfo": 1, "conversion": 1}
    (record,), rejected, skipped = read(path)
    assert rejected == []
    assert dict(skipped) == {"warcinfo_record": 1}
    assert record.kind == "text" and record.charset == "utf-8"
    assert record.url == "https://an.wikipedia.org/wiki/Escopete"
    assert record.fetched_at == datetime(2024, 5, 18, 1, 58, 10, tzinfo=timezone.utc)
    text = record.payload.decode("utf-8")
    assert "Escopete" in text and "<" not in text[:200]


def test_synthetic_http_variants(warc):
    page = b"<html><body><p>Hello from a synthetic page with enough words.</p></body></html>"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(page), page)
    records = [
        warc.record(warc.http(page), url="http://a.example/ok"),
        warc.record(warc.http(page, status="404 Not Found"), url="http://a.example/missing"),
        warc.record(warc.http(b"\x89PNG....", headers=("Content-Type: image/png",)), url="http://a.example/i.png"),
        warc.record(warc.http(page, headers=()), url="http://a.example/sniffed"),  # no Content-Type: sniffed
        warc.record(warc.http(b"plain words, no markup", headers=()), url="http://a.example/plain"),
        warc.record(warc.http(gzip.compress(page), headers=("Content-Type: text/html; charset=UTF-8",
                                                             "Content-Encoding: gzip")), url="http://a.example/gz"),
        warc.record(warc.http(chunked, headers=("Content-Type: text/html", "Transfer-Encoding: chunked")),
                    url="http://a.example/chunked"),
        warc.record(warc.http(zlib.compress(page), headers=("Content-Type: text/html",
                                                            "Content-Encoding: deflate")), url="http://a.example/df"),
        warc.record(page, rtype="resource", url="http://a.example/resource", content_type="text/html"),
        warc.record(warc.http(page, headers=("Content-Type: text/html", "Content-Encoding: compress")),
                    url="http://a.example/unknown-encoding"),
    ]
    got, rejected, skipped = read(warc.gz(records), "synthetic.warc.gz")
    assert sorted(r.url for r in got) == sorted(
        f"http://a.example/{p}" for p in ("ok", "sniffed", "gz", "chunked", "df", "resource"))
    assert all(r.payload == page for r in got)
    assert {r.url: r.charset for r in got}["http://a.example/gz"] == "UTF-8"
    assert dict(skipped) == {"http_404": 1, "non_html": 2}
    assert [(r.reason, r.url) for r in rejected] == [
        (readers.BAD_CONTENT_ENCODING, "http://a.example/unknown-encoding")]


# --- ClueWeb09: bare-LF HTTP headers, EUC-JP, Content-Encoding: gzip on a decoded body ---------


def test_clueweb09_quirks_are_read(sample):
    path = sample("clueweb09-ja-quirk.warc.gz")
    plain = gzip.decompress(path.read_bytes())
    assert b"HTTP/1.1 200 OK\nContent-Type: text/html; charset=EUC-JP\nContent-Encoding: gzip\n" in plain
    assert warc_types(plain) == {"warcinfo": 1, "response": 29}

    records, rejected, skipped = read(path)

    assert rejected == []
    assert dict(skipped) == {"warcinfo_record": 1}
    assert len(records) == 29
    for record in records:
        assert record.charset.upper() == "EUC-JP"
        assert record.fetched_at is None  # "2008-10-294T05:21:46-0700" is not a date
        assert record.payload[:2] != b"\x1f\x8b"  # stored decoded despite the gzip header
        assert record.payload.lstrip().lower().startswith((b"<html", b"<!doctype"))


def test_clueweb09_raw_stage_gives_29_japanese_documents(sample, landing, run_raw):
    (landing / "clueweb.warc.gz").write_bytes(sample("clueweb09-ja-quirk.warc.gz").read_bytes())
    result = run_raw()
    docs = result.manifest
    assert docs.rows == 29
    assert docs.quarantine["records"] == 0
    frame = pl.read_parquet(result.uri + "/*.parquet")
    assert frame.height == 29
    assert frame["lang"].to_list() == ["ja"] * 29
    assert frame["lang_score"].min() > 0.5
    japanese = r"[\p{Hiragana}\p{Katakana}\p{Han}]"
    assert frame["text"].str.count_matches(japanese).min() >= 20
    assert frame["text"].str.contains("\ufffd", literal=True).sum() == 0  # no replacement characters
    assert docs.statistics["languages"] == {"ja": 29}
    assert frame["fetched_at"].null_count() == 29


# --- charset detection and extraction ---------------------------------------------------------

RUSSIAN = ("Москва является столицей России и крупнейшим по численности населения городом страны. "
           "Город расположен на реке Москве в центре Восточно-Европейской равнины. "
           "Здесь находятся многочисленные музеи, театры, университеты и библиотеки.")
JAPANESE = ("東京都は日本の首都であり、関東地方に位置する都道府県の一つである。人口は約千四百万人で、"
            "日本で最も人口の多い都道府県である。経済、政治、文化の中心地として知られている。")


@pytest.mark.parametrize(("text", "charset"), [(RUSSIAN, "cp1251"), (JAPANESE, "shift_jis"), (JAPANESE, "euc_jp")])
def test_undeclared_non_utf8_page_is_detected(text, charset):
    html = f"<html><head><title>x</title></head><body><p>{text}</p><p>{text}</p></body></html>"
    data = html.encode(charset)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # so UTF-8 cannot be the answer
    assert b"charset" not in data

    decoded, how = decode_html(data)

    assert how.startswith("detected:")
    assert text in decoded


def test_declared_charsets_win_in_order():
    body = f"<html><head><meta charset=\"windows-1251\"></head><body>{RUSSIAN}</body></html>".encode("cp1251")
    text, how = decode_html(body)
    assert how == "meta:windows-1251" and RUSSIAN in text
    text, how = decode_html(body, declared="cp1251")
    assert how == "http:cp1251" and RUSSIAN in text
    # a declared charset that cannot decode the bytes falls through to the next source
    text, how = decode_html(body, declared="utf-8")
    assert how == "meta:windows-1251"
    assert decode_html("<p>ünïcödé</p>".encode())[1] == "utf-8"


def test_latin1_label_is_read_as_windows_1252_like_browsers():
    page = b"<html><body><p>Don\x92t stop \x96 it\x92s a caf\xe9 \x93classic\x94.</p></body></html>"
    text, how = decode_html(page, declared="ISO-8859-1")
    assert how == "http:iso-8859-1"
    assert "Don\u2019t stop \u2013 it\u2019s a caf\u00e9 \u201cclassic\u201d." in text
    assert not any("\x80" <= ch <= "\x9f" for ch in text)  # no C1 control characters
    # a byte windows-1252 leaves unassigned still decodes (as latin-1 does)
    assert decode_html(b"<p>odd \x81 byte</p>", declared="latin1")[0] == "<p>odd \x81 byte</p>"


def test_bytes_no_charset_decodes_raise():
    import random

    noise = b"<html><body><p>" + random.Random(7).randbytes(4096) + b"</p></body></html>"
    with pytest.raises(UndecodableError):
        decode_html(noise)


def test_undeclared_cp1251_page_through_the_raw_stage(warc, landing, run_raw):
    body = f"<html><head><title>Новости</title></head><body><h1>Москва</h1><p>{RUSSIAN}</p></body></html>"
    record = warc.record(warc.http(body.encode("cp1251")), url="http://ru.example/moskva")
    (landing / "ru.warc.gz").write_bytes(warc.gz([record]))
    result = run_raw()
    frame = pl.read_parquet(result.uri + "/*.parquet")
    assert frame.height == 1
    assert RUSSIAN in frame["text"][0]
    assert frame["lang"][0] == "ru"
    assert frame["domain"][0] == "ru.example"
    assert result.manifest.statistics["charset_sources"] == {"detected": 1}


ARTICLE = [
    "The lighthouse on the northern cape was built in 1871 to guide fishing boats through the narrow "
    "channel between the rocks. Its lamp was first fuelled by whale oil and later by kerosene.",
    "In 1932 the keeper's family left the island when the light was electrified and automated, and the "
    "building has been a small museum ever since, open every summer to visitors who arrive by ferry.",
]
PAGE = f"""<!doctype html><html><head><title>Lighthouse</title><script>var tracking = 1;</script></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li><li><a href="/shop">Shop</a></li></ul></nav>
<article><h1>The history of the lighthouse</h1><p>{ARTICLE[0]}</p><p>{ARTICLE[1]}</p></article>
<footer><p>Copyright 2024 Example Corp. All rights reserved. Privacy policy. Terms of service.</p></footer>
</body></html>"""


@pytest.mark.parametrize("extractor", ["resiliparse", "trafilatura"])
def test_extractors_return_the_main_text(extractor):
    text = extract_text(PAGE, extractor=extractor, main_content=True)
    for paragraph in ARTICLE:
        assert paragraph in text
    assert "Privacy policy" not in text
    assert "tracking" not in text
    assert extract_text("<html><body><div> </div></body></html>", extractor=extractor) == ""


def test_whole_page_text_keeps_boilerplate_when_asked():
    text = extract_text(PAGE, extractor="resiliparse", main_content=False)
    assert ARTICLE[0] in text and "Privacy policy" in text and "About us" in text


# --- JSONL -------------------------------------------------------------------------------------


def jsonl_objects(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines() if line.strip()]


def test_jsonl_gz_records(sample):
    path = sample("cc_en_head-0091.jsonl.gz")
    objects = jsonl_objects(path)
    records, rejected, skipped = read(path)
    assert rejected == [] and not skipped
    assert len(records) == len(objects) == 10
    for record, obj in zip(records, objects):
        assert record.kind == "text" and record.payload == obj["text"]
        assert record.record_id == obj["id"]
        assert record.url == obj["metadata"]["url"]
        assert record.source == "common-crawl"
        assert record.fetched_at == datetime.fromisoformat(obj["created"].replace("Z", "+00:00"))
    assert [r.offset for r in records] == list(range(10))


def test_dolma_documents_take_the_metadata_url(sample):
    path = sample("dolma-documents-000.json.gz")
    records, rejected, _ = read(path)
    objects = jsonl_objects(path)
    assert rejected == [] and len(records) == 10
    assert [r.url for r in records] == [o["metadata"]["url"] for o in objects]
    assert [r.record_id for r in records] == [o["id"] for o in objects]


def test_jsonl_zst_and_plain_match_gzip(sample, tmp_path):
    path = sample("cc_en_head-0174.jsonl.gz")
    raw_bytes = gzip.decompress(path.read_bytes())
    lines = raw_bytes.splitlines(keepends=True)
    one_frame = zstandard.ZstdCompressor(level=3).compress(raw_bytes)
    # two frames, as `cat a.zst b.zst` or a streaming writer produce
    half = len(lines) // 2
    two_frames = (zstandard.ZstdCompressor().compress(b"".join(lines[:half]))
                  + zstandard.ZstdCompressor(write_content_size=False).compress(b"".join(lines[half:])))
    (tmp_path / "a.jsonl.zst").write_bytes(one_frame)
    (tmp_path / "b.jsonl.zst").write_bytes(two_frames)
    (tmp_path / "c.jsonl").write_bytes(raw_bytes)

    key = lambda r: (r.url, r.record_id, r.fetched_at, r.payload, r.source)  # noqa: E731
    expected = [key(r) for r in read(path)[0]]
    assert len(expected) == 10
    for name in ("a.jsonl.zst", "b.jsonl.zst", "c.jsonl"):
        records, rejected, _ = read(tmp_path / name)
        assert rejected == [], name
        assert [key(r) for r in records] == expected, name


# --- Parquet -----------------------------------------------------------------------------------


def test_parquet_records_from_real_texts(sample, tmp_path):
    objects = jsonl_objects(sample("cc_en_head-0091.jsonl.gz"))
    frame = pl.DataFrame(
        {
            "id": [o["id"] for o in objects] + ["no-text"],
            "url": [o["metadata"]["url"] for o in objects] + ["http://x.example/"],
            "text": [o["text"] for o in objects] + [None],
            "fetched_at": [datetime.fromisoformat(o["created"].replace("Z", "+00:00")) for o in objects] + [None],
            "extra": list(range(11)),
        },
        schema_overrides={"fetched_at": pl.Datetime("us", "UTC")},
    )
    path = tmp_path / "docs.parquet"
    frame.write_parquet(path, row_group_size=4)

    records, rejected, _ = read(path)
    assert [r.payload for r in records] == [o["text"] for o in objects]
    assert [r.record_id for r in records] == [o["id"] for o in objects]
    assert [r.offset for r in records] == list(range(10))
    assert all(r.source == "test" and r.kind == "text" for r in records)
    assert records[0].fetched_at == datetime(2020, 3, 29, 9, 4, 10, tzinfo=timezone.utc)
    assert [(r.reason, r.offset, r.record_id) for r in rejected] == [(readers.MISSING_TEXT, 10, "no-text")]

    # small batches cross row groups without losing or repeating rows
    skipped: Counter[str] = Counter()
    with path.open("rb") as handle:
        small = list(read_parquet(handle, source="s", name=path.name, max_bytes=10**7, skipped=skipped, batch_rows=3))
    assert [i.offset for i in small] == list(range(11))


def test_parquet_without_text_column_is_rejected_whole(tmp_path):
    path = tmp_path / "no-text.parquet"
    pl.DataFrame({"id": ["a"], "body": ["words"]}).write_parquet(path)
    records, rejected, _ = read(path)
    assert records == []
    assert [r.reason for r in rejected] == [readers.MISSING_TEXT]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.warc.gz", "warc"), ("a.WARC", "warc"), ("a.warc.wet.gz", "warc"), ("a.wet", "warc"),
     ("a.jsonl.zst", "jsonl"), ("a.json.gz", "jsonl"), ("a.ndjson", "jsonl"), ("a.parquet", "parquet")],
)
def test_detect_format(name, kind):
    assert detect_format(name) == kind


def test_detect_format_rejects_unknown_types():
    with pytest.raises(ValueError, match="unsupported"):
        detect_format("notes.txt")
