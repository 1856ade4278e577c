"""Streaming readers for WARC (gzip or plain), WET, JSONL (.gz, .zst) and Parquet.

Every reader yields `Record`s (a document to extract) or `Rejected`s (bad input, kept with
its reason for quarantine) and counts what it skips. Nothing is read whole into memory.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
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


def _decompressing(handle: IO[bytes], name: str) -> IO[bytes]:
    lower = name.lower()
    if lower.endswith(".gz"):
        return gzip.GzipFile(fileobj=handle)  # type: ignore[return-value]
    if lower.endswith((".zst", ".zstd")):
        return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)  # type: ignore[return-value]
    return handle


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
    """True if the gzip member starting at `offset` (the last one read) ends cleanly."""
    handle.seek(offset)
    inflater = zlib.decompressobj(wbits=31)
    while chunk := handle.read(1 << 16):
        inflater.decompress(chunk)
        if inflater.eof:
            return True
    return inflater.eof


def read_warc(
    handle: IO[bytes],
    *,
    source: str,
    name: str,
    html_mime_types: tuple[str, ...],
    max_bytes: int,
    skipped: Counter[str],
) -> Iterator[Record | Rejected]:
    """HTML responses and WET conversion records of a WARC file; the rest is counted as skipped."""
    last_offset = 0
    wanted = WarcRecordType.response | WarcRecordType.conversion | WarcRecordType.resource
    try:
        for rec in ArchiveIterator(handle, parse_http=False, min_content_length=None):
            last_offset = rec.stream_pos
            rtype = rec.record_type
            if not (rtype & wanted):
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
            if rtype == WarcRecordType.conversion:
                body = rec.reader.read()
                if len(body) < declared:
                    yield Rejected(TRUNCATED_RECORD, f"read {len(body)} of {declared} bytes", source,
                                   rec.stream_pos, record_id, url, body)
                    continue
                yield Record(url, record_id, fetched_at, source, rec.stream_pos, body, "text", "utf-8")
                continue
            if rtype == WarcRecordType.resource:
                content_type = (rec.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if content_type not in html_mime_types:
                    rec.reader.consume()
                    skipped["non_html"] += 1
                    continue
                body = rec.reader.read()
                if len(body) < declared:
                    yield Rejected(TRUNCATED_RECORD, f"read {len(body)} of {declared} bytes", source,
                                   rec.stream_pos, record_id, url, body)
                    continue
                yield Record(url, record_id, fetched_at, source, rec.stream_pos, body, "html", None)
                continue
            # response: an HTTP message
            raw = rec.reader.read()
            if len(raw) < declared:
                yield Rejected(TRUNCATED_RECORD, f"read {len(raw)} of {declared} bytes", source,
                               rec.stream_pos, record_id, url, raw)
                continue
            parsed = _split_http(raw)
            if parsed is None:
                if raw.startswith(b"HTTP/") or not raw.strip():
                    yield Rejected(CORRUPT_WARC, "response record without a complete HTTP header block", source,
                                   rec.stream_pos, record_id, url, raw)
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
    except Exception as exc:  # noqa: BLE001 - a broken file must not stop the crawl
        yield Rejected(CORRUPT_WARC, f"{type(exc).__name__}: {exc} (rest of file not read)", source, last_offset)
        return
    if name.lower().endswith(".gz"):
        try:
            complete = _gzip_tail_complete(handle, last_offset)
        except (OSError, zlib.error) as exc:
            complete = False
            log.debug("gzip tail check failed for %s: %s", name, exc)
        if not complete:
            yield Rejected(TRUNCATED_GZIP, "gzip stream ends before its last member is complete", source,
                           last_offset)


def read_jsonl(
    handle: IO[bytes], *, source: str, name: str, max_bytes: int, skipped: Counter[str]
) -> Iterator[Record | Rejected]:
    """One JSON object per line with at least `text`; id, url, source and dates are picked up when present."""
    stream = _decompressing(handle, name)
    offset = 0
    try:
        for line_number, line in enumerate(io.BufferedReader(stream, buffer_size=1 << 20)):  # type: ignore[arg-type]
            offset = line_number
            if not line.strip():
                skipped["blank_line"] += 1
                continue
            if len(line) > max_bytes:
                yield Rejected(OVERSIZED, f"{len(line)} bytes > cap {max_bytes}", source, line_number, payload=b"")
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
        reason = TRUNCATED_GZIP if isinstance(exc, EOFError) else CORRUPT_FILE
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
