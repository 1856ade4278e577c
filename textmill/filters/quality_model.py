"""Model-based quality: a fastText classifier, and LLM-graded distillation to train one.

Train a classifier from labelled JSONL (`train_quality_classifier`), score a crawl with it
(`score_quality`), keep documents above a threshold or in the top p% (`quality_decisions`,
with `ScoreHistogram` for a crawl-wide cutoff). Or let an LLM label the training data:
grade a seeded sample for educational value on a 0-5 scale (`grade_documents`), label
grades >= `min_grade` as high quality, train the classifier on them and score the whole
crawl with it (`distill`), as in "Large Language Model-guided Document Selection" and
FineWeb-Edu: the LLM reads a few thousand documents, the classifier reads billions.

fastText comes from `fasttext-new` (import name `fasttext_new`): it trains, and its model
files are the C++ fastText format. It does not clash with `fasttext-predict`, whose module
`fasttext` language identification loads (docs/quality-model.md says why).

Texts are made single-line (fastText reads one line per example) by one rule in training
and scoring: the first `max_chars` characters, every whitespace run turned into a space,
optionally lower-cased. The rule's parameters are stored beside the model in
`<model>.json`, so scoring cannot drift from training.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from textmill.rewrite.backends import BackendError, Completion, LLMBackend
from textmill.storage import file_sha256

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
LABEL_PREFIX = "__label__"
HQ_LABEL = "hq"
LQ_LABEL = "lq"
SIDECAR_SUFFIX = ".json"


class QualityModelError(ValueError):
    """Training data, a model file or a config that cannot be used; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# configs ---------------------------------------------------------------------------------
class QualityTrainConfig(_Strict):
    """How `train_quality_classifier` reads labelled JSONL and trains fastText.

    Deterministic: one training thread and a fixed seed give a byte-identical model file.
    """

    text_field: str = "text"
    label_field: str = "label"
    positive_label: str = Field(default=HQ_LABEL, description="the label whose probability is the quality score")
    group_field: str | None = Field(
        default=None, description="rows sharing this field's value (page, domain) stay on one side of the split")
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0, description="share held out for the metrics")
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=0.5, gt=0.0)
    word_ngrams: int = Field(default=2, ge=1)
    dim: int = Field(default=64, ge=1)
    min_count: int = Field(default=1, ge=1)
    bucket: int = Field(default=200_000, ge=0, description="hash buckets of word n-grams; model size ~ bucket*dim*4 B")
    max_chars: int | None = Field(default=10_000, ge=1, description="characters of each text the classifier reads")
    lowercase: bool = False
    quantize: bool = Field(default=False, description="write a compressed model (.ftz-style, ~50x smaller)")
    seed: int = 0


class QualityModelConfig(_Strict):
    """Applying a trained classifier: keep a document when its score passes `threshold`, or
    when it is in the `top_percent` of the crawl's scores (exactly one of the two)."""

    model_path: str = Field(description="the fastText model file written by training")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="keep score >= threshold")
    top_percent: float | None = Field(default=None, gt=0.0, le=100.0, description="keep the top p% by score")
    positive_label: str | None = Field(default=None, description="default: the one stored beside the model")
    batch_size: int = Field(default=10_000, ge=1, description="texts per fastText predict call")
    threads: int = Field(default=1, ge=1, description="fastText threads per call (parts already run in parallel)")

    @model_validator(mode="after")
    def _one_rule(self) -> QualityModelConfig:
        if (self.threshold is None) == (self.top_percent is None):
            raise ValueError("set exactly one of threshold and top_percent")
        return self


# reports ---------------------------------------------------------------------------------
class QualityTrainReport(_Strict):
    """What training did and how well the model does on the held-out rows."""

    model_path: str
    sidecar_path: str
    model_sha256: str
    positive_label: str
    labels: dict[str, int] = Field(description="rows per label, all usable rows")
    n_train: int
    n_heldout: int
    skipped: dict[str, int] = Field(description="rows not used, by reason")
    accuracy: float | None = Field(description="held-out share whose top label is the true label")
    precision: float | None = Field(description="held-out precision of the positive label")
    recall: float | None = Field(description="held-out recall of the positive label")
    f1: float | None
    params: dict[str, Any]
    seconds: float


