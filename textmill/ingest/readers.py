"""Streaming readers for WARC (gzip or plain), WET, JSONL (.gz, .zst) and Parquet.

Every reader yields `Record`s (a document to extract) or `Rejected`s (bad input, kept with
its reason for quarantine) and counts what it skips. Nothing is read whole into memory.
"""

from __future__ import annotations

import gzip
import io
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


def _decode_content_encoding(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        return body
    if encoding in ("gzip", "x-gzip"):
        # many crawlers store the decoded body but keep the header: no gzip magic, no decoding
        return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    if encoding == "br":
        import brotli  # installed with trafilatura

        return brotli.decompress(body)
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
        if size == 0:
            return bytes(out)
        start = end + 2
        out += body[start : start + size]
        position = start + size + 2


def _gzip_tail_complete(handle: IO[bytes], offset: int) -> bool:
    """True if every gzip member from `offset` (the last record read) to the end of the file ends cleanly.

    All members are walked, not only the first: a file cut a few bytes into the member after
    the last record fastwarc yields would otherwise pass as complete.
    """
    handle.seek(offset)
    inflater = zlib.decompressobj(wbits=31)
    pending = False  # bytes fed into a member that has not ended yet
    while data := handle.read(1 << 16):
        while data:
            inflater.decompress(data)
            pending = True
            if inflater.eof:
                data, pending = inflater.unused_data, False
                inflater = zlib.decompressobj(wbits=31)
            else:
                data = b""
    return not pending


_WARC_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+\r?\n")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")


