"""Pydantic models of a mixture recipe: components, budget, caps, decontamination and export.

Frozen with ``extra="forbid"`` like the rest of the recipe, so a typo is an error, not a default.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from textmill.names import check_name

_MODEL = ConfigDict(frozen=True, extra="forbid")
SHARE_SUM_SLACK = 1e-6


class MixComponent(BaseModel):
    """One named source of the mix.

    ``weight`` scales the component's natural token count (weight 2 = twice as present as its size
    alone would make it); ``token_share`` fixes its share of the budget outright. A recipe uses one
    or the other for all its components. ``max_epochs`` caps repetition (4 after Muennighoff et al.,
    'Scaling Data-Constrained Language Models': up to ~4 epochs cost almost nothing).
    """

    model_config = _MODEL

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["kept", "rewritten", "files"]
    crawls: list[str] | None = None  # None = every crawl
    paths: list[str] | None = None  # JSONL / Parquet files or globs, for kind "files"
    weight: float | None = Field(default=None, gt=0)
    token_share: float | None = Field(default=None, gt=0, le=1)
    max_epochs: float = Field(default=4.0, gt=0)

    @field_validator("crawls")
    @classmethod
    def _safe_crawls(cls, value: list[str] | None) -> list[str] | None:
        for crawl in value or []:  # crawl names become store paths
            check_name(crawl, field="crawl")
        return value

    @model_validator(mode="after")
    def _check(self) -> "MixComponent":
        if (self.weight is None) == (self.token_share is None):
            raise ValueError(f"component {self.name!r}: give exactly one of weight or token_share")
        if self.kind == "files" and not self.paths:
            raise ValueError(f"component {self.name!r}: kind 'files' needs paths")
        if self.kind != "files" and self.paths:
            raise ValueError(f"component {self.name!r}: paths only apply to kind 'files'")
        return self


def _check_components(components: list[MixComponent], where: str) -> None:
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: component names must be unique, got {names}")
    uses_share = {c.token_share is not None for c in components}
    if len(uses_share) > 1:
        raise ValueError(f"{where}: use weights for every component or token shares for every component, not both")
    if uses_share == {True}:
        total = math.fsum(c.token_share or 0.0 for c in components)
        if abs(total - 1.0) > SHARE_SUM_SLACK:
            raise ValueError(f"{where}: token shares must sum to 1, got {total:.6f}")


class AnnealConfig(BaseModel):
    """A second, smaller mix for the end of training (domain upsampling), sampled after the main one."""

    model_config = _MODEL

    total_tokens: int = Field(gt=0)
    components: list[MixComponent] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "AnnealConfig":
        _check_components(self.components, "anneal")
        return self


class DecontamConfig(BaseModel):
    """N-gram decontamination against the benchmark question sets bundled in ``textmill/benchmarks``."""

    model_config = _MODEL

    enabled: bool = True
    ngram: int = Field(default=13, ge=3, le=64)
    benchmarks: list[str] | None = None  # None = every bundled benchmark
    # Questions shorter than ``ngram`` words match as a whole (all their words in a row) when they
    # have at least this many words; shorter ones are ignored (too generic to mean contamination).
    short_question_min_words: int | None = Field(default=8, ge=3)
    batch_documents: int = Field(default=2_000, gt=0)  # bounds the per-batch word and n-gram arrays


class ExportConfig(BaseModel):
    """How the mix is written: Parquet shards, and optionally packed token sequences."""

    model_config = _MODEL

    shard_rows: int = Field(default=50_000, gt=0)
    sequence_length: int | None = Field(default=None, ge=16)
    packer: Literal["concat", "best_fit"] = "best_fit"
    eos_between_documents: bool = True
    # documents are packed in windows of about this many tokens: memory is bounded by the window
    pack_window_tokens: int = Field(default=4_194_304, ge=1024)


class MixConfig(BaseModel):
    """A whole mixture recipe: what goes in, how much, how it is cleaned and how it is written."""

    model_config = _MODEL

    name: str = Field(default="mix", description="becomes a folder name: see textmill.names")
    components: list[MixComponent] = Field(min_length=1)
    total_tokens: int = Field(gt=0)
    synthetic_cap: float | None = Field(default=None, ge=0, le=1)  # max token share of kind "rewritten"
    seed: int = 0
    tolerance: float = Field(default=0.02, gt=0, lt=1)  # absolute, on shares and on budget / total
    language_temperature: float | None = Field(default=None, gt=0)  # q_lang ∝ p_lang^(1/T) in a component
    anneal: AnnealConfig | None = None
    tokenizer: Literal["cl100k_base", "o200k_base"] = "cl100k_base"
    decontamination: DecontamConfig = DecontamConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, field="mix name")

    @model_validator(mode="after")
    def _check(self) -> "MixConfig":
        _check_components(self.components, "mix")
        return self
