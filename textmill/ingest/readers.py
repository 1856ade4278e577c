"""Streaming readers for WARC (gzip or plain), WET, JSONL (.gz, .zst) and Parquet.

Every reader yields `Record`s (a document to extract) or `Rejected`s (bad input, kept with
its reason for quarantine) and counts what it skips. Nothing is read whole into memory.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, Iterator, Literal

import pyarrow.parquet as pq
import zstandard
from fastwarc.warc import ArchiveIterator, WarcRecordType

log = logging.getLogger(__name__)

Format = Literal["warc", "jsonl", "parquet"]

# Quarantine reasons (one vocabulary for the whole ingest stage).
TRUNCATED_GZIP = "truncated_gzip"
TRUNCATED_ZSTD = "truncated_zstd"
TRUNCATED_RECORD = "truncated_record"
CORRUPT_WARC = "corrupt_warc"
CORRUPT_FILE = "corrupt_file"
BAD_CONTENT_ENCODING = "bad_content_encoding"
BAD_JSON = "bad_json"
MISSING_TEXT = "missing_text"
OVERSIZED = "oversized"
UNDECODABLE = "undecodable"
EMPTY_TEXT = "empty_text"
EXTRACTION_ERROR = "extraction_error"
BAD_CONTENT_LENGTH = "bad_content_length"  # a WARC record's Content-Length does not end where the record ends
BINARY_PAYLOAD = "binary_payload"  # an image/archive/... body declared as HTML
EMPTY_FILE = "empty_file"  # a zero-byte landing file (a failed upload looks like this)
CORRUPT_GZIP = "corrupt_gzip"  # bytes that are not gzip inside a .gz JSONL stream
BAD_FIELD_TYPE = "bad_field_type"  # id/url/source of a JSON or Parquet record is an object or a list
BAD_SCHEMA = "bad_schema"  # a Parquet file whose text column is not a string (nor binary) column

QUARANTINE_PAYLOAD_CAP = 1 << 20  # keep at most 1 MiB of a bad record's bytes


@dataclass(slots=True)
class Record:
    """One candidate document before extraction."""

    url: str
    record_id: str
    fetched_at: datetime | None
    source: str
    offset: int
    payload: bytes | str
    kind: Literal["html", "text"]
    charset: str | None = None


@dataclass(slots=True)
class Rejected:
    """Bad input with the reason; goes to quarantine, never silently dropped."""

    reason: str
    detail: str
    source: str
    offset: int
    record_id: str = ""
    url: str = ""
    payload: bytes = b""

    def __post_init__(self) -> None:
        if len(self.payload) > QUARANTINE_PAYLOAD_CAP:
            self.payload = self.payload[:QUARANTINE_PAYLOAD_CAP]


def detect_format(name: str) -> Format:
    lower = name.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
    if lower.endswith((".warc", ".wet", ".arc")):
        return "warc"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"unsupported input file type: {name}")


def _clean_uri(uri: str | None) -> str:
    uri = (uri or "").strip()
    if uri.startswith("<") and uri.endswith(">"):  # wget writes <uri>
        uri = uri[1:-1]
    return uri


def _parse_date(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class _TooLarge(ValueError):
    """A compressed body whose decoded size passes the cap (decoding stops there)."""


def _inflate_capped(inflater: Any, body: bytes, limit: int) -> tuple[bytes, bool]:
    """(output, finished) of a zlib inflater over `body`, never holding more than `limit` + 1 bytes."""
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise _TooLarge(f"more than {limit} decoded bytes")
    return out, inflater.eof


def _decode_content_encoding(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo one Content-Encoding; stops at `limit` decoded bytes (a 1 KB body can inflate to gigabytes)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        return body
    if encoding in ("gzip", "x-gzip"):
        # many crawlers store the decoded body but keep the header: no gzip magic, no decoding
        if body[:2] != b"\x1f\x8b":
            return body
        out = bytearray()
        while body[:2] == b"\x1f\x8b":  # gzip.decompress reads every member: so do we
            inflater = zlib.decompressobj(wbits=31)
            chunk, finished = _inflate_capped(inflater, body, limit - len(out))
            out += chunk
            if not finished:
                raise EOFError("gzip body ends before the end of its stream")
            body = inflater.unused_data
        return bytes(out)
    if encoding == "deflate":
        try:
            inflater = zlib.decompressobj()
            chunk, finished = _inflate_capped(inflater, body, limit)
        except zlib.error:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            chunk, finished = _inflate_capped(inflater, body, limit)
        if not finished:
            raise EOFError("deflate body ends before the end of its stream")
        return chunk
    if encoding == "br":
        import brotli  # installed with trafilatura

        decompressor = brotli.Decompressor()
        out = decompressor.process(body, output_buffer_limit=limit + 1)
        if len(out) > limit:
            raise _TooLarge(f"more than {limit} decoded bytes")
        if not decompressor.is_finished():
            raise EOFError("brotli body ends before the end of its stream")
        return out
    raise ValueError(f"unknown content-encoding {encoding!r}")


def _split_http(raw: bytes) -> tuple[str, dict[str, str], bytes] | None:
    """Status, lower-cased headers and body of an HTTP response; tolerates bare-LF headers."""
    if not raw.startswith(b"HTTP/"):
        return None
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    if not ends:
        return None
    index, width = min(ends)
    lines = raw[:index].decode("latin-1").splitlines()
    status_parts = lines[0].split()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return (status_parts[1] if len(status_parts) > 1 else ""), headers, raw[index + width:]


def _dechunk(body: bytes) -> bytes:
    """Undo chunked transfer encoding; crawlers often store bodies already de-chunked."""
    try:
        return _dechunk_strict(body)
    except ValueError:
        return body


def _dechunk_strict(body: bytes) -> bytes:
    out = bytearray()
    position = 0
    while True:
        end = body.index(b"\r\n", position)
        size = int(body[position:end].split(b";")[0].strip() or b"0", 16)
        if size < 0:  # "-10" parses as hex too; it would move backwards (and loop for ever)
            raise ValueError(f"negative chunk size {size}")
        if size == 0:
            return bytes(out)
        start = end + 2
        if start + size > len(body):
            raise ValueError("chunk runs past the end of the body")
        out += body[start : start + size]
        position = start + size + 2


_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"GIF87a", "GIF image"), (b"GIF89a", "GIF image"),
    (b"\xff\xd8\xff", "JPEG image"), (b"PK\x03\x04", "zip archive"), (b"PK\x05\x06", "zip archive"),
    (b"%PDF-", "PDF document"), (b"\x1f\x8b\x08", "gzip data"), (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"BZh", "bzip2 data"), (b"7z\xbc\xaf\x27\x1c", "7z archive"), (b"Rar!\x1a\x07", "rar archive"),
    (b"\x7fELF", "ELF executable"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "OLE2 document"),
    (b"OggS", "Ogg media"), (b"ID3", "MP3 audio"), (b"fLaC", "FLAC audio"), (b"\x1a\x45\xdf\xa3", "Matroska media"),
    (b"wOFF", "WOFF font"), (b"wOF2", "WOFF2 font"), (b"\x00asm", "WebAssembly"), (b"RIFF", "RIFF media"),
    (b"\x00\x00\x01\x00", "ICO image"),
)
# bytes that do not occur in text (C0 controls but TAB, LF, FF, CR and ESC, which ISO-2022 uses)
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)


def binary_kind(body: bytes, charset: str | None = None) -> str | None:
    """What a body declared as HTML really is when it is binary (magic number or control bytes), else None."""
    for magic, label in _BINARY_MAGIC:
        if body.startswith(magic):
            return label
    if body[4:8] == b"ftyp":
        return "MP4 media"
    sample = body[:4096]
    if not sample or sample[:2] in (b"\xff\xfe", b"\xfe\xff") or (charset or "").lower().startswith(("utf-16", "utf-32")):
        return None  # UTF-16/32 text is full of NUL bytes
    controls = len(sample.translate(None, _NOT_CONTROL))
    # random or compressed bytes have ~10% controls, text ~0%: above 15% is binary whatever it is
    return f"binary data ({controls} control bytes in the first {len(sample)})" if controls * 20 > len(sample) * 3 else None


def _data_chunks(handle: IO[bytes], offset: int, gz: bool, size: int = 1 << 16) -> Iterator[bytes]:
    """The (decompressed) bytes from `offset` on, across gzip members; stops quietly at bytes that are not gzip."""
    handle.seek(offset)
    if not gz:
        while chunk := handle.read(size):
            yield chunk
        return
    inflater = zlib.decompressobj(wbits=31)
    while data := handle.read(size):
        while data:
            try:
                out = inflater.decompress(data, size)
            except zlib.error:
                return
            if out:
                yield out
            if inflater.eof:
                data = inflater.unused_data
                inflater = zlib.decompressobj(wbits=31)
            else:
                data = inflater.unconsumed_tail
    if tail := inflater.flush():
        yield tail


def _record_frame(handle: IO[bytes], offset: int, gz: bool, declared: int) -> tuple[str, int]:
    """Does the record at `offset` end where its Content-Length says? ("ok" | "short" | "overrun", end).

    "short": the data ends before the declared end; "overrun": the bytes after the declared end
    are not the record's closing newlines (the length is too small, or the block swallowed the
    next record's header). `end` is the offset of the declared end in the (decompressed) stream.
    """
    buffer = bytearray()
    base = 0  # stream position of buffer[0]
    target = -1
    for chunk in _data_chunks(handle, offset, gz):
        buffer += chunk
        if target < 0:
            ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(sep)) >= 0]
            if not ends:
                if len(buffer) > 1 << 20:
                    return "overrun", -1
                continue
            index, width = min(ends)
            target = index + width + declared
        if base + len(buffer) > target:
            after = buffer[target - base : target - base + 1]
            return ("ok" if after in (b"\r", b"\n") else "overrun"), target
        base += len(buffer)
        buffer.clear()
    if target < 0:
        return "short", -1
    return ("ok" if base + len(buffer) == target else "short"), target


def _gzip_tail(handle: IO[bytes], offset: int) -> tuple[str, int]:
    """("complete" | "incomplete" | "garbage", start of the member at fault) walking every member from `offset`.

    All members are walked, not only the first: a file cut a few bytes into the member after
    the last record fastwarc yields would otherwise pass as complete.
    """
    handle.seek(offset)
    inflater = zlib.decompressobj(wbits=31)
    member, position = offset, offset  # start of the current member; stream position of `data`
    pending = False  # bytes fed into a member that has not ended yet
    while data := handle.read(1 << 16):
        while data:
            try:
                inflater.decompress(data, 1 << 16)
            except zlib.error:
                return "garbage", member
            pending = True
            if inflater.eof:
                used = len(data) - len(inflater.unused_data)
                position += used
                data, pending, member = inflater.unused_data, False, position
                inflater = zlib.decompressobj(wbits=31)
            else:
                position += len(data) - len(inflater.unconsumed_tail)
                data = inflater.unconsumed_tail
    return ("incomplete" if pending else "complete"), member


_WARC_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+\r?\n")


def _looks_like_record(handle: IO[bytes], offset: int, gz: bool) -> bool:
    if gz:
        handle.seek(offset)
        try:
            head = zlib.decompressobj(wbits=31).decompress(handle.read(1 << 16), 64)
        except zlib.error:
            return False
        return _WARC_VERSION_LINE.match(head) is not None
    handle.seek(max(0, offset - 1))
    head = handle.read(65)
    if offset > 0:
        if head[:1] != b"\n":
            return False
        head = head[1:]
    return _WARC_VERSION_LINE.match(head) is not None


def _next_record_start(handle: IO[bytes], start: int, gz: bool, *, window: int = 1 << 20) -> int | None:
    """Offset of the next plausible record (gzip member holding `WARC/x.y`, or such a line) from `start`."""
    needle = b"\x1f\x8b\x08" if gz else b"WARC/"
    position = start
    while True:
        handle.seek(position)
        chunk = handle.read(window)
        found = chunk.find(needle)
        while found >= 0:
            if _looks_like_record(handle, position + found, gz):
                return position + found
            found = chunk.find(needle, found + 1)
        if len(chunk) < window:
            return None
        position += len(chunk) - len(needle) + 1


def _resync(handle: IO[bytes], start: int, gz: bool, name: str) -> int | None:
    try:
        return _next_record_start(handle, start, gz)
    except Exception as exc:  # noqa: BLE001
        log.debug("resync failed in %s: %s", name, exc)
        return None


@dataclass(slots=True)
class _Held:
    """The last record read. Its outcome waits until the bytes after it parse (or the file ends):
    a wrong Content-Length only shows there, and then the record is quarantined instead."""

    offset: int
    declared: int
    record_id: str
    url: str
    source: str
    outcome: Record | Rejected | str  # str: the skip counter it goes to
    short: bool = False  # its block ended before Content-Length bytes

    def fault(self, reason: str, detail: str) -> None:
        payload = self.outcome.payload if isinstance(self.outcome, Record) and isinstance(self.outcome.payload, bytes) \
            else self.outcome.payload if isinstance(self.outcome, Rejected) else b""
        self.outcome = Rejected(reason, detail, self.source, self.offset, self.record_id, self.url, payload)

    def settle(self, skipped: Counter[str]) -> Iterator[Record | Rejected]:
        if isinstance(self.outcome, str):
            skipped[self.outcome] += 1
        else:
            yield self.outcome

    @property
    def reason(self) -> str | None:
        return self.outcome.reason if isinstance(self.outcome, Rejected) else None


_WANTED = WarcRecordType.response | WarcRecordType.conversion | WarcRecordType.resource


def _read_record(rec: Any, *, source: str, name: str, html_mime_types: tuple[str, ...], max_bytes: int) -> _Held:
    """Read one record's block and decide what it is: a Record, a Rejected or a skip counter."""
    offset = rec.stream_pos
    declared = rec.content_length
    rtype = rec.record_type
    url = _clean_uri(rec.headers.get("WARC-Target-URI"))
    record_id = rec.record_id or f"{name}@{offset}"
    held = _Held(offset, declared, record_id, url, source, "")

    def reject(reason: str, detail: str, payload: bytes = b"") -> _Held:
        held.outcome = Rejected(reason, detail, source, offset, record_id, url, payload)
        return held

    if not (rtype & _WANTED):
        if not rec.headers.get("WARC-Type"):
            # fastwarc accepts a header block without WARC-Type (mandatory): a broken record
            return reject(CORRUPT_WARC, "record without a WARC-Type header", rec.reader.read(QUARANTINE_PAYLOAD_CAP))
        held.outcome = f"{rtype}_record"
        return held
    fetched_at = _parse_date(rec.headers.get("WARC-Date"))
    if declared > max_bytes:
        got = 0
        while chunk := rec.reader.read(1 << 20):  # drained, not kept: counting finds a block cut short
            got += len(chunk)
        held.short = got < declared
        return reject(OVERSIZED, f"{declared} bytes > cap {max_bytes}")
    if rtype == WarcRecordType.resource:
        content_type = (rec.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in html_mime_types:
            rec.reader.consume()
            held.outcome = "non_html"
            return held
    raw = rec.reader.read()
    if len(raw) < declared:
        held.short = True
        return reject(TRUNCATED_RECORD, f"read {len(raw)} of {declared} bytes", raw)
    if rtype == WarcRecordType.conversion:  # WET: extracted text already
        held.outcome = Record(url, record_id, fetched_at, source, offset, raw, "text", "utf-8")
        return held
    if rtype == WarcRecordType.resource:  # an HTML page stored without HTTP headers
        if kind := binary_kind(raw):
            return reject(BINARY_PAYLOAD, f"{kind} declared as {rec.headers.get('Content-Type')}", raw)
        held.outcome = Record(url, record_id, fetched_at, source, offset, raw, "html", None)
        return held
    # response: an HTTP message
    parsed = _split_http(raw)
    if parsed is None:
        if raw.startswith(b"HTTP/") or not raw.strip():
            return reject(CORRUPT_WARC, "response record without a complete HTTP header block", raw)
        held.outcome = "non_http_response"
        return held
    status, headers, body = parsed
    if not status.startswith("2"):
        held.outcome = f"http_{status[:16] or 'unknown'}"
        return held
    content_type = headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    if mime and mime not in html_mime_types:
        held.outcome = "non_html"
        return held
    if not mime:
        sniff = body[:512].lstrip().lower()
        if not (sniff.startswith(b"<!doctype html") or sniff.startswith(b"<html") or b"<body" in sniff):
            held.outcome = "non_html"
            return held
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(body)  # falls back to the body as stored when it is not chunked
        body = _decode_content_encoding(body, headers.get("content-encoding", ""), max_bytes)
    except _TooLarge as exc:
        return reject(OVERSIZED, f"decoded body: {exc} (cap {max_bytes})")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the record's fault
        return reject(BAD_CONTENT_ENCODING, f"{type(exc).__name__}: {exc}", raw)
    if len(body) > max_bytes:
        return reject(OVERSIZED, f"{len(body)} decoded bytes > cap {max_bytes}")
    charset = None
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("'\"") or None
    if kind := binary_kind(body, charset):
        return reject(BINARY_PAYLOAD, f"{kind} declared as {mime or 'HTML (sniffed)'}", body)
    held.outcome = Record(url, record_id, fetched_at, source, offset, body, "html", charset)
    return held


def read_warc(
    handle: IO[bytes],
    *,
    source: str,
    name: str,
    html_mime_types: tuple[str, ...],
    max_bytes: int,
    skipped: Counter[str],
) -> Iterator[Record | Rejected]:
    """HTML responses and WET conversion records of a WARC file; the rest is counted as skipped.

    Every record fastwarc delimits ends as exactly one of: a Record, a Rejected, a skip count;
    bytes that are no record (garbage, a cut-off tail) count as one Rejected per stretch. So
    records read = documents + quarantined + skipped holds for every file.

    A record's outcome is held until the bytes after it parse: when they do not, its
    Content-Length is checked against the data, and a record whose length is wrong is
    quarantined (`bad_content_length`) together with the bytes it spoiled. After corrupt bytes
    the reader resynchronises on the next record (gzip member or `WARC/x.y` line), so one bad
    record does not cost the rest of the file.
    """
    gz = handle.read(2) == b"\x1f\x8b"  # the bytes, not the name: fastwarc sniffs too
    handle.seek(0)
    last_offset = 0  # start of the last record the iterator yielded (absolute: fastwarc counts from 0)
    resume = 0  # where the current ArchiveIterator started
    corrupt: tuple[int, str] | None = None  # (last good record, error) of a bad stretch not yet reported
    held: _Held | None = None
    while True:
        failure: Exception | None = None
        try:
            if resume:
                handle.seek(resume)
            for rec in ArchiveIterator(handle, parse_http=False, min_content_length=None):
                if held is not None:  # the iterator parsed the next header: the held record was framed well enough
                    yield from held.settle(skipped)
                    held = None
                if corrupt is not None:  # one report per bad stretch
                    yield Rejected(CORRUPT_WARC, f"{corrupt[1]} (resumed at offset {rec.stream_pos})", source,
                                   corrupt[0])
                    corrupt = None
                last_offset = rec.stream_pos
                held = _read_record(rec, source=source, name=name, html_mime_types=html_mime_types,
                                    max_bytes=max_bytes)
        except Exception as exc:  # noqa: BLE001 - a broken record must not stop the file, nor the crawl
            failure = exc
        if failure is not None:
            absorbed = False  # the bad bytes belong to the held record: no report of their own
            if held is not None:
                if held.reason != CORRUPT_WARC:
                    state, _ = _safe_frame(handle, held, gz)
                    if state != "ok":
                        held.fault(BAD_CONTENT_LENGTH, f"Content-Length {held.declared} does not end at the "
                                   f"record's end ({state}); next header unreadable: {type(failure).__name__}")
                absorbed = held.reason in (CORRUPT_WARC, BAD_CONTENT_LENGTH)
                yield from held.settle(skipped)
                held = None
            if corrupt is None and not absorbed:
                corrupt = (last_offset, f"{type(failure).__name__}: {failure}")
            found = _resync(handle, max(last_offset, resume) + 1, gz, name)  # always forward, so this loop ends
            if found is None:
                if absorbed:  # the rest of the file is the held record's fault, already reported with it
                    return
                break
            resume = last_offset = found
            continue
        if held is not None and held.reason != CORRUPT_WARC:
            state, end = _safe_frame(handle, held, gz)
            if held.short or state == "short":
                # the block runs past the end of the data: a record after its declared start means
                # the length is wrong (read on from there); none means the file is cut short
                found = _resync(handle, held.offset + 1, gz, name)
                if found is not None:
                    held.fault(BAD_CONTENT_LENGTH, f"Content-Length {held.declared} runs past the next record "
                               f"(at offset {found})")
                    yield from held.settle(skipped)
                    held = None
                    resume = last_offset = found
                    continue
                yield from _settle_cut(held, handle, gz, skipped)
                return
            if state == "overrun":
                held.fault(BAD_CONTENT_LENGTH, f"Content-Length {held.declared} ends inside the record's block")
            elif not gz:
                stop = held.offset + end
                yield from held.settle(skipped)
                held = None
                if end >= 0:
                    yield from _plain_trailer(handle, stop, source)
                return
        break
    if corrupt is not None:
        if held is not None:
            yield from held.settle(skipped)
        yield Rejected(CORRUPT_WARC, f"{corrupt[1]} (rest of file not read)", source, corrupt[0])
        return
    if not gz:
        if held is not None:
            yield from held.settle(skipped)
        else:
            yield from _plain_trailer(handle, max(last_offset, resume), source)
        return
    tail = held.offset if held is not None else max(last_offset, resume)
    try:
        state, member = _gzip_tail(handle, tail)
    except OSError as exc:
        state, member = "incomplete", tail
        log.debug("gzip tail check failed for %s: %s", name, exc)
    if held is not None and state != "complete" and member <= held.offset:
        if held.reason not in (TRUNCATED_RECORD, BAD_CONTENT_LENGTH):
            held.fault(TRUNCATED_GZIP, "gzip stream ends inside this record's member")
        held_first = True
    else:
        held_first = False
    if held is not None:
        yield from held.settle(skipped)
    if state == "complete" or held_first:
        return
    if state == "incomplete":
        yield Rejected(TRUNCATED_GZIP, "gzip stream ends before its last member is complete", source, member)
    else:
        yield Rejected(CORRUPT_WARC, "bytes after the last record are not a gzip member", source, member)


def _safe_frame(handle: IO[bytes], held: _Held, gz: bool) -> tuple[str, int]:
    try:
        return _record_frame(handle, held.offset, gz, held.declared)
    except Exception as exc:  # noqa: BLE001 - a check must not turn into a crash
        log.debug("frame check failed at %d: %s", held.offset, exc)
        return "ok", -1


def _settle_cut(held: _Held, handle: IO[bytes], gz: bool, skipped: Counter[str]) -> Iterator[Record | Rejected]:
    """The held record runs past the end of the file: truncated, or (gzip ending cleanly) a wrong length."""
    if gz:
        try:
            state, _ = _gzip_tail(handle, held.offset)
        except OSError:
            state = "incomplete"
        if state == "complete":
            held.fault(BAD_CONTENT_LENGTH, f"Content-Length {held.declared} runs past the end of a complete gzip stream")
        elif held.reason != TRUNCATED_RECORD:
            held.fault(TRUNCATED_GZIP, "gzip stream ends inside this record")
        elif isinstance(held.outcome, Rejected):
            held.outcome.detail += "; the gzip stream ends inside this record"
    elif held.reason != TRUNCATED_RECORD:
        held.fault(TRUNCATED_RECORD, f"file ends inside a record of {held.declared} bytes")
    yield from held.settle(skipped)


def _plain_trailer(handle: IO[bytes], end: int, source: str) -> Iterator[Rejected]:
    """Bytes after the last whole record of an uncompressed file: a cut-off record or garbage (one Rejected)."""
    handle.seek(max(0, end))
    rest = handle.read(1 << 16).lstrip()
    if not rest:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                rest = chunk.lstrip()
                break
    if not rest:
        return
    if rest.startswith(b"WARC/"):
        yield Rejected(TRUNCATED_RECORD, "file ends inside a record (header or body incomplete)", source, end)
    else:
        yield Rejected(CORRUPT_WARC, "bytes after the last record are not a record", source, end)


@dataclass(slots=True)
class _Fault:
    """A stretch of a compressed stream that could not be read (passed along the chunk stream)."""

    reason: str
    detail: str


_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _next_gzip_member(handle: IO[bytes], start: int) -> int | None:
    """Offset of the next gzip member header from `start` whose first bytes inflate."""
    position = start
    while True:
        handle.seek(position)
        chunk = handle.read(1 << 20)
        found = chunk.find(b"\x1f\x8b\x08")
        while found >= 0:
            handle.seek(position + found)
            try:
                zlib.decompressobj(wbits=31).decompress(handle.read(1 << 12), 16)
                return position + found
            except zlib.error:
                found = chunk.find(b"\x1f\x8b\x08", found + 1)
        if len(chunk) < 1 << 20:
            return None
        position += len(chunk) - 2


def _gzip_chunks(handle: IO[bytes], size: int) -> Iterator[bytes | _Fault]:
    """Decompressed chunks of every gzip member; garbage between members is one fault, then reading resumes."""
    inflater = zlib.decompressobj(wbits=31)
    member = position = 0  # start of the current member; file position of `data`
    pending = False
    while data := handle.read(size):
        while data:
            try:
                out = inflater.decompress(data, size)
            except zlib.error as exc:
                found = _next_gzip_member(handle, member + 1)
                resumed = f"resumed at byte {found}" if found is not None else "rest of file not read"
                yield _Fault(CORRUPT_GZIP, f"{exc} in the member at byte {member} ({resumed})")
                if found is None:
                    return
                handle.seek(found)
                member = position = found
                inflater, pending, data = zlib.decompressobj(wbits=31), False, b""
                break
            pending = True
            if out:
                yield out
            if inflater.eof:
                position += len(data) - len(inflater.unused_data)
                data, pending, member = inflater.unused_data, False, position
                inflater = zlib.decompressobj(wbits=31)
            else:
                position += len(data) - len(inflater.unconsumed_tail)
                data = inflater.unconsumed_tail
    if pending:
        yield _Fault(TRUNCATED_GZIP, f"gzip stream ends inside the member at byte {member}")


def _zstd_chunks(handle: IO[bytes], size: int) -> Iterator[bytes | _Fault]:
    # zstandard's stream_reader ends silently on a truncated frame: track frame ends ourselves
    decompressor = zstandard.ZstdDecompressor()
    inflater = decompressor.decompressobj()
    pending = False
    while data := handle.read(size):
        while data:
            try:
                out = inflater.decompress(data)
            except zstandard.ZstdError as exc:
                yield _Fault(CORRUPT_FILE, f"ZstdError: {exc} (rest of file not read)")
                return
            pending = True
            if out:
                yield out
            if inflater.eof:
                data, pending = inflater.unused_data, False
                inflater = decompressor.decompressobj()
            else:
                data = b""
    if pending:
        yield _Fault(TRUNCATED_ZSTD, "zstd stream ended before the end of its last frame")


def _transcoded(chunks: Iterator[bytes | _Fault]) -> Iterator[bytes | _Fault]:
    """UTF-8 chunks: a leading UTF-8 BOM is dropped, a UTF-16/32 BOM makes the stream be decoded from that."""
    head = b""
    for chunk in chunks:
        if isinstance(chunk, _Fault):
            if head:
                yield head
                head = b""
            yield chunk
            continue
        head += chunk
        if len(head) >= 4:
            break
    else:
        if head:
            yield head[3:] if head.startswith(codecs.BOM_UTF8) else head
        return
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), None)
    if encoding is None:
        yield head[3:] if head.startswith(codecs.BOM_UTF8) else head
        yield from chunks
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    yield decoder.decode(head).lstrip("\ufeff").encode("utf-8", "surrogatepass")
    for chunk in chunks:
        yield chunk if isinstance(chunk, _Fault) else decoder.decode(chunk).encode("utf-8", "surrogatepass")
    yield decoder.decode(b"", final=True).encode("utf-8", "surrogatepass")


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def _decompressed_chunks(handle: IO[bytes], name: str, size: int = 1 << 16) -> Iterator[bytes | _Fault]:
    """The decompressed bytes of a file in chunks; a cut-short or corrupt compressed stream shows as a `_Fault`.

    The compression is read from the magic bytes (the name may lie). Chunks come one
    decompression step at a time, so everything before a fault is still delivered.
    """
    magic = handle.read(4)
    handle.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return _transcoded(_gzip_chunks(handle, size))
    if magic == _ZSTD_MAGIC:
        return _transcoded(_zstd_chunks(handle, size))
    return _transcoded(iter(lambda: handle.read(size), b""))


