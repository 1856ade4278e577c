"""One function per dataset version. Dagster, Prefect and the CLI all call these.

A stage takes its inputs, its config and an executor, writes one new dataset version and
returns a small result. The same inputs and config give the same version, so a rerun of
a finished version does nothing.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import posixpath
import functools
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, TypeVar

import polars as pl

from textmill.config import DedupConfig, FilteredConfig, RawConfig
from textmill.executor import Executor
from textmill.ingest.readers import detect_format
from textmill.ingest.shard import IngestTask, ShardResult, ingest_shard
from textmill.names import check_name, name_problem
from textmill.storage import Manifest, Store, content_version, file_fingerprint, file_sha256

if TYPE_CHECKING:
    from textmill.mix.config import MixComponent, MixConfig
    from textmill.rewrite.backends import LLMBackend
    from textmill.storage import PartInfo
    from textmill.rewrite.config import RewriteConfig

log = logging.getLogger(__name__)

# Bump a stage's code version when its output for the same inputs and config changes.
CODE_VERSIONS = {"raw": "2", "deduped": "2", "filtered": "2", "rewritten": "2", "mixed": "2"}

Progress = Callable[[int, int], None]


class RewriteIncomplete(RuntimeError):
    """More LLM requests failed than the recipe tolerates: no version is written.

    A committed version would keep those failures for good (a rerun reuses it); the replies that
    did arrive are cached, so the next run asks only for the failed ones."""


@dataclass(frozen=True)
class StageResult:
    """A finished version and whether this call wrote it or found it already there."""

    manifest: Manifest
    reused: bool
    uri: str
    seconds: float = 0.0  # this call's wall time (a reused version takes only the lookup)

    @property
    def version(self) -> str:
        return self.manifest.version


_Stage = TypeVar("_Stage", bound=Callable[..., StageResult])


def _rows_in(manifest: Manifest) -> int | None:
    """Rows a stage read, from its statistics (raw: records, deduped/filtered: documents, rewritten: selected)."""
    stats = manifest.statistics
    if manifest.stage == "mixed":
        return stats.get("mix", {}).get("candidates", {}).get("documents")
    return stats.get({"raw": "records_read", "rewritten": "selected"}.get(manifest.stage, "documents_in"))


def logged_stage(stage: str) -> Callable[[_Stage], _Stage]:
    """Log `stage started` / `stage finished` (or `stage failed`) with timings and counts as structured fields."""

    def wrap(function: _Stage) -> _Stage:
        @functools.wraps(function)
        def run(*args, **kwargs) -> StageResult:
            config = kwargs.get("config")
            partition = kwargs.get("crawl") or getattr(config, "name", None)
            fields = {"event": "stage_started", "stage": stage, "partition": partition}
            log.info("stage started: %s %s", stage, partition, extra=fields)
            started = time.perf_counter()
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                seconds = round(time.perf_counter() - started, 4)
                log.error("stage failed: %s %s after %.2f s: %r", stage, partition, seconds, exc,
                          extra=fields | {"event": "stage_failed", "seconds": seconds, "error": repr(exc)})
                raise
            result = replace(result, seconds=round(time.perf_counter() - started, 4))
            manifest = result.manifest
            log.info("stage finished: %s %s %s (%d rows, %.2f s%s)", stage, partition, manifest.version,
                     manifest.rows, result.seconds, ", reused" if result.reused else "",
                     extra=fields | {"event": "stage_finished", "version": manifest.version,
                                     "code_version": manifest.code_version, "rows_in": _rows_in(manifest),
                                     "rows_out": manifest.rows, "bytes_out": manifest.bytes,
                                     "seconds": result.seconds, "reused": result.reused})
            return result

        return run  # type: ignore[return-value]

    return wrap


def _before_after(rows: pl.DataFrame, selection: pl.DataFrame, *, count: int = 3) -> list[dict]:
    """A few rewrites beside the documents they came from, for metadata and the data card."""
    parents = selection.select(pl.col("id").alias("parent_id"), pl.col("text").alias("before"),
                               pl.col("reject_reason").alias("reason")).unique("parent_id")
    pairs = rows.head(count).select("parent_id", pl.col("rewrite_prompt").alias("prompt"),
                                    pl.col("text").alias("after")).join(parents, on="parent_id", how="left")
    return [pair | {"before": (pair["before"] or "")[:400], "after": pair["after"][:400]}
            for pair in pairs.iter_rows(named=True)]


def _reuse(store: Store, stage: str, partition: str, version: str) -> StageResult | None:
    """The finished version of these inputs and config, if it exists: then a stage has nothing to do."""
    existing = store.manifest(stage, partition, version)
    if existing is None:
        return None
    log.info("%s/%s/%s exists; nothing to do", stage, partition, version)
    return StageResult(existing, True, store.uri(store.version_dir(stage, partition, version)))


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
    """Crawl folders under landing/ (each becomes one partition). A folder whose name is not a
    safe name (textmill.names) is reported with a warning and left alone, never made a path."""
    found, landing = [], store.landing_dir()
    for name in store.listdir(landing):
        if not store.fs.isdir(posixpath.join(landing, name)):  # a listed entry, only looked at
            continue
        problem = name_problem(name)
        if problem is not None:
            log.warning("ignoring landing folder %r: crawl name %s", name, problem)
        else:
            found.append(name)
    return found


def _source_of(store: Store, crawl: str, path: str) -> str:
    relative = posixpath.relpath(path, store.landing_dir(crawl))
    head = relative.split("/", 1)
    return head[0] if len(head) > 1 else detect_format(relative)


def _config_for_version(config: RawConfig) -> dict:
    # thresholds of checks do not change the data, so they do not change the version
    return config.model_dump(mode="json", exclude={"checks"})


@logged_stage("raw")
def raw(
    *,
    store: Store,
    crawl: str,
    config: RawConfig,
    executor: Executor,
    progress: Progress | None = None,
) -> StageResult:
    """Ingest `landing/{crawl}/` into the raw version of that crawl."""
    check_name(crawl, field="crawl")
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
    if (existing := _reuse(store, "raw", crawl, version)) is not None:
        return existing

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
    # every input record (WARC record, JSONL line, Parquet row; an unreadable stretch or file counts as one)
    # is a document, a skip or a quarantine row: anything else is a bug and shows here
    unaccounted = records - documents - sum(skipped.values()) - sum(quarantined.values())
    if unaccounted:
        log.error("raw %s: %d records neither kept, skipped nor quarantined", crawl, unaccounted)
    statistics = {
        "documents": documents,
        "records_read": records,
        "unaccounted_records": unaccounted,
        "input_files": len(paths),
        "input_bytes": sum(r.bytes_in for r in results),
        "ignored_files": [posixpath.relpath(p, store.landing_dir(crawl)) for p in ignored],
        "skipped": dict(sorted(skipped.items())),
        "quarantined": dict(sorted(quarantined.items())),
        "languages": dict(languages.most_common()),
        "charset_sources": dict(sorted(charsets.items())),
        "extractor": config.extractor,
        "per_file": [
            {"path": posixpath.relpath(r.path, store.landing_dir(crawl)), "records": r.records + sum(r.skipped.values()),
             "documents": r.documents, "skipped": sum(r.skipped.values()), "quarantined": sum(r.quarantined.values()),
             "skipped_by_kind": dict(sorted(r.skipped.items())), "quarantined_by_reason": dict(sorted(r.quarantined.items())),
             "seconds": round(r.seconds, 4)}
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


def _bucket_bits(config: DedupConfig, *, documents: int, bands: int, workers: int) -> int:
    """Bits of the band-key bucket: enough buckets for every worker, ~4M band rows per bucket."""
    if config.minhash.buckets:
        return config.minhash.buckets.bit_length() - 1
    rows = max(1, documents * bands)
    return min(12, max(math.ceil(math.log2(max(1, workers))), math.ceil(math.log2(rows / 4_000_000)), 0))


def dedup_scope_key(config: DedupConfig) -> str:
    """Identity of the cross-crawl index: only versions with the same hashing share one."""
    bands, rows = config.minhash.bands_rows()
    return content_version(stage="dedup-index", code_version=CODE_VERSIONS["deduped"], inputs=[], config={
        "ngram": config.minhash.ngram, "tokens": config.minhash.tokens, "bands": bands, "rows": rows, "seed": config.minhash.seed,
        "scope": config.scope, "case_fold": config.case_fold,
    })


@logged_stage("deduped")
def deduped(
    *,
    store: Store,
    crawl: str,
    raw_version: str,
    config: DedupConfig,
    executor: Executor,
    progress: Progress | None = None,
) -> StageResult:
    """Remove URL, exact and near duplicates of a raw version, also against earlier crawls' kept documents."""
    from textmill.dedup import index as dedup_index
    from textmill.dedup import pipeline

    raw_manifest = store.manifest("raw", crawl, raw_version)
    if raw_manifest is None:
        raise FileNotFoundError(f"raw version {crawl}/{raw_version} does not exist (or is unfinished)")
    bands, rows = config.minhash.bands_rows()
    scope_key = dedup_scope_key(config)
    entries = dedup_index.earlier_entries(store, scope_key, crawl) if config.cross_crawl else []
    inputs = [{"kind": "version", "stage": "raw", "partition": crawl, "version": raw_version}]
    inputs += [entry.as_input() for entry in entries]
    config_json = config.model_dump(mode="json", exclude={"checks"})
    version = content_version(stage="deduped", code_version=CODE_VERSIONS["deduped"], config=config_json,
                              inputs=inputs)
    if (existing := _reuse(store, "deduped", crawl, version)) is not None:
        store.remove_tree(store.path("tmp", "deduped", crawl, version))  # a run killed after its commit
        return existing

    started = time.perf_counter()
    timings: dict[str, float] = {}
    writer = store.begin("deduped", crawl, version)
    work_dir = store.path("tmp", "deduped", crawl, version)
    index_dir = dedup_index.entry_dir(store, scope_key, crawl, version)
    store.remove_tree(work_dir)
    store.remove_tree(index_dir)
    plan = pipeline.Plan(
        store=store, crawl=crawl, config=config, work_dir=work_dir, version_dir=writer.folder, bands=bands, rows=rows,
        bucket_bits=_bucket_bits(config, documents=raw_manifest.rows, bands=bands, workers=executor.workers),
        index_entries=tuple(entries), index_dir=index_dir, raw_parts=tuple(store.part_uris(raw_manifest)),
    )
    parts = list(plan.raw_parts)
    buckets = [pipeline.BucketTask(plan, b) for b in range(1 << plan.bucket_bits)]
    steps = 2 * len(parts) + 4 * len(buckets) + 1
    done = 0

    def tick(step: str, count: int = 1) -> None:
        nonlocal done
        done += count
        log.info("deduped %s: %s (%d/%d)", crawl, step, done, steps, extra={"progress": ("deduped", done, steps)})
        if progress:
            progress(done, steps)

    def timed(name: str, began: float) -> None:
        timings[f"{name}_seconds"] = round(time.perf_counter() - began, 4)

    def bucket_phase(name: str, function: Callable, enabled: bool) -> None:
        """Run one per-bucket phase; its results stay in the work folder."""
        began = time.perf_counter()
        if enabled:
            for _ in executor.map(function, buckets):
                tick(name)
        else:
            tick(name, len(buckets))
        timed(name, began)

    def cluster_step(function: Callable, step: int = 0) -> list:
        return list(executor.map(function, [pipeline.StepTask(plan, b, step) for b in range(len(buckets))]))

    began = time.perf_counter()
    for _ in executor.map(pipeline.sign_part, [pipeline.PartTask(plan, i, uri) for i, uri in enumerate(parts)]):
        tick("signatures")
    timed("sign", began)

    bucket_phase("url", pipeline.url_groups, config.url)
    bucket_phase("exact", pipeline.exact_groups, config.exact)
    bucket_phase("edges", pipeline.bucket_edges, config.near)

    # cluster: every step is one task per bucket reading and writing the work folder
    began = time.perf_counter()
    candidate_pairs = sum(executor.map(pipeline.graph_bucket, buckets)) if config.near else 0
    if candidate_pairs:  # connected components on disk: star rounds until the graph stops changing
        step = pipeline.label_components(plan, executor)
        cluster_step(pipeline.component_members, step)
        list(executor.map(pipeline.near_members, buckets))
    list(executor.map(pipeline.combine_bucket, buckets))
    cluster_step(pipeline.answer_bucket, 0)  # parent chains have at most three links: two jumps reach the roots
    cluster_step(pipeline.jump_bucket, 0)
    cluster_step(pipeline.answer_bucket, 1)
    cluster_step(pipeline.rooted_bucket, 1)
    bucket_stats = list(executor.map(pipeline.finalize_bucket, buckets))
    tick("clusters")
    timed("cluster", began)

    began = time.perf_counter()
    kept_parts, removed_parts, kept_rows = [], [], 0
    write_tasks = [pipeline.WriteTask(plan, i, uri) for i, uri in enumerate(parts)]
    for kept, removed, rows_written in executor.map(pipeline.write_part, write_tasks):
        kept_parts += [kept] if kept else []
        removed_parts += [removed] if removed else []
        kept_rows += rows_written
        tick("write")
    if not kept_parts:  # keep the schema readable even when nothing survives
        empty = store.scan(raw_manifest).head(0).collect().with_columns(
            pl.lit(None, dtype=pl.String).alias("dup_cluster"), pl.lit(None, dtype=pl.Int64).alias("dup_cluster_size"))
        kept_parts.append(store.write_parquet(empty, posixpath.join(writer.folder, "part-00000.parquet")))
    timed("write", began)

    began = time.perf_counter()
    for _ in executor.map(pipeline.write_index_bucket, buckets):
        tick("index")
    store.write_bytes(posixpath.join(index_dir, dedup_index.COMPLETE),
                      json.dumps({"bucket_bits": plan.bucket_bits, "documents": kept_rows}).encode())
    timed("index", began)

    removed_by_kind = {kind: 0 for kind in pipeline.KINDS}
    histogram = pipeline.size_histogram(pl.Series([], dtype=pl.Int64))
    for found in bucket_stats:
        for kind, count in found["removed_by_kind"].items():
            removed_by_kind[kind] += count
        for label, count in found["histogram"].items():
            histogram[label] += count
    # every other kept document is a cluster of one
    histogram["1"] += kept_rows - sum(found["kept_with_duplicates"] for found in bucket_stats)
    largest = pipeline.largest_clusters(pl.DataFrame(
        [row for found in bucket_stats for row in found["largest"]], schema={"id": pl.String, "dup_cluster_size": pl.Int64}))
    wall = time.perf_counter() - started
    statistics = {
        "documents_in": raw_manifest.rows,
        "documents": kept_rows,
        "removed": raw_manifest.rows - kept_rows,
        "dedup_rate": round((raw_manifest.rows - kept_rows) / raw_manifest.rows, 6) if raw_manifest.rows else 0.0,
        "removed_by_kind": removed_by_kind,
        "cluster_size_histogram": histogram,
        "largest_clusters": largest.to_dicts(),
        "bands": bands,
        "rows": rows,
        "bucket_bits": plan.bucket_bits,
        "candidate_pairs": candidate_pairs,
        "earlier_crawls": [entry.crawl for entry in entries],
        "index": store.uri(index_dir),
    }
    timings |= {
        "wall_seconds": round(wall, 4),
        "documents_per_second": round(raw_manifest.rows / wall, 2) if wall else 0.0,
        "workers": executor.workers,
    }
    manifest = writer.commit(
        code_version=CODE_VERSIONS["deduped"], files=kept_parts, inputs=inputs, config=config_json,
        statistics=statistics, timings=timings, quarantine={"records": 0, "by_reason": {}},
        extra_files={"removed": removed_parts},
    )
    store.remove_tree(work_dir)
    return StageResult(manifest, False, store.uri(writer.folder))


