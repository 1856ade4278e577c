"""What each dataset version shows beside its data, for any orchestrator's UI.

Dagster turns a `VersionStats` into asset metadata (`assets/metadata.py`), Prefect into
markdown and table artifacts (`flows/artifacts.py`); both read the same numbers from here, so
the two UIs cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from textmill.report import markdown

if TYPE_CHECKING:
    from textmill.stages import StageResult
    from textmill.storage import Store

PREVIEW_ROWS = 5
PREVIEW_CHARS = 240


@dataclass(frozen=True)
class VersionStats:
    """One version's statistics, grouped by how a UI renders them.

    `values` are scalars, `json` dicts and lists, `markdown` ready-made markdown views, `paths`
    locations in the store, and `tables` the tabular views (rows of dicts) of the same numbers.
    """

    stage: str
    partition: str
    version: str
    rows: int
    reused: bool
    columns: dict[str, str]
    values: dict[str, Any] = field(default_factory=dict)
    json: dict[str, Any] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def markdown_preview(store: "Store", result: "StageResult", *, rows: int = PREVIEW_ROWS) -> str:
    """A markdown table of the first documents of a version (the columns it has of id, url, lang, chars, text)."""
    names = store.scan(result.manifest).collect_schema().names()
    columns = [c for c in ("id", "component", "url", "lang", "n_chars", "tokens", "text") if c in names]
    frame = store.scan(result.manifest).select(columns).head(rows).collect()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.iter_rows(named=True):
        cells = []
        for column in columns:
            value = row[column]
            if column == "text":
                cells.append(" ".join((value or "")[:PREVIEW_CHARS].split()).replace("|", "\\|") + "…")
            elif column == "id":
                cells.append(str(value)[:12])
            else:
                cells.append(str(value if value is not None else "").replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def largest_clusters(store: "Store", result: "StageResult") -> str:
    """The deduped version's largest duplicate clusters: kept document, URL, size and text."""
    largest = result.manifest.statistics.get("largest_clusters") or []
    if not largest:
        return "no duplicate clusters"
    ids = [row["id"] for row in largest]
    rows = store.scan(result.manifest).filter(pl.col("id").is_in(ids)).select(
        "id", "url", "dup_cluster_size", pl.col("text").str.slice(0, 160)).collect()
    lines = ["| kept id | url | size | text |", "|---|---|---|---|"]
    for row in rows.sort("dup_cluster_size", descending=True).iter_rows(named=True):
        text = " ".join(row["text"].split()).replace("|", "\\|")
        lines.append(f"| {row['id'][:12]} | {row['url']} | {row['dup_cluster_size']} | {text}… |")
    return "\n".join(lines)