class _OversizedLine(int):
    """Stands in for a line longer than the cap; its value is the line's length in bytes."""


def _lines(chunks: Iterator[bytes | _Fault], limit: int) -> Iterator[bytes | _OversizedLine | _Fault]:
    """Lines of a byte stream; a line over `limit` bytes is skipped without being held in memory.

    A fault drops the partial line before it (those bytes are part of the bad stretch).
    """
    buffer = bytearray()
    dropped = 0  # > 0 while discarding the rest of an oversized line
    for chunk in chunks:
        if isinstance(chunk, _Fault):
            buffer.clear()
            dropped = 0
            yield chunk
            continue
        buffer += chunk
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            if dropped:
                yield _OversizedLine(dropped + newline + 1 - start)
                dropped = 0
            else:
                yield bytes(buffer[start : newline + 1])
            start = newline + 1
        del buffer[:start]
        if len(buffer) > limit:
            dropped += len(buffer)
            buffer.clear()
    if dropped:
        yield _OversizedLine(dropped + len(buffer))
    elif buffer:
        yield bytes(buffer)


_NESTED = (dict, list)


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_jsonl(
    handle: IO[bytes], *, source: str, name: str, max_bytes: int, skipped: Counter[str]
) -> Iterator[Record | Rejected]:
    """One JSON object per line with at least `text`; id, url, source and dates are picked up when present.

    Every line ends as exactly one Record, Rejected or skip count; a stretch of the compressed
    stream that cannot be read is one Rejected.
    """
    offset = 0
    try:
        for line_number, line in enumerate(_lines(_decompressed_chunks(handle, name), max_bytes)):
            offset = line_number
            if isinstance(line, _Fault):
                yield Rejected(line.reason, f"{line.detail} (at line {line_number})", source, line_number)
                continue
            if isinstance(line, _OversizedLine) or len(line) > max_bytes:
                size = int(line) if isinstance(line, _OversizedLine) else len(line)
                yield Rejected(OVERSIZED, f"{size} bytes > cap {max_bytes}", source, line_number, payload=b"")
                continue
            if not line.strip():
                skipped["blank_line"] += 1
                continue
            try:
                obj = json.loads(line)
            except RecursionError:
                yield Rejected(BAD_JSON, "JSON nested too deeply", source, line_number, payload=line)
                continue
            except ValueError as exc:
                yield Rejected(BAD_JSON, str(exc), source, line_number, payload=line)
                continue
            if not isinstance(obj, dict):
                yield Rejected(MISSING_TEXT, f"line is a JSON {type(obj).__name__}, not an object", source,
                               line_number, payload=line)
                continue
            text = obj.get("text")
            if not isinstance(text, str):
                what = "no field 'text'" if "text" not in obj else f"'text' is {type(text).__name__}, not a string"
                yield Rejected(MISSING_TEXT, what, source, line_number, payload=line)
                continue
            bad = next((key for key in ("id", "url", "source") if isinstance(obj.get(key), _NESTED)), None)
            if bad is not None:
                yield Rejected(BAD_FIELD_TYPE, f"'{bad}' is a JSON {type(obj[bad]).__name__}", source, line_number,
                               payload=line)
                continue
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            meta_url = metadata.get("url")
            url = str(obj.get("url") or (meta_url if not isinstance(meta_url, _NESTED) else "") or obj.get("id") or "")
            record_id = str(obj.get("id") or f"{name}:{line_number}")
            record_source = str(obj.get("source") or source)
            if b"\\u" in line and (lone := next((k for k, v in (("text", text), ("url", url), ("id", record_id),
                                                                  ("source", record_source)) if _has_lone_surrogate(v)),
                                                 None)):
                # a \ud800-style escape without its pair: no UTF-8 (nor Parquet) can hold it
                yield Rejected(UNDECODABLE, f"lone surrogate escape in '{lone}'", source, line_number, payload=line)
                continue
            fetched = obj.get("fetched_at") or obj.get("created") or metadata.get("date_download")
            yield Record(url, record_id, _parse_date(fetched), record_source, line_number, text, "text")
    except (OSError, zlib.error, zstandard.ZstdError) as exc:
        yield Rejected(CORRUPT_FILE, f"{type(exc).__name__}: {exc} (after line {offset})", source, offset)


