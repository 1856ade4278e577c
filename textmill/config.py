"""The recipe: pipeline configuration as YAML, validated into pydantic models before any work.

One model per stage. Unknown fields are errors, so a typo fails loudly instead of
silently falling back to a default. `load_recipe` reports the failing field and file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from textmill.filters.config import DEFAULT_ORDER, FilterConfig
from textmill.filters.quality_model import QualityModelConfig
from textmill.mix.config import ExportConfig, MixComponent, MixConfig
from textmill.rewrite.config import RewriteConfig

# every crawl's kept documents and rewrites, rewrites capped at 30% of the tokens
DEFAULT_MIX = MixConfig(
    name="default",
    components=[MixComponent(name="web", kind="kept", weight=1.0),
                MixComponent(name="rewritten", kind="rewritten", weight=1.0)],
    total_tokens=100_000, synthetic_cap=0.3, export=ExportConfig(sequence_length=2048, packer="best_fit"),
)


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    """Where dataset versions live: a local folder or an fsspec URL such as s3://bucket/prefix."""

    root: str = ".textmill/data"
    storage_options: dict[str, Any] = Field(default_factory=dict)

    def __repr_args__(self):  # repr/str of a recipe never shows credentials (keys, secrets, tokens)
        from textmill.storage import redact_options

        for name, value in super().__repr_args__():
            yield name, redact_options(value) if name == "storage_options" else value


class ExecutionConfig(_Strict):
    """How shards run: a local process pool (default), in-process for debugging, or on Ray."""

    backend: Literal["local", "serial", "ray"] = "local"
    workers: int | None = Field(default=None, ge=1, description="defaults to the number of cores (Ray: the cluster's CPUs)")
    ray_address: str | None = Field(default=None, description="backend ray: an existing cluster (ray://host:10001 "
                                                               "or auto); null starts a local Ray")


class RawChecks(_Strict):
    """Blocking thresholds for the raw version."""

    min_documents: int = Field(default=1, ge=0)
    max_quarantine_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    max_empty_lang_rate: float = Field(default=0.2, ge=0.0, le=1.0)


class RawConfig(_Strict):
    """Ingestion: readers, HTML extraction and language identification."""

    extractor: Literal["resiliparse", "trafilatura"] = Field(
        default="trafilatura", description="trafilatura: best extraction F1; resiliparse: ~12x faster, more boilerplate")
    main_content: bool = Field(default=True, description="drop boilerplate (menus, footers) when extracting")
    html_mime_types: list[str] = Field(default_factory=lambda: ["text/html", "application/xhtml+xml"])
    max_document_bytes: int = Field(default=5_000_000, ge=1024, description="larger payloads go to quarantine")
    min_text_chars: int = Field(default=1, ge=1, description="shorter extracted text goes to quarantine as empty")
    rows_per_part: int = Field(default=20_000, ge=1, description="documents per Parquet part; bounds worker memory")
    batch_size: int = Field(default=256, ge=1, description="records extracted and language-identified per batch")
    langid_max_chars: int = Field(default=2000, ge=100, description="characters of each text read by language id")
    file_patterns: list[str] = Field(
        default_factory=lambda: ["*.warc", "*.warc.gz", "*.wet", "*.wet.gz", "*.jsonl", "*.jsonl.gz",
                                 "*.jsonl.zst", "*.json.gz", "*.parquet"],
    )
    checks: RawChecks = Field(default_factory=RawChecks)

    @model_validator(mode="after")
    def _whole_page_needs_resiliparse(self) -> "RawConfig":
        if not self.main_content and self.extractor != "resiliparse":
            raise ValueError("main_content: false (whole-page text) needs extractor: resiliparse")
        return self