def _plain_tail_complete(handle: IO[bytes], offset: int) -> bool:
    """True if the uncompressed record at `offset` (the last one read) is whole and only blank bytes follow.

    fastwarc stops silently when a plain file ends inside a header block or inside a body
    it was not asked to read; this finds both.
    """
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    handle.seek(offset)
    head = handle.read(1 << 16)
    if not head.strip():
        return True
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    if not ends:
        return False
    index, width = min(ends)
    length = _CONTENT_LENGTH.search(head[:index])
    if length is None:
        return False
    stop = offset + index + width + int(length.group(1))
    if stop > size:
        return False
    handle.seek(stop)
    return not handle.read(1 << 16).strip()


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

    After corrupt bytes the reader resynchronises on the next record (gzip member or
    `WARC/x.y` line), so one bad record does not cost the rest of the file.
    """
    gz = handle.read(2) == b"\x1f\x8b"  # the bytes, not the name: fastwarc sniffs too
    handle.seek(0)
    last_offset = 0  # start of the last record the iterator yielded (absolute: fastwarc counts from 0)
    resume = 0  # where the current ArchiveIterator started
    truncated_at = -1
    corrupt: tuple[int, str] | None = None  # (last good record, error) of a bad stretch not yet reported
    reported_at = -1  # a record already quarantined as corrupt: bytes right after it are the same fault
    wanted = WarcRecordType.response | WarcRecordType.conversion | WarcRecordType.resource
    while True:
        try:
            if resume:
                handle.seek(resume)
            for rec in ArchiveIterator(handle, parse_http=False, min_content_length=None):
                if corrupt is not None and corrupt[0] != reported_at:  # one report per bad stretch
                    yield Rejected(CORRUPT_WARC, f"{corrupt[1]} (resumed at offset {rec.stream_pos})", source,
                                   corrupt[0])
                corrupt = None
                last_offset = rec.stream_pos
                rtype = rec.record_type
                if not (rtype & wanted):
                    if not rec.headers.get("WARC-Type"):
                        # fastwarc accepts a header block without WARC-Type (mandatory): a broken record
                        reported_at = rec.stream_pos
                        yield Rejected(CORRUPT_WARC, "record without a WARC-Type header", source, rec.stream_pos,
                                       rec.record_id or "", "", rec.reader.read(QUARANTINE_PAYLOAD_CAP))
                        continue
                    skipped[f"{rtype}_record"] += 1
                    continue
                url = _clean_uri(rec.headers.get("WARC-Target-URI"))
                record_id = rec.record_id or f"{name}@{rec.stream_pos}"
                fetched_at = _parse_date(rec.headers.get("WARC-Date"))
                declared = rec.content_length
                if declared > max_bytes:
                    rec.reader.consume()
                    skipped_payload = b""
                    yield Rejected(OVERSIZED, f"{declared} bytes > cap {max_bytes}", source, rec.stream_pos,
                                   record_id, url, skipped_payload)
                    continue
                if rtype == WarcRecordType.resource:
                    content_type = (rec.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    if content_type not in html_mime_types:
                        rec.reader.consume()
                        skipped["non_html"] += 1
                        continue
                raw = rec.reader.read()
                if len(raw) < declared:
                    truncated_at = rec.stream_pos
                    yield Rejected(TRUNCATED_RECORD, f"read {len(raw)} of {declared} bytes", source,
                                   rec.stream_pos, record_id, url, raw)
                    continue
                if rtype == WarcRecordType.conversion:  # WET: extracted text already
                    yield Record(url, record_id, fetched_at, source, rec.stream_pos, raw, "text", "utf-8")
                    continue
                if rtype == WarcRecordType.resource:  # an HTML page stored without HTTP headers
                    yield Record(url, record_id, fetched_at, source, rec.stream_pos, raw, "html", None)
                    continue
                # response: an HTTP message
                parsed = _split_http(raw)
                if parsed is None:
                    if raw.startswith(b"HTTP/") or not raw.strip():
                        reported_at = rec.stream_pos
                        yield Rejected(CORRUPT_WARC, "response record without a complete HTTP header block",
                                       source, rec.stream_pos, record_id, url, raw)
                    else:
                        skipped["non_http_response"] += 1
                    continue
                status, headers, body = parsed
                if not status.startswith("2"):
                    skipped[f"http_{status or 'unknown'}"] += 1
                    continue
                content_type = headers.get("content-type", "")
                mime = content_type.split(";")[0].strip().lower()
                if mime and mime not in html_mime_types:
                    skipped["non_html"] += 1
                    continue
                if not mime:
                    sniff = body[:512].lstrip().lower()
                    if not (sniff.startswith(b"<!doctype html") or sniff.startswith(b"<html") or b"<body" in sniff):
                        skipped["non_html"] += 1
                        continue
                try:
                    if "chunked" in headers.get("transfer-encoding", "").lower():
                        body = _dechunk(body)  # falls back to the body as stored when it is not chunked
                    body = _decode_content_encoding(body, headers.get("content-encoding", ""))
                except Exception as exc:  # noqa: BLE001 - any decoder failure is the record's fault
                    yield Rejected(BAD_CONTENT_ENCODING, f"{type(exc).__name__}: {exc}", source, rec.stream_pos,
                                   record_id, url, raw)
                    continue
                if len(body) > max_bytes:
                    yield Rejected(OVERSIZED, f"{len(body)} decoded bytes > cap {max_bytes}", source,
                                   rec.stream_pos, record_id, url, b"")
                    continue
                charset = None
                for part in content_type.split(";")[1:]:
                    key, _, value = part.partition("=")
                    if key.strip().lower() == "charset":
                        charset = value.strip().strip("'\"") or None
                yield Record(url, record_id, fetched_at, source, rec.stream_pos, body, "html", charset)
        except Exception as exc:  # noqa: BLE001 - a broken record must not stop the file, nor the crawl
            scan_from = max(last_offset, resume) + 1  # always moves forward, so this loop ends
            try:
                found = _next_record_start(handle, scan_from, gz)
            except Exception as scan_exc:  # noqa: BLE001
                log.debug("resync failed in %s: %s", name, scan_exc)
                found = None
            if corrupt is None:
                corrupt = (last_offset, f"{type(exc).__name__}: {exc}")
            if found is None:
                break
            resume = last_offset = found
            continue
        break
    if corrupt is not None:
        if corrupt[0] != reported_at:
            yield Rejected(CORRUPT_WARC, f"{corrupt[1]} (rest of file not read)", source, corrupt[0])
        return
    tail = max(last_offset, resume)
    if gz:
        try:
            complete = _gzip_tail_complete(handle, tail)
        except (OSError, zlib.error) as exc:
            complete = False
            log.debug("gzip tail check failed for %s: %s", name, exc)
        if not complete:
            yield Rejected(TRUNCATED_GZIP, "gzip stream ends before its last member is complete", source, tail)
    elif truncated_at != tail and not _plain_tail_complete(handle, tail):
        yield Rejected(TRUNCATED_RECORD, "file ends inside a record (header or body incomplete)", source, tail)


def _decompressed_chunks(handle: IO[bytes], name: str, size: int = 1 << 16) -> Iterator[bytes]:
    """The decompressed bytes of a file in chunks; raises EOFError where a compressed stream is cut short.

    Chunks come one decompression step at a time, so everything before a truncation is
    still delivered (a buffered readline over GzipFile loses the whole last buffer).
    """
    lower = name.lower()
    if lower.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=handle)
        while chunk := stream.read1(size):
            yield chunk
        return
    if lower.endswith((".zst", ".zstd")):
        # zstandard's stream_reader ends silently on a truncated frame: track frame ends ourselves
        decompressor = zstandard.ZstdDecompressor()
        inflater = decompressor.decompressobj()
        pending = False
        while data := handle.read(size):
            while data:
                out = inflater.decompress(data)
                pending = True
                if out:
                    yield out
                if inflater.eof:
                    data, pending = inflater.unused_data, False
                    inflater = decompressor.decompressobj()
                else:
                    data = b""
        if pending:
            raise EOFError("zstd stream ended before the end of its last frame")
        return
    while chunk := handle.read(size):
        yield chunk


class _OversizedLine(int):
    """Stands in for a line longer than the cap; its value is the line's length in bytes."""