class GradingResult(_Strict):
    """LLM grades, one per text (None: failed request or no score in the reply)."""

    grades: list[int | None]
    replies: list[str | None]
    errors: list[str | None] = Field(description="the backend's error for each failed request")
    unparseable: int = Field(description="replies without a score in range")
    failed: int = Field(description="requests that failed after the backend's retries")
    seconds: float
    docs_per_second: float
    model_name: str


class DistillReport(_Strict):
    """LLM grading of a sample, the classifier trained on it, and how far they agree."""

    n_texts: int
    n_sampled: int
    n_graded: int
    unparseable: int
    failed: int
    grade_counts: dict[int, int]
    min_grade: int
    grading_seconds: float
    grading_docs_per_second: float
    grader_model: str
    grades_path: str
    train: QualityTrainReport
    heldout_agreement: float | None = Field(description="held-out share where classifier and LLM label agree")
    heldout_spearman: float | None = Field(description="rank correlation of classifier score and LLM grade")
    heldout_mean_score_by_grade: dict[int, float]


# normalization -----------------------------------------------------------------------------
def fasttext_lines(texts: pl.Series, *, max_chars: int | None = 10_000, lowercase: bool = False) -> pl.Series:
    """Single-line texts as the classifier reads them (fastText predicts one line at a time)."""
    s = texts.cast(pl.String)
    if max_chars is not None:
        s = s.str.slice(0, max_chars)
    s = s.str.replace_all(r"\s+", " ").str.strip_chars()
    return s.str.to_lowercase() if lowercase else s


def _label_token(value: Any) -> str:
    return re.sub(r"\s+", "_", str(value).strip())


# training ------------------------------------------------------------------------------------
def _read_jsonl(paths: Sequence[PathLike]) -> Iterator[dict[str, Any] | None]:
    """Records of each file in order (None for a line that is not a JSON object)."""
    for path in paths:
        p = Path(path)
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    yield None
                    continue
                yield rec if isinstance(rec, dict) else None


def _split(groups: Sequence[Any], *, fraction: float, seed: int) -> np.ndarray:
    """Boolean held-out mask: a seeded shuffle of the distinct groups, the first `fraction` held out."""
    distinct = sorted({str(g) for g in groups})
    random.Random(seed).shuffle(distinct)
    n_out = math.floor(len(distinct) * fraction + 0.5) if fraction > 0 else 0
    if fraction > 0 and n_out == 0 and len(distinct) > 1:
        n_out = 1
    held = set(distinct[:n_out])
    return np.array([str(g) in held for g in groups], dtype=bool)


