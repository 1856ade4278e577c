"""The rewrite engine: selected documents × prompts → LLM replies (cached) → judged rewrites.

    inputs = select_inputs(rejected, kept, config=cfg)
    backend = make_rewrite_backend(cfg)
    result = rewrite_documents(inputs, config=cfg, backend=backend, cache=RewriteCache(store))

Throughput: requests are issued from a thread pool with up to the backend's
`max_concurrency` requests in flight and as many again queued, so a server never waits
for the engine between requests; there is no per-batch barrier (a slow reply does not hold
back the next batch). Replies are written to the cache every `batch_size` replies, as they
complete, so a killed run loses at most one batch plus the requests in flight, and a rerun
asks only for what the cache lacks.

Post-processing and re-scoring run on every reply, cached or new, after generation: they
are cheap and deterministic, and changing a threshold re-judges cached replies.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl
import xxhash

from textmill.rewrite.backends import BackendError, Completion, LLMBackend, make_backend
from textmill.rewrite.cache import CACHE_SCHEMA, RewriteCache, cache_key, params_json, text_sha256
from textmill.rewrite.config import RewriteConfig
from textmill.rewrite.postprocess import Rescorer, judge
from textmill.rewrite.prompts import Prompt, get_prompt
from textmill.schema import DOCUMENT_SCHEMA

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: Columns the rewritten version adds after DOCUMENT_SCHEMA (in this order).
REWRITE_COLUMNS: dict[str, pl.DataType] = {
    "parent_id": pl.String(),
    "rewrite_model": pl.String(),
    "rewrite_prompt": pl.String(),
    "rewrite_style": pl.String(),
    "rewrite_params": pl.String(),
    "rewrite_key": pl.String(),
    "is_synthetic": pl.Boolean(),
    "parent_origin": pl.String(),
    "parent_reject_reason": pl.String(),
    "quality_score": pl.Float64(),
}
REWRITE_SCHEMA: dict[str, pl.DataType] = dict(DOCUMENT_SCHEMA) | REWRITE_COLUMNS
DROPPED_SCHEMA: dict[str, pl.DataType] = {
    "parent_id": pl.String(),
    "rewrite_prompt": pl.String(),
    "drop_reason": pl.String(),
    "reply": pl.String(),
    "detail": pl.String(),
}


@dataclass
class RewriteStats:
    """What one run did and cost. Tokens and requests count this run's requests only (cache hits
    cost nothing); `docs_per_second` and `output_tokens_per_second` are over generation time."""

    model: str
    documents: int = 0
    tasks: int = 0
    unique_requests: int = 0
    cache_hits: int = 0
    requests: int = 0
    failed: int = 0
    retries: int = 0
    retries_by_reason: dict[str, int] = field(default_factory=dict)  # failed attempts that were retried, by kind
    failed_by_reason: dict[str, int] = field(default_factory=dict)  # requests given up on, by last failure's kind
    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens_out: int = 0
    generation_seconds: float = 0.0
    seconds: float = 0.0
    docs_per_second: float = 0.0
    output_tokens_per_second: float = 0.0
    kept: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    pass_rate: float = 0.0
    shards_written: int = 0
    concurrency: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RewriteResult:
    """`rows`: kept rewrites (REWRITE_SCHEMA); `dropped`: one row per rejected reply (DROPPED_SCHEMA)."""

    rows: pl.DataFrame
    dropped: pl.DataFrame
    stats: RewriteStats


@dataclass(frozen=True)
class _Task:
    key: str
    prompt: Prompt
    text: str  # what is sent, after cutting
    text_hash: str


def cut_text(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, ending at a word boundary when one is near."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = max(head.rfind(" "), head.rfind("\n"))
    return (head[:space] if space > max_chars * 0.8 else head).rstrip()


def rewrite_id(*, parent_id: str, prompt_key: str, model: str, params: str) -> str:
    """A rewrite's stable id: xxh3-128 of parent id, prompt id@version, model and params."""
    return xxhash.xxh3_128_hexdigest("\x1f".join((parent_id, prompt_key, model, params)).encode())


def make_rewrite_backend(config: RewriteConfig) -> LLMBackend:
    """The configured backend, or SmolLM2-135M-Instruct in process (the bundled GGUF)."""
    return make_backend(config.backend_config())


def backend_params(backend: LLMBackend) -> dict[str, Any]:
    """A backend's sampling parameters (its `params` property; {} for backends without one)."""
    return dict(getattr(backend, "params", {}) or {})


def _generate(backend: LLMBackend, task: _Task) -> Completion | BackendError:
    try:
        return backend.generate(task.prompt.render(task.text), system=task.prompt.system)
    except BackendError as exc:
        return exc