def _lines(chunks: Iterator[bytes], limit: int) -> Iterator[bytes | _OversizedLine]:
    """Lines of a byte stream; a line over `limit` bytes is skipped without being held in memory."""
    buffer = bytearray()
    dropped = 0  # > 0 while discarding the rest of an oversized line
    for chunk in chunks:
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


def read_jsonl(
    handle: IO[bytes], *, source: str, name: str, max_bytes: int, skipped: Counter[str]
) -> Iterator[Record | Rejected]:
    """One JSON object per line with at least `text`; id, url, source and dates are picked up when present."""
    offset = 0
    try:
        for line_number, line in enumerate(_lines(_decompressed_chunks(handle, name), max_bytes)):
            offset = line_number
            if isinstance(line, _OversizedLine) or len(line) > max_bytes:
                size = int(line) if isinstance(line, _OversizedLine) else len(line)
                yield Rejected(OVERSIZED, f"{size} bytes > cap {max_bytes}", source, line_number, payload=b"")
                continue
            if not line.strip():
                skipped["blank_line"] += 1
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield Rejected(BAD_JSON, str(exc), source, line_number, payload=line)
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                yield Rejected(MISSING_TEXT, "record has no string field 'text'", source, line_number, payload=line)
                continue
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            url = str(obj.get("url") or metadata.get("url") or obj.get("id") or "")
            record_id = str(obj.get("id") or f"{name}:{line_number}")
            fetched = obj.get("fetched_at") or obj.get("created") or metadata.get("date_download")
            record_source = str(obj.get("source") or source)
            yield Record(url, record_id, _parse_date(fetched), record_source, line_number, obj["text"], "text")
    except (EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
        if isinstance(exc, EOFError):
            reason = TRUNCATED_ZSTD if name.lower().endswith((".zst", ".zstd")) else TRUNCATED_GZIP
        else:
            reason = CORRUPT_FILE
        yield Rejected(reason, f"{type(exc).__name__}: {exc} (after line {offset})", source, offset)


def read_parquet(
    handle: IO[bytes], *, source: str, name: str, max_bytes: int, skipped: Counter[str], batch_rows: int = 4096
) -> Iterator[Record | Rejected]:
    """Row batches of a Parquet file with a `text` column (plus id, url, fetched_at when present)."""
    try:
        parquet = pq.ParquetFile(handle)
    except Exception as exc:  # noqa: BLE001
        yield Rejected(CORRUPT_FILE, f"{type(exc).__name__}: {exc}", source, 0)
        return
    names = set(parquet.schema_arrow.names)
    if "text" not in names:
        yield Rejected(MISSING_TEXT, "parquet file has no 'text' column", source, 0)
        return
    columns = [c for c in ("id", "url", "text", "fetched_at", "source") if c in names]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            data = batch.to_pydict()
            for i, text in enumerate(data["text"]):
                offset = row + i
                record_id = str(data["id"][i]) if "id" in data and data["id"][i] is not None else f"{name}:{offset}"
                url = str(data["url"][i] or "") if "url" in data else ""
                if not isinstance(text, str):
                    yield Rejected(MISSING_TEXT, "null text", source, offset, record_id, url)
                    continue
                if len(text) > max_bytes:
                    yield Rejected(OVERSIZED, f"{len(text)} chars > cap {max_bytes}", source, offset, record_id, url)
                    continue
                fetched = _parse_date(data["fetched_at"][i]) if "fetched_at" in data else None
                record_source = str(data["source"][i] or source) if "source" in data else source
                yield Record(url, record_id, fetched, record_source, offset, text, "text")
            row += batch.num_rows
    except Exception as exc:  # noqa: BLE001
        yield Rejected(CORRUPT_FILE, f"{type(exc).__name__}: {exc} (after row {row})", source, row)


def read_records(
    handle: IO[bytes],
    *,
    name: str,
    source: str,
    html_mime_types: tuple[str, ...],
    max_bytes: int,
    skipped: Counter[str],
) -> Iterator[Record | Rejected]:
    """Dispatch on the file name to the matching streaming reader."""
    kind = detect_format(name)
    if kind == "warc":
        return read_warc(handle, source=source, name=name, html_mime_types=html_mime_types, max_bytes=max_bytes,
                         skipped=skipped)
    if kind == "jsonl":
        return read_jsonl(handle, source=source, name=name, max_bytes=max_bytes, skipped=skipped)
    return read_parquet(handle, source=source, name=name, max_bytes=max_bytes, skipped=skipped)