@logged_stage("filtered")
def filtered(
    *,
    store: Store,
    crawl: str,
    deduped_version: str,
    config: FilteredConfig,
    executor: Executor,
    progress: Progress | None = None,
) -> StageResult:
    """Quality, safety and PII signals of a deduped version; every document kept or rejected with its reason.

    Kept documents are the version's parts (PII redacted); rejected ones stay in the version as
    `rejected-*.parquet` (listed in `extra_files.rejected`), with every signal, for recycling.
    """
    from textmill.filters import pipeline
    from textmill.filters.decide import RECYCLABLE

    deduped_manifest = store.manifest("deduped", crawl, deduped_version)
    if deduped_manifest is None:
        raise FileNotFoundError(f"deduped version {crawl}/{deduped_version} does not exist (or is unfinished)")
    inputs: list[dict] = [{"kind": "version", "stage": "deduped", "partition": crawl, "version": deduped_version}]
    if config.quality_model is not None:
        model_path = config.quality_model.model_path
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"filtered.quality_model.model_path: no model file at {model_path}")
        sidecar = model_path + ".json"  # the text rule and positive label scoring repeats
        inputs.append({"kind": "quality_model", "sha256": file_sha256(model_path),
                       "sidecar_sha256": file_sha256(sidecar) if os.path.exists(sidecar) else None})
    config_json = config.model_dump(mode="json", exclude={"checks", "examples_per_reason"})
    version = content_version(stage="filtered", code_version=CODE_VERSIONS["filtered"], config=config_json,
                              inputs=inputs)
    if (existing := _reuse(store, "filtered", crawl, version)) is not None:
        return existing

    started = time.perf_counter()
    timings: dict[str, float] = {}
    writer = store.begin("filtered", crawl, version)
    work_dir = store.path("tmp", "filtered", crawl, version)
    store.remove_tree(work_dir)
    parts = store.part_uris(deduped_manifest)
    scoring = config.quality_model is not None and config.quality_model.top_percent is not None
    steps, done = len(parts) * (2 if scoring else 1), 0
    sample_rate = min(1.0, 50_000 / max(1, deduped_manifest.rows))  # ~50k documents for signal histograms

    def tick(step: str) -> None:
        nonlocal done
        done += 1
        log.info("filtered %s: %s (%d/%d)", crawl, step, done, steps, extra={"progress": ("filtered", done, steps)})
        if progress:
            progress(done, steps)

    def task(part: int, uri: str, cutoff: float | None) -> pipeline.FilterTask:
        return pipeline.FilterTask(store=store, config=config, part=part, uri=uri, version_dir=writer.folder,
                                   work_dir=work_dir, cutoff=cutoff, sample_rate=sample_rate)

    cutoff, score_histogram = None, None
    if config.quality_model is not None:
        cutoff = config.quality_model.threshold
    if scoring:
        from textmill.filters.quality_model import ScoreHistogram

        began = time.perf_counter()
        score_histogram = ScoreHistogram()
        for histogram in executor.map(pipeline.score_part, [task(i, uri, None) for i, uri in enumerate(parts)]):
            score_histogram = score_histogram.merge(ScoreHistogram.from_dict(histogram))
            tick("quality scores")
        cutoff = score_histogram.cutoff(top_percent=config.quality_model.top_percent) \
            if score_histogram.total else 1.0
        timings["score_seconds"] = round(time.perf_counter() - began, 4)

    began = time.perf_counter()
    results = []
    for result in executor.map(pipeline.filter_part, [task(i, uri, cutoff) for i, uri in enumerate(parts)]):
        results.append(result)
        tick("signals and decisions")
    timings["filter_seconds"] = round(time.perf_counter() - began, 4)
    kept_parts = [r.kept for r in results if r.kept]
    rejected_parts = [r.rejected for r in results if r.rejected]
    if not kept_parts:  # keep the schema readable even when nothing is kept
        empty = store.scan(deduped_manifest).head(0).collect()
        kept_parts.append(pipeline.empty_version_part(store, empty, pipeline.rules_with_cutoff(config, cutoff),
                                                      posixpath.join(writer.folder, "part-00000.parquet")))

    documents_in = sum(r.documents for r in results)
    kept_rows = sum(r.kept_rows for r in results)
    by_reason: Counter[str] = Counter()
    redacted: Counter[str] = Counter()
    for result in results:
        by_reason.update(result.by_reason)
        redacted.update(result.redacted)
    by_rule_set: Counter[str] = Counter()
    for reason, count in by_reason.items():
        by_rule_set[reason.split(":", 1)[0]] += count
    # the waterfall: documents left after each rule set, in decision order
    waterfall, left = [], documents_in
    for name in config.order:
        left -= by_rule_set.get(name, 0)
        waterfall.append({"rule_set": name, "removed": by_rule_set.get(name, 0), "left": left})
    examples = pl.concat([r.examples for r in results]) if results else pl.DataFrame()
    examples_by_reason: dict[str, list[dict]] = {}
    for row in examples.iter_rows(named=True) if examples.height else []:
        shown = examples_by_reason.setdefault(row["reject_reason"], [])
        if len(shown) < config.examples_per_reason:
            shown.append({"id": row["id"], "url": row["url"], "text": row["text"]})
    sample = pl.concat([r.signal_sample for r in results], how="diagonal_relaxed") if results else pl.DataFrame()
    wall = time.perf_counter() - started
    statistics = {
        "documents_in": documents_in,
        "documents": kept_rows,
        "rejected": documents_in - kept_rows,
        "keep_rate": round(kept_rows / documents_in, 6) if documents_in else 0.0,
        "rejected_by_reason": dict(by_reason.most_common()),
        "removed_by_rule_set": {name: by_rule_set.get(name, 0) for name in config.order},
        "removal_rate_by_rule_set": {name: round(by_rule_set.get(name, 0) / documents_in, 6) if documents_in else 0.0
                                     for name in config.order},
        "waterfall": waterfall,
        "recyclable": sum(r.recyclable for r in results),
        "recyclable_by_rule_set": {name: RECYCLABLE.get(name, False) for name in config.order},
        "pii_redacted": dict(redacted),
        "signal_columns": results[0].signal_columns if results else [],
        "signal_summary": pipeline.signal_summary(sample) if sample.height else {},
        "signal_sample_rate": round(sample_rate, 6),
        "examples_by_reason": examples_by_reason,
        "quality_cutoff": cutoff,
        "quality_score_histogram": score_histogram.to_dict() if score_histogram else None,
    }
    timings |= {
        "wall_seconds": round(wall, 4),
        "documents_per_second": round(documents_in / wall, 2) if wall else 0.0,
        "workers": executor.workers,
    }
    manifest = writer.commit(
        code_version=CODE_VERSIONS["filtered"], files=kept_parts, inputs=inputs, config=config_json,
        statistics=statistics, timings=timings, quarantine={"records": 0, "by_reason": {}},
        extra_files={"rejected": rejected_parts},
    )
    store.remove_tree(work_dir)
    return StageResult(manifest, False, store.uri(writer.folder))