def rewrite_documents(
    inputs: pl.DataFrame,
    *,
    config: RewriteConfig,
    backend: LLMBackend,
    cache: RewriteCache,
    rescorer: Rescorer | None = None,
    concurrency: int | None = None,
    progress: Progress | None = None,
) -> RewriteResult:
    """Rewrite each input document with each of its prompts; keep the rewrites that pass.

    `inputs` is `select_inputs`' frame (DOCUMENT_SCHEMA plus `prompt_ids`; without that column
    every document gets `config.prompts`). `rescorer` judges rewrites with the filtered stage's
    rules (default: `Rescorer()` with default rule sets, when `config.rescore`). `concurrency`
    overrides the backend's `max_concurrency`.
    """
    started = time.perf_counter()
    model = backend.model_name
    params = params_json(backend_params(backend))
    workers = max(1, concurrency or int(getattr(backend, "max_concurrency", 1) or 1))
    stats = RewriteStats(model=model, documents=inputs.height, concurrency=workers)

    # tasks: one per (document, prompt); identical texts share one request
    has_prompts = "prompt_ids" in inputs.columns
    doc_tasks: list[tuple[dict[str, Any], _Task]] = []
    unique: dict[str, _Task] = {}
    for row in inputs.iter_rows(named=True):
        sent = cut_text(row["text"] or "", config.max_input_chars)
        digest = text_sha256(sent)
        for pid in (row["prompt_ids"] if has_prompts and row["prompt_ids"] is not None else config.prompts):
            prompt = get_prompt(pid)
            key = cache_key(text_hash=digest, prompt=prompt.key, model=model, params=params)
            task = unique.setdefault(key, _Task(key, prompt, sent, digest))
            doc_tasks.append((row, task))
    stats.tasks, stats.unique_requests = len(doc_tasks), len(unique)

    replies: dict[str, dict[str, Any]] = {r["key"]: r for r in cache.lookup(unique).iter_rows(named=True)}
    stats.cache_hits = len(replies)
    stats.cached_tokens_out = sum(r["completion_tokens"] or 0 for r in replies.values())
    misses = [t for k, t in unique.items() if k not in replies]
    log.info("rewrite: %d documents, %d requests needed (%d cached) with %s, %d in flight",
             inputs.height, len(misses), stats.cache_hits, model, workers)
    failures = _generate_all(misses, backend=backend, cache=cache, model=model, params=params, workers=workers,
                             batch_size=config.batch_size, replies=replies, stats=stats, progress=progress)

    rows, dropped = _judge_all(doc_tasks, replies=replies, failures=failures, config=config, model=model,
                               params=params, rescorer=rescorer)
    stats.kept, stats.dropped = rows.height, dropped.height
    stats.dropped_by_reason = dict(Counter(dropped["drop_reason"].to_list()).most_common())
    answered = stats.tasks - stats.dropped_by_reason.get("request_failed", 0)
    stats.pass_rate = round(rows.height / answered, 6) if answered else 0.0
    stats.shards_written = cache.shards_written
    stats.seconds = round(time.perf_counter() - started, 4)
    log.info("rewrite: kept %d of %d rewrites (%s); %d requests, %d tokens out, %.2f docs/s",
             stats.kept, stats.tasks, stats.dropped_by_reason, stats.requests, stats.tokens_out, stats.docs_per_second)
    return RewriteResult(rows=rows, dropped=dropped, stats=stats)


