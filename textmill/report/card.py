"""The mix's data card: an HF-style README.md (YAML front matter) and a self-contained HTML report.

Everything comes from manifests' statistics (raw, deduped, filtered, rewritten per crawl) and the
mix's own statistics, so the card can be regenerated from stored versions without reading data.
Plots are hand-made inline SVG bar charts: no plotting dependency, no external files.
"""

from __future__ import annotations

import html
import json
import logging
import posixpath
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import yaml

log = logging.getLogger(__name__)

STAGES = ("raw", "deduped", "filtered", "rewritten")
LENGTH_EDGES = (0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 1 << 62)


def _sum(manifests: list[dict[str, Any]], key: str) -> int:
    return sum(int(m.get("statistics", {}).get(key, 0) or 0) for m in manifests)


def _merge_counts(manifests: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in manifests:
        for k, v in (m.get("statistics", {}).get(key) or {}).items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def length_histogram(tokens: np.ndarray | list[int]) -> dict[str, int]:
    """Documents per token-length bucket (labels like '256-511')."""
    values = np.asarray(tokens, dtype=np.int64)
    counts, _ = np.histogram(values, bins=np.array(LENGTH_EDGES))
    labels = [f"{lo}-{hi - 1}" if hi < (1 << 62) else f"≥{lo}" for lo, hi in zip(LENGTH_EDGES[:-1], LENGTH_EDGES[1:])]
    return {label: int(c) for label, c in zip(labels, counts)}


def waterfall(upstream: dict[str, list[dict[str, Any]]], mix_stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Documents left after each version: raw → deduped → filtered (+ rewritten) → decontaminated → mixed."""
    raw = _sum(upstream.get("raw", []), "documents")
    deduped = _sum(upstream.get("deduped", []), "documents")
    filtered = _sum(upstream.get("filtered", []), "documents")
    rewritten = _sum(upstream.get("rewritten", []), "documents")
    decon = mix_stats.get("decontamination", {})
    main = mix_stats.get("phases", {}).get("main", {})
    steps = [("raw", raw, None), ("deduped", deduped, raw - deduped), ("filtered (kept)", filtered, deduped - filtered),
             ("+ rewritten (synthetic)", filtered + rewritten, -rewritten),
             ("decontaminated", filtered + rewritten - int(decon.get("removed", 0)), int(decon.get("removed", 0))),
             ("mixed (unique documents)", int(main.get("unique_documents", 0)), None)]
    return [{"step": s, "documents": int(d), "removed": r} for s, d, r in steps]


def _rates(upstream: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    raw, ded, fil = (upstream.get(k, []) for k in ("raw", "deduped", "filtered"))
    d_in, d_out = _sum(ded, "documents_in"), _sum(ded, "documents")
    f_in, f_out = _sum(fil, "documents_in"), _sum(fil, "documents")
    rew = upstream.get("rewritten", [])
    selected, produced = _sum(rew, "selected"), _sum(rew, "documents")
    return {"dedup_rate": round((d_in - d_out) / d_in, 6) if d_in else None,
            "filter_keep_rate": round(f_out / f_in, 6) if f_in else None,
            "rewrite_pass_rate": round(produced / selected, 6) if selected else None,
            "raw_quarantined": sum(_merge_counts(raw, "quarantined").values()),
            "filter_rejected_by_rule_set": _merge_counts(fil, "removed_by_rule_set"),
            "dedup_removed_by_kind": _merge_counts(ded, "removed_by_kind")}


def svg_bars(title: str, data: dict[str, float], *, unit: str = "", width: int = 640) -> str:
    """A horizontal bar chart as inline SVG."""
    items = list(data.items())
    row, label_w = 22, 210
    height = 30 + row * max(len(items), 1)
    top = max([abs(float(v)) for _, v in items] or [1.0]) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="4" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = 26 + i * row
        w = (width - label_w - 90) * abs(float(value)) / top
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{html.escape(str(label))[:32]}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="#4a7fb5"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="12">{value:,}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r[c] is None else (f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])) for c in cols) + " |"
              for r in rows]
    return "\n".join(lines)


def write_data_card(*, folder: str, mix_stats: dict[str, Any], upstream_manifests: dict[str, list[dict[str, Any]]],
                    name: str = "textmill-mix", license: str = "other", lengths: np.ndarray | list[int] | None = None,
                    description: str = "A pre-training mix refined by textmill.",
                    write: Callable[[str, bytes], None] | None = None) -> dict[str, str]:
    """Write README.md and report.html into ``folder``; returns their paths. ``write``: how a file is
    written (the stage passes its store's, so S3 options apply); default fsspec."""
    main = mix_stats.get("phases", {}).get("main", {})
    comps = main.get("components", {})
    upstream = {k: upstream_manifests.get(k, []) for k in STAGES}
    langs_raw = _merge_counts(upstream["raw"], "languages")
    steps = waterfall(upstream, mix_stats)
    rates = _rates(upstream)
    hist = length_histogram(lengths) if lengths is not None else mix_stats.get("length_histogram", {})
    decon = mix_stats.get("decontamination", {})
    packed = mix_stats.get("packed")
    n_tokens = int(main.get("tokens", 0))
    front = {
        "pretty_name": name, "license": license, "language": [k for k in main.get("languages", {}) if k != "und"][:50],
        "task_categories": ["text-generation"], "size_categories": [_size_category(int(main.get("documents", 0)))],
        "source_datasets": sorted({c for m in upstream["raw"] for c in [m.get("partition", "")] if c}),
        "tags": ["pretraining", "textmill"],
        "dataset_info": {"tokens": n_tokens, "documents": int(main.get("documents", 0)),
                         "tokenizer": mix_stats.get("tokenizer", "cl100k_base")},
    }
    comp_rows = [{"component": k, "kind": v["kind"], "target share": f"{v['target_share']:.2%}",
                  "share": f"{v['share']:.2%}", "tokens": int(v["tokens"]), "epochs": v["epochs"],
                  "shortfall tokens": int(v["shortfall_tokens"])} for k, v in comps.items()]
    md = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
          f"# {name}", "", description, "",
          f"**{n_tokens:,} tokens** in **{int(main.get('documents', 0)):,} documents** "
          f"(budget {int(main.get('budget_tokens', 0)):,}; budget error {main.get('budget_error', 0):.2%}, "
          f"largest share error {main.get('max_share_error', 0):.2%}, tolerance {main.get('tolerance', 0):.0%}; "
          f"within tolerance: {main.get('within_tolerance')}). Synthetic share {main.get('synthetic_share', 0):.2%}"
          f" (cap {main.get('synthetic_cap')}). Seed {mix_stats.get('seed')}.", "",
          "## Sources", "", _fmt_table(comp_rows), "",
          "## Removal waterfall", "", _fmt_table(steps), "",
          "## Rates", "", f"- dedup rate: {rates['dedup_rate']}", f"- filter keep rate: {rates['filter_keep_rate']}",
          f"- rewrite pass rate: {rates['rewrite_pass_rate']}", f"- raw records quarantined: {rates['raw_quarantined']:,}",
          f"- filter removals by rule set: {json.dumps(rates['filter_rejected_by_rule_set'])}",
          f"- dedup removals by kind: {json.dumps(rates['dedup_removed_by_kind'])}", "",
          "## Decontamination", "",
          f"{int(decon.get('removed', 0)):,} documents removed for sharing a {decon.get('ngram', 13)}-gram with a "
          f"benchmark question; by benchmark: {json.dumps(decon.get('by_benchmark', {}))}.", ""]
    if packed:
        md += ["## Packed sequences", "", f"{packed['packer']} packing into {packed['sequences']:,} sequences of "
               f"{packed['sequence_length']} tokens: padding {packed['padding_rate']:.2%}, "
               f"truncated documents {packed['truncation_rate']:.2%}.", ""]
    md += ["## Languages (raw)", "", _fmt_table([{"language": k, "documents": v} for k, v in list(langs_raw.items())[:20]]), ""]
    charts = [svg_bars("Tokens per source", {k: int(v["tokens"]) for k, v in comps.items()}),
              svg_bars("Mix tokens per language", {k: int(v) for k, v in list(main.get("languages", {}).items())[:15]}),
              svg_bars("Raw documents per language", dict(list(langs_raw.items())[:15])),
              svg_bars("Documents per token length", hist) if hist else "",
              svg_bars("Documents left after each stage", {s["step"]: s["documents"] for s in steps}),
              svg_bars("Filter removals by rule set", rates["filter_rejected_by_rule_set"]),
              svg_bars("Decontamination removals by benchmark", decon.get("by_benchmark", {}))]
    body = "\n".join(f"<section>{c}</section>" for c in charts if c)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}section{margin:1.5em 0}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
            f"<h1>{html.escape(name)}</h1><p>{n_tokens:,} tokens, {int(main.get('documents', 0)):,} documents.</p>"
            f"{body}<h2>Statistics</h2><pre>{html.escape(json.dumps({'mix': mix_stats, 'rates': rates, 'waterfall': steps}, indent=1, default=str))}</pre>"
            "</body></html>")
    readme, report = posixpath.join(folder, "README.md"), posixpath.join(folder, "report.html")
    if write is not None:
        write(readme, "\n".join(md).encode("utf-8"))
        write(report, page.encode("utf-8"))
    else:
        with fsspec.open(readme, "w", encoding="utf-8") as f:
            f.write("\n".join(md))
        with fsspec.open(report, "w", encoding="utf-8") as f:
            f.write(page)
    log.info("data card written to %s", folder)
    return {"readme": readme, "report": report}


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return label
    return "n>100M"
