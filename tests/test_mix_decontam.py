"""Decontamination finds benchmark questions planted in documents and lets clean text through."""

import polars as pl

from textmill.mix.config import DecontamConfig
from textmill.mix.decontam import build_index, bundled_questions, decontaminate, find_contamination

CLEAN = ("The river town held its autumn market on the square, where farmers sold apples, cheese and "
         "bread while children watched the puppet show near the old stone fountain every afternoon.")


def _question(benchmark: str, row: int = 3) -> str:
    return bundled_questions().filter(pl.col("benchmark") == benchmark)["text"][row]


def test_planted_questions_are_found_with_span() -> None:
    gsm, mmlu = _question("gsm8k"), _question("mmlu")
    docs = pl.DataFrame({"id": ["g", "m", "clean"],
                         "text": [f"Homework help. {gsm} Thanks!", f"{CLEAN}\n\n{mmlu.upper()}", CLEAN]})
    kept, report = decontaminate(docs, config=DecontamConfig(benchmarks=["gsm8k", "mmlu"]))
    assert kept["id"].to_list() == ["clean"]
    by_id = {r["id"]: r for r in report.to_dicts()}
    assert set(by_id) == {"g", "m"}
    assert by_id["g"]["benchmark"] == "gsm8k" and by_id["m"]["benchmark"] == "mmlu"
    gsm_words = " ".join(gsm.lower().replace("$", "").split()[:5])
    assert by_id["g"]["span"].startswith(gsm_words.split()[0]) and by_id["g"]["span_words"] >= 13


def test_short_question_matches_whole_and_partial_does_not() -> None:
    questions = pl.DataFrame({"benchmark": ["toy", "toy"], "split": ["test", "test"], "item": [0, 1],
                              "text": ["Which planet has the largest number of moons today?",
                                       "Name the cat."]}, schema_overrides={"item": pl.UInt32})
    index = build_index(questions, ngram=13, short_question_min_words=8)
    docs = pl.DataFrame({"id": ["hit", "partial", "tiny"],
                         "text": ["quiz: which planet has the largest number of moons today? saturn",
                                  "which planet has the largest number of rings", "please name the cat."]})
    report = find_contamination(docs, index=index, batch_documents=2)
    assert report["id"].to_list() == ["hit"] and report["span_words"].to_list() == [9]


def test_every_listed_benchmark_is_bundled() -> None:
    names = set(bundled_questions()["benchmark"].unique())
    assert {"mmlu", "gsm8k", "humaneval", "arc_easy", "arc_challenge", "hellaswag", "winogrande"} <= names