def _train_records(
    texts: list[str],
    labels: list[str],
    groups: list[Any],
    *,
    output: PathLike,
    cfg: QualityTrainConfig,
    skipped: dict[str, int],
) -> tuple[QualityTrainReport, np.ndarray, np.ndarray]:
    """Train on prepared rows; returns the report, the held-out mask and held-out scores."""
    import fasttext_new

    start = time.perf_counter()
    lines = fasttext_lines(pl.Series(texts, dtype=pl.String), max_chars=cfg.max_chars, lowercase=cfg.lowercase)
    label_counts: dict[str, int] = {}
    for lab in labels:
        label_counts[lab] = label_counts.get(lab, 0) + 1
    if cfg.positive_label not in label_counts:
        raise QualityModelError(f"no row has the positive label {cfg.positive_label!r}; labels: {label_counts}")
    if len(label_counts) < 2:
        raise QualityModelError(f"training needs at least two labels, got {label_counts}")
    held = _split(groups, fraction=cfg.holdout_fraction, seed=cfg.seed)
    if held.all():
        raise QualityModelError("every row is held out; lower holdout_fraction or add rows")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quality-train-", dir=out.parent) as tmp:
        train_path = Path(tmp) / "train.txt"
        with open(train_path, "w", encoding="utf-8") as fh:
            for line, lab, is_held in zip(lines.to_list(), labels, held):
                if not is_held:
                    fh.write(f"{LABEL_PREFIX}{lab} {line}\n")
        params = dict(input=str(train_path), epoch=cfg.epochs, lr=cfg.lr, wordNgrams=cfg.word_ngrams, dim=cfg.dim,
                      minCount=cfg.min_count, bucket=cfg.bucket, loss="softmax", thread=1, seed=cfg.seed, verbose=0)
        model = fasttext_new.train_supervised(**params)
        if cfg.quantize:
            model.quantize(input=str(train_path), retrain=False, qnorm=True)
        tmp_model = Path(tmp) / "model.bin"
        model.save_model(str(tmp_model))
        os.replace(tmp_model, out)
    _load_model.cache_clear()

    held_lines = [ln for ln, h in zip(lines.to_list(), held) if h]
    held_true = [lab for lab, h in zip(labels, held) if h]
    held_scores = np.zeros(len(held_lines))
    accuracy = precision = recall = f1 = None
    if held_lines:
        top, held_scores = _predict(model, held_lines, positive=cfg.positive_label, threads=1)
        correct = sum(t == p for t, p in zip(held_true, top))
        tp = sum(t == cfg.positive_label and p == cfg.positive_label for t, p in zip(held_true, top))
        pred_pos = sum(p == cfg.positive_label for p in top)
        true_pos = sum(t == cfg.positive_label for t in held_true)
        accuracy = correct / len(held_true)
        precision = tp / pred_pos if pred_pos else None
        recall = tp / true_pos if true_pos else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    report = QualityTrainReport(
        model_path=str(out),
        sidecar_path=str(out) + SIDECAR_SUFFIX,
        model_sha256=file_sha256(out),
        positive_label=cfg.positive_label,
        labels=label_counts,
        n_train=int((~held).sum()),
        n_heldout=int(held.sum()),
        skipped=skipped,
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        params={k: v for k, v in cfg.model_dump().items()},
        seconds=time.perf_counter() - start,
    )
    sidecar = {"positive_label": cfg.positive_label, "max_chars": cfg.max_chars, "lowercase": cfg.lowercase,
               "labels": sorted(label_counts), "report": report.model_dump()}
    Path(report.sidecar_path).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("quality classifier %s: %d train, %d held out, accuracy %s", out, report.n_train,
             report.n_heldout, f"{accuracy:.3f}" if accuracy is not None else "n/a")
    return report, held, held_scores


def train_quality_classifier(
    *,
    train_jsonl: Sequence[PathLike],
    output: PathLike,
    text_field: str = "text",
    label_field: str = "label",
    positive_label: str = HQ_LABEL,
    group_field: str | None = None,
    holdout_fraction: float = 0.2,
    epochs: int = 20,
    lr: float = 0.5,
    word_ngrams: int = 2,
    dim: int = 64,
    min_count: int = 1,
    bucket: int = 200_000,
    max_chars: int | None = 10_000,
    lowercase: bool = False,
    quantize: bool = False,
    seed: int = 0,
) -> QualityTrainReport:
    """Train a fastText classifier on labelled JSONL (.jsonl or .jsonl.gz) and write it to `output`.

    Each record needs `text_field` and `label_field` (any JSON scalar; `positive_label` is
    the high-quality one). Rows without either are skipped and counted. A seeded share of
    rows (of groups, with `group_field`) is held out for accuracy, precision and recall;
    the written model is the one those metrics measure. `<output>.json` keeps the report
    and the text rule that scoring must repeat.
    """
    cfg = QualityTrainConfig(
        text_field=text_field, label_field=label_field, positive_label=positive_label, group_field=group_field,
        holdout_fraction=holdout_fraction, epochs=epochs, lr=lr, word_ngrams=word_ngrams, dim=dim,
        min_count=min_count, bucket=bucket, max_chars=max_chars, lowercase=lowercase, quantize=quantize, seed=seed)
    if not train_jsonl:
        raise QualityModelError("train_jsonl names no file")
    texts: list[str] = []
    labels: list[str] = []
    groups: list[Any] = []
    skipped = {"bad_json": 0, "no_text": 0, "no_label": 0}
    for i, rec in enumerate(_read_jsonl(train_jsonl)):
        if rec is None:
            skipped["bad_json"] += 1
            continue
        text = rec.get(text_field)
        label = rec.get(label_field)
        if not isinstance(text, str) or not text.strip():
            skipped["no_text"] += 1
            continue
        if label is None or isinstance(label, (dict, list)) or not _label_token(label):
            skipped["no_label"] += 1
            continue
        texts.append(text)
        labels.append(_label_token(label))
        groups.append(rec.get(group_field) if group_field else i)
    if not texts:
        raise QualityModelError(f"no usable rows in {[str(p) for p in train_jsonl]}: skipped {skipped}")
    report, _, _ = _train_records(texts, labels, groups, output=output, cfg=cfg, skipped=skipped)
    return report


