"""Bad input goes to quarantine with its reason, is counted in the manifest, and the run goes on.

Every bad file is built from a real bundled sample and ingested by the real raw stage next
to a good file (`cc-main-2019-commoncrawl-org.warc.gz`, one document), so each test also
checks that the good documents still arrive. The expected numbers are computed from the
sample bytes (gzip members, header regexes, the json module), not by the reader itself.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl
import pytest
import zstandard

from textmill.config import RawConfig
from textmill.executor import SerialExecutor
from textmill.ingest import readers
from textmill.ingest.extract import UndecodableError, decode_html
from textmill.schema import QUARANTINE_SCHEMA
from textmill.stages import raw
from textmill.storage import Store

CC2020 = "cc-main-2020-34-sample.warc.gz"  # 16 HTML responses
GOOD = "cc-main-2019-commoncrawl-org.warc.gz"  # 1 HTML response
GOOD_URL = "http://commoncrawl.org/"


@dataclass
class Case:
    files: dict[str, bytes]
    reasons: dict[str, int]
    documents: int  # documents expected from `files` (the good file is added on top)
    config: dict = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # skip counters that must appear


@dataclass
class Outcome:
    result: object
    docs: pl.DataFrame
    quarantine: pl.DataFrame
    by_reason: dict[str, int]


def ingest(root: Path, files: dict[str, bytes], **config) -> Outcome:
    """Run the raw stage on `files` (plus the good file) and check the quarantine bookkeeping."""
    landing = root / "landing" / "c1"
    landing.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (landing / name).write_bytes(data)
    store = Store(str(root))
    result = raw(store=store, crawl="c1", config=RawConfig(**config), executor=SerialExecutor())
    manifest = result.manifest
    docs = store.scan(manifest).collect()

    folder = root / "quarantine" / "raw" / "c1" / manifest.version
    parts = sorted(folder.glob("*.parquet")) if folder.exists() else []
    listed = manifest.quarantine["files"]
    assert sorted(f["path"] for f in listed) == [p.name for p in parts]
    for entry in listed:  # manifest entries describe the bytes on disk
        data = (folder / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    quarantine = pl.concat([pl.read_parquet(p) for p in parts]) if parts else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    assert sum(f["rows"] for f in listed) == quarantine.height
    assert dict(quarantine.schema) == QUARANTINE_SCHEMA

    by_reason = manifest.quarantine["by_reason"]
    assert dict(Counter(quarantine["reason"].to_list())) == by_reason
    assert manifest.quarantine["records"] == quarantine.height == sum(by_reason.values())
    assert manifest.statistics["quarantined"] == by_reason
    assert manifest.statistics["documents"] == docs.height == manifest.rows
    assert set(quarantine["crawl"]) <= {"c1"} and set(quarantine["stage"]) <= {"raw"}
    return Outcome(result, docs, quarantine, by_reason)


def members_of(data: bytes, warc) -> list[tuple[bytes, str]]:
    """(compressed member, WARC-Type) of each record of a real .warc.gz."""
    out = []
    for member in warc.members(data):
        kind = re.search(rb"\r\nWARC-Type: (\w+)\r\n", gzip.decompress(member)).group(1).decode()
        out.append((member, kind))
    return out


# --- the cases ---------------------------------------------------------------------------------


def truncated_warc_gzip(sample, warc, where: str) -> Case:
    data = sample(CC2020).read_bytes()
    members = members_of(data, warc)
    assert sum(kind == "response" for _, kind in members) == 16
    if where == "inside_response":  # the largest response in the second half: the cut lands in its body
        k = max((i for i in range(len(members) // 2, len(members)) if members[i][1] == "response"),
                key=lambda i: len(members[i][0]))
        reasons = {readers.TRUNCATED_RECORD: 1}  # one record, one quarantine row (the detail says the gzip is cut)
    elif where == "inside_request":
        k = next(i for i in range(len(members) // 2, len(members)) if members[i][1] == "request")
        reasons = {readers.TRUNCATED_GZIP: 1}
    else:  # "member_header": the file ends 6 bytes into a gzip member, before any WARC header
        k = next(i for i in range(len(members) // 2, len(members)) if members[i][1] == "response")
        reasons = {readers.TRUNCATED_GZIP: 1}
    start = sum(len(m) for m, _ in members[:k])
    cut = start + (6 if where == "member_header" else len(members[k][0]) // 2)
    before = sum(kind == "response" for _, kind in members[:k])
    assert 0 < before < 16
    return Case({f"truncated-{where}.warc.gz": data[:cut]}, reasons, before)


def corrupt_warc(sample, warc, how: str) -> Case:
    data = sample(CC2020).read_bytes()
    members = [m for m, _ in members_of(data, warc)]
    middle = len(members) // 2
    noise = random.Random(how).randbytes(3000)
    if how == "file_of_garbage":
        return Case({"garbage.warc.gz": noise, "intact.warc.gz": data}, {readers.CORRUPT_WARC: 1}, 16)
    if how == "plain_garbage_between_records":
        plain = [gzip.decompress(m) for m in members]
        bad = b"".join(plain[:middle]) + b"\x00garbage line\r\n" + noise + b"".join(plain[middle:])
        return Case({"corrupt.warc": bad}, {readers.CORRUPT_WARC: 1}, 16)
    inserts = {
        "garbage_between_members": noise,
        "member_of_garbage": gzip.compress(noise),
        "invalid_header": gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: abc\r\n\r\nxyz\r\n\r\n"),
        "header_without_type": gzip.compress(b"WARC/1.0\r\nthis is not a header\r\n\r\n"),
    }
    bad = b"".join(members[:middle]) + inserts[how] + b"".join(members[middle:])
    return Case({f"corrupt-{how}.warc.gz": bad}, {readers.CORRUPT_WARC: 1}, 16)


def undecodable(sample, warc) -> Case:
    """Bytes no charset decodes: only HTML and WET payloads are bytes (JSONL and Parquet text is already str)."""
    noise = b"<html><body><p>" + random.Random(1).randbytes(4000) + b"</p></body></html>"
    with pytest.raises(UndecodableError):
        decode_html(noise)
    good_page = b"<html><body><p>A short page that decodes and has plenty of readable words.</p></body></html>"
    html = warc.gz([
        warc.record(warc.http(noise), url="http://bad.example/noise"),
        warc.record(warc.http(good_page), url="http://good.example/page"),
    ])
    wet = warc.gz([warc.record(b"caf\xe9 au lait \xff\xfe not utf-8", rtype="conversion", url="http://bad.example/wet")])
    return Case({"undecodable.warc.gz": html, "undecodable.warc.wet.gz": wet}, {readers.UNDECODABLE: 2}, 1)


def empty_pages(sample, warc) -> Case:
    empty = b"<html><head><title></title><script>var a = 1;</script></head><body><div>  </div></body></html>"
    text = b"<html><body><p>Some real words on a page that is not empty at all.</p></body></html>"
    data = warc.gz([warc.record(warc.http(empty), url="http://e.example/empty"),
                    warc.record(warc.http(text), url="http://e.example/text")])
    lines = b'{"id": "e1", "text": ""}\n{"id": "e2", "text": "  \\n\\t "}\n{"id": "ok", "text": "words"}\n'
    return Case({"empty.warc.gz": data, "empty.jsonl": lines}, {readers.EMPTY_TEXT: 3}, 2)


def bad_json_lines(sample, warc) -> Case:
    lines = gzip.decompress(sample("cc_en_head-0091.jsonl.gz").read_bytes()).splitlines(keepends=True)
    assert len(lines) == 10
    bad = [
        b"{not json\n",
        b'{"text": "\xff\xfe invalid utf-8"}\n',
        b'{"id": "no-text", "url": "http://x.example/"}\n',
        b'{"text": 5}\n',
        b"[1, 2, 3]\n",
        b'"just a string"\n',
        b"\n",
    ]
    mixed = lines[:3] + bad[:3] + lines[3:7] + bad[3:] + lines[7:]
    return Case({"mixed.jsonl.gz": gzip.compress(b"".join(mixed))},
                {readers.BAD_JSON: 2, readers.MISSING_TEXT: 4}, 10, skipped={"blank_line": 1})


def truncated_jsonl(sample, warc) -> Case:
    data = sample("cc_en_head-0091.jsonl.gz").read_bytes()
    cut = int(len(data) * 0.6)
    complete = zlib.decompressobj(wbits=31).decompress(data[:cut]).count(b"\n")  # lines decodable before the cut
    assert 0 < complete < 10
    # zstd (another file, so no document repeats): one block per line, cut inside the 7th block: lines 0-5 survive
    lines = gzip.decompress(sample("cc_en_head-0174.jsonl.gz").read_bytes()).splitlines(keepends=True)
    writer = zstandard.ZstdCompressor().compressobj()
    blocks = [writer.compress(line) + writer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for line in lines]
    zst = b"".join(blocks[:6]) + blocks[6][: len(blocks[6]) // 2]
    return Case({"truncated.jsonl.gz": data[:cut], "truncated.jsonl.zst": zst},
                {readers.TRUNCATED_GZIP: 1, readers.TRUNCATED_ZSTD: 1}, complete + 6)


def bad_parquet(sample, warc, tmp_path: Path) -> Case:
    path = tmp_path / "nulls.parquet"
    pl.DataFrame({"id": ["a", "b", "c"], "text": ["first document", None, "third document"]}).write_parquet(path)
    return Case({"nulls.parquet": path.read_bytes(), "broken.parquet": b"PAR1" + random.Random(3).randbytes(500)},
                {readers.MISSING_TEXT: 1, readers.CORRUPT_FILE: 1}, 2)


def oversized(sample, warc) -> Case:
    cap = 25_000  # above the good file (20,931 bytes), below 7 of the 16 responses
    plain = gzip.decompress(sample(CC2020).read_bytes())
    big = sum(int(m.group(1)) > cap for m in re.finditer(rb"WARC-Type: response\r\n(?:[^\r\n]*\r\n)*?Content-Length: (\d+)\r\n", plain))
    assert 0 < big < 16
    # small on the wire, too big once decoded: the cap applies to the decoded body too
    bomb = gzip.compress(b"<html><body>" + b"<p>same words again</p>" * 2000 + b"</body></html>")
    assert len(bomb) < cap
    encoded = warc.gz([warc.record(warc.http(bomb, headers=("Content-Type: text/html", "Content-Encoding: gzip")),
                                   url="http://big.example/bomb")])
    lines = gzip.decompress(sample("cc_en_head-0174.jsonl.gz").read_bytes())
    long_lines = sum(len(line) > cap for line in lines.splitlines(keepends=True))
    lines += json.dumps({"id": "huge", "text": "word " * 6000}).encode() + b"\n"
    return Case({"cc.warc.gz": sample(CC2020).read_bytes(), "bomb.warc.gz": encoded, "big.jsonl": lines},
                {readers.OVERSIZED: big + long_lines + 2}, (16 - big) + (10 - long_lines),
                config={"max_document_bytes": cap})


CASES: dict[str, Callable[..., Case]] = {
    "truncated_warc_gzip_in_response": lambda s, w, t: truncated_warc_gzip(s, w, "inside_response"),
    "truncated_warc_gzip_in_request": lambda s, w, t: truncated_warc_gzip(s, w, "inside_request"),
    "truncated_warc_gzip_in_member_header": lambda s, w, t: truncated_warc_gzip(s, w, "member_header"),
    "corrupt_warc_garbage_between_members": lambda s, w, t: corrupt_warc(s, w, "garbage_between_members"),
    "corrupt_warc_member_of_garbage": lambda s, w, t: corrupt_warc(s, w, "member_of_garbage"),
    "corrupt_warc_invalid_header": lambda s, w, t: corrupt_warc(s, w, "invalid_header"),
    "corrupt_warc_header_without_type": lambda s, w, t: corrupt_warc(s, w, "header_without_type"),
    "corrupt_warc_plain_garbage": lambda s, w, t: corrupt_warc(s, w, "plain_garbage_between_records"),
    "corrupt_warc_file_of_garbage": lambda s, w, t: corrupt_warc(s, w, "file_of_garbage"),
    "undecodable": lambda s, w, t: undecodable(s, w),
    "empty_pages": lambda s, w, t: empty_pages(s, w),
    "bad_json_lines": lambda s, w, t: bad_json_lines(s, w),
    "truncated_jsonl": lambda s, w, t: truncated_jsonl(s, w),
    "bad_parquet": lambda s, w, t: bad_parquet(s, w, t),
    "oversized": lambda s, w, t: oversized(s, w),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_quarantined_and_the_run_goes_on(name, sample, warc, tmp_path):
    case = CASES[name](sample, warc, tmp_path)
    files = {GOOD: sample(GOOD).read_bytes(), **case.files}

    outcome = ingest(tmp_path / "root", files, **case.config)

    assert outcome.by_reason == case.reasons
    assert outcome.docs.height == case.documents + 1
    assert GOOD_URL in outcome.docs["url"].to_list()  # the good file arrived
    assert outcome.docs["id"].n_unique() == outcome.docs.height
    assert outcome.docs["text"].str.len_chars().min() >= 1
    skipped = outcome.result.manifest.statistics["skipped"]
    for key, count in case.skipped.items():
        assert skipped.get(key) == count
    # each quarantined row names a landing file that holds it
    assert set(outcome.quarantine["source"]) <= {"warc", "jsonl", "parquet"}
    per_file = {f["path"]: f for f in outcome.result.manifest.statistics["per_file"]}
    assert per_file[GOOD]["quarantined"] == 0 and per_file[GOOD]["documents"] == 1
    assert sum(f["quarantined"] for f in per_file.values()) == sum(case.reasons.values())


def test_all_bad_inputs_in_one_crawl(sample, warc, tmp_path):
    """Every bad file (but the oversized one, which needs its own cap) side by side in one run."""
    files: dict[str, bytes] = {GOOD: sample(GOOD).read_bytes()}
    reasons: Counter[str] = Counter()
    documents = 1
    for name, build in CASES.items():
        if name == "oversized":
            continue
        case = build(sample, warc, tmp_path)
        for file_name, data in case.files.items():
            files[f"{name}--{file_name}"] = data
        reasons.update(case.reasons)
        documents += case.documents

    outcome = ingest(tmp_path / "root", files, rows_per_part=5)  # several parts per shard

    assert outcome.by_reason == dict(reasons)
    assert outcome.docs.height == documents
    assert len(outcome.result.manifest.files) > len(files)  # rolled into several parts
    assert len(outcome.result.manifest.quarantine["files"]) >= 2


def test_quarantine_rows_keep_what_is_needed_to_look_again(sample, warc, tmp_path):
    case = undecodable(sample, warc)
    outcome = ingest(tmp_path / "root", case.files)
    rows = {row["url"]: row for row in outcome.quarantine.to_dicts()}
    noise_row = rows["http://bad.example/noise"]
    assert noise_row["reason"] == readers.UNDECODABLE
    assert noise_row["payload"].startswith(b"<html><body><p>") and len(noise_row["payload"]) > 4000
    assert noise_row["record_id"].startswith("<urn:uuid:")
    wet_row = rows["http://bad.example/wet"]
    assert wet_row["payload"] == b"caf\xe9 au lait \xff\xfe not utf-8"
    assert "utf-8" in wet_row["detail"]

    case = bad_json_lines(sample, warc)
    outcome = ingest(tmp_path / "root2", case.files)
    bad = outcome.quarantine.sort("offset")
    assert bad.filter(pl.col("reason") == readers.BAD_JSON)["payload"].to_list() == [
        b"{not json\n", b'{"text": "\xff\xfe invalid utf-8"}\n']
    # offsets are line numbers in the file: the bad lines sit at 3-5 and 10-12
    assert bad["offset"].to_list() == [3, 4, 5, 10, 11, 12]


def test_truncated_and_corrupt_details(sample, warc, tmp_path):
    case = truncated_warc_gzip(sample, warc, "inside_response")
    outcome = ingest(tmp_path / "a", case.files)
    row = outcome.quarantine.filter(pl.col("reason") == readers.TRUNCATED_RECORD).row(0, named=True)
    assert row["url"].startswith("http") and 0 < len(row["payload"]) < 200_000
    assert re.match(r"read \d+ of \d+ bytes", row["detail"])

    case = corrupt_warc(sample, warc, "member_of_garbage")
    outcome = ingest(tmp_path / "b", case.files)
    (detail,) = outcome.quarantine["detail"].to_list()
    assert "resumed at offset" in detail

    case = corrupt_warc(sample, warc, "file_of_garbage")
    outcome = ingest(tmp_path / "c", case.files)
    (detail,) = outcome.quarantine["detail"].to_list()
    assert "rest of file not read" in detail


def test_quarantine_rate_is_visible_for_checks(sample, warc, tmp_path):
    """The manifest carries what a blocking check needs: records read vs quarantined."""
    case = bad_json_lines(sample, warc)
    outcome = ingest(tmp_path / "root", case.files)
    stats = outcome.result.manifest.statistics
    assert stats["quarantined"] == {readers.BAD_JSON: 2, readers.MISSING_TEXT: 4}
    assert stats["records_read"] >= stats["documents"] + sum(stats["quarantined"].values())


def test_oversized_jsonl_line_is_skipped_while_streaming(tmp_path):
    """A line far over the cap is skipped as it streams by, and the lines after it still arrive."""
    import json as _json

    from textmill.ingest.readers import _lines

    big = b'{"text": "' + b"x" * 5_000_000 + b'"}\n'
    good = _json.dumps({"id": "after", "text": "still here"}).encode() + b"\n"
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    lines = list(_lines(iter([*chunks, good]), 100_000))
    assert [int(lines[0])] == [len(big)] and type(lines[0]).__name__ == "_OversizedLine"
    assert lines[1] == good


def test_records_accounted_check_blocks_a_version_that_lost_records(sample, warc, tmp_path):
    """Every bad input ends as a quarantine row: the raw check passes; a manifest that lost records fails it."""
    import dataclasses

    from checks.raw import run_raw_checks
    from textmill.config import RawChecks

    case = bad_json_lines(sample, warc)
    outcome = ingest(tmp_path / "root", case.files)
    manifest = outcome.result.manifest
    frame = pl.DataFrame(outcome.docs).lazy()
    checks = {o.name: o for o in run_raw_checks(frame, manifest, RawChecks())}
    assert checks["raw_records_accounted"].passed
    assert checks["raw_records_accounted"].metadata["records_read"] == manifest.statistics["records_read"]
    lossy = dataclasses.replace(manifest, statistics={**manifest.statistics, "unaccounted_records": 2})
    checks = {o.name: o for o in run_raw_checks(frame, lossy, RawChecks())}
    assert not checks["raw_records_accounted"].passed
    assert checks["raw_records_accounted"].metadata["unaccounted_records"] == 2