def _generate_all(misses: list[_Task], *, backend: LLMBackend, cache: RewriteCache, model: str, params: str,
                  workers: int, batch_size: int, replies: dict[str, dict[str, Any]], stats: RewriteStats,
                  progress: Progress | None) -> dict[str, str]:
    """Request every missing reply with `workers` in flight; write cache shards as batches complete.
    Fills `replies` and `stats`; returns the failed keys' error messages."""
    failures: dict[str, str] = {}
    if not misses:
        return failures
    began = time.perf_counter()
    buffer: list[dict[str, Any]] = []
    queue = list(reversed(misses))
    window = 2 * workers  # a queued request is ready the moment a worker frees up
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewrite")
    in_flight: dict[Future[Completion | BackendError], _Task] = {}
    done_count = 0
    retried: Counter[str] = Counter()
    given_up: Counter[str] = Counter()

    def flush() -> None:
        nonlocal buffer
        if buffer:
            cache.put(pl.DataFrame(buffer, schema=CACHE_SCHEMA))
            buffer = []

    try:
        while queue or in_flight:
            while queue and len(in_flight) < window:
                task = queue.pop()
                in_flight[pool.submit(_generate, backend, task)] = task
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in finished:
                task = in_flight.pop(future)
                result = future.result()
                done_count += 1
                if isinstance(result, BackendError):
                    stats.requests += result.attempts
                    stats.retries += max(0, result.attempts - 1)
                    stats.failed += 1
                    kinds = list(result.failures) or [f"http_{result.status}" if result.status else "error"]
                    retried.update(kinds[:-1])
                    given_up[kinds[-1]] += 1
                    failures[task.key] = str(result)
                    if stats.failed <= 5:
                        log.warning("rewrite request failed: %s", result)
                    continue
                stats.requests += result.attempts
                stats.retries += result.attempts - 1
                retried.update(result.failures)
                stats.tokens_in += result.prompt_tokens or 0
                stats.tokens_out += result.completion_tokens or 0
                row = {"key": task.key, "text_sha256": task.text_hash, "prompt": task.prompt.key, "model": model,
                       "params": params, "reply": result.text, "finish_reason": result.finish_reason,
                       "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                       "seconds": result.seconds, "created_at": time.time()}
                replies[task.key] = row
                buffer.append(row)
            if len(buffer) >= batch_size:
                flush()
            if progress is not None:
                progress(done_count, len(misses))
    finally:
        flush()  # also on an exception: what finished is kept
        pool.shutdown(wait=False, cancel_futures=True)
        stats.generation_seconds = round(time.perf_counter() - began, 4)
        stats.retries_by_reason = dict(sorted(retried.items()))
        stats.failed_by_reason = dict(sorted(given_up.items()))
        generated = done_count - len(failures)
        if stats.generation_seconds > 0:
            stats.docs_per_second = round(generated / stats.generation_seconds, 4)
            stats.output_tokens_per_second = round(stats.tokens_out / stats.generation_seconds, 4)
    return failures


def _judge_all(doc_tasks: list[tuple[dict[str, Any], _Task]], *, replies: dict[str, dict[str, Any]],
               failures: dict[str, str], config: RewriteConfig, model: str, params: str,
               rescorer: Rescorer | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for row, task in doc_tasks:
        reply = replies.get(task.key)
        judgement = judge(reply["reply"] if reply else None, parent=task.text, parent_lang=row.get("lang"),
                          prompt=task.prompt, finish_reason=reply["finish_reason"] if reply else None,
                          config=config.postprocess)
        if judgement.drop_reason is not None:
            dropped.append({"parent_id": row["id"], "rewrite_prompt": task.prompt.key,
                            "drop_reason": judgement.drop_reason, "reply": reply["reply"] if reply else None,
                            "detail": failures.get(task.key) if reply is None else None})
            continue
        kept.append({
            "id": rewrite_id(parent_id=row["id"], prompt_key=task.prompt.key, model=model, params=params),
            "url": row["url"], "domain": row["domain"], "crawl": row["crawl"], "source": row["source"],
            "fetched_at": row["fetched_at"], "text": judgement.text,
            "lang": row.get("lang") or judgement.lang, "lang_score": judgement.lang_score,
            "n_chars": len(judgement.text), "parent_id": row["id"], "rewrite_model": model,
            "rewrite_prompt": task.prompt.key, "rewrite_style": task.prompt.style, "rewrite_params": params,
            "rewrite_key": task.key, "is_synthetic": True, "parent_origin": row.get("origin"),
            "parent_reject_reason": row.get("reject_reason"), "quality_score": None,
        })
    rows = pl.DataFrame(kept, schema=REWRITE_SCHEMA) if kept else pl.DataFrame(schema=REWRITE_SCHEMA)
    if config.rescore and rows.height:
        scored = (rescorer or Rescorer())(rows)
        failing = scored.filter(pl.col("rescore_reason").is_not_null())
        for r in failing.iter_rows(named=True):
            dropped.append({"parent_id": r["parent_id"], "rewrite_prompt": r["rewrite_prompt"],
                            "drop_reason": f"rescore:{r['rescore_reason']}", "reply": r["text"], "detail": None})
        rows = scored.filter(pl.col("rescore_reason").is_null()).drop("rescore_reason")
    rows = rows.select([pl.col(c).cast(t) for c, t in REWRITE_SCHEMA.items()]).unique(
        "id", keep="first", maintain_order=True)
    dropped_frame = pl.DataFrame(dropped, schema=DROPPED_SCHEMA) if dropped else pl.DataFrame(schema=DROPPED_SCHEMA)
    return rows, dropped_frame


def rewrite_params_dict(rows: pl.DataFrame) -> list[dict[str, Any]]:
    """`rewrite_params` parsed back into dicts (for reports)."""
    return [json.loads(p) for p in rows["rewrite_params"].to_list()]