# scoring -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ModelInfo:
    positive_label: str | None
    max_chars: int | None
    lowercase: bool


def _model_info(model_path: Path) -> _ModelInfo:
    sidecar = Path(str(model_path) + SIDECAR_SUFFIX)
    if not sidecar.exists():  # a model trained elsewhere: whole texts, as they are
        return _ModelInfo(positive_label=None, max_chars=None, lowercase=False)
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    return _ModelInfo(positive_label=data.get("positive_label"), max_chars=data.get("max_chars"),
                      lowercase=bool(data.get("lowercase", False)))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> Any:
    import fasttext_new

    return fasttext_new.load_model(path)


class _LoadModel:
    """Load a model once per process and file version (path, mtime, size)."""

    def __call__(self, path: Path) -> Any:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise QualityModelError(f"quality model file not found: {path}") from None
        return _load_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)

    def cache_clear(self) -> None:
        _load_cached.cache_clear()


_load_model = _LoadModel()


def _predict(model: Any, lines: list[str], *, positive: str, threads: int) -> tuple[list[str], np.ndarray]:
    """Top label and P(positive) per line. A line without tokens gets no label and score 0:
    fastText would otherwise answer from the end-of-line token alone."""
    target = LABEL_PREFIX + positive
    scores = np.zeros(len(lines), dtype=np.float64)
    top = [""] * len(lines)
    idx = [i for i, ln in enumerate(lines) if ln]
    if idx:
        labs, probs = model.predict_batch([lines[i] for i in idx], k=-1, threads=threads)
        for i, ls, ps in zip(idx, labs, probs):
            top[i] = ls[0][len(LABEL_PREFIX):] if ls else ""
            for lab, p in zip(ls, ps):
                if lab == target:
                    scores[i] = min(1.0, max(0.0, float(p)))  # fastText's softmax adds 1e-5
                    break
    return top, scores


def score_quality(
    texts: pl.Series,
    *,
    model_path: PathLike,
    positive_label: str | None = None,
    batch_size: int = 10_000,
    threads: int = 1,
) -> pl.Series:
    """Probability of the positive ("high quality") label for each text, as Float64 named
    `quality_score`; null text gives null, text without tokens 0.0.

    The text rule (max_chars, lowercase) and the positive label come from `<model>.json`;
    a model without one (trained elsewhere) reads whole texts and needs `positive_label`.
    """
    path = Path(model_path)
    model = _load_model(path)
    info = _model_info(path)
    positive = positive_label or info.positive_label
    if positive is None:
        raise QualityModelError(f"{path} has no {SIDECAR_SUFFIX} sidecar: pass positive_label")
    if LABEL_PREFIX + positive not in model.get_labels():
        raise QualityModelError(f"{path} has no label {positive!r}; its labels: {model.get_labels()}")
    lines = fasttext_lines(texts, max_chars=info.max_chars, lowercase=info.lowercase)
    out = np.zeros(len(lines), dtype=np.float64)
    for offset in range(0, len(lines), batch_size):
        chunk = lines.slice(offset, batch_size).fill_null("").to_list()
        _, out[offset:offset + len(chunk)] = _predict(model, chunk, positive=positive, threads=threads)
    frame = pl.DataFrame({"text": texts, "score": out})
    return frame.select(pl.when(pl.col("text").is_null()).then(None).otherwise(pl.col("score"))
                        .alias("quality_score")).to_series()


