"""Deterministic weighted sampling of documents to a token budget, with epoch caps and honest shortfalls.

Every component (or, with language temperature, every component × language group) gets a token
target. A group is taken whole ``floor(target / size)`` times (epochs 0..k-1) and then partly: its
documents in a seeded random order up to the remaining tokens (a document is taken while the running
total before it plus half of it is under the target, so the cut is at the nearest document boundary).
Targets above ``max_epochs × size`` are cut to that cap and the difference is reported as shortfall,
never silently moved elsewhere. The mix order is a seeded shuffle of all (document, epoch) rows.
Polars' hash is stable for a given Polars version; the manifest lists the exact order, so a rebuild
reads the manifest instead of re-sampling.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from textmill.mix.config import MixComponent, MixConfig

log = logging.getLogger(__name__)

ORDER_SCHEMA = {"position": pl.UInt64, "phase": pl.String, "component": pl.String, "id": pl.String,
                "epoch": pl.UInt32, "tokens": pl.UInt32, "lang": pl.String}


@dataclass(frozen=True)
class MixSample:
    """The mix order (manifest rows, in training order) and what was achieved against the recipe."""

    order: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def _shares(components: list[MixComponent], sizes: dict[str, int], synthetic_cap: float | None) -> tuple[dict[str, float], bool]:
    """Target token share per component, after the synthetic-to-real cap."""
    if components[0].token_share is not None:
        shares = {c.name: float(c.token_share or 0.0) for c in components}
    else:
        mass = {c.name: float(c.weight or 0.0) * sizes.get(c.name, 0) for c in components}
        total = math.fsum(mass.values())
        shares = {k: (v / total if total else 0.0) for k, v in mass.items()}
    synthetic = {c.name for c in components if c.kind == "rewritten"}
    syn = math.fsum(shares[n] for n in synthetic)
    capped = synthetic_cap is not None and syn > synthetic_cap + 1e-12
    if capped:
        real = 1.0 - syn
        for name in shares:
            if name in synthetic:
                shares[name] *= synthetic_cap / syn  # type: ignore[operator]
            elif real > 0:
                shares[name] *= (1.0 - synthetic_cap) / real  # type: ignore[operator]
    return shares, capped


def _sample_phase(candidates: pl.DataFrame, *, phase: str, components: list[MixComponent], total_tokens: int,
                  seed: int, synthetic_cap: float | None, language_temperature: float | None,
                  tolerance: float) -> tuple[pl.DataFrame, dict[str, Any]]:
    names = [c.name for c in components]
    docs = candidates.filter(pl.col("component").is_in(names)).with_columns(pl.col("tokens").cast(pl.Int64))
    sizes = dict(docs.group_by("component").agg(pl.col("tokens").sum()).iter_rows())
    shares, syn_capped = _shares(components, sizes, synthetic_cap)
    comp = pl.DataFrame({"component": names, "share": [shares[n] for n in names],
                         "max_epochs": [float(c.max_epochs) for c in components]})
    groups = docs.group_by("component", "lang").agg(size=pl.col("tokens").sum()).join(comp, on="component")
    if language_temperature is not None:  # q_lang ∝ p_lang^(1/T) inside each component
        groups = groups.with_columns(w=(pl.col("size") / pl.col("size").sum().over("component")) ** (1.0 / language_temperature))
        groups = groups.with_columns(frac=pl.col("w") / pl.col("w").sum().over("component"))
    else:
        groups = groups.with_columns(frac=pl.col("size") / pl.col("size").sum().over("component"))
    groups = groups.with_columns(target=pl.col("share") * total_tokens * pl.col("frac")).with_columns(
        achievable=pl.min_horizontal("target", pl.col("max_epochs") * pl.col("size"))).with_columns(
        full=(pl.col("achievable") / pl.col("size")).floor().cast(pl.Int64)).with_columns(
        rest=pl.col("achievable") - pl.col("full") * pl.col("size"))
    docs = docs.join(groups.select("component", "lang", "full", "rest"), on=["component", "lang"])
    whole = (docs.filter(pl.col("full") > 0).with_columns(epoch=pl.int_ranges(0, pl.col("full")))
             .explode("epoch"))
    part = (docs.with_columns(epoch=pl.col("full"),
                              key=pl.struct(pl.col("id"), pl.col("component"), pl.col("full")).hash(seed))
            .sort("component", "lang", "key")
            .with_columns(before=pl.col("tokens").cum_sum().over("component", "lang") - pl.col("tokens"))
            .filter(pl.col("before") + pl.col("tokens") / 2 < pl.col("rest")))
    cols = ["component", "id", "epoch", "tokens", "lang"]
    rows = pl.concat([whole.select(cols), part.select(cols)]).with_columns(pl.col("epoch").cast(pl.UInt32))
    order = (rows.with_columns(key=pl.struct("id", "component", "epoch").hash(seed + 1)).sort("key", "component", "id")
             .drop("key").with_row_index("position").with_columns(phase=pl.lit(phase))
             .select(list(ORDER_SCHEMA)).cast(ORDER_SCHEMA))  # type: ignore[arg-type]
    achieved = dict(order.group_by("component").agg(pl.col("tokens").sum()).iter_rows())
    per_group = groups.join(rows.group_by("component", "lang").agg(achieved=pl.col("tokens").sum()),
                            on=["component", "lang"], how="left").fill_null(0)
    total = int(order["tokens"].sum() or 0)
    per_component: dict[str, Any] = {}
    for c in components:
        g = per_group.filter(pl.col("component") == c.name)
        size = int(sizes.get(c.name, 0))
        target = shares[c.name] * total_tokens
        got = int(achieved.get(c.name, 0))
        shortfall = float(g["target"].sum() - g["achievable"].sum()) if g.height else target
        per_component[c.name] = {
            "kind": c.kind, "documents_available": int(docs.filter(pl.col("component") == c.name).height),
            "tokens_available": size, "target_share": round(shares[c.name], 6), "target_tokens": round(target),
            "tokens": got, "share": round(got / total, 6) if total else 0.0,
            "epochs": round(got / size, 4) if size else 0.0, "max_epochs": c.max_epochs,
            "shortfall_tokens": round(shortfall), "epoch_capped": shortfall > 0.5,
            "languages": {r["lang"]: {"target_tokens": round(r["target"]), "tokens": int(r["achieved"]),
                                      "available": int(r["size"])} for r in g.sort("lang").iter_rows(named=True)},
        }
        if shortfall > 0.5:
            log.warning("%s/%s: %d tokens short of its target (%.2f epochs cap)", phase, c.name, round(shortfall), c.max_epochs)
    share_error = max((abs(v["share"] - v["target_share"]) for v in per_component.values()), default=0.0)
    budget_error = abs(total - total_tokens) / total_tokens
    synthetic_tokens = sum(v["tokens"] for v in per_component.values() if v["kind"] == "rewritten")
    stats = {
        "phase": phase, "budget_tokens": total_tokens, "tokens": total, "documents": order.height,
        "unique_documents": int(order.select(pl.struct("component", "id").n_unique()).item()) if order.height else 0,
        "budget_error": round(budget_error, 6), "max_share_error": round(share_error, 6), "tolerance": tolerance,
        "within_tolerance": budget_error <= tolerance and share_error <= tolerance,
        "shortfall_tokens": sum(v["shortfall_tokens"] for v in per_component.values()),
        "synthetic_share": round(synthetic_tokens / total, 6) if total else 0.0,
        "synthetic_cap": synthetic_cap, "synthetic_cap_applied": syn_capped,
        "language_temperature": language_temperature, "components": per_component,
        "languages": dict(order.group_by("lang").agg(pl.col("tokens").sum())
                          .sort(["tokens", "lang"], descending=[True, False]).iter_rows()),
    }
    return order, stats


def sample_mix(candidates: pl.DataFrame | pl.LazyFrame, *, config: MixConfig) -> MixSample:
    """Sample the main mix (and the anneal mix, if any) from candidate documents.

    ``candidates`` has one row per (component, document): ``component``, ``id``, ``tokens`` and
    optionally ``lang``; the same document may appear under several components.
    """
    frame = candidates.collect() if isinstance(candidates, pl.LazyFrame) else candidates
    if "lang" not in frame.columns:
        frame = frame.with_columns(lang=pl.lit("und"))
    frame = frame.select(pl.col("component").cast(pl.String), pl.col("id").cast(pl.String),
                         pl.col("tokens").cast(pl.Int64), pl.col("lang").cast(pl.String).fill_null("und"))
    frame = frame.filter(pl.col("tokens") > 0)
    order, stats = _sample_phase(frame, phase="main", components=config.components, total_tokens=config.total_tokens,
                                 seed=config.seed, synthetic_cap=config.synthetic_cap,
                                 language_temperature=config.language_temperature, tolerance=config.tolerance)
    phases = {"main": stats}
    if config.anneal is not None:
        anneal, astats = _sample_phase(frame, phase="anneal", components=config.anneal.components,
                                       total_tokens=config.anneal.total_tokens, seed=config.seed + 1_000_003,
                                       synthetic_cap=config.synthetic_cap,
                                       language_temperature=config.language_temperature, tolerance=config.tolerance)
        order = pl.concat([order, anneal.with_columns(pl.col("position") + order.height)])
        phases["anneal"] = astats
    log.info("mix %s: %d rows, %d tokens (budget %d), within tolerance: %s", config.name, order.height,
             stats["tokens"], config.total_tokens, stats["within_tolerance"])
    return MixSample(order, {"name": config.name, "seed": config.seed, "phases": phases,
                             "within_tolerance": all(p["within_tolerance"] for p in phases.values())})