def _counts(mapping: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A name → count mapping as table rows, largest first."""
    items = sorted((mapping or {}).items(), key=lambda item: (-(item[1] or 0), item[0]))
    return [{key: name, "documents": count} for name, count in items]


def _raw(store: "Store", result: "StageResult", s: dict) -> dict:
    return {
        "values": {"extractor": s.get("extractor", ""), "input_files": s.get("input_files", 0),
                   "input_bytes": s.get("input_bytes", 0)},
        "json": {"languages": s.get("languages", {}), "skipped_records": s.get("skipped", {})},
        "tables": {"languages": _counts(s.get("languages"), "lang"),
                   "files": list(s.get("per_file", []))},
    }


def _deduped(store: "Store", result: "StageResult", s: dict) -> dict:
    return {
        "values": {"documents_in": s["documents_in"], "dedup_rate": s["dedup_rate"]},
        "json": {"removed_by_kind": s["removed_by_kind"], "cluster_size_histogram": s["cluster_size_histogram"],
                 "earlier_crawls": s["earlier_crawls"]},
        "markdown": {"largest_clusters": largest_clusters(store, result)},
        "tables": {"removed-by-kind": [{"kind": k, "documents": v} for k, v in s["removed_by_kind"].items()],
                   "cluster-sizes": [{"size": k, "clusters": v} for k, v in s["cluster_size_histogram"].items()]},
    }


def _filtered(store: "Store", result: "StageResult", s: dict) -> dict:
    return {
        "values": {"documents_in": s["documents_in"], "keep_rate": s["keep_rate"], "rejected": s["rejected"],
                   "recyclable": s["recyclable"]},
        "json": {"rejected_by_reason": s["rejected_by_reason"], "pii_redacted": s["pii_redacted"],
                 "quality_cutoff": s["quality_cutoff"]},
        "markdown": {"removal_waterfall": markdown.waterfall(s), "signal_histograms": markdown.signal_histograms(s),
                     "rejected_examples": markdown.rejected_examples(s)},
        "tables": {"waterfall": [step | {"share_of_input": round(step["removed"] / s["documents_in"], 6)
                                         if s["documents_in"] else 0.0} for step in s["waterfall"]],
                   "rejected-by-reason": _counts(s["rejected_by_reason"], "reason")},
    }


def _rewritten(store: "Store", result: "StageResult", s: dict) -> dict:
    rewrites = s["rewrites"]
    return {
        "values": {"selected": s["selected"], "dropped": rewrites["dropped"], "pass_rate": s["pass_rate"],
                   "synthetic_share": s["synthetic_share"], "model": rewrites["model"],
                   "requests": rewrites["requests"], "cache_hits": rewrites["cache_hits"],
                   "tokens_in": rewrites["tokens_in"], "tokens_out": rewrites["tokens_out"],
                   "documents_per_second": rewrites["docs_per_second"],
                   "output_tokens_per_second": rewrites["output_tokens_per_second"]},
        "json": {"dropped_by_reason": s["dropped_by_reason"]},
        "markdown": {"before_after": markdown.before_after(s["examples"])},
        "tables": {"dropped-by-reason": _counts(s["dropped_by_reason"], "reason"),
                   "selected-by-reason": _counts(s.get("selected_by_reason"), "reason")},
    }


def _mixed(store: "Store", result: "StageResult", s: dict) -> dict:
    main = s["mix"]["phases"]["main"]
    card = store.read_bytes(f"{store.version_dir('mixed', result.manifest.partition, result.version)}/README.md")
    components = main["components"]
    rows = [{"component": name} | {k: v for k, v in item.items() if isinstance(v, (int, float, str, bool))}
            for name, item in components.items()] if isinstance(components, dict) else list(components)
    return {
        "values": {"tokens": s["tokens"], "budget_tokens": main["budget_tokens"],
                   "within_tolerance": main["within_tolerance"], "synthetic_share": main["synthetic_share"]},
        "json": {"components": components, "decontamination": s["mix"]["decontamination"],
                 "packed": s["mix"].get("packed")},
        "markdown": {"data_card": card.decode()},
        "paths": {"data_card_path": s["card"]},
        "tables": {"components": rows},
    }


_STAGES = {"raw": _raw, "deduped": _deduped, "filtered": _filtered, "rewritten": _rewritten, "mixed": _mixed}


def version_stats(store: "Store", result: "StageResult") -> VersionStats:
    """Everything a UI shows for a version: the common numbers, then the stage's own."""
    manifest = result.manifest
    schema = store.scan(manifest).collect_schema()
    own = _STAGES[manifest.stage](store, result, manifest.statistics)
    return VersionStats(
        stage=manifest.stage, partition=manifest.partition, version=manifest.version, rows=manifest.rows,
        reused=result.reused, columns={name: str(dtype) for name, dtype in schema.items()},
        values={"version": manifest.version, "reused": result.reused, "bytes": manifest.bytes,
                "files": len(manifest.files), "quarantined": manifest.quarantine.get("records", 0),
                "textmill_version": manifest.textmill_version, "code_version": manifest.code_version,
                "stage_seconds": result.seconds, "build_seconds": float(manifest.timings.get("wall_seconds", 0.0))}
        | own.get("values", {}),
        json={"quarantined_by_reason": manifest.quarantine.get("by_reason", {}), "timings": manifest.timings}
        | own.get("json", {}),
        markdown={"preview": markdown_preview(store, result)} | own.get("markdown", {}),
        paths={"path": result.uri, "quarantine_path": manifest.quarantine.get("path", "")} | own.get("paths", {}),
        tables=own.get("tables", {}),
    )