@logged_stage("rewritten")
def rewritten(
    *,
    store: Store,
    crawl: str,
    filtered_version: str,
    config: "RewriteConfig",
    filter_config: FilteredConfig | None = None,
    backend: "LLMBackend | None" = None,
    progress: Progress | None = None,
) -> StageResult:
    """LLM rewrites of a filtered version's recyclable rejects (and, optionally, a sample of kept documents).

    The version holds synthetic documents only (`is_synthetic`, `parent_id`, prompt and model);
    rewrites that fail post-processing or the filtered rules are listed in `dropped-*.parquet`
    with their reason. Replies are cached by (text, prompt version, model, parameters), so a
    killed run resumes without regenerating anything, and a rerun with the same inputs is a no-op.
    """
    from textmill.rewrite.cache import RewriteCache
    from textmill.rewrite.engine import backend_params, make_rewrite_backend, rewrite_documents
    from textmill.rewrite.postprocess import Rescorer
    from textmill.rewrite.select import select_inputs

    filtered_manifest = store.manifest("filtered", crawl, filtered_version)
    if filtered_manifest is None:
        raise FileNotFoundError(f"filtered version {crawl}/{filtered_version} does not exist (or is unfinished)")
    filter_config = filter_config or FilteredConfig()
    own_backend = backend is None
    backend = backend or make_rewrite_backend(config)
    try:
        # the model's name and sampling parameters, not a machine's file path, identify the output
        identity = {"model": backend.model_name, "params": backend_params(backend)}
        inputs = [{"kind": "version", "stage": "filtered", "partition": crawl, "version": filtered_version}]
        config_json = config.model_dump(mode="json", exclude={"checks", "backend"}) | {"backend": identity} | {
            "rescore_rules": filter_config.model_dump(mode="json", exclude={"checks", "examples_per_reason"})
            if config.rescore else None}
        version = content_version(stage="rewritten", code_version=CODE_VERSIONS["rewritten"], config=config_json,
                                  inputs=inputs)
        if (existing := _reuse(store, "rewritten", crawl, version)) is not None:
            return existing

        started = time.perf_counter()
        writer = store.begin("rewritten", crawl, version)
        selection = select_inputs(store.scan_extra(filtered_manifest, "rejected"), store.scan(filtered_manifest),
                                  config=config)
        quality = filter_config.quality_model
        rescorer = Rescorer(filter_config=filter_config,
                            quality_model_path=quality.model_path if quality else None,
                            quality_cutoff=filtered_manifest.statistics.get("quality_cutoff")) if config.rescore else None

        def report(done: int, total: int) -> None:
            log.info("rewritten %s: %d/%d requests", crawl, done, total, extra={"progress": ("rewritten", done, total)})
            if progress:
                progress(done, total)

        result = rewrite_documents(selection, config=config, backend=backend, cache=RewriteCache(store),
                                   rescorer=rescorer, progress=report)
    finally:
        if own_backend:
            backend.close()
    failed, attempts = result.stats.failed, result.stats.requests
    if failed and failed / attempts > config.checks.max_failed_request_share:
        raise RewriteIncomplete(
            f"rewritten {crawl}: {failed} of {result.stats.unique_requests} requests failed after retries "
            f"({failed / attempts:.3f} of {attempts} attempts > checks.max_failed_request_share "
            f"{config.checks.max_failed_request_share}); no version written. The replies that arrived are "
            f"cached: a rerun requests only the failed ones")
    rows, dropped = result.rows.sort("id"), result.dropped.sort("parent_id", "rewrite_prompt")
    part_rows = 20_000
    parts = [store.write_parquet(rows.slice(i, part_rows), posixpath.join(writer.folder, f"part-{n:05d}.parquet"))
             for n, i in enumerate(range(0, max(rows.height, 1), part_rows))]
    dropped_parts = [store.write_parquet(dropped, posixpath.join(writer.folder, "dropped-00000.parquet"))] \
        if dropped.height else []
    stats = result.stats.to_dict()
    kept_originals = filtered_manifest.rows
    statistics = {
        "selected": selection.height,
        "selected_by_origin": dict(selection.group_by("origin").len().iter_rows()) if selection.height else {},
        "selected_by_reason": dict(selection.filter(pl.col("reject_reason").is_not_null())
                                   .group_by("reject_reason").len().iter_rows()) if selection.height else {},
        "documents": rows.height,
        "rewrites": stats,
        "dropped_by_reason": stats["dropped_by_reason"],
        "pass_rate": stats["pass_rate"],
        "failed_request_share": round(stats["failed"] / stats["requests"], 6) if stats["requests"] else 0.0,
        "synthetic_share": round(rows.height / (rows.height + kept_originals), 6) if rows.height else 0.0,
        "examples": _before_after(rows, selection),
    }
    wall = time.perf_counter() - started
    timings = {"wall_seconds": round(wall, 4), "generation_seconds": stats["generation_seconds"],
               "documents_per_second": stats["docs_per_second"],
               "output_tokens_per_second": stats["output_tokens_per_second"]}
    manifest = writer.commit(
        code_version=CODE_VERSIONS["rewritten"], files=parts, inputs=inputs, config=config_json,
        statistics=statistics, timings=timings, quarantine={"records": 0, "by_reason": {}},
        extra_files={"dropped": dropped_parts},
    )
    return StageResult(manifest, False, store.uri(writer.folder))


