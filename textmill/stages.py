"""One function per dataset version. Dagster, Prefect and the CLI all call these.

A stage takes its inputs, its config and an executor, writes one new dataset version and
returns a small result. The same inputs and config give the same version, so a rerun of
a finished version does nothing.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from textmill.config import RawConfig
from textmill.executor import Executor
from textmill.ingest.readers import detect_format
from textmill.ingest.shard import IngestTask, ShardResult, ingest_shard
from textmill.storage import Manifest, Store, content_version, file_fingerprint

log = logging.getLogger(__name__)

# Bump a stage's code version when its output for the same inputs and config changes.
CODE_VERSIONS = {"raw": "1"}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StageResult:
    """A finished version and whether this call wrote it or found it already there."""

    manifest: Manifest
    reused: bool
    uri: str

    @property
    def version(self) -> str:
        return self.manifest.version


def landing_files(store: Store, crawl: str, patterns: list[str]) -> tuple[list[str], list[str]]:
    """Input files of a crawl (sorted store paths) and the names that match no pattern."""
    base = store.landing_dir(crawl)
    found = sorted(store.fs.find(base)) if store.exists(base) else []
    matched, ignored = [], []
    for path in found:
        name = posixpath.basename(path)
        (matched if any(fnmatch.fnmatch(name.lower(), p) for p in patterns) else ignored).append(path)
    return matched, ignored


def crawls(store: Store) -> list[str]:
    """Crawl folders under landing/ (each becomes one partition)."""
    return [name for name in store.listdir(store.landing_dir()) if store.fs.isdir(store.landing_dir(name))]


def _source_of(store: Store, crawl: str, path: str) -> str:
    relative = posixpath.relpath(path, store.landing_dir(crawl))
    head = relative.split("/", 1)
    return head[0] if len(head) > 1 else detect_format(relative)


def _config_for_version(config: RawConfig) -> dict:
    # thresholds of checks do not change the data, so they do not change the version
    return config.model_dump(mode="json", exclude={"checks"})


def raw(
    *,
    store: Store,
    crawl: str,
    config: RawConfig,
    executor: Executor,
    progress: Progress | None = None,
) -> StageResult:
    """Ingest `landing/{crawl}/` into the raw version of that crawl."""
    paths, ignored = landing_files(store, crawl, config.file_patterns)
    if not paths:
        raise FileNotFoundError(f"no input files matching {config.file_patterns} under {store.uri(store.landing_dir(crawl))}")
    inputs = [
        {"kind": "files", "crawl": crawl,
         "files": [file_fingerprint(store.fs, p) | {"path": posixpath.relpath(p, store.landing_dir(crawl))}
                   for p in paths]}
    ]
    config_json = _config_for_version(config)
    version = content_version(stage="raw", code_version=CODE_VERSIONS["raw"], config=config_json, inputs=inputs)
    existing = store.manifest("raw", crawl, version)
    if existing is not None:
        log.info("raw/%s/%s exists; nothing to do", crawl, version)
        return StageResult(existing, True, store.uri(store.version_dir("raw", crawl, version)))

    started = time.perf_counter()
    writer = store.begin("raw", crawl, version)
    tasks = [
        IngestTask(store=store, crawl=crawl, version_dir=writer.folder, quarantine_dir=writer.quarantine_folder,
                   shard=i, path=p, source=_source_of(store, crawl, p), config=config)
        for i, p in enumerate(paths)
    ]
    results: list[ShardResult] = []
    for done, result in enumerate(executor.map(ingest_shard, tasks), start=1):
        results.append(result)
        log.info("raw %s: %d/%d files ingested", crawl, done, len(tasks), extra={"progress": ("raw", done, len(tasks))})
        if progress:
            progress(done, len(tasks))
    wall = time.perf_counter() - started

    quarantined: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    charsets: Counter[str] = Counter()
    for result in results:
        quarantined.update(result.quarantined)
        skipped.update(result.skipped)
        languages.update(result.languages)
        charsets.update(result.charsets)
    documents = sum(r.documents for r in results)
    records = sum(r.records for r in results) + sum(skipped.values())
    statistics = {
        "documents": documents,
        "records_read": records,
        "input_files": len(paths),
        "input_bytes": sum(r.bytes_in for r in results),
        "ignored_files": [posixpath.relpath(p, store.landing_dir(crawl)) for p in ignored],
        "skipped": dict(sorted(skipped.items())),
        "quarantined": dict(sorted(quarantined.items())),
        "languages": dict(languages.most_common()),
        "charset_sources": dict(sorted(charsets.items())),
        "extractor": config.extractor,
        "per_file": [
            {"path": posixpath.relpath(r.path, store.landing_dir(crawl)), "documents": r.documents,
             "quarantined": sum(r.quarantined.values()), "seconds": round(r.seconds, 4)}
            for r in results
        ],
    }
    shard_seconds = sum(r.seconds for r in results)
    timings = {
        "wall_seconds": round(wall, 4),
        "shard_seconds": round(shard_seconds, 4),
        "documents_per_second": round(documents / wall, 2) if wall else 0.0,
        "workers": executor.workers,
    }
    quarantine = {
        "records": sum(quarantined.values()),
        "by_reason": dict(sorted(quarantined.items())),
        "files": [p.as_dict() for r in results for p in r.quarantine_parts],
        "path": store.uri(writer.quarantine_folder),
    }
    manifest = writer.commit(
        code_version=CODE_VERSIONS["raw"],
        files=[p for r in results for p in r.parts],
        inputs=inputs,
        config=config_json,
        statistics=statistics,
        timings=timings,
        quarantine=quarantine,
    )
    return StageResult(manifest, False, store.uri(writer.folder))
