"""Model-based quality: fastText training and scoring, threshold / top-percent decisions,
LLM grading and distillation, and the OpenAI-compatible backend's retries and timeouts.

Servers are real sockets on 127.0.0.1: llama.cpp with SmolLM2-135M (`llm_server`) and a
scripted chat-completions server for failure modes the real model cannot be made to show.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError


from llm_server import ScriptedServer, free_port, smollm2_gguf  # noqa: E402
from textmill.filters.quality_model import (
    QualityModelConfig,
    QualityModelError,
    QualityTrainConfig,
    ScoreHistogram,
    distill,
    fasttext_lines,
    grade_documents,
    grade_documents_detailed,
    parse_grade,
    quality_decisions,
    score_quality,
    top_percent_cutoff,
    train_quality_classifier,
)
from textmill.rewrite import (
    BackendError,
    BackendTimeout,
    LLMBackend,
    OpenAIBackend,
    OpenAIBackendConfig,
    make_backend,
)

pytest_plugins = ["llm_server"]  # the session-scoped `llm_server` fixture

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "quality" / "labelled.jsonl.gz"
# Small model settings: the sample has ~650 rows; the test model is a few MB.
SMALL = dict(bucket=50_000, dim=32, epochs=15)


def _rows() -> list[dict]:
    return [json.loads(line) for line in gzip.open(SAMPLE, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("quality") / "quality.bin"
    report = train_quality_classifier(train_jsonl=[SAMPLE], output=out, group_field="page", seed=1, **SMALL)
    return report


# training --------------------------------------------------------------------------------
def test_classifier_separates_held_out_pages(trained) -> None:
    r = trained
    # The split is by page: no held-out page contributed a training row.
    assert r.n_heldout >= 100 and r.n_train >= 400
    assert r.labels.keys() == {"hq", "lq"}
    assert r.accuracy is not None and r.accuracy >= 0.9, r
    assert r.precision >= 0.85 and r.recall >= 0.85, r
    sidecar = json.loads(Path(r.sidecar_path).read_text())
    assert sidecar["positive_label"] == "hq" and sidecar["max_chars"] == 10_000
    assert sidecar["report"]["model_sha256"] == hashlib.sha256(Path(r.model_path).read_bytes()).hexdigest()


def test_scores_rank_articles_above_boilerplate(trained) -> None:
    rows = _rows()
    hq = pl.Series([r["text"] for r in rows if r["label"] == "hq"])
    lq = pl.Series([r["text"] for r in rows if r["label"] == "lq"])
    s_hq = score_quality(hq, model_path=trained.model_path)
    s_lq = score_quality(lq, model_path=trained.model_path)
    assert s_hq.median() > 0.8 and s_lq.median() < 0.2
    # Spam-like text the sample does not contain still reads as low quality.
    spam = pl.Series(["Click here!!! Subscribe now Login | Register | Home | Contact Us | Privacy Policy "
                      "| Terms of Use | Cookie Settings | Follow us on Facebook Twitter Instagram"])
    assert score_quality(spam, model_path=trained.model_path)[0] < 0.5


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_quality_classifier(train_jsonl=[SAMPLE], output=tmp_path / "a.bin", seed=7, **SMALL)
    b = train_quality_classifier(train_jsonl=[SAMPLE], output=tmp_path / "b.bin", seed=7, **SMALL)
    c = train_quality_classifier(train_jsonl=[SAMPLE], output=tmp_path / "c.bin", seed=8, **SMALL)
    assert a.model_sha256 == b.model_sha256
    assert a.accuracy == b.accuracy and a.n_heldout == b.n_heldout
    assert c.model_sha256 != a.model_sha256  # the seed is really used (init and split)


def test_training_counts_bad_rows_and_rejects_one_label(tmp_path: Path) -> None:
    rows = _rows()[:40] + _rows()[-40:]
    path = tmp_path / "train.jsonl"
    with open(path, "w") as fh:
        fh.writelines(json.dumps({"body": r["text"], "quality": 1 if r["label"] == "hq" else 0}) + "\n" for r in rows)
        fh.write("{not json\n")
        fh.write(json.dumps({"body": "", "quality": 1}) + "\n")
        fh.write(json.dumps({"body": "text without a label"}) + "\n")
    report = train_quality_classifier(train_jsonl=[path], output=tmp_path / "m.bin", text_field="body",
                                      label_field="quality", positive_label="1", **SMALL)
    assert report.skipped == {"bad_json": 1, "no_text": 1, "no_label": 1}
    assert report.labels == {"1": sum(r["label"] == "hq" for r in rows), "0": sum(r["label"] == "lq" for r in rows)}
    with pytest.raises(QualityModelError, match="positive label 'hq'"):
        train_quality_classifier(train_jsonl=[path], output=tmp_path / "x.bin", text_field="body",
                                 label_field="quality", **SMALL)
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": r["text"], "label": "hq"}) + "\n" for r in rows[:10]))
    with pytest.raises(QualityModelError, match="at least two labels"):
        train_quality_classifier(train_jsonl=[one], output=tmp_path / "y.bin", **SMALL)


# scoring -----------------------------------------------------------------------------------
def test_score_quality_handles_nulls_newlines_and_batches(trained) -> None:
    rows = _rows()
    texts = pl.Series([r["text"] for r in rows[:25]] + [None, "", " \n\t ", "line one\nline two\r\nthree"])
    full = score_quality(texts, model_path=trained.model_path)
    small = score_quality(texts, model_path=trained.model_path, batch_size=4)
    assert full.name == "quality_score" and full.dtype == pl.Float64 and len(full) == len(texts)
    assert full.equals(small)  # batching does not change scores
    assert full[25] is None and full[26] == 0.0 and full[27] == 0.0
    assert 0.0 < full[28] < 1.0
    assert full.drop_nulls().is_between(0.0, 1.0).all()
    # The multi-line text scores as its single-line form.
    assert fasttext_lines(pl.Series(["a\nb\u2028c\td  "]))[0] == "a b c d"


def test_score_quality_errors_are_clear(trained, tmp_path: Path) -> None:
    with pytest.raises(QualityModelError, match="not found"):
        score_quality(pl.Series(["x"]), model_path=tmp_path / "missing.bin")
    with pytest.raises(QualityModelError, match="no label 'great'"):
        score_quality(pl.Series(["x"]), model_path=trained.model_path, positive_label="great")


# decisions ---------------------------------------------------------------------------------
def test_quality_model_config_needs_exactly_one_rule() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        QualityModelConfig(model_path="m.bin")
    with pytest.raises(ValidationError, match="exactly one"):
        QualityModelConfig(model_path="m.bin", threshold=0.5, top_percent=10)
    with pytest.raises(ValidationError):
        QualityModelConfig(model_path="m.bin", top_percent=0)
    with pytest.raises(ValidationError):
        QualityModelConfig(model_path="m.bin", threshold=0.5, thresh=1)  # extra="forbid"
    cfg = QualityModelConfig(model_path="m.bin", threshold=0.5)
    with pytest.raises(ValidationError):
        cfg.threshold = 0.2  # type: ignore[misc]  # frozen


def test_threshold_and_top_percent_decisions() -> None:
    scores = pl.Series([0.05, 0.9, None, 0.5, 0.7, 0.3, 0.5, 0.99, 0.1, 0.6, 0.2])
    keep = quality_decisions(scores, QualityModelConfig(model_path="m", threshold=0.5))
    assert keep.to_list() == [False, True, False, True, True, False, True, True, False, True, False]
    # 10 non-null scores, top 30% = 3 documents: 0.99, 0.9, 0.7.
    top = quality_decisions(scores, QualityModelConfig(model_path="m", top_percent=30))
    assert top.to_list() == [False, True, False, False, True, False, False, True, False, False, False]
    # A tie at the cutoff keeps both tied documents (top 50% = 5th best = 0.5, twice).
    assert top_percent_cutoff(scores, top_percent=50) == 0.5
    assert quality_decisions(scores, QualityModelConfig(model_path="m", top_percent=50)).sum() == 6
    assert top_percent_cutoff(scores, top_percent=100) == 0.05
    assert top_percent_cutoff([0.2, 0.4], top_percent=0.1) == 0.4  # at least one document


def test_top_percent_across_parts_uses_crawl_wide_cutoff() -> None:
    rng = np.random.default_rng(0)
    # Two parts of one crawl with different score distributions.
    part_a = pl.Series(rng.beta(2, 5, 40_000))
    part_b = pl.Series(rng.beta(5, 2, 60_000))
    cfg = QualityModelConfig(model_path="m", top_percent=10)
    # Pass 1: each part's histogram (e.g. in its worker), merged.
    hist = ScoreHistogram().update(part_a).merge(ScoreHistogram().update(part_b))
    hist = ScoreHistogram.from_dict(json.loads(json.dumps(hist.to_dict())))  # survives a manifest
    assert hist.total == 100_000
    cutoff = hist.cutoff(top_percent=10)
    exact = top_percent_cutoff(pl.concat([part_a, part_b]), top_percent=10)
    assert exact - 1e-4 <= cutoff <= exact
    # Pass 2: each part decides with the crawl-wide cutoff.
    kept = int(quality_decisions(part_a, cfg, cutoff=cutoff).sum() + quality_decisions(part_b, cfg, cutoff=cutoff).sum())
    assert 10_000 <= kept <= 10_000 + int(hist.counts.max())
    # Per-part cutoffs would keep 10% of each part instead: not the crawl's top 10%.
    per_part = int(quality_decisions(part_a, cfg).sum())
    assert per_part == 4_000 and int(quality_decisions(part_a, cfg, cutoff=cutoff).sum()) < 500


# grade parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize("reply, grade", [
    ("The extract explains photosynthesis well.\nEducational score: 4", 4),
    ("Educational score: 2\n\nOn reflection... Educational score: 3", 3),
    ("**Educational Score:** 5", 5),
    ("Score: 1/5", 1),
    ("I would rate this 2 out of 5.", 2),
    ("3", 3),
    ("The score is three.", 3),
    ("Educational score: 7", None),
    ("Educational score: 3.5", None),
    ("This page is a list of links.", None),
    ("", None),
    (None, None),
])
def test_parse_grade(reply: str | None, grade: int | None) -> None:
    assert parse_grade(reply) == grade


# backend and grading against a scripted server ---------------------------------------------
def _backend(url: str, **kw) -> OpenAIBackend:
    cfg = OpenAIBackendConfig(base_url=url, model="scripted", backoff_s=0.01, **kw)
    backend = make_backend(cfg)
    assert isinstance(backend, OpenAIBackend) and isinstance(backend, LLMBackend)
    return backend


def test_backend_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        OpenAIBackendConfig(base_url="127.0.0.1:8080/v1")
    with pytest.raises(ValidationError):
        OpenAIBackendConfig(base_url="http://h/v1", temprature=0.2)  # extra="forbid"
    cfg = OpenAIBackendConfig(base_url="http://h/v1/")
    assert cfg.base_url == "http://h/v1"
    with pytest.raises(ValidationError):
        cfg.model = "other"  # type: ignore[misc]


def test_backend_retries_server_errors_then_succeeds() -> None:
    with ScriptedServer(reply=lambda p: f"echo {p}", fail_first=2, fail_status=503) as server:
        backend = _backend(server.base_url, max_retries=3, seed=11, temperature=0.3, max_tokens=17)
        out = backend.generate("hello", system="be brief")
        assert out.text == "echo hello" and out.attempts == 3 and server.requests == 3
        body = server.bodies[-1]
        assert body["seed"] == 11 and body["temperature"] == 0.3 and body["max_tokens"] == 17
        assert body["messages"][0] == {"role": "system", "content": "be brief"}


def test_backend_gives_up_after_max_retries() -> None:
    with ScriptedServer(fail_first=100, fail_status=500) as server:
        backend = _backend(server.base_url, max_retries=2)
        with pytest.raises(BackendError, match="failed after 3 attempt") as info:
            backend.generate("x")
        assert info.value.status == 500 and info.value.attempts == 3 and server.requests == 3


def test_backend_does_not_retry_a_bad_request() -> None:
    with ScriptedServer(fail_first=100, fail_status=400) as server:
        backend = _backend(server.base_url, max_retries=3)
        with pytest.raises(BackendError, match="HTTP 400") as info:
            backend.generate("x")
        assert info.value.attempts == 1 and server.requests == 1


def test_backend_timeout_is_a_clear_error() -> None:
    with ScriptedServer(delay_s=3.0) as server:
        backend = _backend(server.base_url, timeout_s=0.3, max_retries=1)
        start = time.perf_counter()
        with pytest.raises(BackendTimeout, match=r"no reply within timeout_s=0.3 on 2 attempt"):
            backend.generate("x")
        assert time.perf_counter() - start < 2.0
        assert server.requests == 2


def test_backend_connection_refused_is_an_error() -> None:
    backend = _backend(f"http://127.0.0.1:{_closed_port()}/v1", max_retries=1)
    with pytest.raises(BackendError, match="failed after 2 attempt"):
        backend.generate("x")


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def test_generate_batch_keeps_order_and_bounds_concurrency() -> None:
    with ScriptedServer(reply=lambda p: p.upper(), delay_s=0.15) as server:
        backend = _backend(server.base_url, concurrency=3)
        prompts = [f"prompt {i}" for i in range(10)]
        out = backend.generate_batch(prompts)
        assert [c.text for c in out] == [p.upper() for p in prompts]
        assert 2 <= server.max_in_flight <= 3


def test_generate_batch_returns_or_raises_errors() -> None:
    with ScriptedServer(reply=lambda p: "fine", fail_first=1, fail_status=400) as server:
        backend = _backend(server.base_url, concurrency=1, max_retries=0)
        out = backend.generate_batch(["a", "b", "c"], errors="return")
        assert isinstance(out[0], BackendError) and [c.text for c in out[1:]] == ["fine", "fine"]
    with ScriptedServer(fail_first=1, fail_status=400) as server:
        backend = _backend(server.base_url, concurrency=1, max_retries=0)
        with pytest.raises(BackendError):
            backend.generate_batch(["a", "b", "c"])


def test_grading_counts_unparseable_and_failed_replies() -> None:
    script = {"doc-a": "Clear lesson on fractions.\nEducational score: 4",
              "doc-b": "I cannot judge this.",
              "doc-c": "Educational score: 9",
              "doc-d": "Score: 0"}

    def reply(prompt: str) -> str:
        return next(v for k, v in script.items() if k in prompt)

    with ScriptedServer(reply=reply, fail_first=1, fail_status=400) as server:
        backend = _backend(server.base_url, concurrency=1, max_retries=0)
        result = grade_documents_detailed(["doc-x", "doc-a", "doc-b", "doc-c", "doc-d"], backend=backend)
        assert result.grades == [None, 4, None, None, 0]
        assert result.failed == 1 and result.unparseable == 2
        assert result.replies[2] == "I cannot judge this."
        assert "HTTP 400" in result.errors[0] and result.errors[1:] == [None] * 4
        assert "doc-a" in server.bodies[1]["messages"][-1]["content"]
        assert "Educational score: N" in server.bodies[1]["messages"][-1]["content"]
    with pytest.raises(QualityModelError, match="placeholder"):
        grade_documents(["x"], backend=backend, prompt_template="Rate this.")


def test_distill_with_scripted_grades(tmp_path: Path) -> None:
    """The distillation pipeline with a grader whose grades are known: articles 4, boilerplate 1."""
    rows = _rows()
    texts = [r["text"] for r in rows]
    by_start = {r["text"].strip()[:200]: r["label"] for r in rows}

    def reply(prompt: str) -> str:
        doc = prompt.split("<<<\n", 1)[1]
        label = by_start[doc[:200]]
        return "Educational score: 4" if label == "hq" else "Mostly links. Educational score: 1"

    with ScriptedServer(reply=reply) as server:
        backend = _backend(server.base_url, concurrency=4)
        report = distill(texts, backend=backend, output=tmp_path / "distilled.bin", sample_size=300, seed=3,
                         train=QualityTrainConfig(**SMALL))
    assert report.n_texts == len(texts) and report.n_sampled == 300 == report.n_graded
    assert report.unparseable == 0 and report.failed == 0
    assert set(report.grade_counts) == {1, 4} and sum(report.grade_counts.values()) == 300
    assert report.heldout_agreement is not None and report.heldout_agreement >= 0.85
    assert report.heldout_spearman is not None and report.heldout_spearman > 0.6
    assert report.heldout_mean_score_by_grade[4] > report.heldout_mean_score_by_grade[1]
    graded = [json.loads(line) for line in open(report.grades_path)]
    assert len(graded) == 300 and {g["label"] for g in graded} == {"hq", "lq"}
    scores = score_quality(pl.Series(texts[:5]), model_path=report.train.model_path)
    assert scores.is_between(0, 1).all()


# the real LLM ---------------------------------------------------------------------------------
def _mixed_texts(n_each: int) -> list[str]:
    rows = _rows()
    hq = [r["text"] for r in rows if r["label"] == "hq"][:n_each]
    lq = [r["text"] for r in rows if r["label"] == "lq"][:n_each]
    return [t for pair in zip(hq, lq) for t in pair]


def _smollm2(url: str, **kw) -> OpenAIBackend:
    cfg = OpenAIBackendConfig(base_url=url, model="smollm2-135m", timeout_s=120, max_retries=1, concurrency=2, **kw)
    return make_backend(cfg)  # type: ignore[return-value]


@pytest.mark.slow
def test_llm_grading_with_llama_cpp_server(llm_server: str) -> None:
    """Free-form replies of the real 135M model: most ignore the format. Every reply is kept,
    every grade is in range or None, and the Nones are counted as unparseable."""
    backend = _smollm2(llm_server, max_tokens=24, seed=0)
    assert backend.models() == ["smollm2-135m"]
    texts = _mixed_texts(2)
    result = grade_documents_detailed(texts, backend=backend, max_chars=400)
    assert result.failed == 0 and len(result.grades) == len(texts)
    assert all(isinstance(r, str) and r.strip() for r in result.replies)
    assert all(g is None or 0 <= g <= 5 for g in result.grades)
    assert result.unparseable == sum(g is None for g in result.grades)
    assert [parse_grade(r) for r in result.replies] == result.grades
    assert result.model_name == "smollm2-135m" and result.docs_per_second > 0
    # Greedy decoding with a seed: the same prompt gives the same reply.
    again = grade_documents_detailed(texts[:1], backend=backend, max_chars=400)
    assert again.replies == result.replies[:1]


@pytest.mark.slow
def test_distill_with_llama_cpp_server(llm_server: str, tmp_path: Path) -> None:
    """LLM-graded distillation end to end with the real model: grammar-constrained replies
    (the score line only), sampled at temperature 1 with a seed so the tiny model's grades
    spread over the scale; a classifier is trained on them, written, and scores texts."""
    from textmill.filters.quality_model import EDU_SCORE_GRAMMAR

    backend = _smollm2(llm_server, max_tokens=16, temperature=1.0, seed=0,
                       extra_body={"grammar": EDU_SCORE_GRAMMAR})
    texts = _mixed_texts(20)
    report = distill(texts, backend=backend, output=tmp_path / "edu.bin", sample_size=24, seed=0, min_grade=2,
                     max_chars=400, train=QualityTrainConfig(holdout_fraction=0.25, **SMALL))
    assert report.n_texts == 40 and report.n_sampled == 24 and report.failed == 0
    assert report.n_graded + report.unparseable == 24
    assert report.n_graded >= 18  # constrained replies parse unless cut short
    assert set(report.grade_counts) <= set(range(6)) and sum(report.grade_counts.values()) == report.n_graded
    assert report.train.n_train + report.train.n_heldout == report.n_graded
    assert report.train.labels.keys() == {"hq", "lq"}
    assert report.heldout_agreement is not None and 0.0 <= report.heldout_agreement <= 1.0
    assert report.grading_docs_per_second > 0 and report.grader_model == "smollm2-135m"
    rows = [json.loads(line) for line in open(report.grades_path)]
    assert len(rows) == 24 and all(r["reply"].startswith("Educational score:") for r in rows)
    assert all((r["grade"] is None) == (r["label"] is None) for r in rows)
    assert all(r["label"] == ("hq" if r["grade"] >= 2 else "lq") for r in rows if r["grade"] is not None)
    scores = score_quality(pl.Series(texts), model_path=report.train.model_path)
    assert scores.null_count() == 0 and scores.is_between(0.0, 1.0).all() and scores.n_unique() > 1


@pytest.mark.slow
def test_llama_cpp_in_process_backend() -> None:
    from textmill.filters.quality_model import EDU_SCORE_GRAMMAR
    from textmill.rewrite import LlamaCppBackend, LlamaCppBackendConfig

    cfg = LlamaCppBackendConfig(model_path=str(smollm2_gguf()), n_ctx=1024, n_threads=2, max_tokens=16,
                                seed=0, grammar=EDU_SCORE_GRAMMAR)
    backend = make_backend(cfg)
    try:
        assert isinstance(backend, LlamaCppBackend) and isinstance(backend, LLMBackend)
        assert backend.model_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        text = _mixed_texts(1)[0]
        grades = grade_documents([text, text], backend=backend, max_chars=300)
        assert grades[0] is not None and 0 <= grades[0] <= 5 and grades[0] == grades[1]
        with pytest.raises(BackendError, match="llama.cpp"):
            backend.generate("word " * 1500)  # longer than n_ctx
    finally:
        backend.close()