_TEXT_TYPES = ("string", "large_string", "string_view")
_BINARY_TYPES = ("binary", "large_binary", "binary_view")


def _text_type_ok(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return str(arrow_type) in _TEXT_TYPES + _BINARY_TYPES or pa.types.is_string(arrow_type) \
        or pa.types.is_large_string(arrow_type)


def read_parquet(
    handle: IO[bytes], *, source: str, name: str, max_bytes: int, skipped: Counter[str], batch_rows: int = 4096
) -> Iterator[Record | Rejected]:
    """Row batches of a Parquet file with a `text` column (plus id, url, fetched_at when present).

    Every row of a readable row group ends as one Record or Rejected; a file that cannot be
    opened, or whose `text` column is missing or not text, is one Rejected, and so is an
    unreadable row group (or the rest of one).
    """
    import pyarrow as pa

    try:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
    except Exception as exc:  # noqa: BLE001
        yield Rejected(CORRUPT_FILE, f"{type(exc).__name__}: {exc}", source, 0)
        return
    names = set(schema.names)
    if "text" not in names:
        yield Rejected(MISSING_TEXT, "parquet file has no 'text' column", source, 0)
        return
    text_type = schema.field("text").type
    if not _text_type_ok(text_type):
        yield Rejected(BAD_SCHEMA, f"'text' column is {text_type}, not a string", source, 0)
        return
    columns = [c for c in ("id", "url", "text", "fetched_at", "source") if c in names]
    nested = {c: str(schema.field(c).type) for c in ("id", "url", "source") if c in names
              and pa.types.is_nested(schema.field(c).type)}
    row = 0
    for group in range(parquet.metadata.num_row_groups):
        group_end = row + parquet.metadata.row_group(group).num_rows
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, row_groups=[group]):
                data = batch.to_pydict()
                for i, text in enumerate(data["text"]):
                    offset = row + i
                    raw_id = data["id"][i] if "id" in data else None
                    record_id = str(raw_id) if raw_id is not None and "id" not in nested else f"{name}:{offset}"
                    url = str(data["url"][i] or "") if "url" in data and "url" not in nested else ""
                    if nested:
                        column, kind = next(iter(nested.items()))
                        yield Rejected(BAD_FIELD_TYPE, f"'{column}' column is {kind}", source, offset, record_id, url)
                        continue
                    if text is None:
                        yield Rejected(MISSING_TEXT, "null text", source, offset, record_id, url)
                        continue
                    if len(text) > max_bytes:
                        yield Rejected(OVERSIZED, f"{len(text)} chars > cap {max_bytes}", source, offset, record_id, url)
                        continue
                    fetched = _parse_date(data["fetched_at"][i]) if "fetched_at" in data else None
                    record_source = str(data["source"][i] or source) if "source" in data else source
                    yield Record(url, record_id, fetched, record_source, offset, text, "text", "utf-8")
                row += batch.num_rows
        except Exception as exc:  # noqa: BLE001
            yield Rejected(CORRUPT_FILE, f"{type(exc).__name__}: {exc} (row group {group}, rows {row}-{group_end - 1})",
                           source, row)
        row = group_end