def _mix_sources(store: Store, component: "MixComponent",
                 versions: dict[str, dict[str, str]]) -> tuple[list[tuple[str, pl.LazyFrame]], list[dict]]:
    """(label, lazy frame of id/text/lang) per part of one mix component, and the inputs it reads."""
    frames: list[tuple[str, pl.LazyFrame]] = []
    inputs: list[dict] = []
    if component.kind == "files":
        for pattern in component.paths or []:
            matches = sorted(store.fs.glob(pattern)) or [pattern]
            for path in matches:
                # glob drops the protocol on object stores; the reader needs it and the store's options
                path = path if store.is_local or "://" in path else store.fs.unstrip_protocol(path)
                options = store.polars_options()
                lazy = (pl.scan_parquet(path, storage_options=options) if path.endswith(".parquet")
                        else pl.scan_ndjson(path, storage_options=options))
                names = lazy.collect_schema().names()
                if "text" not in names:
                    raise ValueError(f"mixed: component {component.name!r}: {path} has no text column")
                id_expr = pl.col("id").cast(pl.String) if "id" in names else (
                    pl.lit(path) + ":" + pl.int_range(pl.len()).cast(pl.String)).hash(0).cast(pl.String)
                lang = pl.col("lang").cast(pl.String) if "lang" in names else pl.lit("und")
                frames.append((path, lazy.select(id=id_expr, text=pl.col("text"), lang=lang)))
                inputs.append({"kind": "files", "component": component.name} | file_fingerprint(store.fs, path))
        return frames, inputs
    stage = "filtered" if component.kind == "kept" else "rewritten"
    crawls = component.crawls or sorted(versions)
    for crawl in crawls:
        version = versions.get(crawl, {}).get(stage)
        if version is None:
            raise ValueError(f"mixed: component {component.name!r} needs a {stage} version of crawl {crawl!r}")
        manifest = store.manifest(stage, crawl, version)
        if manifest is None:
            raise FileNotFoundError(f"mixed: {stage} version {crawl}/{version} does not exist (or is unfinished)")
        inputs.append({"kind": "version", "stage": stage, "partition": crawl, "version": version})
        for uri in store.part_uris(manifest):
            frames.append((uri, store.scan_files([uri]).select("id", "text", pl.col("lang").cast(pl.String))))
    return frames, inputs