class MinHashConfig(_Strict):
    """Near-duplicate detection: word n-gram shingles, MinHash signatures, LSH bands."""

    ngram: int = Field(default=5, ge=1, le=32, description="tokens per shingle")
    tokens: Literal["words", "words_and_punctuation"] = Field(
        default="words_and_punctuation",
        description="shingle tokens: words and punctuation marks (higher recall of edited copies at equal "
                    "precision, docs/performance.md), or words only (as datatrove/FineWeb)")
    bands: int = Field(default=14, ge=1, description="LSH bands (14 × 8, as FineWeb)")
    rows: int = Field(default=8, ge=1, description="signature rows per band")
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0,
                                    description="Jaccard threshold from which bands and rows are derived")
    permutations: int = Field(default=112, ge=1, le=1024, description="signature length when deriving from threshold")
    seed: int = Field(default=1, description="seed of the hash permutations")
    verify_jaccard: float | None = Field(default=None, gt=0.0, le=1.0,
                                         description="drop candidate pairs whose exact shingle Jaccard is below this")
    buckets: int | None = Field(default=None, ge=1, le=4096, description="band-key buckets (default: by crawl size)")

    @model_validator(mode="after")
    def _one_way_to_choose_bands(self) -> "MinHashConfig":
        if self.threshold is not None and {"bands", "rows"} & self.model_fields_set:
            raise ValueError("give either threshold or bands and rows, not both")
        if self.buckets is not None and self.buckets & (self.buckets - 1):
            raise ValueError(f"buckets must be a power of two, got {self.buckets}")
        return self

    def bands_rows(self) -> tuple[int, int]:
        if self.threshold is not None:
            from textmill.dedup.minhash import bands_rows_for_threshold

            return bands_rows_for_threshold(self.threshold, permutations=self.permutations)
        return self.bands, self.rows


class DedupChecks(_Strict):
    """Blocking bounds on the share of documents removed."""

    min_dedup_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    max_dedup_rate: float = Field(default=0.9, ge=0.0, le=1.0)


class DedupConfig(_Strict):
    """Exact, URL and near-duplicate removal, within a crawl and against earlier crawls."""

    url: bool = Field(default=True, description="keep only the newest fetch of each normalized URL")
    exact: bool = Field(default=True, description="remove documents whose normalized text is identical")
    case_fold: bool = Field(default=False, description="exact dedup ignores case")
    near: bool = Field(default=True, description="MinHash-LSH near-duplicate removal")
    cross_crawl: bool = Field(default=True, description="also remove what earlier crawls already kept")
    scope: Literal["global", "source"] = Field(default="global", description="duplicates across sources or within one")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    checks: DedupChecks = Field(default_factory=DedupChecks)


class FilteredChecks(_Strict):
    """Blocking bounds on what filtering keeps and removes."""

    min_keep_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="share of documents kept, at least")
    max_keep_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="share of documents kept, at most")
    max_removal_rate: float = Field(default=1.0, ge=0.0, le=1.0,
                                    description="share of documents any one rule set may remove")
    max_removal_rate_by_rule_set: dict[str, float] = Field(
        default_factory=dict, description="per rule set (e.g. language: 0.5), overrides max_removal_rate")
    min_language_share: float = Field(default=0.0, ge=0.0, le=1.0,
                                      description="share of kept documents in language.languages, at least")

    @field_validator("max_removal_rate_by_rule_set")
    @classmethod
    def _known_rule_sets(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DEFAULT_ORDER))
        if unknown:
            raise ValueError(f"unknown rule set(s) {unknown}; known: {list(DEFAULT_ORDER)}")
        if any(not 0.0 <= rate <= 1.0 for rate in value.values()):
            raise ValueError("rates must be between 0 and 1")
        return value