def sniff_format(head: bytes) -> Format | None:
    """The format the first bytes of a file show (through gzip or zstd), or None when they do not tell."""
    if head.startswith(b"PAR1"):
        return "parquet"
    inner = head
    try:
        if head.startswith(_GZIP_MAGIC):
            inner = zlib.decompressobj(wbits=31).decompress(head, 512)
        elif head.startswith(_ZSTD_MAGIC):
            inner = zstandard.ZstdDecompressor().decompressobj().decompress(head)[:512]
    except (zlib.error, zstandard.ZstdError):
        return None
    inner = inner.removeprefix(codecs.BOM_UTF8).lstrip()
    if inner.startswith(b"WARC/"):
        return "warc"
    if inner.startswith(b"{"):
        return "jsonl"
    return None


def read_records(
    handle: IO[bytes],
    *,
    name: str,
    source: str,
    html_mime_types: tuple[str, ...],
    max_bytes: int,
    skipped: Counter[str],
) -> Iterator[Record | Rejected]:
    """Dispatch to the matching streaming reader: by content when the first bytes tell, else by name.

    A zero-byte file is one `empty_file` rejection (a failed upload looks like that).
    """
    head = handle.read(4096)
    handle.seek(0)
    if not head:
        return iter([Rejected(EMPTY_FILE, "zero-byte file", source, 0)])
    try:
        by_name: Format | None = detect_format(name)
    except ValueError:
        by_name = None
    kind = sniff_format(head) or by_name
    if kind is None:
        return iter([Rejected(CORRUPT_FILE, f"neither the name nor the first bytes of {name!r} tell its format",
                              source, 0, payload=head[:512])])
    if kind != by_name:
        log.warning("%s holds %s data (by its first bytes); read as %s", name, kind, kind)
    if kind == "warc":
        return read_warc(handle, source=source, name=name, html_mime_types=html_mime_types, max_bytes=max_bytes,
                         skipped=skipped)
    if kind == "jsonl":
        return read_jsonl(handle, source=source, name=name, max_bytes=max_bytes, skipped=skipped)
    return read_parquet(handle, source=source, name=name, max_bytes=max_bytes, skipped=skipped)
