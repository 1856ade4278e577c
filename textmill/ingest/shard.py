"""Ingest one landing file (a shard) into Parquet parts of the raw version.

Runs inside an executor worker. Records are extracted and language-identified in batches;
a part is written every `rows_per_part` documents, so memory stays bounded whatever the
file size. Bad records go to quarantine parts with their reason.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from textmill.config import RawConfig
from textmill.ingest import readers
from textmill.ingest.extract import UndecodableError, decode_html, extract_text
from textmill.ingest.langid import identify
from textmill.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, document_id
from textmill.storage import PartInfo, Store

log = logging.getLogger(__name__)

HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?([^:/?#]+)"


@dataclass(frozen=True)
class IngestTask:
    """One landing file to ingest into a raw version."""

    store: Store
    crawl: str
    version_dir: str
    quarantine_dir: str
    shard: int
    path: str
    source: str
    config: RawConfig


@dataclass
class ShardResult:
    """What one shard produced, with counters the stage sums into the manifest."""

    shard: int
    path: str
    parts: list[PartInfo] = field(default_factory=list)
    quarantine_parts: list[PartInfo] = field(default_factory=list)
    documents: int = 0
    records: int = 0  # items the reader yielded (documents + quarantined); input records = records + skipped
    bytes_in: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    languages: Counter[str] = field(default_factory=Counter)
    charsets: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def document_frame(records: list[readers.Record], texts: list[str], *, crawl: str,
                   langid_max_chars: int = 2000) -> pl.DataFrame:
    """Build the document-schema frame of a batch; derived columns are Polars expressions."""
    langs, scores = identify(texts, max_chars=langid_max_chars)
    frame = pl.DataFrame(
        {
            "id": [document_id(crawl=crawl, url=r.url, record_id=r.record_id) for r in records],
            "url": [r.url for r in records],
            "source": [r.source for r in records],
            "fetched_at": [r.fetched_at for r in records],
            "text": texts,
            "lang": langs,
            "lang_score": scores,
        },
        schema_overrides={"fetched_at": pl.Datetime("us", "UTC")},
    )
    return frame.with_columns(
        domain=pl.col("url").str.extract(HOST, 1).str.to_lowercase(),
        crawl=pl.lit(crawl),
        n_chars=pl.col("text").str.len_chars(),
    ).select([pl.col(name).cast(dtype) for name, dtype in DOCUMENT_SCHEMA.items()])


def quarantine_frame(rejected: list[readers.Rejected], *, crawl: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "crawl": [crawl] * len(rejected),
            "stage": ["raw"] * len(rejected),
            "source": [r.source for r in rejected],
            "offset": [r.offset for r in rejected],
            "record_id": [r.record_id for r in rejected],
            "url": [r.url for r in rejected],
            "reason": [r.reason for r in rejected],
            "detail": [r.detail for r in rejected],
            "payload": [r.payload for r in rejected],
        },
        schema=QUARANTINE_SCHEMA,
    )


class _ShardWriter:
    """Buffers batches and rolls them into numbered Parquet parts."""

    def __init__(self, task: IngestTask, result: ShardResult) -> None:
        self.task = task
        self.result = result
        self.frames: list[pl.DataFrame] = []
        self.rows = 0
        self.rejected: list[readers.Rejected] = []

    def add(self, frame: pl.DataFrame) -> None:
        """Buffer a batch; parts hold exactly `rows_per_part` rows (the last one fewer)."""
        limit = self.task.config.rows_per_part
        while frame.height:
            room = limit - self.rows
            self.frames.append(frame.head(room))
            self.rows += min(room, frame.height)
            frame = frame.slice(room)
            if self.rows >= limit:
                self.flush_documents()

    def reject(self, item: readers.Rejected) -> None:
        self.result.quarantined[item.reason] += 1
        self.rejected.append(item)
        if len(self.rejected) >= self.task.config.rows_per_part:
            self.flush_quarantine()

    def flush_documents(self) -> None:
        if not self.frames:
            return
        frame = pl.concat(self.frames)
        name = f"part-{self.task.shard:05d}-{len(self.result.parts):04d}.parquet"
        self.result.parts.append(self.task.store.write_parquet(frame, posixpath.join(self.task.version_dir, name)))
        self.result.documents += frame.height
        self.frames, self.rows = [], 0

    def flush_quarantine(self) -> None:
        if not self.rejected:
            return
        frame = quarantine_frame(self.rejected, crawl=self.task.crawl)
        name = f"part-{self.task.shard:05d}-{len(self.result.quarantine_parts):04d}.parquet"
        part = self.task.store.write_parquet(frame, posixpath.join(self.task.quarantine_dir, name))
        self.result.quarantine_parts.append(part)
        self.rejected = []


def _extract_batch(batch: list[readers.Record], writer: _ShardWriter, task: IngestTask) -> None:
    config = task.config
    kept: list[readers.Record] = []
    texts: list[str] = []
    for record in batch:
        payload = record.payload
        try:
            if isinstance(payload, str):
                text = payload
            elif record.kind == "text":
                text = payload.decode(record.charset or "utf-8")
            else:
                html, how = decode_html(payload, declared=record.charset)
                writer.result.charsets[how.split(":")[0]] += 1
                text = extract_text(html, extractor=config.extractor, main_content=config.main_content)
        except (UndecodableError, UnicodeDecodeError) as exc:
            raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
            writer.reject(readers.Rejected(readers.UNDECODABLE, str(exc), record.source, record.offset,
                                           record.record_id, record.url, raw))
            continue
        except Exception as exc:  # noqa: BLE001 - an extractor crash is this record's problem only
            raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
            writer.reject(readers.Rejected(readers.EXTRACTION_ERROR, f"{type(exc).__name__}: {exc}",
                                           record.source, record.offset, record.record_id, record.url, raw))
            continue
        text = text.replace("\x00", "").strip()
        if len(text) < config.min_text_chars:
            raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
            writer.reject(readers.Rejected(readers.EMPTY_TEXT, f"{len(text)} chars of text extracted",
                                           record.source, record.offset, record.record_id, record.url, raw))
            continue
        kept.append(record)
        texts.append(text)
    if kept:
        try:
            frame = document_frame(kept, texts, crawl=task.crawl, langid_max_chars=config.langid_max_chars)
        except Exception as exc:  # noqa: BLE001 - one bad record must not cost its batch: find it
            log.warning("batch of %d failed (%s: %s); building it record by record", len(kept), type(exc).__name__, exc)
            frames = []
            for record, text in zip(kept, texts):
                try:
                    frames.append(document_frame([record], [text], crawl=task.crawl,
                                                 langid_max_chars=config.langid_max_chars))
                except Exception as one:  # noqa: BLE001
                    raw = record.payload if isinstance(record.payload, bytes) else text.encode("utf-8", "replace")
                    writer.reject(readers.Rejected(readers.EXTRACTION_ERROR, f"{type(one).__name__}: {one}",
                                                   record.source, record.offset, record.record_id, record.url, raw))
            if not frames:
                return
            frame = pl.concat(frames)
        writer.result.languages.update(frame["lang"].to_list())
        writer.add(frame)


def ingest_shard(task: IngestTask) -> ShardResult:
    """Read, extract and identify one landing file; write its parts and quarantine."""
    started = time.perf_counter()
    result = ShardResult(shard=task.shard, path=task.path, bytes_in=int(task.store.fs.size(task.path)))
    writer = _ShardWriter(task, result)
    config = task.config
    name = posixpath.basename(task.path)
    batch: list[readers.Record] = []
    with task.store.fs.open(task.path, "rb") as handle:
        try:
            stream = readers.read_records(
                handle, name=name, source=task.source, html_mime_types=tuple(config.html_mime_types),
                max_bytes=config.max_document_bytes, skipped=result.skipped,
            )
            for item in stream:
                result.records += 1
                if isinstance(item, readers.Rejected):
                    writer.reject(item)
                    continue
                batch.append(item)
                if len(batch) >= config.batch_size:
                    _extract_batch(batch, writer, task)
                    batch = []
        except Exception as exc:  # noqa: BLE001 - a reader bug costs the rest of this file, not the crawl
            log.exception("reader failed on %s", name)
            result.records += 1
            writer.reject(readers.Rejected(readers.CORRUPT_FILE, f"reader failed: {type(exc).__name__}: {exc} "
                                           "(rest of file not read)", task.source, -1))
        if batch:
            _extract_batch(batch, writer, task)
    writer.flush_documents()
    writer.flush_quarantine()
    result.seconds = time.perf_counter() - started
    log.info("shard %d (%s): %d documents, %d quarantined in %.2fs", task.shard, name, result.documents,
             sum(result.quarantined.values()), result.seconds)
    return result