class FilteredConfig(FilterConfig):
    """The filtered stage: the rule sets (see textmill.filters.config), the optional quality
    classifier, PII redaction of kept text, and the checks."""

    quality_model: QualityModelConfig | None = Field(
        default=None, description="a fastText classifier whose score is quality_score (threshold or top_percent)")
    redact_pii: bool = Field(default=True, description="replace e-mails, IPs and phone numbers in kept text")
    batch_rows: int = Field(default=5000, ge=1, description="documents whose signals are computed at once")
    examples_per_reason: int = Field(default=3, ge=0, description="rejected examples kept per reason for metadata")
    checks: FilteredChecks = Field(default_factory=FilteredChecks)

    @model_validator(mode="after")
    def _one_source_of_score_cutoff(self) -> "FilteredConfig":
        if self.quality_model is not None and self.quality_classifier.min_score is not None:
            raise ValueError("quality_classifier.min_score and quality_model both set a score cutoff; keep one")
        return self


class Recipe(_Strict):
    """A whole pipeline's configuration."""

    name: str = "default"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    raw: RawConfig = Field(default_factory=RawConfig)
    deduped: DedupConfig = Field(default_factory=DedupConfig)
    filtered: FilteredConfig = Field(default_factory=FilteredConfig)
    rewritten: RewriteConfig = Field(default_factory=RewriteConfig)
    mixed: list[MixConfig] = Field(default_factory=lambda: [DEFAULT_MIX], description="training mixes, by name")

    @field_validator("mixed")
    @classmethod
    def _unique_mix_names(cls, value: list[MixConfig]) -> list[MixConfig]:
        names = [mix.name for mix in value]
        if len(set(names)) != len(names):
            raise ValueError(f"mix names must be unique, got {names}")
        return value

    def mix(self, name: str) -> MixConfig:
        """The mix called `name`; a clear error naming the known ones otherwise."""
        for mix in self.mixed:
            if mix.name == name:
                return mix
        raise RecipeError(f"no mix named {name!r} in the recipe; known: {[m.name for m in self.mixed]}")

    @model_validator(mode="after")
    def _patterns_not_empty(self) -> "Recipe":
        if not self.raw.file_patterns:
            raise ValueError("raw.file_patterns must list at least one pattern")
        return self

    def with_root(self, root: str, storage_options: dict[str, Any] | None = None) -> "Recipe":
        """The same recipe writing under another storage root."""
        storage = StorageConfig(root=root, storage_options=storage_options or self.storage.storage_options)
        return self.model_copy(update={"storage": storage})


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    got = error.get("input")
    shown = "" if error["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
    return f"field '{field}': {message}{shown}"


def parse_recipe(data: dict[str, Any] | None, *, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping; errors name the field and the source."""
    try:
        return Recipe.model_validate(data or {})
    except ValidationError as exc:
        details = "; ".join(_describe(error) for error in exc.errors())
        raise RecipeError(f"{source}: invalid recipe: {details}") from None


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, *, source: str = "<recipe>", where: str = "") -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in a recipe's string values by environment variables.

    Deployments keep endpoints and addresses out of the file (secrets never belong in one);
    a variable that is unset and has no default is an error naming it and the field.
    """
    if isinstance(data, dict):
        return {key: expand_env(value, source=source, where=f"{where}.{key}" if where else str(key))
                for key, value in data.items()}
    if isinstance(data, list):
        return [expand_env(value, source=source, where=f"{where}.{index}") for index, value in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def substitute(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            if match.group(2) is None:
                raise RecipeError(f"{source}: field '{where}': environment variable {match.group(1)} is not set")
            return match.group(2)
        return value

    return _ENV_REFERENCE.sub(substitute, data)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a YAML recipe file (after `${VAR}` substitution, see `expand_env`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return parse_recipe(expand_env(data, source=str(path)), source=str(path))


DEFAULT_RECIPE_PATH = Path("recipes/default.yaml")


def resolve_recipe(path: str | os.PathLike[str] | None = None) -> Recipe:
    """The recipe at `path`, else $TEXTMILL_RECIPE, else recipes/default.yaml, else built-in defaults."""
    candidate = path or os.environ.get("TEXTMILL_RECIPE")
    if candidate:
        return load_recipe(candidate)
    if DEFAULT_RECIPE_PATH.exists():
        return load_recipe(DEFAULT_RECIPE_PATH)
    return Recipe()
