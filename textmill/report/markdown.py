"""Markdown views of a version's statistics, shared by Dagster metadata and the CLI."""

from __future__ import annotations

from typing import Any

BLOCKS = " ▁▂▃▄▅▆▇█"


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def sparkline(counts: list[int]) -> str:
    """A histogram as one line of block characters (height relative to the largest bin)."""
    top = max(counts) if counts else 0
    if not top:
        return ""
    return "".join(BLOCKS[round(c / top * (len(BLOCKS) - 1))] for c in counts)


def waterfall(statistics: dict[str, Any]) -> str:
    """Documents removed by each rule set in decision order, and what is left after it."""
    total = statistics.get("documents_in", 0)
    lines = ["| rule set | removed | share of input | left |", "|---|---:|---:|---:|",
             f"| (input) | | | {total:,} |"]
    for step in statistics.get("waterfall", []):
        share = step["removed"] / total if total else 0.0
        lines.append(f"| {step['rule_set']} | {step['removed']:,} | {share:.1%} | {step['left']:,} |")
    return "\n".join(lines)


def signal_histograms(statistics: dict[str, Any]) -> str:
    """Quantiles and a sparkline histogram of every sampled signal."""
    summary = statistics.get("signal_summary", {})
    if not summary:
        return "no signals sampled"
    lines = ["| signal | p05 | p50 | p95 | histogram (min → max) | min | max |", "|---|---:|---:|---:|---|---:|---:|"]
    for name, item in summary.items():
        edges = item["edges"]
        lines.append(f"| {name} | {item['p05']:g} | {item['p50']:g} | {item['p95']:g} | "
                     f"{sparkline(item['histogram'])} | {edges[0]:g} | {edges[-1]:g} |")
    rate = statistics.get("signal_sample_rate")
    if rate is not None and rate < 1:
        lines.append(f"\nfrom a deterministic {rate:.2%} sample of documents (by id)")
    return "\n".join(lines)


def rejected_examples(statistics: dict[str, Any], *, chars: int = 160) -> str:
    """A few rejected documents per reason."""
    examples = statistics.get("examples_by_reason", {})
    if not examples:
        return "no rejected documents"
    counts = statistics.get("rejected_by_reason", {})
    lines = ["| reason | documents | id | url | text |", "|---|---:|---|---|---|"]
    for reason in sorted(examples, key=lambda r: -counts.get(r, 0)):
        for row in examples[reason]:
            lines.append(f"| {reason} | {counts.get(reason, 0):,} | {row['id'][:12]} | {_cell(row['url'] or '')} | "
                         f"{_cell(row['text'][:chars])}… |")
    return "\n".join(lines)


def before_after(pairs: list[dict[str, Any]], *, chars: int = 300) -> str:
    """Rewrites next to the documents they came from (`before`, `after`, `prompt`, `reason`)."""
    if not pairs:
        return "no rewrites"
    lines = ["| prompt | parent's reject reason | before | after |", "|---|---|---|---|"]
    for pair in pairs:
        lines.append(f"| {pair['prompt']} | {pair.get('reason') or ''} | {_cell(pair['before'][:chars])}… | "
                     f"{_cell(pair['after'][:chars])}… |")
    return "\n".join(lines)