# decisions -----------------------------------------------------------------------------------
def top_percent_cutoff(scores: pl.Series | np.ndarray | Sequence[float], *, top_percent: float) -> float:
    """The score of the k-th best document, k = ceil(top_percent% of the non-null scores).

    Keeping `score >= cutoff` keeps the top k, plus any documents tied with the k-th.
    Exact, but needs every score in memory: over a large crawl use `ScoreHistogram`.
    """
    if not 0 < top_percent <= 100:
        raise QualityModelError(f"top_percent must be in (0, 100], got {top_percent}")
    arr = pl.Series(scores, dtype=pl.Float64).drop_nulls().drop_nans().to_numpy()
    if arr.size == 0:
        raise QualityModelError("no scores to compute a cutoff from")
    k = max(1, math.ceil(arr.size * top_percent / 100 - 1e-9))
    return float(np.partition(arr, arr.size - k)[arr.size - k])


@dataclass(eq=False)
class ScoreHistogram:
    """Counts of scores in fixed bins on [0, 1]: mergeable across parts and workers, so the
    top-percent cutoff of a whole crawl comes from one scoring pass in bounded memory.

    Its cutoff is a bin edge: keeping `score >= cutoff` keeps at least top_percent%, and
    at most one bin's documents (a 1/bins score range) more.
    """

    bins: int = 10_000
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)
        self._edges = np.linspace(0.0, 1.0, self.bins + 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def update(self, scores: pl.Series | np.ndarray | Sequence[float]) -> ScoreHistogram:
        arr = pl.Series(scores, dtype=pl.Float64).drop_nulls().drop_nans().to_numpy()
        idx = np.clip(np.searchsorted(self._edges, arr, side="right") - 1, 0, self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)
        return self

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        if other.bins != self.bins:
            raise QualityModelError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        return ScoreHistogram(bins=self.bins, counts=self.counts + other.counts)

    def cutoff(self, *, top_percent: float) -> float:
        if not 0 < top_percent <= 100:
            raise QualityModelError(f"top_percent must be in (0, 100], got {top_percent}")
        total = self.total
        if total == 0:
            raise QualityModelError("no scores to compute a cutoff from")
        k = max(1, math.ceil(total * top_percent / 100 - 1e-9))
        from_top = np.cumsum(self.counts[::-1])
        i = self.bins - 1 - int(np.searchsorted(from_top, k))
        return float(self._edges[i])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (sparse), e.g. for a manifest's statistics."""
        nz = np.nonzero(self.counts)[0]
        return {"bins": self.bins, "index": nz.tolist(), "counts": self.counts[nz].tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreHistogram:
        counts = np.zeros(int(data["bins"]), dtype=np.int64)
        counts[np.asarray(data["index"], dtype=np.int64)] = np.asarray(data["counts"], dtype=np.int64)
        return cls(bins=int(data["bins"]), counts=counts)


def quality_keep(scores: pl.Series, *, cutoff: float) -> pl.Series:
    """True where score >= cutoff; a null score is never kept."""
    return (scores >= cutoff).fill_null(False).alias("quality_keep")


def quality_decisions(scores: pl.Series, config: QualityModelConfig, *, cutoff: float | None = None) -> pl.Series:
    """Keep mask under the config's rule. With `top_percent`, pass the crawl-wide `cutoff`
    (from `ScoreHistogram` or `top_percent_cutoff` over every part's scores) when `scores`
    is one part of many; without it the cutoff is computed over `scores` alone."""
    if config.threshold is not None:
        return quality_keep(scores, cutoff=config.threshold)
    assert config.top_percent is not None
    if cutoff is None:
        cutoff = top_percent_cutoff(scores, top_percent=config.top_percent)
    return quality_keep(scores, cutoff=cutoff)


# LLM grading -----------------------------------------------------------------------------------
EDU_PROMPT_TEMPLATE = """\
Below is an extract from a web page. Judge how useful it would be for teaching, from \
primary school to the first years of university, on the additive 0 to 5 scale below. \
Start from 0 and add one point for each statement that holds:

- +1 if the extract gives some information on a topic that is taught, even when it also \
holds advertising, navigation or other unrelated material.
- +1 if it treats part of such a topic in coherent prose, even when it is incomplete or \
wanders off topic.
- +1 if it explains key ideas clearly enough for a school lesson or an introductory \
course, like the start of a textbook chapter or a good tutorial.
- +1 if it is focused, well organised and could be used as a lesson almost as it is, with \
little that distracts from it.
- +1 if it is outstanding teaching material: accurate, with clear reasoning, steps or \
worked examples, and nothing that distracts.

An extract that is mostly menus, links, advertising, sign-up or cookie notices, or that \
carries no information, scores 0.

Extract:
<<<
{document}
>>>

Answer with the line "Educational score: N", where N is a whole number from 0 to 5, \
then one short sentence saying why."""

#: GBNF grammar that makes a llama.cpp model answer EDU_PROMPT_TEMPLATE with the score line
#: only: `extra_body={"grammar": EDU_SCORE_GRAMMAR}` (server) or `grammar=` (in-process).
#: Small models often ignore the format; constrained decoding makes every complete reply parse.
EDU_SCORE_GRAMMAR = 'root ::= "Educational score: " [0-5]'

_NUM = r"(\d+(?:\.\d+)?|zero|one|two|three|four|five)"
_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_GRADE_PATTERNS = [
    re.compile(r"educational\s+(?:value\s+)?score\W{0,6}" + _NUM, re.IGNORECASE),
    re.compile(r"\b(?:score|grade|rating|points?)\b\W{0,6}(?:is\s+|of\s+)?" + _NUM, re.IGNORECASE),
    re.compile(_NUM + r"\s*(?:/\s*5|out\s+of\s+(?:5|five))\b", re.IGNORECASE),
    re.compile(r"^\W*" + _NUM + r"\W*$", re.IGNORECASE),
]


def parse_grade(reply: str | None, *, max_grade: int = 5) -> int | None:
    """The grade in an LLM reply, or None: the last "Educational score: N" if any, else the
    last "score/grade ... N", "N/5", "N out of 5", or a bare number. A number outside
    0..max_grade, or not whole ("3.5"), is no grade."""
    if not reply:
        return None
    for pattern in _GRADE_PATTERNS:
        matches = pattern.findall(reply.strip())
        if matches:
            token = matches[-1].lower()
            if token in _WORDS:
                value = float(_WORDS[token])
            else:
                value = float(token)
            if not value.is_integer() or not 0 <= value <= max_grade:
                return None
            return int(value)
    return None


def _prompt(template: str, text: str, max_chars: int) -> str:
    return template.replace("{document}", text[:max_chars].strip())


def grade_documents_detailed(
    texts: Sequence[str],
    *,
    backend: LLMBackend,
    prompt_template: str = EDU_PROMPT_TEMPLATE,
    max_chars: int = 2000,
    max_grade: int = 5,
    system: str | None = None,
) -> GradingResult:
    """Grade each text with the LLM (batched by the backend); failures and replies without a
    grade become None and are counted, never raised, so one bad reply does not stop a run.

    Texts are cut to `max_chars` so that prompt and reply fit a small model's context.
    """
    if "{document}" not in prompt_template:
        raise QualityModelError("prompt_template has no {document} placeholder")
    start = time.perf_counter()
    prompts = [_prompt(prompt_template, t, max_chars) for t in texts]
    results = backend.generate_batch(prompts, system=system, errors="return")
    grades: list[int | None] = []
    replies: list[str | None] = []
    errors: list[str | None] = []
    unparseable = failed = 0
    for i, res in enumerate(results):
        if isinstance(res, BackendError):
            failed += 1
            if failed <= 5:
                log.warning("grading text %d failed: %s", i, res)
            grades.append(None)
            replies.append(None)
            errors.append(str(res))
            continue
        assert isinstance(res, Completion)
        grade = parse_grade(res.text, max_grade=max_grade)
        if grade is None:
            unparseable += 1
        grades.append(grade)
        replies.append(res.text)
        errors.append(None)
    seconds = time.perf_counter() - start
    result = GradingResult(grades=grades, replies=replies, errors=errors, unparseable=unparseable, failed=failed,
                           seconds=seconds, docs_per_second=len(texts) / seconds if seconds > 0 else 0.0,
                           model_name=backend.model_name)
    log.info("graded %d texts with %s in %.1fs: %d unparseable, %d failed", len(texts), backend.model_name,
             seconds, unparseable, failed)
    return result


def grade_documents(
    texts: Sequence[str],
    *,
    backend: LLMBackend,
    prompt_template: str = EDU_PROMPT_TEMPLATE,
    max_chars: int = 2000,
    max_grade: int = 5,
    system: str | None = None,
) -> list[int | None]:
    """Educational-value grades 0..max_grade, None where the LLM gave none (see
    `grade_documents_detailed` for the replies and counts)."""
    return grade_documents_detailed(texts, backend=backend, prompt_template=prompt_template, max_chars=max_chars,
                                    max_grade=max_grade, system=system).grades


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    return None if rho is None or np.isnan(rho) else float(rho)


def distill(
    sample_texts: Sequence[str] | pl.Series,
    *,
    backend: LLMBackend,
    output: PathLike,
    sample_size: int | None = None,
    min_grade: int = 3,
    seed: int = 0,
    prompt_template: str = EDU_PROMPT_TEMPLATE,
    max_chars: int = 2000,
    max_grade: int = 5,
    train: QualityTrainConfig | None = None,
) -> DistillReport:
    """LLM-graded distillation: grade a seeded sample, label grade >= `min_grade` as
    high quality, train the fastText classifier on those labels, and measure how well it
    reproduces the LLM on held-out graded rows. Score the crawl with `score_quality(...,
    model_path=output)` afterwards.

    Grades, labels and replies are kept in `<output>.grades.jsonl` for audit and retraining.
    Raises `QualityModelError` when the grades give only one label (nothing to learn).
    """
    train_cfg = train or QualityTrainConfig()
    texts = [t for t in (sample_texts.to_list() if isinstance(sample_texts, pl.Series) else list(sample_texts))
             if isinstance(t, str) and t.strip()]
    n_texts = len(texts)
    if sample_size is not None and sample_size < n_texts:
        picked = sorted(random.Random(seed).sample(range(n_texts), sample_size))
        texts = [texts[i] for i in picked]
    graded = grade_documents_detailed(texts, backend=backend, prompt_template=prompt_template,
                                      max_chars=max_chars, max_grade=max_grade)
    grade_counts: dict[int, int] = {}
    for g in graded.grades:
        if g is not None:
            grade_counts[g] = grade_counts.get(g, 0) + 1
    grades_path = Path(str(output) + ".grades.jsonl")
    grades_path.parent.mkdir(parents=True, exist_ok=True)
    rows_text: list[str] = []
    rows_label: list[str] = []
    rows_grade: list[int] = []
    with open(grades_path, "w", encoding="utf-8") as fh:
        for i, (text, grade, reply, error) in enumerate(zip(texts, graded.grades, graded.replies, graded.errors)):
            label = None if grade is None else (HQ_LABEL if grade >= min_grade else LQ_LABEL)
            fh.write(json.dumps({"row": i, "grade": grade, "label": label, "reply": reply, "error": error,
                                 "text": text}, ensure_ascii=False) + "\n")
            if label is not None:
                rows_text.append(text)
                rows_label.append(label)
                rows_grade.append(grade)  # type: ignore[arg-type]
    labels_present = set(rows_label)
    if labels_present != {HQ_LABEL, LQ_LABEL}:
        raise QualityModelError(
            f"grades {dict(sorted(grade_counts.items()))} at min_grade={min_grade} give only "
            f"{sorted(labels_present) or 'no'} labels: grade more or other texts, or change min_grade")
    cfg = train_cfg.model_copy(update={"positive_label": HQ_LABEL})
    report, held, held_scores = _train_records(rows_text, rows_label, list(range(len(rows_text))), output=output,
                                               cfg=cfg, skipped={"ungraded": len(texts) - len(rows_text)})
    held_grades = np.array([g for g, h in zip(rows_grade, held) if h], dtype=np.float64)
    by_grade: dict[int, float] = {}
    for g in sorted({int(x) for x in held_grades}):
        by_grade[g] = float(held_scores[held_grades == g].mean())
    return DistillReport(
        n_texts=n_texts,
        n_sampled=len(texts),
        n_graded=len(rows_text),
        unparseable=graded.unparseable,
        failed=graded.failed,
        grade_counts=dict(sorted(grade_counts.items())),
        min_grade=min_grade,
        grading_seconds=graded.seconds,
        grading_docs_per_second=graded.docs_per_second,
        grader_model=graded.model_name,
        grades_path=str(grades_path),
        train=report,
        heldout_agreement=report.accuracy,
        heldout_spearman=_spearman(held_scores, held_grades),
        heldout_mean_score_by_grade=by_grade,
    )