@logged_stage("mixed")
def mixed(
    *,
    store: Store,
    config: "MixConfig",
    versions: dict[str, dict[str, str]],
    progress: Progress | None = None,
) -> StageResult:
    """A weighted, decontaminated, tokenized training mix over crawls' kept and rewritten documents.

    `versions` maps each crawl to its `filtered` and `rewritten` versions (the orchestrator's
    lineage). Sources are read part by part: texts are tokenized and checked against the bundled
    benchmarks as they stream, only (component, id, tokens, lang) is kept for sampling. The sampled
    texts are spilled by output shard in one more pass over the sources, then each shard is
    written and packed in turn (`mix.gather`, `mix.export`), so the mix is never whole in memory.
    """
    from textmill.mix.decontam import CONTAMINATION_SCHEMA, find_contamination, index_for
    from textmill.mix.export import export_mix
    from textmill.mix.gather import mix_shards, spill_texts
    from textmill.mix.sample import sample_mix
    from textmill.mix.tokens import count_tokens
    from textmill.report.card import write_data_card

    components = list(config.components) + (list(config.anneal.components) if config.anneal else [])
    seen: dict[str, object] = {}
    sources: dict[str, list[tuple[str, pl.LazyFrame]]] = {}
    inputs: list[dict] = []
    for component in components:
        if component.name in seen and seen[component.name] != component:
            raise ValueError(f"mixed: component {component.name!r} is defined twice, differently")
        if component.name in seen:
            continue
        seen[component.name] = component
        frames, component_inputs = _mix_sources(store, component, versions)
        sources[component.name] = frames
        inputs += [i for i in component_inputs if i not in inputs]
    config_json = config.model_dump(mode="json")
    version = content_version(stage="mixed", code_version=CODE_VERSIONS["mixed"], config=config_json, inputs=inputs)
    if (existing := _reuse(store, "mixed", config.name, version)) is not None:
        return existing

    started = time.perf_counter()
    writer = store.begin("mixed", config.name, version)
    index = index_for(config.decontamination) if config.decontamination.enabled else None
    total_parts = sum(len(frames) for frames in sources.values())
    done, candidates, reports = 0, [], []
    for name, frames in sources.items():
        kind = seen[name].kind  # type: ignore[attr-defined]
        for label, lazy in frames:
            part = lazy.collect()
            part = part.with_columns(tokens=count_tokens(part["text"], encoding=config.tokenizer, num_threads=2))
            if index is not None and part.height:
                found = find_contamination(part, index=index, batch_documents=config.decontamination.batch_documents)
                if found.height:
                    reports.append(found.with_columns(component=pl.lit(name), source=pl.lit(label)))
                    part = part.filter(~pl.col("id").is_in(found["id"].unique().implode()))
            candidates.append(part.select(pl.lit(name).alias("component"), "id", "tokens", "lang",
                                          pl.lit(kind).alias("kind")))
            done += 1
            log.info("mixed %s: %d/%d source parts read", config.name, done, total_parts,
                     extra={"progress": ("mixed", done, total_parts + 1)})
            if progress:
                progress(done, total_parts + 1)
    candidate_frame = pl.concat(candidates) if candidates else pl.DataFrame(
        schema={"component": pl.String, "id": pl.String, "tokens": pl.UInt32, "lang": pl.String, "kind": pl.String})
    contamination = pl.concat(reports) if reports else pl.DataFrame(
        schema=CONTAMINATION_SCHEMA | {"component": pl.String, "source": pl.String})
    phase_seconds = {"candidates_seconds": time.perf_counter() - started}
    began = time.perf_counter()
    sample = sample_mix(candidate_frame.select("component", "id", "tokens", "lang"), config=config)
    phase_seconds["sample_seconds"] = time.perf_counter() - began

    # the sampled texts, spilled by output shard (one pass over the sources), then written shard by shard
    order = sample.order
    shard_rows = config.export.shard_rows
    spill = store.path("tmp", "mixed", config.name, version)
    store.remove_tree(spill)
    began = time.perf_counter()
    spill_texts(store, sources=sources, order=order, spill=spill, shard_rows=shard_rows)
    phase_seconds["gather_seconds"] = time.perf_counter() - began
    began = time.perf_counter()
    folder = writer.folder  # written through the store: its credentials, endpoint and retries
    exported = export_mix(mix_shards(store, order=order, spill=spill, shard_rows=shard_rows), order=order,
                          folder=folder, config=config.export, tokenizer=config.tokenizer, num_threads=2,
                          write=store.write_bytes)
    store.remove_tree(spill)
    phase_seconds["export_seconds"] = time.perf_counter() - began
    if contamination.height:
        store.write_parquet(contamination, posixpath.join(writer.folder, "contamination.parquet"))
    mix_stats = dict(sample.stats) | {
        "tokenizer": config.tokenizer,
        "seed": config.seed,
        "decontamination": {
            "removed": contamination["id"].n_unique() if contamination.height else 0,
            "ngram": config.decontamination.ngram,
            "by_benchmark": dict(contamination.group_by("benchmark").agg(pl.col("id").n_unique()).sort("benchmark")
                                 .iter_rows())
            if contamination.height else {},
        },
        "packed": {k: v for k, v in exported["packed"].items() if not k.endswith("_files")}
        if exported.get("packed") else None,  # tokens.json and the manifest list the files
        "candidates": {"documents": candidate_frame.height,
                       "tokens": int(candidate_frame["tokens"].sum() or 0),
                       "by_component": dict(candidate_frame.group_by("component").agg(pl.col("tokens").sum())
                                            .sort("component")
                                            .iter_rows())},
    }
    upstream: dict[str, list[dict]] = {stage: [] for stage in ("raw", "deduped", "filtered", "rewritten")}
    for crawl, crawl_versions in sorted(versions.items()):
        chain = {"filtered": crawl_versions.get("filtered"), "rewritten": crawl_versions.get("rewritten")}
        filtered_manifest = store.manifest("filtered", crawl, chain["filtered"]) if chain["filtered"] else None
        if filtered_manifest is not None:
            deduped_version = filtered_manifest.inputs[0]["version"]
            deduped_manifest = store.manifest("deduped", crawl, deduped_version)
            raw_manifest = store.manifest("raw", crawl, deduped_manifest.inputs[0]["version"]) if deduped_manifest else None
            for stage, manifest in (("raw", raw_manifest), ("deduped", deduped_manifest), ("filtered", filtered_manifest)):
                if manifest is not None:
                    upstream[stage].append(json.loads(manifest.to_json()))
        if chain["rewritten"]:
            rewritten_manifest = store.manifest("rewritten", crawl, chain["rewritten"])
            if rewritten_manifest is not None:
                upstream["rewritten"].append(json.loads(rewritten_manifest.to_json()))
    lengths = order["tokens"].to_numpy() if order.height else None
    card = write_data_card(folder=folder, mix_stats=mix_stats, upstream_manifests=upstream,
                           name=f"textmill-{config.name}", lengths=lengths, write=store.write_bytes)
    parts = [_part_info(store, writer.folder, f["path"], rows=f["rows"]) for f in exported["files"]]
    extra = {"order": [_part_info(store, writer.folder, exported["order"]["path"], rows=exported["order"]["rows"])],
             "card": [_part_info(store, writer.folder, posixpath.basename(path)) for path in card.values()]}
    if contamination.height:
        extra["contamination"] = [_part_info(store, writer.folder, "contamination.parquet", rows=contamination.height)]
    if exported.get("packed"):
        packed = exported["packed"]
        extra["packed"] = [_part_info(store, writer.folder, name)
                           for name in [*packed["tokens_files"], *packed["index_files"], "tokens.json"]]
    main = mix_stats.get("phases", {}).get("main", {})
    statistics = {"mix": mix_stats, "documents": order.height,
                  "tokens": int(order["tokens"].sum() or 0) if order.height else 0,
                  "within_tolerance": main.get("within_tolerance"), "card": store.uri(card["readme"])}
    wall = time.perf_counter() - started
    manifest = writer.commit(
        code_version=CODE_VERSIONS["mixed"], files=parts, inputs=inputs, config=config_json,
        statistics=statistics, timings={name: round(seconds, 4) for name, seconds in phase_seconds.items()} | {"wall_seconds": round(wall, 4)},
        quarantine={"records": 0, "by_reason": {}},
        extra_files=extra,
    )
    return StageResult(manifest, False, store.uri(writer.folder))


def _part_info(store: Store, folder: str, name: str, *, rows: int = 0) -> "PartInfo":
    """A file written into a version folder by someone else, described for the manifest."""
    import hashlib

    from textmill.storage import PartInfo

    data = store.read_bytes(posixpath.join(folder, name))
    return PartInfo(path=name, rows=rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
